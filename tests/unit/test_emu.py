"""The Unicorn executor on hand-built native images.

No model JIT exists yet, so each test assembles a small ``NativeSystem`` with
keystone in the shapes of the real 6.18 listings (shared notes), next to the
BPF program it stands for. Expected values are worked out by hand from the
kernel's design (e.g. 33 tail calls), never produced by the code under test.
"""

from __future__ import annotations

import struct

import pytest

from harness.formats import isa
from harness.formats.isa import Insn
from harness.native.emu import (
    CALLEE_SAVED_SENTINELS,
    CTX_ADDR,
    AddressSpace,
    Executor,
    MapSpan,
    symbolize,
)
from harness.native.image import NativeFunc, NativeProg, NativeSystem
from harness.outcome import Status, Where
from harness.reference.profile import LINUX
from harness.system import Case, MapDef, Program, Step

keystone = pytest.importorskip("keystone")
_KS = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)

CODE = 0xFFFF_FFFF_C002_0000
MAP0 = 0xFFFF_8881_0433_2200
MAP1 = 0xFFFF_8881_0433_4000
PROG_OBJ = 0xFFFF_8881_0500_0000
RET_THUNK = 0xFFFF_FFFF_8110_410B
THUNK_RCX = 0xFFFF_FFFF_8220_4BE0
HELPER_UPDATE = 0xFFFF_FFFF_8150_E310
BPF_THROW = 0xFFFF_FFFF_8151_3610
SYMBOLS = {
    RET_THUNK: "return_thunk",
    THUNK_RCX: "thunk:rcx",
    HELPER_UPDATE: "helper:2",
    BPF_THROW: "kfunc:1",
}

# Prologue shapes from the listings: nop5 + (xor rax,rax | nop3) + push rbp; mov rbp,rsp
# is 12 bytes, so tail calls enter at +12 (X86_TAIL_CALL_OFFSET on the host).
# keystone encodes `nop dword ptr [rax + rax]` in 4 bytes; the kernel's nop5 is 0f 1f 44 00 00
NOP5 = ".byte 0x0f, 0x1f, 0x44, 0x00, 0x00"
PLAIN = f"{NOP5}; nop dword ptr [rax]; push rbp; mov rbp, rsp"
MAIN_TC = (
    f"{NOP5}; xor rax, rax; push rbp; mov rbp, rsp;"
    "cmp rax, 33; ja Ltc1; push rax; mov rax, rsp; jmp Ltc2; Ltc1: push rax; Ltc2: push rax"
)
EXIT = f"leave; jmp {RET_THUNK:#x}"


# ---- building images ---------------------------------------------------------


def asm_func(name: str, start_pc: int, address: int, prologue: str, slots, **kw) -> NativeFunc:
    """Assemble one function: ``slots[k]`` is the x86 for BPF slot k (None for
    the second slot of ld_imm64, which shares the first's address). A
    trailing ``.quad`` table of slot labels gives insn_addrs exactly."""
    lines = [prologue]
    labels = []
    for k, text in enumerate(slots):
        if text is None:
            labels.append(labels[-1])
            continue
        labels.append(f"Lslot{k}")
        lines.append(f"Lslot{k}: {text}")
    uniq = list(dict.fromkeys(labels))
    lines.append(".quad " + ", ".join(uniq))
    enc, _ = _KS.asm("\n".join(lines), address)
    raw = bytes(enc)
    table = dict(zip(uniq, struct.unpack(f"<{len(uniq)}Q", raw[-8 * len(uniq) :]), strict=True))
    return NativeFunc(
        name, start_pc, address, raw[: -8 * len(uniq)], [table[x] for x in labels], **kw
    )


def prog(name, funcs, *, obj=0, **kw) -> NativeProg:
    assert _KS.asm(PLAIN)[1] == 4 and len(_KS.asm(PLAIN)[0]) == 12  # X86_TAIL_CALL_OFFSET
    return NativeProg(name, funcs, funcs[0].address + 12, prog_object=obj, **kw)


def system(progs, maps=None) -> NativeSystem:
    return NativeSystem("x86_64", {p.name: p for p in progs}, maps or {}, dict(SYMBOLS))


