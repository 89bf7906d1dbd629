"""The reference interpreter as an engine."""

from __future__ import annotations

from harness.engines import Engine
from harness.outcome import CaseOutcome
from harness.reference.interp import Interpreter
from harness.system import Case

__all__ = ["InterpEngine"]


class InterpEngine(Engine):
    name = "interp"

    def run(self, case: Case, *, budget: int = 200_000, lockstep: bool = False) -> CaseOutcome:
        runs = Interpreter(case, self.profile, budget=budget, lockstep=lockstep).run_case()
        return CaseOutcome(self.name, runs)
