"""Campaigns: deterministic for a seed whatever the number of workers; the
corpus gets one file per divergence signature and never loses a file."""

from __future__ import annotations

from harness.campaign.fuzz import Campaign, Finding, Summary, _record, _save, run_campaign
from harness.formats import casefile

CASE = "program p sched_cls\nmain:\n    r0 = 1\n    exit\n"


def test_a_campaign_is_the_same_with_one_or_two_workers(tmp_path):
    def campaign(workers: int):
        camp = Campaign(engines=("x86_64",), seed=5, examples=24, workers=workers)
        with open(tmp_path / f"log{workers}", "w") as quiet:
            return run_campaign(camp, stream=quiet)

    one, two = campaign(1), campaign(2)
    assert one.cases == two.cases == 24
    assert one.coverage == two.coverage and sum(one.coverage.values()) > 24


def test_a_fault_is_found_shrunk_and_saved_once(tmp_path):
    camp = Campaign(
        engines=("x86_64+tcc-limit-32",),
        seed=0,
        examples=12,
        workers=1,
        corpus=tmp_path,
        stop_on_first=True,
    )
    with open(tmp_path / "log", "w") as quiet:
        summary = run_campaign(camp, stream=quiet)
    (f,) = summary.findings
    saved = casefile.load(f.path)  # a valid case file, with the reference's expectations
    assert saved.steps and any(s.expect.tail_calls is not None for s in saved.steps)
    assert f.insns <= 20


def test_corpus_writes_never_overwrite(tmp_path):
    f = Finding("x86_64", "x86_64|retval:return value", "retval", 0, 0.0, CASE, 2, 1)
    first = _save(tmp_path, f)
    assert first is not None and casefile.load(first).programs["p"].insns
    before = open(first).read()
    assert _save(tmp_path, f) is None  # same signature: not written again
    assert open(first).read() == before


def test_a_signature_keeps_the_finding_earliest_in_the_seed_order(tmp_path):
    # worker 0 reports case 306 while worker 1 is still shrinking case 3 of
    # the same bug: the report (and the corpus file) must end up with case 3
    sig = "x86_64|retval:return value"
    late_text = CASE.replace("r0 = 1", "r0 = 2")
    early_text = CASE.replace("r0 = 1", "r0 = 3")
    summary = Summary()
    first = _record(summary, Finding("x86_64", sig, "retval", 306, 1.0, late_text, 2, 1), tmp_path)
    assert first is not None and first.path is not None
    kept = _record(summary, Finding("x86_64", sig, "retval", 3, 0.1, early_text, 2, 1), tmp_path)
    assert kept is not None and kept.index == 3 and kept.path == first.path
    assert _record(summary, Finding("x86_64", sig, "retval", 10, 0.2, CASE, 2, 1), tmp_path) is None
    assert [f.index for f in summary.findings] == [3] and summary.duplicates == 2
    assert casefile.load(first.path).programs["p"].insns[0].imm == 3
