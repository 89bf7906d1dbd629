"""The reference interpreter, one opcode class at a time, against hand-computed
values (the kernel's ``___bpf_prog_run`` semantics)."""

from __future__ import annotations

import pytest

from harness.formats import casefile, isa
from harness.formats.isa import Insn as I
from harness.outcome import Status
from harness.reference.helpers import BPF_THROW
from harness.reference.interp import run_case
from harness.reference.profile import LINUX
from harness.system import Case, MapDef, Program

U64 = (1 << 64) - 1


def mov(dst, imm, *, w64=True):
    return I((isa.ALU64 if w64 else isa.ALU) | isa.MOV | isa.K, dst, 0, 0, imm)


def alu(op, dst, src=None, imm=0, *, w64=True, off=0):
    c = isa.ALU64 if w64 else isa.ALU
    if src is None:
        return I(c | op | isa.K, dst, 0, off, imm)
    return I(c | op | isa.X, dst, src, off, 0)


EXIT = I(isa.JMP | isa.EXIT)


def ret_of(insns, *, ctx=b"", maps=None, ptype="sched_cls", profile=LINUX, labels=None, **prog_kw):
    case = Case(
        {"p": Program("p", ptype, list(insns), labels=labels or {0: "main"}, **prog_kw)},
        maps=maps or {},
        ctx=ctx,
    )
    out = run_case(case, profile)[0]
    assert out.status is Status.OK, (out.status, out.where, out.detail)
    return out


def r0(insns, **kw):
    return ret_of(insns, **kw).retval


@pytest.mark.parametrize(
    "op,a,b,w64,off,want",
    [
        (isa.ADD, 0xFFFFFFFF, 1, False, 0, 0),  # 32-bit wraps and zero-extends
        (isa.ADD, 0xFFFFFFFF, 1, True, 0, 0x100000000),
        (isa.SUB, 0, 1, True, 0, U64),
        (isa.SUB, 0, 1, False, 0, 0xFFFFFFFF),
        (isa.MUL, 0x80000000, 2, False, 0, 0),
        (isa.DIV, 7, 0, True, 0, 0),  # division by zero gives 0
        (isa.MOD, 7, 0, True, 0, 7),  # modulo by zero leaves dst
        (isa.MOD, 0x1_0000_0007, 0, False, 0, 7),  # ... truncated to 32 bits
        (isa.DIV, -7 & U64, 2, True, 1, -3 & U64),  # sdiv truncates toward zero
        (isa.MOD, -7 & U64, 2, True, 1, -1 & U64),  # smod takes the dividend's sign
        (isa.DIV, 1 << 63, -1 & U64, True, 1, 1 << 63),  # INT_MIN / -1 wraps
        (isa.MOD, 1 << 63, -1 & U64, True, 1, 0),
        (isa.DIV, 0x80000000, 0xFFFFFFFF, False, 1, 0x80000000),
        (isa.LSH, 1, 65, True, 0, 2),  # shift amount masked to 63
        (isa.LSH, 1, 33, False, 0, 2),  # ... and to 31 for alu32
        (isa.RSH, 1 << 63, 63, True, 0, 1),
        (isa.ARSH, 1 << 63, 63, True, 0, U64),
        (isa.ARSH, 0x80000000, 31, False, 0, 0xFFFFFFFF),
        (isa.XOR, 0xF0, 0xFF, True, 0, 0x0F),
        (isa.OR, 0xF0, 0x0F, True, 0, 0xFF),
        (isa.AND, 0xF0, 0x3C, True, 0, 0x30),
    ],
)
def test_alu_register_forms(op, a, b, w64, off, want):
    prog = [
        *isa.ld_imm64(1, a),
        *isa.ld_imm64(2, b),
        alu(op, 1, 2, w64=w64, off=off),
        alu(isa.MOV, 0, 1),
        EXIT,
    ]
    assert r0(prog) == want


def test_alu_immediates_sign_extend_only_for_alu64():
    assert r0([mov(0, -1), EXIT]) == U64
    assert r0([mov(0, -1, w64=False), EXIT]) == 0xFFFFFFFF
    assert r0([mov(0, 5), alu(isa.ADD, 0, imm=-1), EXIT]) == 4
    assert r0([mov(0, 0), alu(isa.SUB, 0, imm=1, w64=False), EXIT]) == 0xFFFFFFFF


