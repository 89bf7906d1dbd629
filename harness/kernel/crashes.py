"""Known kernel crash shapes, and how a crash is recognised and named.

This is the one place that lists case shapes known to oops the running
kernel. ``known_crash(case)`` says why a case has such a shape (or None); the
loader refuses those cases unless ``allow_known_crashes`` is set, and the
kernel engines report them as UNSUPPORTED instead of crashing the machine
again. When a new crash is found (``harness.kernel.worker`` saves its
reproducer under the campaign's ``corpus/crashes/``), add its shape here.

It also holds the text side of crash detection, plain text in and out so
that any engine reading a kernel log can share it: which lines start a bug
report (``CRASH_LINE``: oops, BUG, WARN), the first report of a given task
among new log lines (``kernel_report``), and a stable signature for a report,
so that one bug found twice is saved once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from harness.system import Case, Program

__all__ = [
    "KnownCrash",
    "KNOWN_CRASHES",
    "known_crash",
    "CRASH_LINE",
    "STACK_OVERFLOW",
    "kernel_report",
    "signature",
]


@dataclass(frozen=True)
class KnownCrash:
    name: str
    #: kernel versions (uname -r prefixes) where it was seen
    seen_on: tuple[str, ...]
    #: what goes wrong in the kernel, in one paragraph
    what: str
    #: the case's shape -> why it matches, or None
    matches: Callable[[Case], str | None]
    #: "load" (BPF_PROG_LOAD crashes) or "run" (BPF_PROG_TEST_RUN crashes:
    #: loading, and replaying the images under Unicorn, stay safe)
    when: str = "load"


def _callback_after_subprog(case: Case) -> str | None:
    for prog in case.programs.values():
        why = _callback_after_subprog_in(prog)
        if why:
            return why
    return None


def _kernel_stack_overflow(case: Case) -> str | None:
    # The x86-64 model's frames are the kernel's, byte for byte
    # (docs/fidelity.md), and its emulator gives the run the kernel's 16 KiB
    # task stack: if the model overflows it, the real run would hit the stack
    # guard page, and with VMAP_STACK that is a panic, not an oops.
    if not any(m.kind == "prog_array" for m in case.maps.values()):
        return None
    from harness.engines import get

    engine = _model_engine.get("x86_64") or _model_engine.setdefault("x86_64", get("x86_64"))
    for out in engine.run(case, budget=2_000_000).runs:
        if "kernel stack overflow" in out.detail:
            return f"the x86-64 model needs more than the kernel's stack at {out.where}"
        # the kernel's own path to the program (syscall entry, pt_regs,
        # bpf_prog_test_run...) and the deepest callee's frame (up to 512
        # bytes of BPF stack plus the JIT's saves) also live on that stack:
        # refuse well before the model itself overflows
        if out.native_stack + _DEEPEST_FRAME + _KERNEL_PATH > 16 * 1024:
            return (
                f"the x86-64 model uses {out.native_stack} bytes of native stack; with the "
                "kernel's own call path that is too close to the 16 KiB task stack"
            )
    return None


#: a callee's frame at most: 512 bytes of BPF stack, rbp, return address, two
#: counter slots, five callee-saved registers
_DEEPEST_FRAME = 512 + 8 * 9
#: generous room for the kernel's path from the syscall to the program
_KERNEL_PATH = 4096


_model_engine: dict = {}


def _callback_after_subprog_in(prog: Program) -> str | None:
    # Dead-code removal deletes a static subprogram but does not shift the
    # exception callback's subprogram index, so jit_subprogs reads past the
    # end of its function array. Whether a subprogram is dead is the
    # verifier's call (constant-false branches, code after a throw), so any
    # subprogram laid out before the callback counts; a callback right after
    # main is always safe.
    cb = prog.exception_callback_pc()
    if cb is None:
        return None
    before = [s for s in prog.function_starts() if 0 < s < cb]
    if not before:
        return None
    return (
        f"{prog.name}: exception callback at pc {cb} is laid out after subprogram(s) at "
        f"{before}; this kernel oopses in jit_subprogs if the verifier removes one as dead code"
    )


KNOWN_CRASHES: tuple[KnownCrash, ...] = (
    KnownCrash(
        "exception-callback-after-dead-subprog",
        ("6.18.44",),
        "An exception callback laid out after a static subprogram that the verifier removes "
        "as dead code: BPF_PROG_LOAD oopses (NULL dereference at 0x48 or a general protection "
        "fault, RIP jit_subprogs+0xa2f) and the kernel is tainted D.",
        _callback_after_subprog,
    ),
    KnownCrash(
        "kernel-stack-overflow-tail-call-chains",
        ("6.18.44",),
        "33 tail calls, each re-entering a chain of subprograms, need more than the 16 KiB task "
        "stack: the verifier bounds the BPF stack of the frames below a tail call (256 bytes), "
        "not the JIT's per-frame overhead nor the 34 repetitions. Found by the fuzzer in the "
        "model and confirmed on the kernel's own images replayed (docs/kernel-findings.md); "
        "never run natively, a guard-page hit panics the machine.",
        _kernel_stack_overflow,
        when="run",
    ),
)


def known_crash(case: Case, *, when: str = "load") -> str | None:
    """Why loading (``when="load"``) or running (``"run"``) ``case`` is known to
    crash this kernel, or None."""
    for shape in KNOWN_CRASHES:
        if shape.when != when:
            continue
        why = shape.matches(case)
        if why:
            return f"known kernel crash {shape.name}: {why}"
    return None


#: a kernel log line that starts a report of a kernel bug: an oops, a BUG (a lockup
#: detector's too: "BUG: soft lockup"), a WARN splat (``verifier bug: ...`` is
#: the message a verifier WARN prints just before its ``WARNING:`` line), a
#: sanitizer; and what the other arches print (a guest's console,
#: harness.guest): a page fault or die() on arm, arm64, riscv and powerpc, a
#: panic with no oops before it, a stack overflow, an RCU stall, a hung task.
#: ppc64's boot prints a harmless "WARNING: nvram corruption detected".
CRASH_LINE = re.compile(
    r"BUG:|Oops|general protection fault|WARNING:(?! nvram corruption)|[kK]ernel BUG"
    r"|verifier bug:|UBSAN:|KASAN:|Kernel panic|Unable to handle kernel|Internal error:"
    r"|kernel stack overflow|Insufficient stack space|detected stalls? on"
    r"|blocked for more than \d+ seconds"
)
#: the line of a report that names the task it happened in
_TASK = re.compile(r"\bPID: (\d+)")
#: the end of one report
_END = re.compile(r"---\[ end trace|---\[ end Kernel panic")
#: lines of a report kept in an excerpt
EXCERPT_LINES = 60


def kernel_report(lines: list[str], pids: Collection[int] | None = None) -> str | None:
    """The first kernel bug report among ``lines`` (kernel log messages, one a
    line, oldest first) as an excerpt of at most ``EXCERPT_LINES`` lines, or
    None. With ``pids``, a report that names its task (``CPU: 0 UID: 0 PID:
    1234 Comm: ...``) counts only if the task is one of them: the kernel log
    is the whole machine's, and another process's WARN is not our finding.
    Plain text in, plain text out, so every engine that reads a kernel log
    (the host's ``/dev/kmsg``, a guest's console) can use it."""
    i = 0
    while i < len(lines):
        if not CRASH_LINE.search(lines[i]):
            i += 1
            continue
        end = next((j + 1 for j in range(i, len(lines)) if _END.search(lines[j])), len(lines))
        report = lines[i:end]
        task = next((m for m in map(_TASK.search, report) if m), None)
        if pids is None or task is None or int(task.group(1)) in pids:
            return "\n".join(report[:EXCERPT_LINES])
        i = end
    return None


# where the oops happened: x86 "RIP: 0010:f+0x..", arm64 "pc : f+0x..", powerpc
# "NIP [..] f+0x..", riscv "epc : f+0x.." (the last three from qemu guests)
#: console lines of a task stack overrun: the guard page below a vmapped
#: stack (x86-64), arm64's overflow stack, or the end marker found overwritten
STACK_OVERFLOW = re.compile(
    r"stack guard page was hit|Insufficient stack space|kernel stack overflow"
    r"|corrupted stack end detected"
)

_STUCK = re.compile(r"soft lockup|detected stalls? on")
_BPF_FRAME = re.compile(r"\bbpf_prog_[0-9a-f]{16}_")

_RIP = re.compile(r"(?:RIP: [0-9a-f]{4}:|\bpc : |NIP +\[[0-9a-f]+\] |epc : )([A-Za-z_.$][\w.$]*)")


def _slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "crash"


def signature(log: str, fallback: str = "worker-died") -> str:
    """A file-name-safe name for a crash: the faulting function and the kind
    of the first bug line (``jit_subprogs-bug-kernel-null-pointer-dereference``),
    without addresses, so the same bug gets the same name."""
    first = next((ln for ln in log.splitlines() if CRASH_LINE.search(ln)), None)
    if first is None:
        return _slug(fallback)
    kind = CRASH_LINE.search(first)
    text = first[kind.start() :]
    text = re.sub(r"(address|at)[: ]+[0-9a-fx]+.*", "", text)
    text = re.sub(r"0x[0-9a-f]+|[0-9a-f]{8,}", "", text)
    # a WARN names its CPU, task and source line, a lockup its task and the
    # numbers of the moment ("soft lockup - CPU#0 stuck for 22s! [agent:93]"):
    # none of them is the bug, and repeated lockups are one bug
    text = re.sub(r"\[[^\]]*:\d+\]", "", text)
    text = re.sub(r"\b(CPU|UID|PID): \d+|:\d+\b|\b\d\w*", "", text)
    rip = _RIP.search(log)
    where = rip.group(1).split("+")[0] if rip else "unknown"
    # a BPF program's symbol names its tag and function: one per system
    where = re.sub(r"^bpf_prog_[0-9a-f]+_.*", "bpf_prog", where)
    if _STUCK.search(text) and _BPF_FRAME.search(log):
        # a CPU stuck in BPF programs was caught wherever it happened to be
        # (the program, a helper it called): the place is not the bug
        where = "bpf_prog"
    return f"{_slug(where, 32)}-{_slug(text)}"
