"""``jitdiff bench``'s cost spread line, on hand-computed timings."""

from harness.campaign.bench import _spread


def test_spread_names_the_heavy_tail():
    # 49 systems of 1 ms and one of 51 ms: 100 ms in all, mean 2 ms; the
    # dearest 2% (one system) is 51% of the time, the dearest 10% (five)
    # 51 + 4 = 55%; the median (the 25th dearest) is 1 ms
    each = [0.001] * 49 + [0.051]
    assert _spread(each) == (
        "per system (interpret + engines): median 1.00 ms, mean 2.00 ms; "
        "of the time, the dearest 2% 51%, the dearest 10% 55%"
    )
