"""Memory: no native write outside the current frame, ctx, map values and the
JIT's save area (a violation the native engine reports), then the final
contents of every array map."""

from __future__ import annotations

from harness.outcome import RunOutcome
from oracles.base import Divergence, violation_oracle

__all__ = ["check"]

_stray = violation_oracle("memory")


def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    d = _stray(i, ref, cand)
    if d:
        return d
    for name, want in ref.maps.items():
        got = cand.maps.get(name)
        if got is not None and got != want:
            return Divergence("memory", i, want.hex(), got.hex(), detail=f"map {name} contents")
    return None
