"""``run --json``: a run's results as one JSON document.

The schema is documented in ``docs/cli.md`` (bump ``VERSION`` when a field
changes meaning or goes away): every verdict, every engine's outcome with its
failed expectations, every divergence with the first differing event and
both values.
"""

from __future__ import annotations

from harness.outcome import CaseOutcome, Event
from oracles import Divergence

__all__ = ["VERSION", "document", "outcome", "divergence", "value"]

VERSION = 1


def document(cases: list[dict], status: int) -> dict:
    """The whole document: ``status`` is the exit status."""
    return {"version": VERSION, "status": status, "cases": cases}


def outcome(out: CaseOutcome, fails: list[str]) -> dict:
    """One engine's outcome of a case and its failed expectations."""
    return {
        "engine": out.engine,
        "runs": [
            {
                "status": r.status.value,
                "retval": r.retval,
                "tail_calls": r.tail_calls,
                "maps": {k: v.hex() for k, v in r.maps.items()},
                "where": str(r.where) if r.where else None,
                "detail": r.detail,
                "events": [[e.kind, str(e.where), repr(e.data)] for e in r.events],
            }
            for r in out.runs
        ],
        "failures": fails,
    }


def value(v):
    """An oracle's value as JSON: numbers, strings, lists; anything else as
    its repr (what the text report prints)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (tuple, list)):
        return [value(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return repr(v)


def divergence(engine: str, d: Divergence, step: tuple[Event | None, Event | None] | None) -> dict:
    """A divergence: the oracle, the run, the first differing event with both
    values, and the lockstep pinpoint (``Runner.pinpoint``) when there is one."""
    out = {
        "engine": engine,
        "oracle": d.oracle,
        "run": d.run,
        "signature": d.signature(),
        "first_difference": {
            "detail": d.detail or d.oracle,
            "where": str(d.where) if d.where else None,
            "event": d.event,
            "expected": value(d.expected),
            "actual": value(d.actual),
        },
        "lockstep": None,
    }
    if step is not None:
        a, b = step
        out["lockstep"] = {
            "where": str((a or b).where),
            "expected": value(a.data) if a else None,
            "actual": value(b.data) if b else None,
        }
    return out
