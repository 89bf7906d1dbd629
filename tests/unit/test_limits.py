"""jitdiff's own map bound (MAX_MAP_BYTES) is one every engine can hold:
two maps at the bound sit side by side in the native executor without
overlapping, and the engines agree on what a program writes at both ends."""

from __future__ import annotations

import pytest

from harness.campaign.runner import Runner
from harness.errors import CaseError
from harness.formats import casefile
from harness.jit.x86_64 import MAP_STRIDE
from harness.native.image import KERNEL_LAYOUT
from harness.outcome import Status
from harness.reference.profile import PROFILES
from harness.system import MAX_MAP_BYTES

N = MAX_MAP_BYTES // 8  # u64 values


def test_the_bound_fits_the_executors_map_stride():
    assert KERNEL_LAYOUT.array_ptrs + MAX_MAP_BYTES <= MAP_STRIDE


def test_two_maps_at_the_bound_do_not_overlap():
    text = f"""
map a array max_entries={N} value_size=8
map b array max_entries={N} value_size=8
program p raw_tp
    r1 = map_value[a]+{MAX_MAP_BYTES - 8} ll
    r2 = 0x1111
    *(u64 *)(r1 + 0) = r2
    r1 = map_value[b] ll
    r2 = 0x2222
    *(u64 *)(r1 + 0) = r2
    r1 = map_value[a]+{MAX_MAP_BYTES - 8} ll
    r0 = *(u64 *)(r1 + 0)
    exit
run p
    expect retval 0x1111
    expect map a {N - 1} = 11 11 00 00 00 00 00 00
    expect map b 0 = 22 22 00 00 00 00 00 00
"""
    runner = Runner(["x86_64"])
    res = runner.check(casefile.parse(text))
    runner.close()
    assert res.reference.runs[0].status is Status.OK
    assert res.reference.runs[0].retval == 0x1111
    assert not res.divergences and not res.poisoned


def test_one_more_entry_is_refused():
    text = f"map a array max_entries={N + 1} value_size=8\nprogram p raw_tp\n    exit\n"
    with pytest.raises(CaseError) as e:
        casefile.parse(text, file="x.case")
    assert str(e.value).startswith("x.case:1: ") and "bound" in str(e.value)


def test_conformance_honours_the_profile(tmp_path, monkeypatch):
    from harness import engines
    from harness.campaign.conformance import run_directory

    (tmp_path / "one.data").write_text("-- asm\nmov %r0, 1\nexit\n-- result\n0x1\n")
    seen = []
    real = engines.get_spec

    def spy(name, profile, **kw):
        seen.append((name, profile.name))
        return real(name, profile, **kw)

    monkeypatch.setattr(engines, "get_spec", spy)
    got = run_directory(tmp_path, ["x86_64"], profile=PROFILES["pre-5.17-32"])
    assert got == (1, 0, 0)
    assert seen == [("interp", "pre-5.17-32"), ("x86_64", "pre-5.17-32")]
