"""Known kernel crash shapes, and how a crash is recognised and named.

This is the one place that lists case shapes known to oops the running
kernel. ``known_crash(case)`` says why a case has such a shape (or None); the
loader refuses those cases unless ``allow_known_crashes`` is set, and the
kernel engines report them as UNSUPPORTED instead of crashing the machine
again. When a new crash is found (``harness.kernel.worker`` saves its
reproducer under ``corpus/crashes/``), add its shape here.

It also holds the text side of crash detection: which kernel log lines mean
the kernel hit a bug (``CRASH_LINE``) and a stable signature for a crash
report, so that one bug found twice is saved once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from harness.system import Case, Program

__all__ = ["KnownCrash", "KNOWN_CRASHES", "known_crash", "CRASH_LINE", "signature"]


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


#: a kernel log line that means the kernel hit a bug while we used it
CRASH_LINE = re.compile(r"BUG:|Oops|general protection fault|WARNING:")
_RIP = re.compile(r"RIP: [0-9a-f]{4}:([A-Za-z0-9_.$]+)")


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
    rip = _RIP.search(log)
    where = rip.group(1).split("+")[0] if rip else "unknown"
    return f"{_slug(where, 32)}-{_slug(text)}"