def mov64(dst, imm):
    return Insn(isa.ALU64 | isa.MOV | isa.K, dst, 0, 0, imm)


def movx(dst, src):
    return Insn(isa.ALU64 | isa.MOV | isa.X, dst, src)


def add64(dst, imm):
    return Insn(isa.ALU64 | isa.ADD | isa.K, dst, 0, 0, imm)


def call_helper(imm, src=0):
    return Insn(isa.JMP | isa.CALL, 0, src, 0, imm)


EXIT_INSN = Insn(isa.JMP | isa.EXIT)


def run1(case, native, **kw):
    return Executor().run_case(case, native, **kw)


# ---- symbolize -----------------------------------------------------------------


def test_symbolize_names_pointers_the_same_way_in_every_engine():
    space = AddressSpace(
        ctx=0x1000, ctx_size=16, maps=(MapSpan("arr", 0x5000, 0x5138, 32), MapSpan("pa", 0x6000))
    )
    fps = [0x9000, 0x8000]  # entry main, then the current frame
    assert symbolize(0x8000 - 8, space, fps) == ("fp", -8)
    assert symbolize(0x9000 - 16, space, fps) == ("fp", 0, -16)
    assert symbolize(0x1008, space, fps) == ("ctx", 8)
    assert symbolize(0x5000, space, fps) == ("map", "arr")
    assert symbolize(0x6000, space, fps) == ("map", "pa")
    assert symbolize(0x5138 + 12, space, fps) == ("value", "arr", 12)
    assert symbolize(0x5138 + 32, space, fps) == ("value", "arr", 32)  # end is inclusive
    assert symbolize(42, space, fps) == 42
    assert symbolize(None, space, fps) is None
    # a frame whose fp is unknown (private stack before its prologue) is skipped
    assert symbolize(0x9000 - 0x100, space, [0x9000, None]) == ("fp", 0, -0x100)
    assert symbolize(0x8000 - 8, space, [0x9000, None]) == 0x8000 - 8


# ---- straight-line exit ---------------------------------------------------------


def ret42():
    f = asm_func("main", 0, CODE, PLAIN, ["mov eax, 42", EXIT])
    case = Case({"p": Program("p", "raw_tp", [mov64(0, 42), EXIT_INSN])})
    return case, system([prog("p", [f])])


def test_main_returns_42_with_one_exit_event():
    (out,) = run1(*ret42())
    assert out.status is Status.OK, out.detail
    assert out.retval == 42
    assert [(e.kind, e.where, e.data) for e in out.events] == [
        ("exit", Where("p", "main", 0), (42,))
    ]
    assert out.violations == []
    assert out.tail_calls == 0


def test_executor_is_reused_across_cases_and_runs():
    ex = Executor()
    case, native = ret42()
    case.steps = [Step("run", program="p"), Step("run", program="p")]
    assert [o.retval for o in ex.run_case(case, native)] == [42, 42]
    case2, native2 = ret42()
    assert [o.retval for o in ex.run_case(case2, native2)] == [42, 42][:1]


def test_lockstep_records_one_step_per_bpf_insn():
    (out,) = run1(*ret42(), lockstep=True)
    steps = [e for e in out.events if e.kind == "step"]
    assert [e.where.pc for e in steps] == [0, 1]
    # r10 is the frame pointer; r0 = 42 when the exit insn starts
    assert steps[0].data[10] == ("fp", 0)
    assert steps[1].data[0] == 42


# ---- helpers ----------------------------------------------------------------------