def test_neg_and_movsx():
    assert r0([mov(0, 5), I(isa.ALU64 | isa.NEG, 0), EXIT]) == -5 & U64
    assert r0([mov(0, 5), I(isa.ALU | isa.NEG, 0), EXIT]) == 0xFFFFFFFB
    prog = [mov(1, 0x80), alu(isa.MOV, 0, 1, off=8), EXIT]  # (s8)0x80 = -128
    assert r0(prog) == -128 & U64
    prog = [mov(1, 0x8000), alu(isa.MOV, 0, 1, off=16, w64=False), EXIT]
    assert r0(prog) == 0xFFFF8000
    prog = [*isa.ld_imm64(1, 0x80000000), alu(isa.MOV, 0, 1, off=32), EXIT]
    assert r0(prog) == 0xFFFFFFFF80000000


def test_byte_swaps():
    v = 0x0102030405060708
    be = lambda width: [*isa.ld_imm64(0, v), I(isa.ALU | isa.END | isa.TO_BE, 0, 0, 0, width), EXIT]
    le = lambda width: [*isa.ld_imm64(0, v), I(isa.ALU | isa.END | isa.TO_LE, 0, 0, 0, width), EXIT]
    bswap = lambda width: [*isa.ld_imm64(0, v), I(isa.ALU64 | isa.END, 0, 0, 0, width), EXIT]
    assert r0(be(16)) == 0x0807
    assert r0(be(32)) == 0x08070605
    assert r0(be(64)) == 0x0807060504030201
    assert r0(le(16)) == 0x0708
    assert r0(le(32)) == 0x05060708
    assert r0(le(64)) == v
    assert r0(bswap(16)) == 0x0807
    assert r0(bswap(64)) == 0x0807060504030201


@pytest.mark.parametrize(
    "op,cls,a,b,taken",
    [
        (isa.JEQ, isa.JMP, 5, 5, True),
        (isa.JGT, isa.JMP, U64, 1, True),  # unsigned
        (isa.JSGT, isa.JMP, U64, 1, False),  # signed: -1 > 1 is false
        (isa.JSLT, isa.JMP, U64, 0, True),
        (isa.JSET, isa.JMP, 0b1010, 0b0100, False),
        (isa.JNE, isa.JMP32, 0x1_0000_0005, 5, False),  # jmp32 compares low halves
        (isa.JLT, isa.JMP32, 0x1_0000_0001, 2, True),
        (isa.JSGE, isa.JMP32, 0xFFFFFFFF, 0, False),
        (isa.JLE, isa.JMP, 3, 3, True),
        (isa.JGE, isa.JMP, 2, 3, False),
        (isa.JSLE, isa.JMP, U64, U64, True),
        (isa.JSGE, isa.JMP, 0, U64, True),
    ],
)
def test_conditional_jumps(op, cls, a, b, taken):
    prog = [
        *isa.ld_imm64(1, a),
        *isa.ld_imm64(2, b),
        mov(0, 0),
        I(cls | op | isa.X, 1, 2, 1, 0),
        EXIT,
        mov(0, 1),
        EXIT,
    ]
    assert r0(prog) == int(taken)


def test_ja_and_gotol():
    assert r0([mov(0, 1), I(isa.JMP | isa.JA, 0, 0, 1), mov(0, 2), EXIT]) == 1
    assert r0([mov(0, 1), I(isa.JMP32 | isa.JA, 0, 0, 0, 1), mov(0, 2), EXIT]) == 1


def test_loads_stores_and_sign_extending_loads():
    st = lambda size, off, imm: I(isa.ST | isa.MEM | size, 10, 0, off, imm)
    ldx = lambda size, dst, off, mode=isa.MEM: I(isa.LDX | mode | size, dst, 10, off)
    prog = [st(isa.DW, -8, -1), st(isa.B, -8, 0x80), ldx(isa.B, 0, -8, isa.MEMSX), EXIT]
    assert r0(prog) == -128 & U64
    prog = [st(isa.DW, -8, 0), st(isa.H, -6, 0x1234), ldx(isa.DW, 0, -8), EXIT]
    assert r0(prog) == 0x1234 << 16
    prog = [st(isa.W, -4, -2), ldx(isa.W, 0, -4), EXIT]  # zero-extending
    assert r0(prog) == 0xFFFFFFFE


