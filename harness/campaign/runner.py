"""Run one case through the reference and candidate engines and judge it.

This is the whole differential step as a library call; the CLI, the fuzzer
and the tests are thin layers over ``Runner.check``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from harness import engines
from harness.outcome import CaseOutcome, Event, RunOutcome, Status
from harness.reference.profile import LINUX, Profile
from harness.system import Case
from oracles import Divergence, Verdict, compare_case, first_difference

__all__ = [
    "Runner",
    "Result",
    "expectation_failures",
    "rejection",
    "REFERENCE_BUDGET",
    "native_budget",
]

#: BPF instructions the reference may execute per run.
REFERENCE_BUDGET = 200_000


def native_budget(reference_steps: int) -> int:
    """A JIT's budget is a generous multiple of what the reference needed, so a
    JIT that runs away where the reference finished is a divergence, not a skip."""
    return 32 * reference_steps + 50_000


@dataclass
class Result:
    reference: CaseOutcome
    #: engine name -> (verdict, divergence, its outcome)
    candidates: dict[str, tuple[Verdict, Divergence | None, CaseOutcome]] = field(
        default_factory=dict
    )
    #: engine name -> the reference it was judged by, where its profile
    #: differs from the runner's (a guest's probed semantics)
    own: dict[str, CaseOutcome] = field(default_factory=dict)

    def reference_for(self, engine: str) -> CaseOutcome:
        return self.own.get(engine, self.reference)

    @property
    def divergences(self) -> list[tuple[str, Divergence]]:
        return [(n, d) for n, (v, d, _) in self.candidates.items() if v is Verdict.DIVERGE and d]

    @property
    def poisoned(self) -> bool:
        return any(v is Verdict.POISONED for v, _, _ in self.candidates.values())


class Runner:
    """Holds the engines (each engine keeps its emulator or worker alive across
    cases, which is where the speed comes from)."""

    def __init__(
        self, candidates: list[str] | tuple[str, ...], profile: Profile = LINUX, **options
    ):
        self.profile = profile
        self.reference = engines.get("interp", profile)
        self.engines = [
            engines.get_spec(n, profile, **options) for n in candidates if n != "interp"
        ]
        #: reference interpreters of the engines judged by another profile
        self._others: dict[str, engines.Engine] = {}

    def check(self, case: Case, *, lockstep: bool = False) -> Result:
        ref = self.reference.run(case, budget=REFERENCE_BUDGET, lockstep=lockstep)
        result = Result(ref)
        for eng in self.engines:
            own = self._reference_for(eng, case, ref, lockstep)
            if own is not ref:
                result.own[eng.name] = own
            steps = max((r.steps for r in own.runs), default=0)
            if not eng.runs_runaways and any(r.status is Status.BUDGET for r in own.runs):
                why = f"not run: the reference ran away ({REFERENCE_BUDGET} instructions)"
                out = CaseOutcome(
                    eng.name, [RunOutcome(Status.UNSUPPORTED, tail_calls=None, detail=why)] * len(own.runs)
                )
            else:
                out = eng.run(case, budget=native_budget(steps), lockstep=lockstep)
            v, d = compare_case(own.runs, out.runs)
            if v is Verdict.POISONED:
                v, d = rejection(own.runs, out.runs) or (v, d)
            result.candidates[eng.name] = (v, d, out)
        return result

    def incidents(self) -> Counter:
        """Harness events the engines counted (a kernel worker killed from
        outside and retried): not findings, but worth a line in a summary."""
        total: Counter = Counter()
        for e in self.engines:
            worker = getattr(e, "worker", None)
            total.update(getattr(worker, "incidents", {}))
        return total

    def _reference_for(self, eng, case: Case, ref: CaseOutcome, lockstep: bool) -> CaseOutcome:
        """The reference run under the engine's own profile (most engines:
        the runner's, already run)."""
        prof = eng.reference_profile(self.profile)
        if prof == self.profile:
            return ref
        interp = self._others.get(prof.name)
        if interp is None:
            interp = self._others[prof.name] = engines.get("interp", prof)
        return interp.run(case, budget=REFERENCE_BUDGET, lockstep=lockstep)

    def pinpoint(
        self, case: Case, engine: str, run: int
    ) -> tuple[Event | None, Event | None] | None:
        """Re-run one divergent case in lockstep (every BPF instruction
        recorded on both sides) and return the first differing instruction of
        run ``run``: the slow, precise step done once a divergence is known."""
        eng = next(e for e in self.engines if e.name == engine)
        ref = self.reference.run(case, budget=REFERENCE_BUDGET, lockstep=True)
        steps = max((r.steps for r in ref.runs), default=0)
        out = eng.run(case, budget=native_budget(steps), lockstep=True)
        if run >= len(ref.runs) or run >= len(out.runs):
            return None
        a = [e for e in ref.runs[run].events if e.kind == "step"]
        b = [e for e in out.runs[run].events if e.kind == "step"]
        k = first_difference(a, b)
        if k is None:
            return None
        return (a[k] if k < len(a) else None, b[k] if k < len(b) else None)

    def close(self) -> None:
        for e in self.engines:
            e.close()


