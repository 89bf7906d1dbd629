"""Oracles: decide whether a candidate engine's outcome matches the reference.

``verdict`` first sorts a pair of runs into agree / diverge / poisoned; only
when both ran to completion do the oracles compare, cheapest first, and the
first one that fires is the divergence. One module per oracle, each
``check(run_index, reference, candidate) -> Divergence | None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from harness.outcome import RunOutcome, Status
from oracles import (
    control_flow,
    events,
    host_state,
    memory,
    registers,
    retval,
    stack,
    tail_calls,
)
from oracles.base import Divergence, Verdict, events_agree, first_difference, unobserved, verdict

__all__ = [
    "Divergence",
    "Verdict",
    "ORACLES",
    "compare",
    "compare_case",
    "first_difference",
    "verdict",
]

Oracle = Callable[[int, RunOutcome, RunOutcome], "Divergence | None"]

#: cheapest first; the first that fires is reported.
ORACLES: list[tuple[str, Oracle]] = [
    ("retval", retval.check),
    ("tail_calls", tail_calls.check),
    ("registers", registers.check),
    ("host_state", host_state.check),
    ("control_flow", control_flow.check),
    ("stack", stack.check),
    ("memory", memory.check),
    ("events", events.check),
]


def compare(
    i: int, ref: RunOutcome, cand: RunOutcome, oracles: list[tuple[str, Oracle]] | None = None
) -> tuple[Verdict, Divergence | None]:
    v, why = verdict(ref, cand)
    if v is Verdict.POISONED:
        return v, None
    if v is Verdict.DIVERGE:
        # one side failed alone: a runaway (budget) or a fault/crash
        name = "termination" if cand.status in (Status.BUDGET, Status.OK) else "trap"
        return v, Divergence(
            name,
            i,
            ref.status.value,
            cand.status.value,
            cand.where,
            # the candidate's own words first: they name the kind of failure
            # (and so the divergence signature), e.g. "kernel stack overflow"
            f"{cand.detail} ({why})" if cand.detail else why,
        )
    if not unobserved(cand) and events_agree(ref.events, cand.events):
        # one pass instead of one per event oracle (the common case): they
        # all see agreeing events, so give them none to compare
        ref, cand = replace(ref, events=[]), replace(cand, events=[])
    for _, check in oracles or ORACLES:
        d = check(i, ref, cand)
        if d is not None:
            return Verdict.DIVERGE, d
    return Verdict.AGREE, None


def compare_case(
    ref: list[RunOutcome], cand: list[RunOutcome], oracles=None
) -> tuple[Verdict, Divergence | None]:
    """Runs of one case in script order; the first run that does not agree
    decides (state after a poisoned run is not comparable)."""
    for i, (a, b) in enumerate(zip(ref, cand)):
        v, d = compare(i, a, b, oracles)
        if v is not Verdict.AGREE:
            return v, d
    return Verdict.AGREE, None
