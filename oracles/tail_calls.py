"""Tail calls: how many were taken, then every attempt (index, the counter
before it, the target or a fall-through), then the counter never above the
limit. Catches limit arithmetic, empty-slot budget, u32 index, counter by
value, counter resets and wrong counter slots."""

from __future__ import annotations

from harness.outcome import RunOutcome
from oracles.base import Divergence, event_oracle, violation_oracle

__all__ = ["check"]

_attempts = event_oracle("tail_calls", "tail_call")
_limit = violation_oracle("tail_calls")


def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    if cand.tail_calls is not None and ref.tail_calls != cand.tail_calls:
        return Divergence(
            "tail_calls", i, ref.tail_calls, cand.tail_calls, detail="tail calls taken"
        )
    return _attempts(i, ref, cand) or _limit(i, ref, cand)
