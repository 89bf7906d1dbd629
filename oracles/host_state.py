"""Host state only a native engine has: callee-saved registers and the stack
pointer restored at every return and at exit (candidate-only invariant)."""

from oracles.base import violation_oracle

__all__ = ["check"]

check = violation_oracle("host_state")