def test_map_update_helper_event_and_final_map_contents():
    # r1 = map; *(u32 *)(fp-4) = 0; fp-16 = 11223344 55667788; r2 = fp-4;
    # r3 = fp-16; r4 = 0; call bpf_map_update_elem; exit
    lo, hi = isa.ld_imm64(1, 0, src=isa.PSEUDO_MAP_FD)
    insns = [
        lo, hi,
        Insn(isa.ST | isa.MEM | isa.W, 10, 0, -4, 0),
        Insn(isa.ST | isa.MEM | isa.W, 10, 0, -16, 0x11223344),
        Insn(isa.ST | isa.MEM | isa.W, 10, 0, -12, 0x55667788),
        movx(2, 10), add64(2, -4),
        movx(3, 10), add64(3, -16),
        mov64(4, 0),
        call_helper(2),
        EXIT_INSN,
    ]  # fmt: skip
    slots = [
        f"movabs rdi, {MAP0:#x}", None,
        "mov dword ptr [rbp - 4], 0",
        "mov dword ptr [rbp - 16], 0x11223344",
        "mov dword ptr [rbp - 12], 0x55667788",
        "mov rsi, rbp", "add rsi, -4",
        "mov rdx, rbp", "add rdx, -16",
        "xor ecx, ecx",
        f"call {HELPER_UPDATE:#x}",
        EXIT,
    ]  # fmt: skip
    f = asm_func("main", 0, CODE, PLAIN + "; sub rsp, 16", slots, stack_depth=16)
    case = Case(
        {"p": Program("p", "raw_tp", insns)},
        maps={"m": MapDef("m", "array", max_entries=2, value_size=8)},
    )
    (out,) = run1(case, system([prog("p", [f])], {"m": MAP0}))
    assert out.status is Status.OK, out.detail
    helper = [e for e in out.events if e.kind == "helper"]
    value = bytes.fromhex("4433221188776655")
    assert [(e.where, e.data) for e in helper] == [
        (
            Where("p", "main", 10),
            (2, (("map", "m"), ("fp", -4), ("fp", -16), 0), 0, bytes(4) + value),
        )
    ]
    assert out.retval == 0
    assert out.maps == {"m": value + bytes(8)}
    assert out.violations == []


def test_unmodelled_helper_traps():
    f = asm_func("main", 0, CODE, PLAIN, ["call 0xffffffff81500000", EXIT])
    native = system([prog("p", [f])])
    native.symbols[0xFFFF_FFFF_8150_0000] = "helper:9999"
    case = Case({"p": Program("p", "raw_tp", [call_helper(9999), EXIT_INSN])})
    (out,) = run1(case, native)
    assert out.status is Status.TRAPPED
    assert "unmodelled call to helper:9999" in out.detail
    assert out.where == Where("p", "main", 0)


# ---- bpf-to-bpf calls --------------------------------------------------------------


def two_funcs(sub_epilogue: str):
    # main: r6 = 5; r7 = 9; r1 = 7; call sub; r0 += r6; exit
    # sub:  r6 = 100; r0 = r1; r0 += 1; exit        (sub uses r6, so saves rbx)
    insns = [
        mov64(6, 5), mov64(7, 9), mov64(1, 7),
        Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, 2),
        Insn(isa.ALU64 | isa.ADD | isa.X, 0, 6),
        EXIT_INSN,
        mov64(6, 100), movx(0, 1), add64(0, 1), EXIT_INSN,
    ]  # fmt: skip
    sub_addr = CODE + 0x400
    main = asm_func(
        "main", 0, CODE, PLAIN + "; push rbx; push r13",
        ["mov ebx, 5", "mov r13d, 9", "mov edi, 7", f"call {sub_addr:#x}", "add rax, rbx",
         f"pop r13; pop rbx; {EXIT}"],
    )  # fmt: skip
    sub = asm_func(
        "sub", 6, sub_addr, PLAIN + "; push rbx",
        ["mov ebx, 100", "mov rax, rdi", "add rax, 1", sub_epilogue],
    )  # fmt: skip
    case = Case({"p": Program("p", "raw_tp", insns, labels={6: "sub"})})
    return case, system([prog("p", [main, sub])])


def test_bpf2bpf_call_and_ret_events_preserve_r6_r9():
    (out,) = run1(*two_funcs(f"pop rbx; {EXIT}"))
    assert out.status is Status.OK, out.detail
    assert out.retval == 8 + 5
    kinds = [e.kind for e in out.events]
    assert kinds == ["call", "ret", "exit"]
    call, ret, _ = out.events
    assert call.where == Where("p", "main", 3)
    assert call.data[0] == "sub" and call.data[1][0] == 7
    assert ret.where == Where("p", "main", 3)
    r0, (r6, r7, r8, r9) = ret.data
    assert (r0, r6, r7) == (8, 5, 9)
    # r8/r9 (r14/r15) were never written: still the host's callee-saved values
    assert (r8, r9) == (CALLEE_SAVED_SENTINELS["r14"], CALLEE_SAVED_SENTINELS["r15"])
    assert out.violations == []


