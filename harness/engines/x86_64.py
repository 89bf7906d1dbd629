"""The ``x86_64`` engine: the model of the Linux x86-64 JIT, run under Unicorn.

Compiles the case with ``harness.jit.x86_64`` (a byte-level port of the
kernel's JIT, optionally with named faults) and executes the images with the
shared ``harness.native.emu.Executor``; direct tail-call poke sites are re-patched by
the model's ``poke_transition`` when the script updates or deletes a slot.
"""

from __future__ import annotations

from harness.engines import Engine
from harness.errors import JitdiffError, Unsupported
from harness.jit import Variant, compile_system, listing, poke_transition
from harness.native.emu import Executor
from harness.outcome import CaseOutcome, RunOutcome, Status
from harness.system import Case

__all__ = ["X86Engine"]


class X86Engine(Engine):
    name = "x86_64"

    def __init__(self, profile, *, variant: Variant | None = None, **options):
        super().__init__(profile, **options)
        self.variant = variant or Variant()
        self._executor: Executor | None = None

    @property
    def executor(self) -> Executor:
        # one Unicorn instance per engine (per worker), reused across cases
        if self._executor is None:
            self._executor = Executor()
        return self._executor

    def compile(self, case: Case):
        return compile_system(case, self.profile, self.variant)

    def run(
        self, case: Case, *, budget: int = 1_000_000, lockstep: bool = False, native=None
    ) -> CaseOutcome:
        """``native``: the case's images from ``compile`` (``jitdiff bench``
        times the two apart); compiled here when not given."""
        if native is None:
            try:
                native = self.compile(case)
            except Unsupported as e:
                return self._all(case, Status.UNSUPPORTED, str(e))
            except JitdiffError as e:
                return self._all(case, Status.REJECTED, f"JIT refused: {e}")

        def repatch(map_name, key, old, new):
            patches = []
            for site in native.pokes:
                if site.map == map_name and site.key == key:
                    patches += poke_transition(native, site, old, new, self.variant)
            return patches

        runs = self.executor.run_case(
            case, native, profile=self.profile, budget=budget, repatch=repatch, lockstep=lockstep
        )
        return CaseOutcome(self.name, runs)

    @staticmethod
    def _all(case: Case, status: Status, detail: str) -> CaseOutcome:
        n = sum(1 for s in case.script() if s.kind == "run")
        return CaseOutcome("x86_64", [RunOutcome(status, detail=detail) for _ in range(n)])

    def listing(self, case: Case) -> str:
        return listing(self.compile(case), case)
