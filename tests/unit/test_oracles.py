"""compare(): the verdict and the first oracle that fires, on hand-built outcomes
(every expected value below is worked out by hand from the oracle order in
``oracles.ORACLES``: retval, tail_calls, registers, host_state, control_flow,
stack, memory, events)."""

from __future__ import annotations

from harness.outcome import Event, RunOutcome, Status, Violation, Where
from oracles import Verdict, compare

W = Where("p", "main", 3)
SUB = Where("p", "main", 7)


def _run(*events: Event, maps=None, violations=()) -> RunOutcome:
    return RunOutcome(
        Status.OK,
        retval=5,
        tail_calls=0,
        events=list(events),
        maps=maps or {"m": b"\x01\x02"},
        violations=list(violations),
    )


def _call(*args) -> Event:
    return Event("call", W, ("f1", args))


def test_uninitialised_reference_registers_match_anything():
    # r3-r5 were never written in the reference: None; the JIT has garbage there
    ref = _run(_call(1, 2, None, None, None), Event("exit", W, (5,)))
    cand = _run(_call(1, 2, 0xDEAD, 0xBEEF, 7), Event("exit", W, (5,)))
    assert compare(0, ref, cand) == (Verdict.AGREE, None)


def test_agreeing_events_still_leave_maps_and_violations_to_their_oracles():
    ref = _run(_call(1, 2, None, None, None))
    v, d = compare(0, ref, _run(_call(1, 2, 3, 4, 5), maps={"m": b"\x01\x03"}))
    assert v is Verdict.DIVERGE
    assert (d.oracle, d.expected, d.actual, d.detail) == (
        "memory",
        "0102",
        "0103",
        "map m contents",
    )

    bad = Violation("host_state", SUB, "callee-saved rbx is 0x1, expected 0x2")
    v, d = compare(0, ref, _run(_call(1, 2, 3, 4, 5), violations=[bad]))
    assert v is Verdict.DIVERGE
    assert (d.oracle, d.where, d.detail) == ("host_state", SUB, bad.detail)


def test_a_differing_argument_is_a_registers_divergence_at_its_event():
    ref = _run(Event("exit", SUB, (0,)), _call(1, 2, None, None, None))
    cand = _run(Event("exit", SUB, (0,)), _call(1, 9, 3, 4, 5))
    v, d = compare(0, ref, cand)
    assert v is Verdict.DIVERGE
    assert (d.oracle, d.where, d.event) == ("registers", W, 1)
    assert d.expected == ("call", ("f1", (1, 2, None, None, None)))
    assert d.actual == ("call", ("f1", (1, 9, 3, 4, 5)))


def test_a_missing_event_diverges():
    ref = _run(_call(1, 2, 3, 4, 5), Event("exit", W, (5,)))
    cand = _run(Event("exit", W, (5,)))
    v, d = compare(0, ref, cand)
    assert v is Verdict.DIVERGE
    assert d.oracle == "registers" and d.actual is None
