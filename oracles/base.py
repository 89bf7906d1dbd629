"""The verdict and the oracle sequence."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from harness.outcome import Event, RunOutcome, Status, Where

__all__ = ["Divergence", "Verdict", "verdict", "compare", "compare_case", "first_difference",
           "ORACLES"]


@dataclass(frozen=True)
class Divergence:
    oracle: str
    #: index of the ``run`` step in the case's script
    run: int
    expected: object
    actual: object
    where: Where | None = None
    detail: str = ""
    #: position of the first differing event in the reference's event list
    event: int | None = None

    def signature(self) -> str:
        """What makes two divergences the same bug, for de-duplication."""
        kind = self.detail.split(":", 1)[0] if self.detail else ""
        return f"{self.oracle}:{kind}"

    def __str__(self) -> str:
        at = f" at {self.where}" if self.where else ""
        msg = f"[{self.oracle}] run {self.run}{at}: expected {self.expected!r}, got {self.actual!r}"
        return f"{msg} ({self.detail})" if self.detail else msg


class Verdict(enum.Enum):
    AGREE = "agree"
    DIVERGE = "diverge"
    POISONED = "poisoned"


def _events(run: RunOutcome, *kinds: str) -> list[Event]:
    return [e for e in run.events if e.kind in kinds]


def _key(e: Event) -> tuple:
    return (e.kind, e.where.prog, e.where.func, e.where.pc, _comparable(e.data))


def _comparable(data) -> object:
    """``None`` (uninitialised in the reference) matches anything."""
    return data


def _same(a, b) -> bool:
    if a is None or b is None:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _same_event(a: Event, b: Event) -> bool:
    return (a.kind, a.where.prog, a.where.func, a.where.pc) == (
        b.kind, b.where.prog, b.where.func, b.where.pc) and _same(a.data, b.data)


def first_difference(ref: list[Event], cand: list[Event]) -> int | None:
    """Index of the first event that differs (or is missing on one side)."""
    for i, (a, b) in enumerate(zip(ref, cand)):
        if not _same_event(a, b):
            return i
    if len(ref) != len(cand):
        return min(len(ref), len(cand))
    return None


def _event_oracle(name: str, *kinds: str) -> Callable[[int, RunOutcome, RunOutcome], Divergence | None]:
    def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
        a, b = _events(ref, *kinds), _events(cand, *kinds)
        k = first_difference(a, b)
        if k is None:
            return None
        ea = a[k] if k < len(a) else None
        eb = b[k] if k < len(b) else None
        where = (ea or eb).where
        return Divergence(name, i, ea and (ea.kind, ea.data), eb and (eb.kind, eb.data), where,
                          f"{(ea or eb).kind} event #{k}", event=ref.events.index(ea) if ea else None)

    check.__name__ = name
    return check


def _retval(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    if ref.retval != cand.retval:
        return Divergence("retval", i, ref.retval, cand.retval, detail="return value")
    return None


def _tail_call_count(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    if ref.tail_calls != cand.tail_calls:
        return Divergence("tail_calls", i, ref.tail_calls, cand.tail_calls,
                          detail="tail calls taken")
    return None


def _violations(name: str):
    def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
        for v in cand.violations:
            if v.oracle == name:
                return Divergence(name, i, "invariant holds", v.detail, v.where, v.detail)
        return None

    check.__name__ = name
    return check


def _memory(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    v = _violations("memory")(i, ref, cand)
    if v:
        return v
    for name, want in ref.maps.items():
        got = cand.maps.get(name)
        if got is not None and got != want:
            return Divergence("memory", i, want.hex(), got.hex(), detail=f"map {name} contents")
    return None


#: cheapest first; the first that fires is reported.
ORACLES: list[tuple[str, Callable]] = [
    ("retval", _retval),
    ("tail_calls", _tail_call_count),
    ("tail_calls", _event_oracle("tail_calls", "tail_call")),
    ("tail_calls", _violations("tail_calls")),
    ("registers", _event_oracle("registers", "call", "ret", "helper", "throw")),
    ("host_state", _violations("host_state")),
    ("stack", _event_oracle("stack", "helper")),
    ("memory", _memory),
    ("events", _event_oracle("events", "call", "ret", "helper", "tail_call", "throw", "exit",
                             "step")),
]


def verdict(ref: RunOutcome, cand: RunOutcome) -> tuple[Verdict, str]:
    """Three-way verdict before any value is compared."""
    if ref.nondeterministic or cand.nondeterministic:
        return Verdict.POISONED, "nondeterministic"
    if cand.status is Status.UNSUPPORTED:
        return Verdict.POISONED, f"unsupported: {cand.detail}"
    if ref.status in (Status.INVALID, Status.BUDGET):
        # no JIT has defined behaviour to compare with an invalid program, and a
        # reference that ran out of budget has no value to compare
        return Verdict.POISONED, f"reference {ref.status.value}"
    if cand.status is Status.REJECTED:
        return Verdict.POISONED, "rejected by the loader"
    if cand.status is not ref.status:
        return Verdict.DIVERGE, f"reference {ref.status.value}, candidate {cand.status.value}"
    return Verdict.AGREE, ""


def compare(i: int, ref: RunOutcome, cand: RunOutcome,
            oracles: list[tuple[str, Callable]] | None = None) -> tuple[Verdict, Divergence | None]:
    v, why = verdict(ref, cand)
    if v is Verdict.POISONED:
        return v, None
    if v is Verdict.DIVERGE:
        name = "termination" if cand.status in (Status.BUDGET, Status.OK) else "trap"
        return v, Divergence(name, i, ref.status.value, cand.status.value, cand.where,
                             f"{why}: {cand.detail}".rstrip(": "))
    for _, check in oracles or ORACLES:
        d = check(i, ref, cand)
        if d is not None:
            return Verdict.DIVERGE, d
    return Verdict.AGREE, None


def compare_case(ref: list[RunOutcome], cand: list[RunOutcome],
                 oracles=None) -> tuple[Verdict, Divergence | None]:
    """Runs of one case in script order; a poisoned run poisons the rest (state
    after it is not comparable)."""
    for i, (a, b) in enumerate(zip(ref, cand)):
        v, d = compare(i, a, b, oracles)
        if v is not Verdict.AGREE:
            return v, d
    return Verdict.AGREE, None