def test_ctx_reads_and_uninitialised_reads_are_invalid():
    ctx = (0x1122334455667788).to_bytes(8, "little")
    assert r0([I(isa.LDX | isa.MEM | isa.W, 0, 1, 4), EXIT], ctx=ctx, ptype="raw_tp") == 0x11223344
    case = Case({"p": Program("p", "raw_tp", [alu(isa.MOV, 0, 2), EXIT], {0: "main"})})
    out = run_case(case)[0]
    assert out.status is Status.INVALID and "R2" in out.detail and out.where.pc == 0
    case = Case({"p": Program("p", "raw_tp", [I(isa.LDX | isa.MEM | isa.DW, 0, 10, -8), EXIT])})
    assert run_case(case)[0].status is Status.INVALID


@pytest.mark.parametrize(
    "op,size,old,src,want_mem,want_src",
    [
        (isa.ADD, isa.DW, 5, 3, 8, 3),
        (isa.ADD | isa.FETCH, isa.DW, 5, 3, 8, 5),
        (isa.OR | isa.FETCH, isa.W, 0xF0, 0x0F, 0xFF, 0xF0),
        (isa.AND, isa.W, 0xF0, 0x3C, 0x30, 0x3C),
        (isa.XOR | isa.FETCH, isa.DW, 0xFF, 0x0F, 0xF0, 0xFF),
        (isa.XCHG, isa.W, 7, 9, 9, 7),
    ],
)
def test_atomics_on_the_stack(op, size, old, src, want_mem, want_src):
    ldx = I(isa.LDX | isa.MEM | size, 0, 10, -8)
    prog = [
        I(isa.ST | isa.MEM | isa.DW, 10, 0, -8, 0),
        I(isa.ST | isa.MEM | size, 10, 0, -8, old),
        mov(2, src),
        I(isa.STX | isa.ATOMIC | size, 10, 2, -8, op),
        ldx,
        alu(isa.LSH, 0, imm=32),
        alu(isa.OR, 0, 2),
        EXIT,
    ]
    assert r0(prog) == (want_mem << 32) | want_src


def test_cmpxchg_loads_old_value_into_r0():
    base = [I(isa.ST | isa.MEM | isa.DW, 10, 0, -8, 7), mov(2, 9)]
    hit = base + [
        mov(0, 7),
        I(isa.STX | isa.ATOMIC | isa.DW, 10, 2, -8, isa.CMPXCHG),
        I(isa.LDX | isa.MEM | isa.DW, 1, 10, -8),
        alu(isa.LSH, 1, imm=8),
        alu(isa.OR, 0, 1),
        EXIT,
    ]
    assert r0(hit) == (9 << 8) | 7
    miss = base + [
        mov(0, 1),
        I(isa.STX | isa.ATOMIC | isa.DW, 10, 2, -8, isa.CMPXCHG),
        I(isa.LDX | isa.MEM | isa.DW, 1, 10, -8),
        alu(isa.LSH, 1, imm=8),
        alu(isa.OR, 0, 1),
        EXIT,
    ]
    assert r0(miss) == (7 << 8) | 7


def call(target_rel):
    return I(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, target_rel)


def test_bpf_to_bpf_call_preserves_r6_to_r9_and_passes_arguments():
    # main: r6 = 6; r1 = 1; r2 = 2; call f; r0 += r6; exit   f: r0 = r1 + r2; r6 = 100; exit
    prog = [
        mov(6, 6),
        mov(1, 1),
        mov(2, 2),
        call(2),
        alu(isa.ADD, 0, 6),
        EXIT,
        alu(isa.MOV, 0, 1),
        alu(isa.ADD, 0, 2),
        mov(6, 100),
        EXIT,
    ]
    out = ret_of(prog)
    assert out.retval == 9
    kinds = [e.kind for e in out.events]
    assert kinds == ["call", "ret", "exit"]
    assert out.events[0].data == ("f6", (1, 2, None, None, None))


def test_each_frame_has_its_own_stack():
    prog = [
        I(isa.ST | isa.MEM | isa.DW, 10, 0, -8, 1),
        call(2),
        I(isa.LDX | isa.MEM | isa.DW, 0, 10, -8),
        EXIT,
        I(isa.ST | isa.MEM | isa.DW, 10, 0, -8, 2),
        mov(0, 0),
        EXIT,
    ]
    assert r0(prog) == 1


