"""Semantic variants as named knobs in one profile.

Kernels disagreed (and still disagree between the interpreter and JITs) on a
few control-transfer details. Each is a field here; nothing else in jitdiff
branches on a kernel version.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Profile", "PROFILES", "LINUX"]


@dataclass(frozen=True, slots=True)
class Profile:
    name: str = "linux-6.18"
    #: tail calls allowed per invocation of the entry program (MAX_TAIL_CALL_CNT).
    #: 33 since 2022 (ebf7f6f0a6cd); before, JITs and the interpreter split 32/33.
    max_tail_calls: int = 33
    #: the 6.18 x86-64 JIT bumps the counter only after the empty-slot check;
    #: the kernel's own interpreter bumps it before (a failed call costs budget).
    empty_slot_consumes_budget: bool = False
    #: the riscv64 JIT keeps the counter in a6, but a function that makes calls
    #: copies it to s6 in its prologue and computes ``a6 = s6 - 1`` at each tail
    #: call: a failed call's decrement lands in a6 and the next call reads s6
    #: again. With this on, ``empty_slot_consumes_budget`` holds only in
    #: functions compiled without a call (``inlined_helpers`` are none).
    empty_slot_free_in_calling_functions: bool = False
    #: helper ids that compile to no call on this engine (the verifier's
    #: inlined array lookup on 64-bit kernels, bpf_jit_inlines_helper_call)
    inlined_helpers: frozenset[int] = frozenset()
    #: register shift amounts are taken mod the width (RFC 9669; what the
    #: x86-64, arm64 and riscv64 shift instructions do). kernel/bpf/core.c
    #: calls the result of a larger amount implementation-defined in a JIT,
    #: and powerpc's slw/sld give 0 instead: off, a run that shifts by such an
    #: amount has no reference value (poisoned, not compared).
    shift_amount_masked: bool = True
    #: the counter is passed to a subprogram by value (6.1's x86-64 and arm64
    #: JITs: a stack slot reloaded into rax, or the callee-saved x26): what a
    #: callee's tail calls spend is back on its return, so N calls that each
    #: reach tail calls take up to N x 33. The "tailcall hierarchy" bug, fixed
    #: in 6.10 and 6.11 (../shared/notes/real-jit-bugs.md #3, #4).
    tail_call_counter_per_frame: bool = False
    #: a 64-bit kernel's verifier turns bpf_map_update_elem and
    #: bpf_map_delete_elem into direct calls of the map's ops, which returned
    #: int until 6.4 (d7ba4cc900bf, "bpf: return long from bpf_map_ops
    #: funcs"): an error comes back zero-extended from 32 bits on x86-64 and
    #: arm64 (-7 as 0xfffffff9). 6.1's stable line still has int.
    map_op_errors_32bit: bool = False
    #: bytes of stack per BPF frame (MAX_BPF_STACK).
    stack_size: int = 512
    #: a frame above this many bytes in a raw_tp program without tail calls
    #: gets a private (per-cpu) stack on x86-64 (6.13+).
    private_stack_threshold: int = 64
    #: bpf_throw without an exception callback returns the cookie (low 32 bits
    #: are what BPF_PROG_TEST_RUN reports).
    throw_without_callback_returns_cookie: bool = True

    def but(self, **changes) -> Profile:
        return replace(self, **changes)


LINUX = Profile()

#: Selectable by name on the command line.
PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        LINUX,
        LINUX.but(name="linux-interp", empty_slot_consumes_budget=True),
        LINUX.but(name="pre-5.17-32", max_tail_calls=32),
    )
}