def test_missing_pop_rbx_is_a_host_state_violation():
    (out,) = run1(*two_funcs(EXIT))  # `leave` fixes rsp, but rbx stays 100
    assert out.retval == 8 + 100
    bad = [v for v in out.violations if v.oracle == "host_state"]
    assert bad and bad[0].where == Where("p", "main", 3)
    assert "rbx" in bad[0].detail and "0x64" in bad[0].detail


# ---- tail calls ------------------------------------------------------------------


def tail_loop():
    """The listing's indirect tail call, calling slot 0 = itself."""
    lo, hi = isa.ld_imm64(2, 0, src=isa.PSEUDO_MAP_FD)
    insns = [lo, hi, mov64(3, 0), call_helper(12), mov64(0, 77), EXIT_INSN]
    tail = (
        "mov edx, edx; cmp dword ptr [rsi + 0x4c], edx; jbe Lslot4;"
        "mov rax, qword ptr [rbp - 16]; cmp qword ptr [rax], 33; jae Lslot4;"
        "mov rcx, qword ptr [rsi + rdx*8 + 0x138]; test rcx, rcx; je Lslot4;"
        "add qword ptr [rax], 1; pop rax; pop rax;"
        f"mov rcx, qword ptr [rcx + 0x48]; add rcx, 12; jmp {THUNK_RCX:#x}"
    )
    f = asm_func(
        "main", 0, CODE, MAIN_TC,
        [f"movabs rsi, {MAP0:#x}", None, "xor edx, edx", tail, "mov eax, 77", EXIT],
    )  # fmt: skip
    case = Case(
        {"loop": Program("loop", "sched_cls", insns)},
        maps={"pa": MapDef("pa", "prog_array", max_entries=2, init={0: "loop"})},
    )
    return case, system([prog("loop", [f], obj=PROG_OBJ)], {"pa": MAP0})


def test_self_tail_call_loop_runs_34_times():
    (out,) = run1(*tail_loop())
    assert out.status is Status.OK, out.detail
    assert out.retval == 77
    tc = [e for e in out.events if e.kind == "tail_call"]
    # MAX_TAIL_CALL_CNT = 33: attempts see counters 0..32 and are taken; the
    # 34th execution's attempt sees 33 and falls through.
    expected = [(0, n, "loop") for n in range(33)] + [(0, 33, None)]
    assert [e.data for e in tc] == expected
    assert {e.where for e in tc} == {Where("loop", "main", 3)}
    assert out.tail_calls == 33
    assert out.events[-1].kind == "exit"
    assert out.violations == []


def test_empty_slot_falls_through_and_update_fills_it():
    case, native = tail_loop()
    case.maps["pa"].init = {}
    case.steps = [
        Step("run", program="loop"),
        Step("update", map="pa", key=0, value="loop"),
        Step("run", program="loop"),
        Step("delete", map="pa", key=0),
        Step("run", program="loop"),
    ]
    first, second, third = run1(case, native)
    assert [e.data for e in first.events if e.kind == "tail_call"] == [(0, 0, None)]
    assert second.tail_calls == 33
    assert third.tail_calls == 0 and third.retval == 77


def test_counter_above_the_profile_limit_is_a_violation():
    # the image allows 33; a profile allowing 32 sees counter 33 at the last attempt
    (out,) = run1(*tail_loop(), profile=LINUX.but(max_tail_calls=32))
    assert out.tail_calls == 33
    bad = [v for v in out.violations if v.oracle == "tail_calls"]
    assert len(bad) == 1 and bad[0].where == Where("loop", "main", 3) and "33" in bad[0].detail


