"""Limits and feature switches for generation, in one frozen object.

Generation only ever *narrows* by this config: a switch that is off means the
shape is never produced (an engine that cannot run ``bpf_throw`` turns
``throws`` off and never sees one); a switch that is on means the shape is
*allowed*, and swarm testing decides per system whether it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["Config", "FEATURES", "CONSTRAINTS"]


@dataclass(frozen=True, slots=True)
class Config:
    # ---- limits -----------------------------------------------------------
    #: programs per system; they share one prog array, so they have one type.
    max_programs: int = 4
    #: functions per program, main included (the exception callback is extra).
    max_functions: int = 8
    #: instructions per function, roughly: the prologue (ctx save, argument
    #: intake, stack initialisation) and forced calls may overshoot a little.
    max_insns_per_function: int = 40
    #: prog array max_entries is drawn in 1..this.
    max_prog_array_size: int = 8
    #: call frames on the deepest static path, main included (MAX_CALL_FRAMES).
    max_call_depth: int = 8
    #: bytes of stack a frame may use, and a call chain in total (MAX_BPF_STACK).
    max_stack: int = 512
    #: caller frames of a subprogram that tail-calls must total less than this
    #: (each rounded up to 16); the kernel rejects 256, accepts 240.
    tail_call_caller_stack: int = 256
    #: instructions the verifier would walk with every call inlined, per
    #: program; keeps verification and the 34 runs of a self loop cheap.
    max_expanded_insns: int = 3000
    #: the same, for programs in a system with a prog array: a run may enter
    #: programs 34 times (33 tail calls), so a run costs up to 34 times this.
    #: Without it a few systems of 100k+ steps took most of a campaign's time.
    max_expanded_insns_tail_calls: int = 400
    #: chance of a plain-code statement (generators.insns) after each
    #: control-transfer statement, when a plain-code feature is on.
    plain_code: float = 0.75
    #: steps in the script (runs, slot updates and deletes).
    max_steps: int = 9
    #: raw_tp ctx is a u64 array of at most 12 arguments.
    max_ctx: int = 96
    #: program types to draw from; all programs of one system share the type.
    prog_types: tuple[str, ...] = ("raw_tp", "sched_cls")

    # ---- constraints of an engine (never swarmed: off forbids a combination) --
    #: a program may both tail-call and have bpf-to-bpf calls (or an exception
    #: callback, a subprogram too). The verifier refuses the mix unless the
    #: JIT supports it (bpf_jit_supports_subprog_tailcalls: riscv64 and
    #: ppc64el 6.12 do not); off, each program of a system with both features
    #: draws one of them, so both shapes stay reachable, just never mixed.
    tail_calls_with_subprograms: bool = True
    #: the JIT compiles BPF_ATOMIC. The 32-bit JITs of 6.1 (arm, x86-32)
    #: refuse every atomic ("NOT YET"), the load fails with ENOTSUPP; off, no
    #: atomic is generated (``atomics`` off too; the run counter is bumped by
    #: load, add, store, which counts the same: a run never races another).
    jit_atomics: bool = True
    #: the JIT compiles 64-bit div and mod; the 32-bit JITs of 6.1 refuse them
    #: ("NOT YET", ENOTSUPP at load). Off, a drawn 64-bit div or mod is made
    #: 32-bit (the same draws, so a system keeps its shape).
    jit_alu64_divmod: bool = True
    #: the cpu v4 instructions (6.6): sdiv/smod, movsx, sign-extending loads,
    #: bswap, gotol. 6.1's verifier refuses them ("BPF_ALU uses reserved
    #: fields"); off, each drawn one becomes its v1-v3 sibling (div/mod, mov,
    #: a plain load, le/be, goto) on the same draws.
    cpu_v4: bool = True
    #: the verifier adds up a JITed call chain with each frame rounded to 16
    #: bytes (round_up_stack_depth, 6.9). 6.1 counts every frame as at least
    #: 32, rounded to 32 ("combined stack size of 2 calls is 544. Too large"
    #: for a 0-byte main calling a 512-byte subprogram); off, the chain and
    #: tail-call bounds are kept with that count.
    stack_rounding_16: bool = True
    #: a program that calls bpf_throw may also tail-call. powerpc64 7.2's
    #: exception boundary reads the tail-call info from the wrong frame slot
    #: and the guest panics (docs/kernel-findings.md section 6); off, each
    #: program of a system with both draws throws or tail calls, not both.
    tail_calls_in_throwing_programs: bool = True

    # ---- feature switches (all on: swarm testing picks a subset per system) --
    #: bpf-to-bpf calls (static subprograms).
    subprograms: bool = True
    #: bpf_tail_call through a prog array shared by the system's programs.
    tail_calls: bool = True
    #: tail calls made from inside subprograms (the counter-sharing shapes).
    tail_calls_in_subprograms: bool = True
    #: keys computed at run time (from a map value, ctx or the run counter).
    indirect_tail_calls: bool = True
    #: ``r3 = (1 << 32) | k``: the index is u32 and must hit slot k.
    big_index: bool = True
    #: keys at or above max_entries (the tail call falls through).
    out_of_range: bool = True
    #: prog array slots left empty (the tail call falls through).
    empty_slots: bool = True
    #: helper calls (map lookup/update/delete, smp_processor_id, ...).
    helpers: bool = True
    #: bpf_ktime_get_ns and bpf_get_prandom_u32: the kernel's real values are
    #: not reproducible, so native runs that use them are poisoned.
    nondeterministic_helpers: bool = True
    #: stack buffers handed to bpf_map_update_elem (stack becomes observable).
    stack_buffers: bool = True
    #: stack depths that are not multiples of 8 (u8/u16/u32 objects at odd offsets).
    unaligned_stack: bool = True
    #: frames above 64 bytes (private stack for raw_tp) up to the limits.
    big_stack: bool = True
    #: bpf_throw (sched_cls only); off for engines without exceptions.
    throws: bool = True
    #: an exception callback (a global function laid out right after main).
    exception_callbacks: bool = True
    #: scripts that update and delete prog array slots between runs.
    pokes: bool = True
    #: raw_tp reads of ctx fields (sched_cls programs never read ctx).
    ctx_reads: bool = True
    #: branches on values the verifier cannot know (map values, ctx).
    conditionals: bool = True
    #: every ALU form: each op in ALU and ALU64, immediate and register source,
    #: signed div/mod, divisors 0 and -1 at run time, neg, movsx, le/be/bswap.
    alu_ops: bool = True
    #: JMP and JMP32 on every condition, immediate and register operands
    #: (often equal at run time), else branches behind goto and gotol.
    branches: bool = True
    #: loads (sign-extending too) and stores of every size, every register as
    #: destination, source and base, r10 stored as a value.
    memory_ops: bool = True
    #: every atomic (add/or/and/xor, fetching or not, xchg, cmpxchg), 32 and
    #: 64 bit, on the stack and on map values.
    atomics: bool = True

    def but(self, **changes) -> Config:
        return replace(self, **changes)

    def enabled(self) -> frozenset[str]:
        """The feature switches and constraints that are on."""
        return frozenset(f for f in FEATURES + CONSTRAINTS if getattr(self, f))


#: switches that forbid a combination instead of enabling a shape
CONSTRAINTS: tuple[str, ...] = (
    "tail_calls_with_subprograms",
    "jit_atomics",
    "jit_alu64_divmod",
    "cpu_v4",
    "stack_rounding_16",
    "tail_calls_in_throwing_programs",
)

#: Every feature switch, in the order swarm testing draws them (simplest off).
FEATURES: tuple[str, ...] = tuple(
    f.name for f in fields(Config) if f.type in ("bool", bool) and f.name not in CONSTRAINTS
)
