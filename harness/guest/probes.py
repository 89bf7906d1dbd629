"""What a guest's kernel accepts, discovered by running tiny systems at
set-up, not assumed per arch.

Each probe is a case whose runs succeed, with its own expectations holding,
on a kernel with the feature (the verifier rejects it without; kernels of
one arch differ by suite as much as arches do: riscv64 6.12 loads neither a
tail call mixed with subprograms nor ``bpf_throw``). Missing capabilities
turn generator switches off (``narrow_switches``), so generation never draws
a shape the guest cannot load. Private stacks are a JIT decision invisible
to user space: there is no probe for them.
"""

from __future__ import annotations

from harness.formats import casefile
from harness.system import Case

__all__ = ["PROBES", "probe_cases", "narrow_switches", "case_needs"]

#: one empty-slot tail call, then 33 through slot 0 (34 runs when the empty
#: one costs nothing), after CALL
_EMPTY_SLOT = """
map jmp_table prog_array max_entries=2
    0 = entry
map counts array max_entries=1 value_size=8

program entry sched_cls
main:
    r6 = r1
    *(u32 *)(r10 - 4) = 0
CALL
    r2 = map[jmp_table] ll
    r3 = 1
    r1 = r6
    call bpf_tail_call
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 3
    exit

run entry
    expect retval 3
    expect map counts 0 = 22 00 00 00 00 00 00 00
"""
_KEY = "    r1 = map[counts] ll\n    r2 = r10\n    r2 += -4\n"
#: probe name suffix -> the call before the empty-slot tail call: none, a
#: helper no JIT inlines (an array refuses the delete: -EINVAL), and the two
#: the generators use that a JIT may compile to no call
_EMPTY_SLOT_AFTER = {
    "": "",
    "_after_call": _KEY + "    call bpf_map_delete_elem\n",
    "_after_smp_id": "    call bpf_get_smp_processor_id\n",
    "_after_lookup": _KEY + "    call bpf_map_lookup_elem\n",
}

#: capability -> (generator switches it gates, the probe case)
PROBES: dict[str, tuple[tuple[str, ...], str]] = {
    # the verifier gates any mix of tail calls and bpf-to-bpf calls on the
    # JIT's support (bpf_jit_supports_subprog_tailcalls); a tail call from a
    # subprogram is the mix's hardest shape
    "tail_calls_with_subprograms": (
        ("tail_calls_in_subprograms", "tail_calls_with_subprograms"),
        """
map jmp_table prog_array max_entries=1
    0 = target

program entry sched_cls
main:
    call sub
    exit
sub:
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 55
    exit

program target sched_cls
main:
    r0 = 5
    exit

run entry
""",
    ),
    "bpf_throw": (
        ("throws", "exception_callbacks"),
        """
program entry sched_cls
main:
    r1 = 7
    call bpf_throw
    r0 = 0
    exit

run entry
""",
    ),
    "exception_callback": (
        ("exception_callbacks",),
        """
program entry sched_cls exception_callback=cb
main:
    r1 = 7
    call bpf_throw
    r0 = 0
    exit
cb:
    r0 = r1
    exit

run entry
""",
    ),
    # the 32-bit JITs of 6.1 (arm, x86-32) compile no bpf-to-bpf call: the
    # program is left to the interpreter (no JIT image, nothing to compare)
    "subprograms": (
        ("subprograms",),
        """
program entry sched_cls
main:
    r1 = 6
    call sub
    exit
sub:
    r0 = r1
    r0 += 1
    exit

run entry
    expect retval 7
""",
    ),
    # the 32-bit JITs of 6.1 (arm, x86-32) compile no BPF_ATOMIC at all: the
    # load fails with ENOTSUPP; both sizes, as the run counter uses u64
    "atomics": (
        ("atomics", "jit_atomics"),
        """
map counts array max_entries=1 value_size=8

program entry sched_cls
main:
    r1 = map_value[counts] ll
    r2 = 1
    lock *(u64 *)(r1 + 0) += r2
    lock *(u32 *)(r1 + 4) += r2
    r0 = 0
    exit

run entry
    expect retval 0
    expect map counts 0 = 01 00 00 00 01 00 00 00
""",
    ),
    # the same JITs have no 64-bit div or mod either
    "alu64_divmod": (
        ("jit_alu64_divmod",),
        """
program entry sched_cls
main:
    r0 = 47
    r0 /= 3
    r0 %= 4
    exit

run entry
    expect retval 3
""",
    ),
    # the cpu v4 instructions (6.6); 6.1's verifier refuses them all
    "cpu_v4": (
        ("cpu_v4",),
        """
program entry sched_cls
main:
    w0 = -47
    w0 s/= 3
    exit

run entry
    expect retval 0xfffffff1
""",
    ),
    # the verifier counts a JITed frame rounded to 16 (6.9+); 6.1 counts
    # every frame as at least 32: 32 + 512 = 544, "combined stack size of 2
    # calls is 544. Too large"
    "stack_rounding_16": (
        ("stack_rounding_16",),
        """
program entry sched_cls
main:
    call f0
    exit
f0:
    *(u64 *)(r10 - 512) = 0
    r0 = 0
    exit

run entry
    expect retval 0
""",
    ),
    # a tail call out of a program that uses bpf_throw: powerpc64 7.2 stores
    # the count through a saved register and panics (kernel-findings section
    # 6); a crash here is the answer, cached like any other
    "tail_calls_in_throwing_programs": (
        ("tail_calls_in_throwing_programs",),
        """
map jmp_table prog_array max_entries=1
    0 = entry
map data array max_entries=1 value_size=8

program entry sched_cls
main:
    r6 = r1
    r0 = map_value[data] ll
    r0 = *(u64 *)(r0 + 0)
    if r0 != 3 goto +2
    r1 = 7
    call bpf_throw
    r1 = r6
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 0
    exit

run entry
    expect retval 0
""",
    ),
    # not a load probe: a map op's error as the program sees it (the 64-bit
    # -EINVAL; 6.1's int-returning ops give it zero-extended on x86-64 and
    # arm64, d7ba4cc900bf fixed it in 6.4)
    "map_op_errors_64bit": (
        (),
        """
map counts array max_entries=1 value_size=8

program entry sched_cls
main:
    *(u32 *)(r10 - 4) = 0
    r1 = map[counts] ll
    r2 = r10
    r2 += -4
    call bpf_map_delete_elem
    r1 = r0
    r0 = 1
    if r1 == -22 goto +1
    r0 = 0
    exit

run entry
    expect retval 1
""",
    ),
    # not a load probe: what a JIT's register shift does past the width (the
    # ISA masks the amount; core.c leaves it to the JIT; powerpc gives 0)
    "register_shifts_masked": (
        (),
        """
program entry sched_cls
main:
    w0 = 1
    w1 = 33
    w0 <<= w1
    r2 = 1
    r3 = 65
    r2 <<= r3
    r0 += r2
    exit

run entry
    expect retval 4
""",
    ),
    # not a load probe: one counter for the whole call hierarchy (6.10+), or
    # a copy per frame (6.1's x86-64 and arm64): the subprogram's tail calls
    # spend all 33, then main's own tail call finds its copy untouched and
    # loops 33 more times (66 runs, retval 0). Kernels that refuse the mix
    # say nothing here (the reference_profile reads only a run's answer).
    "tail_call_counter_shared": (
        (),
        """
map jmp_table prog_array max_entries=1
    0 = loop
map counts array max_entries=1 value_size=8

program entry sched_cls
main:
    r6 = r1
    call sub
    r1 = r6
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit
sub:
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 0
    exit

program loop sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 0
    exit

run entry
    expect retval 1
    expect map counts 0 = 21 00 00 00 00 00 00 00
""",
    ),
    # not load probes: the JIT's tail-call semantics. A tail call to an empty
    # slot falls through; whether it still counts towards the 33 differs (the
    # interpreter counts it, the x86-64 and arm64 JITs do not, the riscv64 JIT
    # only in a function without calls). Present means it does not count.
    **{
        f"empty_slot_keeps_budget{suffix}": ((), _EMPTY_SLOT.replace("CALL\n", call))
        for suffix, call in _EMPTY_SLOT_AFTER.items()
    },
}


