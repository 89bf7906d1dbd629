"""What every oracle shares: the divergence record, the three-way verdict, and
the two shapes of oracle (compare an event stream; report a candidate-only
invariant violation)."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

from harness.outcome import Event, RunOutcome, Status, Where

__all__ = [
    "Divergence",
    "Verdict",
    "verdict",
    "first_difference",
    "events_agree",
    "unobserved",
    "event_oracle",
    "violation_oracle",
    "events",
]


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
        # "tail_call event #3" and "#7" are the same kind of difference
        kind = re.sub(r"\s*#\d+|\s*0x[0-9a-f]+", "", kind)
        return f"{self.oracle}:{kind}"

    def __str__(self) -> str:
        at = f" at {self.where}" if self.where else ""
        msg = f"[{self.oracle}] run {self.run}{at}: expected {self.expected!r}, got {self.actual!r}"
        return f"{msg} ({self.detail})" if self.detail else msg


class Verdict(enum.Enum):
    AGREE = "agree"
    DIVERGE = "diverge"
    POISONED = "poisoned"


def unobserved(run: RunOutcome) -> frozenset[str]:
    """What a candidate engine declared it cannot observe in this run:
    ``"events"`` (no trace at all), ``"retval_high32"`` (only the low 32 bits
    of r0 come back, as from BPF_PROG_TEST_RUN), ``"helper:<id>"`` (that
    helper's calls leave no event). Both sides are compared without them."""
    return getattr(run, "unobserved", frozenset())


def events(run: RunOutcome, *kinds: str, hide: frozenset[str] = frozenset()) -> list[Event]:
    return [
        e
        for e in run.events
        if e.kind in kinds and not (e.kind == "helper" and f"helper:{e.data[0]}" in hide)
    ]


def _same(a, b) -> bool:
    """Equal, where ``None`` (uninitialised in the reference) matches anything."""
    if a is None or b is None:
        return True
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _same_event(a: Event, b: Event) -> bool:
    if a == b:  # the common case, compared at C speed
        return True
    return (a.kind, a.where.prog, a.where.func, a.where.pc) == (
        b.kind,
        b.where.prog,
        b.where.func,
        b.where.pc,
    ) and _same(a.data, b.data)


def events_agree(ref: list[Event], cand: list[Event]) -> bool:
    """Every event the same (``None`` matching anything): then every event
    oracle, which compares a per-kind part of these, agrees too."""
    return len(ref) == len(cand) and all(map(_same_event, ref, cand))


def first_difference(ref: list[Event], cand: list[Event]) -> int | None:
    """Index of the first event that differs (or is missing on one side)."""
    for i, (a, b) in enumerate(zip(ref, cand)):
        if not _same_event(a, b):
            return i
    if len(ref) != len(cand):
        return min(len(ref), len(cand))
    return None


def event_oracle(
    name: str, *kinds: str, project: Callable[[Event], Event] | None = None
) -> Callable[[int, RunOutcome, RunOutcome], Divergence | None]:
    """Compare the events of ``kinds`` in order; ``project`` keeps only the
    part of each event this oracle is about."""

    def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
        hide = unobserved(cand)
        if "events" in hide:
            return None
        ra = events(ref, *kinds, hide=hide)
        a, b = ra, events(cand, *kinds, hide=hide)
        if project is not None:
            a, b = [project(e) for e in a], [project(e) for e in b]
        k = first_difference(a, b)
        if k is None:
            return None
        ea = a[k] if k < len(a) else None
        eb = b[k] if k < len(b) else None
        where = (ea or eb).where
        return Divergence(
            name,
            i,
            ea and (ea.kind, ea.data),
            eb and (eb.kind, eb.data),
            where,
            f"{(ea or eb).kind} event #{k}",
            event=ref.events.index(ra[k]) if ea else None,
        )

    check.__name__ = name
    return check


def violation_oracle(name: str):
    """A candidate-only invariant: the candidate reported a ``Violation``."""

    def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
        for v in cand.violations:
            if v.oracle == name:
                return Divergence(name, i, "invariant holds", v.detail, v.where, v.detail)
        return None

    check.__name__ = name
    return check


def verdict(ref: RunOutcome, cand: RunOutcome) -> tuple[Verdict, str]:
    """Three-way verdict before any value is compared."""
    if ref.nondeterministic or cand.nondeterministic:
        return Verdict.POISONED, "nondeterministic"
    if ref.undefined:
        return Verdict.POISONED, f"implementation-defined: {ref.undefined}"
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
