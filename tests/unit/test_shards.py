"""Seed shards and deterministic shrinking (no Ray needed): a campaign repeats
byte for byte, a shard is a fixed slice of the seed's cases, shrinking keeps
the divergence's signature, and the command line refuses what would make a
shard depend on timing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.campaign.cluster import Ledger, resources_for
from harness.campaign.fuzz import Campaign, run_campaign, signature
from harness.campaign.runner import Runner
from harness.campaign.shards import ShardResult, parse_shards, shard_campaign
from harness.campaign.shrink import shrink_choices
from harness.cli import main
from harness.formats import casefile

REPO = Path(__file__).resolve().parents[2]


def corpus_bytes(corpus: Path) -> dict[str, bytes]:
    return {str(p.relative_to(corpus)): p.read_bytes() for p in sorted(corpus.rglob("*.case"))}


def test_two_identical_campaigns_write_byte_identical_reproducers(tmp_path):
    # seed 0 diverges on this fault at cases 3, 4 (retval) and 9 (tail calls):
    # two signatures, each shrunk by the full attempt budget of its phases
    def campaign(name: str):
        camp = Campaign(
            engines=("x86_64+tcc-limit-32",),
            seed=0,
            examples=12,
            workers=2,
            corpus=tmp_path / name,
            shrink_tries=150,
        )
        with open(tmp_path / f"{name}.log", "w") as quiet:
            return run_campaign(camp, stream=quiet)

    one, two = campaign("a"), campaign("b")
    a, b = corpus_bytes(tmp_path / "a"), corpus_bytes(tmp_path / "b")
    assert len(a) == 2 and a == b
    assert [f.text for f in one.findings] == [f.text for f in two.findings]
    # each file still shows its finding's signature, and is named after it
    runner = Runner(["x86_64+tcc-limit-32"])
    for f in one.findings:
        res = runner.check(casefile.load(f.path))
        assert f.signature in {signature(e, d) for e, d in res.divergences}
        assert Path(f.path).name.endswith(
            f"-{f.oracle}-{hashlib.sha1(f.signature.encode()).hexdigest()[:10]}.case"
        )
    runner.close()


def test_shrinking_stops_when_asked_with_the_best_list_so_far():
    calls = []

    def fails(c: list[int]) -> bool:
        calls.append(c)
        return any(v >= 5 for v in c)

    # three attempts allowed, then the deadline: a failing list, not the minimum
    best = shrink_choices([3, 9, 1, 7, 2, 8], fails, stop=lambda: len(calls) >= 3)
    assert len(calls) == 3 and fails(best) and best != [5]
    assert shrink_choices([3, 9, 1, 7, 2, 8], fails, max_tries=10**6) == [5]


def test_a_shard_is_a_fixed_slice_of_the_seeds_cases():
    assert parse_shards("3/20") == range(3, 4)
    assert parse_shards("0-19/20") == range(0, 20)
    camp = shard_campaign(Campaign(engines=("x86_64",), seed=9, seconds=5.0), range(2, 5), 100)
    assert (camp.start, camp.examples, camp.seconds) == (200, 300, None)


@pytest.mark.parametrize("bad", ["20/20", "3-1/4", "-1/4", "a/b", "3", "1/0", "1-2-3/9", ""])
def test_bad_shards_are_refused_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fuzz", "--shard", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--shard" in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("bad", ["ray://", "host", "host:0", "host:99999", "ray://h:x"])
def test_bad_cluster_addresses_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fuzz", "--shard", "0/1", "--cluster", bad])
    assert e.value.code == 2 and "--cluster" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra", [["--time", "5"], ["--examples", "9"], ["--stop-on-first"], ["--cluster", "auto"]]
)
def test_a_shard_budget_is_a_count(extra, capsys):
    args = ["fuzz", "--no-save", *extra]
    if extra[0] != "--cluster":
        args += ["--shard", "0/1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jitdiff: ")


def test_cluster_without_ray_says_how_to_get_it():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # an import of ray now fails
        "from harness.cli import main\n"
        "sys.exit(main(['fuzz', '--shard', '0/1', '--cluster', 'auto', '--no-save']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "pip install 'jitdiff[cluster]'" in lines[-1]  # after the banner


def test_only_the_cluster_module_imports_ray():
    importers = [
        str(p.relative_to(REPO))
        for root in ("harness", "generators", "oracles")
        for p in (REPO / root).rglob("*.py")
        if any(
            line.strip().startswith(("import ray", "from ray"))
            for line in p.read_text().splitlines()
        )
    ]
    assert importers == ["harness/campaign/cluster.py"]


def test_engines_that_need_a_node_are_routed_by_resource():
    assert resources_for(("x86_64+tcc-limit-32", "interp")) == {}
    assert resources_for(("kernel", "x86_64", "kernel-native@foo")) == {
        "engine:kernel": 1.0,
        "engine:kernel-native": 1.0,
    }


def test_a_ledger_line_torn_by_a_crash_costs_only_that_shard(tmp_path):
    path = tmp_path / "ledger.jsonl"
    whole = json.dumps(ShardResult(0, "v", cases=4).to_json())
    path.write_text(whole + "\n" + whole[: len(whole) // 2])  # killed mid-write
    book = Ledger(path)
    assert list(book.done) == [0]
    book.add(ShardResult(1, "v", cases=4))
    assert sorted(Ledger(path).done) == [0, 1]


def test_a_reproducer_cut_short_by_the_time_limit_says_so():
    from harness.campaign.fuzz import Finding, Summary

    sig = "x86_64|retval:return value"
    whole = Finding("x86_64", sig, "retval", 3, 0.1, "", 12, 1)
    cut = Finding("x86_64", sig, "retval", 3, 0.1, "", 64, 1, cut_short=True, shrink_seconds=59.5)
    assert "cut short" not in Summary(findings=[whole]).render()
    assert "shrunk in 59.5s to 1 programs / 64 insns (shrinking cut short by --time)" in (
        Summary(findings=[cut]).render()
    )
