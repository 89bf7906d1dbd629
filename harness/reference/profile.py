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
