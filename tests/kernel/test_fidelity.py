"""The x86-64 model's code against the kernel's (``harness.report.fidelity``): on the
corpus cases the project's claim rests on, the control-transfer code is the
kernel's byte for byte after address normalisation; a deliberately broken
model is caught exactly where it is broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import engines
from harness.formats import casefile
from harness.jit import Variant, compile_system
from harness.kernel import available
from harness.report import fidelity

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"kernel unusable: {REASON}")

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
CLAIMED = [
    "tail_calls/self_loop_33.case",
    "subprogs/tail_call_from_subprog_returns.case",
    "poke/slot_transitions.case",
    # per-function tail-call reachability: the case that exposed the model's
    # over-marking (prologue pushes, reloads before calls)
    "subprogs/tail_call_reachability.case",
]
#: the regions the claim is about
CLAIM = ("prologue", "epilogue", "tail_call", "call")


@pytest.fixture(scope="module")
def kernel():
    eng = engines.get("kernel")
    yield eng
    eng.close()


def _report(kernel, path: str, variant: Variant | None = None) -> fidelity.Report:
    case = casefile.load(CORPUS / path)
    native, dead, why = fidelity.kernel_system(kernel, case)
    assert native is not None, why
    model = compile_system(case, variant=variant or Variant())
    return fidelity.compare(case, model, native, dead=dead)


@pytest.mark.parametrize("path", CLAIMED)
def test_control_transfer_code_is_the_kernels(kernel, path):
    report = _report(kernel, path)
    regions = list(report.regions(CLAIM))
    # every function is compared, and each has a prologue and an epilogue
    assert all(not f.skipped for f in report.funcs)
    assert {r.category for _, r in regions} >= {"prologue", "epilogue", "tail_call"}
    bad = [(f, r) for f, r in regions if r.status != "same"]
    assert not bad, "\n" + fidelity.side_by_side(report)


def test_whole_listing_is_the_kernels_on_the_corpus_cases(kernel):
    # nothing else differs either (no by-design difference in these cases)
    for path in CLAIMED:
        report = _report(kernel, path)
        assert all(r.status == "same" for _, r in report.regions()), path


def test_broken_limit_is_reported_at_the_tail_call(kernel):
    report = _report(
        kernel,
        "tail_calls/self_loop_33.case",
        Variant(faults=frozenset({"tcc-limit-off-by-one"})),
    )
    diffs = report.differences()
    assert [(f.prog, f.name, r.category, r.pc) for f, r in diffs] == [
        ("entry", "main", "tail_call", 10)
    ]
    m, k = diffs[0][1].first_difference()
    assert (m.mnemonic, k.mnemonic) == ("ja", "jae")
    text = fidelity.side_by_side(report)
    marked = [line for line in text.splitlines() if line.startswith("!")]
    assert marked[0].startswith("! ; 10: call bpf_tail_call")
    assert any(" ja " in line and " jae " in line for line in marked[1:])


def test_show_prints_side_by_side(capsys):
    from harness.cli import main

    path = str(CORPUS / "subprogs/tail_call_from_subprog_returns.case")
    assert main(["show", path, "--engine", "x86_64", "--engine", "kernel", "--width", "120"]) == 0
    out = capsys.readouterr().out
    assert "model (x86_64)" in out and "| kernel" in out
    assert "call entry:sub" in out and "jmp tail:target" in out
    assert not [line for line in out.splitlines() if line.startswith("!")]
