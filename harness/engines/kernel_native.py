"""The host kernel running the case itself: ``BPF_PROG_TEST_RUN``.

Everything happens in a disposable worker (``harness.kernel.worker``): it
loads the case, plays the script with test runs pinned to one CPU and map
updates in between, and answers with each run's return value and the array
maps' contents. What a test run cannot show is declared, not faked:

* the return value: ``BPF_PROG_TEST_RUN`` reports a u32, so only the low 32
  bits of r0 are observable (``unobserved`` holds ``"retval_high32"`` and the
  retval oracle compares the reference's low 32 bits);
* tail calls taken: not observable (``tail_calls=None``); count them in a map;
* the event trace: none (``"events"``).

A verifier rejection is ``REJECTED`` (the end of the log in ``detail``, the
whole log in a file), a shape known to oops the kernel is ``UNSUPPORTED``, a
kernel bug report (oops, BUG, WARN) from the worker in ``/dev/kmsg`` is
``CRASHED``; a worker killed from outside is retried (``harness.kernel.worker``).
A case that calls a helper whose real result is not reproducible
(``harness.reference.helpers.NONDETERMINISTIC``) runs, but its runs are
``nondeterministic`` (poisoned, not compared).
"""

from __future__ import annotations

from harness.engines import Engine
from harness.formats import isa
from harness.kernel import bpf
from harness.kernel.worker import Answer, Job, Worker, failed_runs
from harness.outcome import CaseOutcome, RunOutcome, Status
from harness.reference.helpers import NONDETERMINISTIC
from harness.reference.profile import LINUX, Profile
from harness.system import Case

__all__ = ["KernelNativeEngine", "UNOBSERVED", "uses_nondeterministic_helper", "native_outcomes"]

#: what a test run cannot show (see ``oracles.base.unobserved``)
UNOBSERVED = frozenset({"retval_high32", "events"})


def uses_nondeterministic_helper(case: Case) -> bool:
    return any(
        i.opcode == isa.JMP | isa.CALL and i.src == 0 and i.imm in NONDETERMINISTIC
        for p in case.programs.values()
        for i in p.insns
    )


def _declare(out: RunOutcome, unobserved: frozenset[str]) -> RunOutcome:
    # RunOutcome has no field for this yet; the oracles read it with getattr
    out.unobserved = unobserved  # type: ignore[attr-defined]
    return out


class KernelNativeEngine(Engine):
    """Options: ``cpu`` (default 0), ``allow_known_crashes``, ``crash_dir``,
    ``stop_on_crash``, ``timeout`` (seconds per case), ``kmsg`` (a kernel log
    reader in place of ``/dev/kmsg``: tests feed it synthetic lines)."""

    name = "kernel-native"

    def __init__(self, profile: Profile = LINUX, **options):
        super().__init__(profile, **options)
        self.worker = Worker.from_options(options)

    @classmethod
    def unavailable(cls) -> str | None:
        return bpf.available()

    def _job(self, case: Case, **kw) -> Job:
        return Job(
            case,
            cpu=self.options.get("cpu", 0),
            allow_known_crashes=self.options.get("allow_known_crashes", False),
            **kw,
        )

    def run(self, case: Case, *, budget: int = 0, lockstep: bool = False) -> CaseOutcome:
        # budget and lockstep mean nothing here: the verifier bounds every run
        ans = self.worker.submit(self._job(case, native=True, hold=self.options.get("hold", 0.0)))
        return CaseOutcome(self.name, self.outcomes(case, ans))

    def outcomes(self, case: Case, ans: Answer) -> list[RunOutcome]:
        return native_outcomes(case, ans)

    def close(self) -> None:
        self.worker.close()


def native_outcomes(case: Case, ans: Answer) -> list[RunOutcome]:
    """One outcome per run of a natively played case (the host's worker or a
    guest's agent), with what a test run cannot show declared."""
    if ans.status != "ok":
        return [_declare(o, UNOBSERVED) for o in failed_runs(case, ans)]
    nondet = uses_nondeterministic_helper(case)
    out = []
    for r in ans.runs:
        if r.error:
            o = RunOutcome(Status.UNSUPPORTED, tail_calls=None, detail=f"test run: {r.error}")
        else:
            o = RunOutcome(
                Status.OK,
                retval=r.retval,
                tail_calls=None,
                maps=dict(r.maps),
                nondeterministic=nondet,
            )
        out.append(_declare(o, UNOBSERVED))
    return out