def tail_call_prog(counter_map=1, jt=0, key_insns=None, after=7):
    """Count runs in array map #counter_map, then tail-call slot r3 of map #jt."""
    return [
        alu(isa.MOV, 6, 1),
        I(isa.LD_IMM64, 1, isa.PSEUDO_MAP_VALUE, 0, counter_map),
        I(0),
        mov(2, 1),
        I(isa.STX | isa.ATOMIC | isa.DW, 1, 2, 0, isa.ADD),
        alu(isa.MOV, 1, 6),
        I(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, jt),
        I(0),
        *(key_insns or [mov(3, 0)]),
        I(isa.JMP | isa.CALL, 0, 0, 0, 12),
        mov(0, after),
        EXIT,
    ]


def system(progs, slots, *, max_entries=4, profile=LINUX, steps=()):
    maps = {
        "jt": MapDef("jt", "prog_array", max_entries, 4, slots),
        "runs": MapDef("runs", "array", 1, 8),
    }
    case = Case(
        {n: Program(n, "sched_cls", p, labels={0: "main"}) for n, p in progs.items()},
        maps,
        steps=list(steps),
    )
    return run_case(case, profile)


def test_self_tail_call_loop_takes_33_tail_calls_34_runs():
    out = system({"entry": tail_call_prog()}, {0: "entry"})[0]
    assert (out.retval, out.tail_calls) == (7, 33)
    assert int.from_bytes(out.maps["runs"], "little") == 34
    attempts = [e.data for e in out.events if e.kind == "tail_call"]
    assert attempts[-1] == (0, 33, None) and attempts[0] == (0, 0, "entry")


def test_profile_knob_limits_to_32():
    out = system({"entry": tail_call_prog()}, {0: "entry"}, profile=LINUX.but(max_tail_calls=32))[0]
    assert out.tail_calls == 32 and int.from_bytes(out.maps["runs"], "little") == 33


def test_empty_slot_and_out_of_range_fall_through_without_budget():
    out = system({"entry": tail_call_prog(key_insns=[mov(3, 1)])}, {})[0]
    assert (out.retval, out.tail_calls) == (7, 0)
    assert [e.data for e in out.events if e.kind == "tail_call"] == [(1, 0, None)]
    out = system({"entry": tail_call_prog(key_insns=[mov(3, 4)])}, {0: "entry"})[0]
    assert out.tail_calls == 0  # 4 >= max_entries


def test_index_is_u32():
    key = [*isa.ld_imm64(3, (1 << 32) | 0)]
    out = system({"entry": tail_call_prog(key_insns=key)}, {0: "entry"})[0]
    assert out.tail_calls == 33


def test_empty_slot_budget_knob():
    # entry: try empty slot 1, then loop on slot 0: with the kernel interpreter's
    # order the failed call costs one unit of budget, so only 32 are taken
    prog = [
        alu(isa.MOV, 6, 1),
        I(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, 0),
        I(0),
        mov(3, 1),
        I(isa.JMP | isa.CALL, 0, 0, 0, 12),
        alu(isa.MOV, 1, 6),
        *tail_call_prog()[1:],
    ]
    assert system({"entry": prog}, {0: "entry"})[0].tail_calls == 33
    knob = LINUX.but(empty_slot_consumes_budget=True)
    out = system({"entry": prog}, {0: "entry"}, profile=knob)[0]
    # every run burns one unit on the empty slot before its real tail call: runs
    # start with counter 0, 2, ..., 32; the 17th cannot tail call any more
    assert out.tail_calls == 16 and int.from_bytes(out.maps["runs"], "little") == 17


def test_tail_call_from_subprogram_returns_to_its_caller():
    # entry: call sub; r0 += 1000; exit.  sub: tail-call slot 0 (= target).  target: r0 = 5
    entry = [
        alu(isa.MOV, 6, 1),
        call(2),
        alu(isa.ADD, 0, imm=1000),
        EXIT,
        I(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, 0),
        I(0),
        mov(3, 0),
        I(isa.JMP | isa.CALL, 0, 0, 0, 12),
        mov(0, 55),
        EXIT,
    ]
    target = [mov(0, 5), EXIT]
    out = system({"entry": entry, "target": target}, {0: "target"})[0]
    assert (out.retval, out.tail_calls) == (1005, 1)