def test_off_by_one_limit_check_traps_on_the_pointer_heuristic():
    # `ja` for `jae` in the limit check lets a 34th tail call through; it
    # enters with rax = 34, which the 6.18 prologue takes for a counter
    # POINTER (rax > 33), so the next attempt dereferences address 34
    case, native = tail_loop()
    f = native.progs["loop"].funcs[0]
    code = bytearray(f.code)
    at = code.index(bytes.fromhex("48833821") + b"\x73")  # cmp qword [rax], 33; jae
    code[at + 4] = 0x77  # ja
    f.code = bytes(code)
    (out,) = run1(case, native)
    assert out.tail_calls == 34
    assert [e.data for e in out.events if e.kind == "tail_call"][-1] == (0, 33, "loop")
    assert out.status is Status.TRAPPED
    assert (out.where.prog, out.where.pc) == ("loop", 3)
    assert "UC_ERR_READ_UNMAPPED" in out.detail and "tail call attempt" in out.detail


# ---- exceptions --------------------------------------------------------------------


def test_bpf_throw_unwinds_to_main_and_runs_the_callback():
    # main: r6 = r1; r7 = *(u32 *)(r1 + 8); r1 = r7; call f1; r0 = 1; exit
    # f1:   if r1 <= 60 goto +3; r1 *= 100; r1 += 7; bpf_throw(r1); r0 = 0; exit
    # cb:   r0 = r1; r0 &= 0xffff; exit
    insns = [
        movx(6, 1), Insn(isa.LDX | isa.MEM | isa.W, 7, 1, 8), movx(1, 7),
        Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, 2), mov64(0, 1), EXIT_INSN,
        Insn(isa.JMP | isa.JLE | isa.K, 1, 0, 3, 60),
        Insn(isa.ALU64 | isa.MUL | isa.K, 1, 0, 0, 100), add64(1, 7),
        call_helper(1, src=isa.PSEUDO_KFUNC_CALL), mov64(0, 0), EXIT_INSN,
        movx(0, 1), Insn(isa.ALU64 | isa.AND | isa.K, 0, 0, 0, 0xFFFF), EXIT_INSN,
    ]  # fmt: skip
    f1_addr, cb_addr = CODE + 0x400, CODE + 0x800
    boundary = PLAIN + "; push r12; push rbx; push r13; push r14; push r15"
    main = asm_func(
        "main", 0, CODE, boundary,
        ["mov rbx, rdi", "mov r13d, dword ptr [rdi + 8]", "mov rdi, r13", f"call {f1_addr:#x}",
         "mov eax, 1", f"pop r15; pop r14; pop r13; pop rbx; pop r12; {EXIT}"],
    )  # fmt: skip
    f1 = asm_func(
        "f1", 6, f1_addr, PLAIN,
        ["cmp rdi, 60; jbe Lslot4", "imul rdi, rdi, 100", "add rdi, 7", f"call {BPF_THROW:#x}",
         "xor eax, eax", EXIT],
    )  # fmt: skip
    cb = asm_func(
        "cb", 12, cb_addr,
        f"{NOP5}; nop dword ptr [rax]; mov rsp, rsi; mov rbp, rdx;"
        "pop r15; pop r14; pop r13; pop rbx; pop r12; mov rsp, rbp",
        ["mov rax, rdi", "and rax, 0xffff", EXIT],
    )  # fmt: skip
    native = system([prog("p", [main, f1, cb], exception_callback=2, exception_boundary=True)])
    program = Program("p", "sched_cls", insns, labels={6: "f1", 12: "cb"}, exception_callback="cb")
    ctx = struct.pack("<QQ", 0, 61)
    (out,) = run1(Case({"p": program}, ctx=ctx), native)
    assert out.status is Status.OK, out.detail
    assert out.retval == 6107  # (61 * 100 + 7) & 0xffff
    assert [(e.kind, e.where, e.data[:1]) for e in out.events] == [
        ("call", Where("p", "main", 3), ("f1",)),
        ("throw", Where("p", "f1", 9), (6107,)),
        ("exit", Where("p", "main", 0), (6107,)),
    ]
    assert out.violations == []
    # below the threshold nothing throws: f1 returns 0, main returns 1
    (out,) = run1(Case({"p": program}, ctx=struct.pack("<QQ", 0, 60)), native)
    assert out.retval == 1 and [e.kind for e in out.events] == ["call", "ret", "exit"]


