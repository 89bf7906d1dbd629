"""The whole event trace, last: anything the narrower oracles did not name
(and, in lockstep, the registers at every BPF instruction)."""

from oracles.base import event_oracle

__all__ = ["check"]

check = event_oracle("events", "call", "ret", "helper", "tail_call", "throw", "exit", "step")