def test_hierarchy_shares_one_counter():
    # entry: calls sub twice; sub tail-calls entry (slot 0). Still 33 tail calls in
    # total, not 33 per subprogram call (the "tailcall hierarchy" bug).
    entry = [
        alu(isa.MOV, 6, 1),
        I(isa.LD_IMM64, 1, isa.PSEUDO_MAP_VALUE, 0, 1),
        I(0),
        mov(2, 1),
        I(isa.STX | isa.ATOMIC | isa.DW, 1, 2, 0, isa.ADD),
        alu(isa.MOV, 1, 6),
        call(4),
        alu(isa.MOV, 1, 6),
        call(2),
        mov(0, 0),
        EXIT,
        I(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, 0),
        I(0),
        mov(3, 0),
        I(isa.JMP | isa.CALL, 0, 0, 0, 12),
        mov(0, 0),
        EXIT,
    ]
    out = system({"entry": entry}, {0: "entry"})[0]
    assert out.tail_calls == 33
    # runs = 1 (entry) + 33 tail-called runs + the second calls, each of which
    # can no longer tail call: count them from first principles:
    # depth-first, every entry run makes 2 sub calls; once the budget is spent,
    # each remaining sub call falls through. 34 entry runs in total.
    assert int.from_bytes(out.maps["runs"], "little") == 34


def throw(cookie_reg=1):
    return I(isa.JMP | isa.CALL, 0, isa.PSEUDO_KFUNC_CALL, 0, BPF_THROW)


def test_throw_without_callback_returns_cookie_through_nested_frames():
    # main: call f1; r0 = 1; exit. f1: call f2; exit. f2: r1 = 42; bpf_throw
    prog = [call(2), mov(0, 1), EXIT, call(1), EXIT, mov(1, 42), throw(), EXIT]
    out = ret_of(prog)
    assert out.retval == 42
    assert [e.kind for e in out.events] == ["call", "call", "throw", "exit"]


def test_throw_with_callback_returns_callbacks_value():
    # main: call f; exit.   cb (right after main): r0 = r1 * 2; exit.   f: r1 = 21; throw
    prog = [
        call(4),
        mov(0, 1),
        EXIT,
        alu(isa.MOV, 0, 1),
        alu(isa.MUL, 0, imm=2),
        EXIT,
        mov(1, 21),
        throw(),
        EXIT,
    ]
    prog[0] = call(5)
    out = ret_of(prog, labels={0: "main", 3: "cb", 6: "f"}, exception_callback="cb")
    assert out.retval == 42


_EMPTY_THEN_LOOP = """
map progs prog_array max_entries=2
    0 = entry
map runs array max_entries=1 value_size=8
map bufs array max_entries=1 value_size=4

program entry sched_cls
main:
    r6 = r1
    *(u32 *)(r10 - 4) = 0
    r1 = map_value[runs] ll
    r2 = 1
    lock *(u64 *)(r1 + 0) += r2
CALL
    r1 = r6
    r2 = map[progs] ll
    r3 = 1
    call bpf_tail_call
    r1 = r6
    r2 = map[progs] ll
    r3 = 0
    call bpf_tail_call
    r0 = 0
    exit

run entry
"""


@pytest.mark.parametrize(
    "call, inlined, runs",
    [
        ("", (), 17),  # no call: the failed one costs, 16 + 1 runs
        ("    r1 = map[bufs] ll\n    r2 = r10\n    r2 += -4\n    call bpf_map_delete_elem\n", (), 34),
        ("    call bpf_get_smp_processor_id\n", (), 34),
        ("    call bpf_get_smp_processor_id\n", ("bpf_get_smp_processor_id",), 17),
    ],
)
def test_empty_slot_free_in_calling_functions(call, inlined, runs):
    """The riscv64 JIT's counter (docs/kernel-findings.md section 6): in a
    function compiled with a call, a failed tail call's decrement is lost, so
    all 33 are taken (34 runs); without one it costs, as in the interpreter."""
    from harness.reference.helpers import HELPER_IDS

    case = casefile.parse(_EMPTY_THEN_LOOP.replace("CALL\n", call))
    knob = LINUX.but(
        empty_slot_consumes_budget=True,
        empty_slot_free_in_calling_functions=True,
        inlined_helpers=frozenset(HELPER_IDS[h] for h in inlined),
    )
    out = run_case(case, profile=knob)[0]
    assert int.from_bytes(out.maps["runs"], "little") == runs


