"""Shrinking (choice lists) and reduction (instructions, programs, steps)."""

from __future__ import annotations

from harness.campaign.reduce import delete_insn, reduce_case
from harness.campaign.shrink import shrink_choices
from harness.formats import asm, casefile
from harness.system import Program


def prog(text: str) -> Program:
    insns, labels = asm.assemble(text)
    return Program("p", "sched_cls", insns, labels)


def test_delete_insn_retargets_jumps_and_calls_like_bpf_adj_branches():
    p = prog("""
        r0 = 0
        if r1 > 3 goto out
        r0 = 1
        r0 += 2
    out:
        call sub
        exit
    sub:
        r0 = 5
        exit
    """)
    q = delete_insn(p, 2)  # r0 = 1: the jump over it shrinks by one
    assert asm.disassemble(q.insns, labels=q.labels) == asm.disassemble(
        prog("""
        r0 = 0
        if r1 > 3 goto out
        r0 += 2
    out:
        call sub
        exit
    sub:
        r0 = 5
        exit
    """).insns,
        labels=q.labels,
    )
    assert q.insns[1].off == 1 and q.insns[3].imm == 1  # hand-computed offsets
    assert delete_insn(p, 5) is None  # main's exit: a function must keep its last insn


def test_delete_insn_removes_both_slots_of_ld_imm64():
    p = prog("r1 = 0x100000000 ll\nr0 = 1\nexit")
    q = delete_insn(p, 0)
    assert len(q.insns) == 2 and asm.disassemble(q.insns).split() == ["r0", "=", "1", "exit"]


def test_shrink_choices_reaches_the_smallest_failing_list():
    # fails when the list holds a value >= 5 anywhere: the minimum is [5]
    def fails(c: list[int]) -> bool:
        return any(v >= 5 for v in c)

    assert shrink_choices([3, 9, 1, 7, 2, 8], fails) == [5]


def test_reduce_case_keeps_only_what_the_failure_needs():
    case = casefile.parse("""
map jt prog_array max_entries=2
    0 = target
map unused array max_entries=1 value_size=8

ctx 01 02 03 04

program entry sched_cls
main:
    r6 = r1
    r7 = 3
    r7 *= 5
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit

program target sched_cls
main:
    r0 = 2
    exit
""")

    def fails(c) -> bool:  # "a tail call into target is still made"
        p = c.programs.get("entry")
        return (
            p is not None
            and "target" in c.programs
            and any(i.imm == 12 for i in p.insns)
            and c.maps.get("jt") is not None
            and c.maps["jt"].init.get(0) == "target"
        )

    small = reduce_case(case, fails)
    text = casefile.render(small)
    assert "unused" not in text and "ctx" not in text and "r7" not in text
    assert fails(small)