def probe_cases() -> dict[str, Case]:
    return {
        name: casefile.parse(text, file=f"<probe {name}>") for name, (_, text) in PROBES.items()
    }  # noqa: E501


def narrow_switches(capabilities: dict[str, str]) -> dict[str, bool]:
    """Generator switches to turn off for the capabilities a probe found
    missing (``capabilities``: name -> "" when present, else why not)."""
    off: dict[str, bool] = {}
    for name, why in capabilities.items():
        if why and name in PROBES:
            for switch in PROBES[name][0]:
                off[switch] = False
    return off


def _v4(i) -> bool:
    """A cpu v4 instruction: sdiv/smod and movsx (ALU off), bswap (ALU64
    END), a sign-extending load (MEMSX), gotol (JMP32 JA)."""
    from harness.formats import isa

    c, op = isa.cls(i.opcode), i.opcode & 0xF0
    if c in (isa.ALU, isa.ALU64) and op in (isa.DIV, isa.MOD, isa.MOV) and i.off:
        return True
    if c == isa.ALU64 and op == isa.END:
        return True
    if c == isa.LDX and i.opcode & 0xE0 == isa.MEMSX:
        return True
    return c == isa.JMP32 and op == isa.JA


def case_needs(case: Case) -> set[str]:
    """The probed capabilities a case's shape needs to load."""
    from harness.formats import isa
    from harness.reference.helpers import KFUNC_IDS, TAIL_CALL

    need: set[str] = set()
    for prog in case.programs.values():
        if prog.exception_callback is not None:
            need.add("exception_callback")
        starts = prog.function_starts()
        if len(starts) > 1:
            need.add("subprograms")
        for i in prog.insns:
            if isa.cls(i.opcode) == isa.STX and i.opcode & 0xE0 == isa.ATOMIC:
                need.add("atomics")
            if isa.cls(i.opcode) == isa.ALU64 and i.opcode & 0xF0 in (isa.DIV, isa.MOD):
                need.add("alu64_divmod")
            if _v4(i):
                need.add("cpu_v4")
            if i.opcode != isa.JMP | isa.CALL:
                continue
            if i.src == isa.PSEUDO_KFUNC_CALL and i.imm == KFUNC_IDS["bpf_throw"]:
                need.add("bpf_throw")
            elif i.src == 0 and i.imm == TAIL_CALL and len(starts) > 1:
                need.add("tail_calls_with_subprograms")
    return need
