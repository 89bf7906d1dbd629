"""Documented kernel behaviour (docs/kernel-findings.md) keeps reproducing:
each case in corpus/kernel-findings/ is one, with the reference's outcome as
expectations and the native engines' documented failure asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import engines
from harness.campaign.known import known
from harness.campaign.runner import Runner, expectation_failures
from harness.formats import casefile

FINDINGS = Path(__file__).resolve().parents[1] / "corpus" / "kernel-findings"


@pytest.mark.parametrize("engine", ["x86_64", "kernel"])
def test_tail_call_chains_overflow_the_kernel_stack(engine):
    why = engines.available(engine)
    if why:
        pytest.skip(f"engine {engine}: {why}")
    case = casefile.load(FINDINGS / "stack_overflow_tail_call_chain.case")
    res = Runner([engine]).check(case)
    assert not expectation_failures(case, res.reference.runs)  # 33 tail calls, retval 0
    ((name, d),) = res.divergences
    assert d.oracle == "trap" and d.detail.startswith("kernel stack overflow")
    assert known(d.signature()), "a documented finding is known to campaigns"


def test_the_native_engine_refuses_to_run_it():
    why = engines.available("kernel-native")
    if why:
        pytest.skip(f"engine kernel-native: {why}")
    case = casefile.load(FINDINGS / "stack_overflow_tail_call_chain.case")
    out = engines.get("kernel-native").run(case, budget=1)
    assert out.runs[0].status.value == "unsupported"
    assert "kernel-stack-overflow-tail-call-chains" in out.runs[0].detail