# ---- faults, budget, memory --------------------------------------------------------


def one_insn_prog(text: str):
    f = asm_func("main", 0, CODE, PLAIN, [text, EXIT])
    return Case({"p": Program("p", "raw_tp", [mov64(0, 0), EXIT_INSN])}), system([prog("p", [f])])


def test_write_into_code_is_a_memory_violation():
    (out,) = run1(*one_insn_prog(f"movabs rax, {CODE:#x}; mov qword ptr [rax], 0"))
    mem = [v for v in out.violations if v.oracle == "memory"]
    assert mem and mem[0].where.prog == "p" and mem[0].where.pc == 0
    assert "code of p:main" in mem[0].detail
    assert out.status is Status.TRAPPED  # code is mapped read-only+exec
    assert "UC_ERR_WRITE_PROT" in out.detail


def test_ctx_is_read_only():
    # a write to ctx is not a fault (the page is writable for conformance
    # programs) but the memory oracle reports it
    (out,) = run1(*one_insn_prog("mov qword ptr [rdi], 1"))
    assert any(v.oracle == "memory" and "ctx" in v.detail for v in out.violations)


def test_infinite_loop_exhausts_the_budget():
    (out,) = run1(*one_insn_prog("Lspin: jmp Lspin"), budget=1000)
    assert out.status is Status.BUDGET
    assert out.where is not None and (out.where.prog, out.where.pc) == ("p", 0)
    assert out.steps == 1000


def test_jump_to_unmapped_address_traps_with_a_where():
    target = 0xFFFF_FFFF_C0FF_0000
    (out,) = run1(*one_insn_prog(f"movabs rax, {target:#x}; jmp rax"))
    assert out.status is Status.TRAPPED
    assert "UC_ERR_FETCH_UNMAPPED" in out.detail
    assert out.where is not None and out.where.prog == "p" and out.where.address == target


def test_garbage_left_by_a_helper_is_not_a_valid_pointer():
    # rdi after a helper call is garbage (caller-saved): dereferencing it traps
    f = asm_func("main", 0, CODE, PLAIN, [f"call {HELPER_UPDATE:#x}", "mov rax, [rdi]", EXIT])
    native = system([prog("p", [f])], {"m": MAP0})
    case = Case(
        {"p": Program("p", "raw_tp", [call_helper(2), mov64(0, 0), EXIT_INSN])},
        maps={"m": MapDef("m", "array", 1, 8)},
    )
    (out,) = run1(case, native)
    assert out.status is Status.TRAPPED
    assert out.where == Where("p", "main", 1, out.where.address)


def test_ctx_is_passed_in_rdi():
    (out,) = run1(*one_insn_prog("mov rax, rdi"))
    assert out.retval == CTX_ADDR


# ---- private-stack guards ------------------------------------------------------------

#: one private stack of 64 bytes as the kernel allocates it: 8 bytes of
#: overflow guard, the frame, 8 bytes of underflow guard; the JIT's frame
#: pointer is priv_stack_ptr + 8 + 64, the underflow guard's address
PRIV = 0xFFFF_8881_2000_0000
PRIV_SIZE = 8 + 64 + 8
PRIV_FP = PRIV + 8 + 64
THIS_CPU_OFF = 0xFFFF_FFFF_8200_0000
#: PRIV_STACK_GUARD_VAL of arch/x86/net/bpf_jit_comp.c
GUARD = 0xEB9F12345678EB9F


def private_stack_prog(store: str):
    """raw_tp main with a private stack: r10 is r9; ``store`` writes rdi somewhere."""
    pro = f"{PLAIN}; movabs r9, {PRIV_FP:#x}; add r9, qword ptr gs:[{THIS_CPU_OFF & 0xFFFFFFFF:#x}]"
    f = asm_func("main", 0, CODE, pro, [store, "xor eax, eax", EXIT], private_stack=True)
    native = system([prog("p", [f])])
    native.this_cpu_off = THIS_CPU_OFF
    native.percpu_regions = [(PRIV, PRIV_SIZE)]
    native.private_stacks = [(PRIV, PRIV_SIZE)]
    case = Case({"p": Program("p", "raw_tp", [mov64(0, 0), mov64(0, 0), EXIT_INSN])})
    return case, native


