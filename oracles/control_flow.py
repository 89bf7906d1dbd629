"""Control flow only a native engine can get wrong: a function or tail-call
entry reached without a call, a tail call landing at the wrong offset."""

from oracles.base import violation_oracle

__all__ = ["check"]

check = violation_oracle("control_flow")
