"""What one engine observed when it ran a case: structured, comparable outcomes.

Every engine (interpreter, model JITs, the kernel) reports the same
vocabulary, so oracles compare data and never parse strings. Foreign errors
(Unicorn faults, errnos, verifier logs) are translated into a ``Status`` with a
``Where`` at the engine boundary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Status", "Where", "Event", "Violation", "RunOutcome", "CaseOutcome"]


class Status(enum.Enum):
    OK = "ok"  #: ran to the entry program's exit
    BUDGET = "budget"  #: instruction budget exhausted (runaway or just long)
    TRAPPED = "trapped"  #: native fault: bad memory access, bad fetch, unmodelled call
    INVALID = "invalid"  #: the program is not valid BPF (uninit read, OOB access, ...)
    REJECTED = "rejected"  #: the loader (the kernel verifier) refused it; detail = log
    CRASHED = "crashed"  #: the engine's worker died (a kernel oops is a finding)
    UNSUPPORTED = "unsupported"  #: the engine does not model a feature the case uses


class Where(NamedTuple):
    """A place in the system: program, function label, BPF pc, and for native
    engines the host address when it is known. (Where and Event are named
    tuples: engines make hundreds a case and oracles compare them, both at C
    speed.)"""

    prog: str
    func: str
    pc: int
    address: int | None = None

    def __str__(self) -> str:
        s = f"{self.prog}:{self.func}+{self.pc}"
        return s if self.address is None else f"{s} @ {self.address:#x}"


class Event(NamedTuple):
    """One control-transfer event, in program order.

    kind and data:
      call       (callee function, (r1, r2, r3, r4, r5))   a bpf-to-bpf call
      ret        (r0, (r6, r7, r8, r9))                     back in the caller
      helper     (id, (r1..r5), result, bytes read)         a helper call
      tail_call  (index u32, counter before, target or None)  an attempt
      throw      (cookie,)                                  bpf_throw
      exit       (retval,)                                  the entry program returned
      step       (r0..r10)                                  lockstep only: one per BPF insn
    A register the interpreter knows to be uninitialised is ``None``; oracles
    never compare a ``None``.
    """

    kind: str
    where: Where
    data: tuple

    def __str__(self) -> str:
        return f"{self.kind} at {self.where}: {self.data}"


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant a native engine checks on its own (no reference value):
    host callee-saved registers or rsp not restored, a write outside the
    allowed regions, a counter above the limit."""

    oracle: str
    where: Where | None
    detail: str


@dataclass
class RunOutcome:
    status: Status
    retval: int | None = None
    #: tail calls taken; None where the engine cannot see them (natively)
    tail_calls: int | None = 0
    #: final contents of every array map (all values concatenated), by name.
    maps: dict[str, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    #: instructions executed (BPF insns for the interpreter, native for JITs).
    steps: int = 0
    where: Where | None = None
    detail: str = ""
    violations: list[Violation] = field(default_factory=list)
    #: the run consumed a value no engine can reproduce (a real clock, say);
    #: its comparison is poisoned rather than trusted.
    nondeterministic: bool = False
    #: the reference only: what the run did that the profile leaves to the
    #: JIT (implementation-defined), so there is no value to compare
    undefined: str = ""
    #: what this engine cannot observe, so oracles compare without it:
    #: "events" (no trace), "retval_high32" (only a u32 comes back, as from
    #: BPF_PROG_TEST_RUN), "helper:<id>" (that helper leaves no event)
    unobserved: frozenset[str] = frozenset()
    #: native engines: bytes of host stack in use at the deepest function
    #: entry (the callee's own frame comes on top)
    native_stack: int = 0

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass
class CaseOutcome:
    """One ``RunOutcome`` per ``run`` step of the case's script, in order."""

    engine: str
    runs: list[RunOutcome]
    #: the engine's listing, for reports (may be empty).
    listing: str = ""