def rejection(ref: list[RunOutcome], cand: list[RunOutcome]) -> tuple[Verdict, Divergence] | None:
    """A loader (the kernel verifier) that refused a system the reference
    ran is a divergence, oracle ``rejected``: either the generator or case is
    outside what the kernel accepts, or the verifier is wrong; never silence.
    A reference that found the program invalid or ran out of budget has not
    accepted it: that stays poisoned."""
    for i, (a, b) in enumerate(zip(ref, cand)):
        if b.status is not Status.REJECTED:
            continue
        if a.status in (Status.INVALID, Status.BUDGET):
            return None
        head = b.detail.split("\n", 1)[0]
        # "prog NAME rejected (ERRNO): REASON" (harness.kernel.bpf.Rejected):
        # the errno and the reason are the kind of rejection (the signature),
        # the program's name and the numbers in the reason are not
        what, _, why = head.partition(" rejected ")
        kind = re.sub(r"\d+", "N", why.replace(":", "")) if why else head.replace(":", "")
        return Verdict.DIVERGE, Divergence(
            "rejected", i, a.status.value, b.status.value, None, f"{kind}: {what} rejected"
        )
    return None


def expectation_failures(case: Case, runs: list[RunOutcome]) -> list[str]:
    """The case's own expectations against one engine's runs."""
    failures = []
    run_steps = [s for s in case.script() if s.kind == "run"]
    for i, (step, out) in enumerate(zip(run_steps, runs)):
        exp = step.expect
        if exp.empty():
            continue
        if out.status is not Status.OK:
            # the first line says what happened; a log below it is printed once
            # with the outcome, not once per failure
            what = out.detail.split("\n", 1)[0]
            at = f" at {out.where}" if out.where else ""
            failures.append(f"run {i} ({step.program}): {out.status.value}{at}: {what}")
            continue
        want = exp.retval
        if want is not None and "retval_high32" in out.unobserved:
            want &= 0xFFFF_FFFF
        if want is not None and out.retval != want:
            failures.append(f"run {i} ({step.program}): retval {out.retval:#x}, expected {want:#x}")
        # every engine reports r0, so the low 32 bits are checked on all of them
        want32 = exp.retval32
        if want32 is not None and out.retval is not None and out.retval & 0xFFFF_FFFF != want32:
            failures.append(
                f"run {i} ({step.program}): retval32 {out.retval & 0xFFFF_FFFF:#x}, "
                f"expected {want32:#x}"
            )
        if None not in (exp.tail_calls, out.tail_calls) and out.tail_calls != exp.tail_calls:
            failures.append(
                f"run {i} ({step.program}): {out.tail_calls} tail calls, expected {exp.tail_calls}"
            )
        for (name, key), want in exp.maps.items():
            m = case.maps[name]
            got = out.maps.get(name, b"")[key * m.value_size : (key + 1) * m.value_size]
            if got != want:
                failures.append(
                    f"run {i} ({step.program}): map {name}[{key}] = {got.hex(' ')}, "
                    f"expected {want.hex(' ')}"
                )
    return failures