def test_unmasked_shift_profile_leaves_the_value_undefined():
    """RFC 9669 masks a register shift amount (1 << (33 & 31) = 2); kernel/bpf/core.c
    leaves a JIT's result to the JIT (powerpc's slw gives 0), so that profile
    has no value to compare: the run is poisoned, not judged."""
    from oracles.base import Verdict, verdict

    text = "program entry sched_cls\nmain:\n    w0 = 1\n    w1 = SHIFT\n    w0 <<= w1\n    exit\n\nrun entry\n"
    far = casefile.parse(text.replace("SHIFT", "33"))
    assert run_case(far)[0].retval == 2 and not run_case(far)[0].undefined
    ref = run_case(far, profile=LINUX.but(shift_amount_masked=False))[0]
    assert ref.undefined == "register shift amount past the width"
    assert verdict(ref, run_case(far)[0])[0] is Verdict.POISONED
    near = casefile.parse(text.replace("SHIFT", "31"))
    assert not run_case(near, profile=LINUX.but(shift_amount_masked=False))[0].undefined


def test_tail_call_counter_per_frame_knob():
    """6.1's x86-64 and arm64 JITs pass the counter to a subprogram by value
    (the tailcall hierarchy bug): main calls sub, whose tail call into `loop`
    spends all 33; back in main, its own copy is still 0, so its tail call
    loops 33 times more. Shared counter: 33 runs of loop and retval 1 (main's
    tail call fails); per frame: 66 runs and loop's retval 0."""
    from harness.guest.probes import probe_cases

    case = probe_cases()["tail_call_counter_shared"]
    shared = run_case(case)[0]
    assert (shared.retval, shared.tail_calls, shared.maps["counts"][0]) == (1, 33, 33)
    per_frame = run_case(case, profile=LINUX.but(tail_call_counter_per_frame=True))[0]
    assert (per_frame.retval, per_frame.tail_calls, per_frame.maps["counts"][0]) == (0, 66, 66)


def test_map_op_errors_32bit_knob():
    """6.1's map ops return int and the verifier calls them directly: key 1
    of a one-entry array is -E2BIG (-7) for an update, -EINVAL (-22) for a
    delete, and x86-64/arm64 hand the program 0xfffffff9 / 0xffffffea."""
    text = """
map bufs array max_entries=1 value_size=8

program entry sched_cls
main:
    *(u32 *)(r10 - 4) = 1
    *(u64 *)(r10 - 16) = 0
    r1 = map[bufs] ll
    r2 = r10
    r2 += -4
    r3 = r10
    r3 += -16
    r4 = 0
    call HELPER
    exit

run entry
"""
    for helper, errno in (("bpf_map_update_elem", 7), ("bpf_map_delete_elem", 22)):
        case = casefile.parse(text.replace("HELPER", helper))
        assert run_case(case)[0].retval == (1 << 64) - errno
        old = run_case(case, profile=LINUX.but(map_op_errors_32bit=True))[0]
        assert old.retval == (1 << 32) - errno


@pytest.mark.parametrize(
    "cond, layout_dependent",
    [
        ("if w1 s<= w3 goto +1", True),  # ctx against a map value, low 32 bits
        ("if r1 > r3 goto +1", True),  # two objects: where each engine put them
        ("if r3 == 0 goto +1", False),  # NULL check: never taken anywhere
        ("if r3 > r4 goto +1", False),  # one object, 64-bit: the offsets decide
        ("if w3 > w4 goto +1", True),  # one object, 32-bit: the low halves may wrap
        ("if r3 & 8 goto +1", True),  # an address bit
    ],
)
def test_pointer_comparisons_that_depend_on_the_layout(cond, layout_dependent):
    """Found on guest:riscv64@sid (seed 202, system 1078): `if w1 s<= w3`
    compared the ctx pointer with a map value's by their low 32 bits, which
    the reference took from its own addresses and the guest from its own."""
    text = f"""
map data array max_entries=1 value_size=16

program p0 raw_tp
main:
    r3 = map_value[data] ll
    r4 = map_value[data]+8 ll
    {cond}
    r0 = 0
    r0 = 1
    exit

run p0
"""
    out = run_case(casefile.parse(text))[0]
    assert (out.status is Status.INVALID) == layout_dependent, out.detail
    if layout_dependent:
        assert "depends on each engine's memory layout" in out.detail
