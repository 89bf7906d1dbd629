"""The return value of the entry program (the cheapest check)."""

from __future__ import annotations

from harness.outcome import RunOutcome
from oracles.base import Divergence, unobserved

__all__ = ["check"]


def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    want = ref.retval
    if "retval_high32" in unobserved(cand) and want is not None:
        want &= 0xFFFF_FFFF  # BPF_PROG_TEST_RUN reports a u32
    if want != cand.retval:
        return Divergence("retval", i, want, cand.retval, detail="return value")
    return None