def guard_violations(out):
    return [v for v in out.violations if v.oracle == "stack"]


def test_guards_sit_around_the_frame_and_survive_a_clean_run():
    case, native = private_stack_prog("mov qword ptr [r9 - 64], rdi")  # the deepest slot
    ex = Executor()
    (out,) = ex.run_case(case, native)
    assert out.status is Status.OK and not out.violations
    assert ex.read(PRIV, 8) == GUARD.to_bytes(8, "little")
    assert ex.read(PRIV_FP, 8) == GUARD.to_bytes(8, "little")
    assert ex.read(PRIV_FP - 64, 8) == CTX_ADDR.to_bytes(8, "little")


@pytest.mark.parametrize(
    ("store", "side"),
    [("mov qword ptr [r9 - 72], rdi", "overflow"), ("mov byte ptr [r9], dil", "underflow")],
)
def test_a_clobbered_guard_is_reported_once_with_its_side_and_writer(store, side):
    case, native = private_stack_prog(store)
    (out,) = run1(case, native)
    assert out.status is Status.OK and out.retval == 0  # nothing the program reads changed
    (v,) = guard_violations(out)
    assert v.detail.startswith(f"private stack {side} guard clobbered")
    assert (v.where.prog, v.where.pc) == ("p", 0)


def test_a_write_past_the_underflow_guard_hits_memory_no_frame_owns():
    case, native = private_stack_prog("mov qword ptr [r9 + 8], rdi")
    (out,) = run1(case, native)
    assert not guard_violations(out)
    mem = [v for v in out.violations if v.oracle == "memory"]
    assert mem and "no BPF frame owns" in mem[0].detail and mem[0].where.pc == 0


def test_guards_are_planted_again_before_every_run():
    case, native = private_stack_prog("mov qword ptr [r9 - 72], rdi")
    case = Case(case.programs, steps=[Step("run", "p"), Step("run", "p")])
    first, second = run1(case, native)
    assert len(guard_violations(first)) == len(guard_violations(second)) == 1


# ---- writes below every frame ------------------------------------------------------


def sub_rsp(n: int) -> str:
    """The JIT's sub rsp, imm32 (keystone would pick the imm8 form)."""
    return ".byte 0x48, 0x81, 0xec, " + ", ".join(str(b) for b in n.to_bytes(4, "little"))


def below_rsp_prog(prologue_tail: str, store: str):
    # the kernel's nop3 (keystone makes `nop dword ptr [rax]` a prefetch)
    pro = f"{NOP5}; .byte 0x0f, 0x1f, 0x00; push rbp; mov rbp, rsp; {prologue_tail}"
    f = asm_func("main", 0, CODE, pro, [store, "xor eax, eax", EXIT])
    case = Case({"p": Program("p", "raw_tp", [mov64(0, 0), mov64(0, 0), EXIT_INSN])})
    return case, system([prog("p", [f])])


def test_a_write_below_rsp_is_reported():
    # push rbp; mov rbp, rsp; nothing allocated: [rsp - 64] belongs to no frame
    (out,) = run1(*below_rsp_prog("nop", "mov qword ptr [rsp - 64], rdi"))
    assert out.status is Status.OK
    (v,) = guard_violations(out)
    assert v.detail.startswith("write below every frame")
    assert "57 bytes below" in v.detail  # the highest byte written: rsp - 57


def test_a_frame_larger_than_its_allocation_is_reported():
    # sub rsp, 8 but the body stores at rbp - 72: 64 bytes below the frame
    (out,) = run1(*below_rsp_prog(sub_rsp(8), "mov qword ptr [rbp - 72], rdi"))
    assert [v.detail.split(":")[0] for v in guard_violations(out)] == ["write below every frame"]


def test_writes_inside_the_frame_are_not_reported():
    (out,) = run1(*below_rsp_prog(sub_rsp(72), "mov qword ptr [rbp - 72], rdi"))
    assert out.status is Status.OK and not out.violations
