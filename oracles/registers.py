"""BPF registers at calls: r1-r5 at every bpf-to-bpf and helper call, r0 and
r6-r9 back in the caller after every call, the cookie at every throw, and r1 ==
ctx at every tail-call target (a violation the native engine reports)."""

from __future__ import annotations

from harness.outcome import Event, RunOutcome
from oracles.base import Divergence, event_oracle, violation_oracle

__all__ = ["check"]


def _registers_only(e: Event) -> Event:
    """A helper event without the bytes the helper read (the stack oracle's)."""
    if e.kind == "helper":
        return Event(e.kind, e.where, e.data[:3])
    return e


_calls = event_oracle("registers", "call", "ret", "helper", "throw", project=_registers_only)
_ctx = violation_oracle("registers")


def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    return _calls(i, ref, cand) or _ctx(i, ref, cand)
