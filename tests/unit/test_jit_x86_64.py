"""The x86-64 JIT model against the real 6.18 JIT's bytes.

Expected code is transcribed from /work/shared/notes/kernel-6.18-x86-jit-listings.txt
one instruction per line. Bytes that encode an address are written as a
relocation, ``{rel:SYM}`` (rel32 to SYM, ending the instruction) or ``{abs:SYM}``
/ ``{abs32:SYM}`` (an 8/4-byte absolute value), and checked against where the
model placed SYM; everything else must be identical.
"""

from __future__ import annotations

import pytest
from bpf_builder import (
    alu,
    alur,
    call,
    exit_,
    expect_code,
    jmp,
    kfunc,
    ld_map,
    ldx,
    mov,
    movr,
    pcall,
    prog,
    stx,
)

from harness.formats import isa
from harness.formats.isa import Insn
from harness.jit import FAULTS, Variant, apply_patches, compile_system, listing, poke_transition
from harness.jit.x86_64 import THIS_CPU_OFF, symbol_address
from harness.system import Case, MapDef, Program


def ret(name, value):
    return prog(name, mov(0, value), exit_())


# ---- expected-bytes matcher ---------------------------------------------------------


PROLOGUE_MAIN_TC = "0f1f440000 4831c0 55 4889e5"
TCC_MAIN = "4883f821 7706 50 4889e0 eb01 50 50"
RET = "c9 e9{rel:return_thunk}"


# ---- listing 1: direct tail call, empty / filled / deleted slot ---------------------


def direct_case(slot_init=None):
    p1 = prog("p1", ld_map(2, 0), mov(3, 1), call(12), mov(0, 100), exit_())
    jt = MapDef("jt", "prog_array", 4, init={1: slot_init} if slot_init else {})
    return Case({"p1": p1, "p2": ret("p2", 2), "p3": ret("p3", 3)}, {"jt": jt})


DIRECT_HEAD = f"""{PROLOGUE_MAIN_TC} {TCC_MAIN}
48be{{abs:map:jt}} ba01000000
488b85f0ffffff 48833821 7310"""
DIRECT_EMPTY = f"{DIRECT_HEAD} e90b000000 48830001 58 58 0f1f440000 b864000000 {RET}"
DIRECT_P2 = f"{DIRECT_HEAD} 0f1f440000 48830001 58 58 e9{{rel:entry:p2}} b864000000 {RET}"
DIRECT_P3 = f"{DIRECT_HEAD} 0f1f440000 48830001 58 58 e9{{rel:entry:p3}} b864000000 {RET}"


def test_direct_tail_call_empty_slot():
    s = compile_system(direct_case())
    expect_code(s, "p1", 0, DIRECT_EMPTY)
    (site,) = s.pokes
    base = s.progs["p1"].funcs[0].address
    assert (site.prog, site.pc, site.map, site.key) == ("p1", 3, "jt", 1)
    assert (site.bypass - base, site.target - base, site.out - base) == (0x36, 0x41, 0x46)
    f = s.progs["p1"].funcs[0]
    assert [a - base for a in f.insn_addrs] == [0x1A, 0x1A, 0x24, 0x29, 0x46, 0x4B]
    assert f.epilogue == base + 0x4B
    assert s.progs["p1"].tail_call_entry == base + 12


def test_direct_tail_call_filled_at_load():
    s = compile_system(direct_case("p2"))
    expect_code(s, "p1", 0, DIRECT_P2)


def test_poke_transitions_follow_the_seed_001_protocol():
    s = compile_system(direct_case())
    (site,) = s.pokes
    nop5 = bytes.fromhex("0f1f440000")
    # nop -> nop: nothing
    assert poke_transition(s, site, None, None) == []
    # nop -> jmp: target first, then the bypass into nop5
    p = poke_transition(s, site, None, "p2")
    assert [a for a, _ in p] == [site.target, site.bypass]
    assert p[1][1] == nop5
    apply_patches(s, p)
    expect_code(s, "p1", 0, DIRECT_P2)
    # jmp -> jmp: target only
    p = poke_transition(s, site, "p2", "p3")
    assert [a for a, _ in p] == [site.target]
    apply_patches(s, p)
    expect_code(s, "p1", 0, DIRECT_P3)
    # jmp -> nop: bypass into jmp out first, then the target into nop5
    p = poke_transition(s, site, "p3", None)
    assert p == [(site.bypass, bytes.fromhex("e90b000000")), (site.target, nop5)]
    apply_patches(s, p)
    expect_code(s, "p1", 0, DIRECT_EMPTY)  # "after map_delete: reverted"


# ---- listing 2: indirect tail call --------------------------------------------------


def indirect_case():
    p = prog("p", ldx(isa.DW, 6, 1, 8), ld_map(2, 0), movr(3, 6), call(12), mov(0, 77), exit_())
    return Case({"p": p}, {"jt": MapDef("jt", "prog_array", 4)})


INDIRECT = f"""{PROLOGUE_MAIN_TC} {TCC_MAIN} 53
488b5f08 48be{{abs:map:jt}} 4889da
89d2 39564c 762e 488b85f0ffffff 48833821 7321 488b8cd638010000 4885c9 7414
48830001 5b 58 58 488b4948 4883c10c e9{{rel:thunk:rcx}}
b84d000000 5b {RET}"""


def test_indirect_tail_call():
    s = compile_system(indirect_case())
    expect_code(s, "p", 0, INDIRECT)
    assert s.pokes == []
    assert set(s.symbols.values()) == {"return_thunk", "thunk:rcx"}


# ---- listing 3: main + subprog that tail-calls (tcc_ptr in rax) ----------------------


def subprog_case():
    main = [*movr(6, 1), *pcall(2), *alu(isa.ADD, 0, 1000), *exit_()]
    sub = [
        *stx(isa.DW, 10, 1, -8),
        *ldx(isa.DW, 7, 1, 8),
        *ld_map(2, 0),
        *movr(3, 7),
        *call(12),
        *mov(0, 55),
        *exit_(),
    ]
    p = Program("p", "sched_cls", main + sub, {0: "main", 4: "sub"})
    return Case({"p": p}, {"jt": MapDef("jt", "prog_array", 4)})


SUB_MAIN = f"""{PROLOGUE_MAIN_TC} {TCC_MAIN} 53 4889fb
488b85f0ffffff e8{{rel:func:p:1}} 4805e8030000 5b {RET}"""
SUB_SUB = f"""0f1f440000 0f1f00 55 4889e5 4881ec08000000 50 50 4155
48897df8 4c8b6f08 48be{{abs:map:jt}} 4c89ea
89d2 39564c 7636 488b85e8ffffff 48833821 7329 488b8cd638010000 4885c9 741c
48830001 415d 58 58 4881c408000000 488b4948 4883c10c e9{{rel:thunk:rcx}}
b837000000 415d {RET}"""


def test_subprog_tail_call_shares_the_counter_pointer():
    s = compile_system(subprog_case())
    expect_code(s, "p", 0, SUB_MAIN)
    expect_code(s, "p", 1, SUB_SUB)
    f0, f1 = s.progs["p"].funcs
    assert (f0.name, f1.name, f1.start_pc, f1.stack_depth) == ("main", "sub", 4, 8)
    assert f1.address - f0.address >= 0x1000 and f1.address % 0x1000 == 0


# ---- listing 4: raw_tp, stack 96: private stack, r9 saved around calls ---------------

OFFS = [-8 * k for k in range(1, 13)]


def priv_case(with_tail_call=False):
    parts = [ldx(isa.DW, 6, 1, 0)]
    parts += [stx(isa.DW, 10, 6, o) for o in OFFS]
    parts += [call(5), mov(0, 0)]
    for o in OFFS:
        parts += [ldx(isa.DW, 3, 10, o), alur(isa.ADD, 0, 3)]
    parts.append(exit_())
    return Case({"p": prog("p", *parts, type="raw_tp")})


def b(x):
    return f"{x & 0xFF:02x}"


PRIV = (
    "0f1f440000 0f1f00 55 4889e5 53 49b9{abs:privfp:0} 654c030c25{abs32:this_cpu_off} 488b5f00 "
    + " ".join(f"498959{b(o)}" for o in OFFS)
    + " 4151 e8{rel:helper:5} 4159 31c0 "
    + " ".join(f"498b51{b(o)} 4801d0" for o in OFFS)
    + f" 5b {RET}"
)


def test_private_stack_frame_pointer_in_r9():
    s = compile_system(priv_case())
    expect_code(s, "p", 0, PRIV)
    f = s.progs["p"].funcs[0]
    assert f.private_stack and f.stack_depth == 96
    assert s.this_cpu_off == THIS_CPU_OFF
    ((base, size),) = s.percpu_regions
    assert size == 96 + 16


def test_private_stack_pushes_r9_around_helper_calls():
    code = compile_system(priv_case()).progs["p"].funcs[0].code
    helper = symbol_address("helper:5")
    i = code.index(bytes.fromhex("4151e8"))
    assert code[i + 7 : i + 9] == bytes.fromhex("4159")
    assert code.count(bytes.fromhex("4151")) == 1 and code.count(bytes.fromhex("4159")) == 1
    assert helper in compile_system(priv_case()).symbols


def test_private_stack_threshold_is_rounded_depth_16():
    # 56 bytes round up to 64 >= 64: private (the kernel compares round_up(depth, 16))
    small = Case({"p": prog("p", stx(isa.DW, 10, 1, -56), mov(0, 0), exit_(), type="raw_tp")})
    assert compile_system(small).progs["p"].funcs[0].private_stack
    tiny = Case({"p": prog("p", stx(isa.DW, 10, 1, -48), mov(0, 0), exit_(), type="raw_tp")})
    assert not compile_system(tiny).progs["p"].funcs[0].private_stack
    cls = Case({"p": prog("p", stx(isa.DW, 10, 1, -96), mov(0, 0), exit_())})
    assert not compile_system(cls).progs["p"].funcs[0].private_stack


# ---- listing 5: raw_tp, stack 96 and a tail call: no private stack -------------------


def priv_tc_case():
    parts = [movr(6, 1)] + [stx(isa.DW, 10, 6, o) for o in OFFS]
    parts += [ld_map(2, 0), mov(3, 0), call(12), mov(0, 9), exit_()]
    return Case({"p": prog("p", *parts, type="raw_tp")}, {"jt": MapDef("jt", "prog_array", 2)})


PRIV_TC = (
    f"{PROLOGUE_MAIN_TC} 4881ec60000000 {TCC_MAIN} 53 4889fb "
    + " ".join(f"48895d{b(o)}" for o in OFFS)
    + " 48be{abs:map:jt} 31d2 488b8590ffffff 48833821 7318 e913000000 48830001 5b 58 58"
    + f" 4881c460000000 0f1f440000 b809000000 5b {RET}"
)


def test_tail_calls_disable_the_private_stack():
    s = compile_system(priv_tc_case())
    expect_code(s, "p", 0, PRIV_TC)
    assert not s.progs["p"].funcs[0].private_stack
    assert s.percpu_regions == [] and s.this_cpu_off == 0


# ---- listing 6: exception boundary, throwing subprog, callback -----------------------


def exc_case(with_cb=True):
    main = [*movr(6, 1), *ldx(isa.W, 7, 1, 0x70), *movr(1, 7), *pcall(2), *mov(0, 1), *exit_()]
    sub = [
        *jmp(isa.JLE, 1, 60, 3),
        *alu(isa.MUL, 1, 100),
        *alu(isa.ADD, 1, 7),
        *kfunc(1),
        *mov(0, 0),
        *exit_(),
    ]
    cb = [*movr(0, 1), *alu(isa.AND, 0, 0xFFFF), *exit_()]
    insns = main + sub + (cb if with_cb else [])
    labels = {0: "main", 6: "throwing"}
    if with_cb:
        labels[12] = "cb"
    p = Program("p", "sched_cls", insns, labels, "cb" if with_cb else None)
    return Case({"p": p})


EXC_MAIN = f"""0f1f440000 0f1f00 55 4889e5 4154 53 4155 4156 4157
4889fb 448b6f70 4c89ef e8{{rel:func:p:1}} b801000000 415f 415e 415d 5b 415c {RET}"""
EXC_SUB = f"""0f1f440000 0f1f00 55 4889e5 4883ff3c 760d 486bff64 4883c707
e8{{rel:kfunc:1}} 31c0 {RET}"""
CB_PROLOGUE = "0f1f440000 0f1f00 4889f4 4889d5 415f 415e 415d 5b 415c 4889ec"
EXC_CB = f"{CB_PROLOGUE} 4889f8 4825ffff0000 {RET}"


def test_exception_boundary_and_callback():
    s = compile_system(exc_case())
    expect_code(s, "p", 0, EXC_MAIN)
    expect_code(s, "p", 1, EXC_SUB)
    expect_code(s, "p", 2, EXC_CB)
    p = s.progs["p"]
    assert p.exception_boundary and p.exception_callback == 2


def test_default_exception_callback_is_appended():
    s = compile_system(exc_case(with_cb=False))
    p = s.progs["p"]
    assert len(p.funcs) == 3 and p.exception_callback == 2
    expect_code(s, "p", 2, f"{CB_PROLOGUE} 4889f8 {RET}")  # r0 = r1 (the cookie); exit
    assert p.funcs[2].start_pc == 12 and len(p.funcs[2].insn_addrs) == 2


# ---- faults -------------------------------------------------------------------------


def diff(a: bytes, b: bytes) -> list[tuple[int, int, int]]:
    assert len(a) == len(b)
    return [(k, x, y) for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


DEFAULT = Variant()


def code_of(case, variant=DEFAULT, p="p", k=0):
    return compile_system(case, variant=variant).progs[p].funcs[k].code


def test_fault_tcc_limit_off_by_one_turns_jae_into_ja():
    v = Variant().with_faults("tcc-limit-off-by-one")
    assert diff(code_of(indirect_case()), code_of(indirect_case(), v)) == [(0x3E, 0x73, 0x77)]
    good, bad = code_of(direct_case(), p="p1"), code_of(direct_case(), v, p="p1")
    assert diff(good, bad) == [(0x34, 0x73, 0x77)]


def test_fault_missing_pop_drops_one_pop_on_the_tail_call_path_only():
    good, bad = (
        code_of(indirect_case()),
        code_of(indirect_case(), Variant().with_faults("missing-pop")),
    )
    assert len(bad) == len(good) - 1
    assert bytes.fromhex("48830001 5b 58 58") in good
    assert bytes.fromhex("48830001 58 58 488b4948") in bad
    assert bytes.fromhex("b84d0000005bc9") in bad  # exit path still pops rbx


def test_fault_tcc_by_value_passes_the_count_not_the_pointer():
    v = Variant().with_faults("tcc-by-value")
    s = compile_system(subprog_case(), variant=v)
    main, sub = (f.code for f in s.progs["p"].funcs)
    assert bytes.fromhex("488b85f0ffffff 488b00 e8") in main
    prologue = bytes.fromhex("0f1f440000 0f1f00 55 4889e5 4881ec08000000 50 4889e0 50 4155")
    assert sub.startswith(prologue)
    # nothing else changes: the tail-call sequence still goes through the slot
    assert bytes.fromhex("488b85e8ffffff 48833821") in sub


def test_fault_r9_not_saved():
    code = code_of(priv_case(), Variant().with_faults("r9-not-saved"))
    assert bytes.fromhex("4151") not in code and bytes.fromhex("4159") not in code
    assert len(code) == len(code_of(priv_case())) - 4


def test_fault_stale_poke_leaves_the_target_on_jmp_to_jmp():
    s = compile_system(direct_case("p2"))
    (site,) = s.pokes
    v = Variant().with_faults("stale-poke")
    assert poke_transition(s, site, "p2", "p3", v) == []
    assert poke_transition(s, site, "p2", "p3") != []
    # the other transitions are unaffected
    assert poke_transition(s, site, "p2", None, v) == poke_transition(s, site, "p2", None)


def test_unknown_fault_is_rejected():
    with pytest.raises(ValueError):
        Variant(faults=frozenset({"no-such-bug"}))
    assert set(FAULTS) >= {
        "tcc-limit-off-by-one",
        "missing-pop",
        "tcc-by-value",
        "r9-not-saved",
        "stale-poke",
    }


# ---- verifier model rules ------------------------------------------------------------


def test_key_is_constant_only_in_the_same_straight_line_region():
    # r3 = 1; if r1 == 0 goto call; r3 = 2; call 12: the call is a jump target -> indirect
    p = prog(
        "p", ld_map(2, 0), mov(3, 1), jmp(isa.JEQ, 1, 0, 1), mov(3, 2), call(12), mov(0, 0), exit_()
    )
    s = compile_system(Case({"p": p}, {"jt": MapDef("jt", "prog_array", 4)}))
    assert s.pokes == [] and bytes.fromhex("89d239564c") in s.progs["p"].funcs[0].code
    # a key beyond max_entries is poisoned by the verifier -> indirect
    p = prog("p", ld_map(2, 0), mov(3, 4), call(12), mov(0, 0), exit_())
    s = compile_system(Case({"p": p}, {"jt": MapDef("jt", "prog_array", 4)}))
    assert s.pokes == []
    # a helper call between the key and the tail call clobbers r3 -> indirect
    p = prog("p", mov(3, 1), call(5), ld_map(2, 0), call(12), mov(0, 0), exit_())
    s = compile_system(Case({"p": p}, {"jt": MapDef("jt", "prog_array", 4)}))
    assert s.pokes == []


def test_jumps_grow_to_rel32_beyond_123_bytes():
    body = [alu(isa.ADD, 0, 1)] * 40  # 4 bytes each
    p = prog("p", mov(0, 0), jmp(isa.JEQ, 1, 0, 40), *body, exit_())
    code = code_of(Case({"p": p}))
    assert bytes.fromhex("4883ff00") not in code  # imm 0 compares with test
    i = code.index(bytes.fromhex("4885ff"))
    assert code[i + 3 : i + 5] == bytes.fromhex("0f84") and code[i + 5] == 160
    p = prog("p", mov(0, 0), jmp(isa.JEQ, 1, 0, 2), *body[:2], exit_())
    code = code_of(Case({"p": p}))
    i = code.index(bytes.fromhex("4885ff"))
    assert code[i + 3 : i + 5] == bytes.fromhex("7408")


def test_exits_after_the_first_jump_to_the_shared_epilogue():
    p = prog("p", jmp(isa.JEQ, 1, 0, 2), mov(0, 1), exit_(), mov(0, 2), exit_())
    s = compile_system(Case({"p": p}))
    f = s.progs["p"].funcs[0]
    code = f.code
    # second exit: jmp back to the first exit's pop/leave
    assert code.endswith(bytes([0xEB, (f.epilogue - (f.address + len(code))) & 0xFF]))


def test_div_by_register_gets_the_verifier_zero_check():
    p = prog("p", mov(0, 10), alur(isa.DIV, 0, 1), exit_())
    f = compile_system(Case({"p": p})).progs["p"].funcs[0]
    start = f.insn_addrs[1] - f.address
    # if r1 != 0 goto +2; w0 ^= w0; goto +1; r0 /= r1 (div keeps rax/rdx live: push rdx)
    assert f.code[start:].startswith(bytes.fromhex("4885ff 7504 31c0 eb07 52 31d2 48f7f7 5a"))


def test_shift_by_register_uses_bmi2_or_rcx():
    p = prog("p", mov(0, 1), alur(isa.LSH, 0, 2), exit_())
    assert bytes.fromhex("c4e2c9f7c0") in code_of(Case({"p": p}))  # shlx rax, rax, rsi
    nob = code_of(Case({"p": p}), Variant(bmi2=False))
    assert bytes.fromhex("51 4889f1 48d3e0 59") in nob


def test_listing_interleaves_bpf_and_native_code():
    case = direct_case("p2")
    text = listing(compile_system(case), case)
    assert "return_thunk" in text and "poke target jt[1]" in text
    assert "p2 (tail-call entry)" in text
    assert text.count("; 3:") == 1


def test_map_value_address_is_array_value_plus_offset():
    lo, hi = isa.ld_imm64(1, 0, isa.PSEUDO_MAP_VALUE)
    hi = Insn(0, 0, 0, 0, 16)  # second slot imm = offset into the value area
    p = prog("p", [lo, hi], ldx(isa.DW, 0, 1, 0), exit_())
    s = compile_system(Case({"p": p}, {"m": MapDef("m", "array", 4, 8)}))
    code = s.progs["p"].funcs[0].code
    assert bytes.fromhex("48bf") + (s.maps["m"] + 0x138 + 16).to_bytes(8, "little") in code


def _every_kind_of_insn() -> list[Insn]:
    out: list[Insn] = []
    regs = (0, 1, 3, 4, 5, 6, 9)
    for c in (isa.ALU, isa.ALU64):
        for op in (
            isa.ADD,
            isa.SUB,
            isa.MUL,
            isa.OR,
            isa.AND,
            isa.LSH,
            isa.RSH,
            isa.XOR,
            isa.ARSH,
            isa.DIV,
            isa.MOD,
        ):
            for d in regs:
                imm = 3 if op in (isa.LSH, isa.RSH, isa.ARSH) else 1000
                out.append(Insn(c | op | isa.K, d, 0, 0, imm))
                out.append(Insn(c | op | isa.K, d, 0, 0, 1 if op not in (isa.DIV, isa.MOD) else 7))
                for s_ in regs:
                    out.append(Insn(c | op | isa.X, d, s_, 0, 0))
            if op in (isa.DIV, isa.MOD):
                out.append(Insn(c | op | isa.X, 2, 7, 1, 0))  # signed
                out.append(Insn(c | op | isa.K, 2, 0, 1, -1))
        out.append(Insn(c | isa.NEG, 7))
        for bits in (16, 32, 64):
            out.append(Insn(c | isa.END | isa.TO_BE, 8, 0, 0, bits))
            out.append(Insn(c | isa.END | isa.TO_LE, 5, 0, 0, bits))
    for d in regs:
        out.append(Insn(isa.ALU64 | isa.MOV | isa.X, d, 9, 8))
        out.append(Insn(isa.ALU64 | isa.MOV | isa.X, d, 1, 32))
        out.append(Insn(isa.ALU | isa.MOV | isa.X, d, 5, 16))
        out.append(Insn(isa.ALU64 | isa.MOV | isa.K, d, 0, 0, -5))
        out += list(isa.ld_imm64(d, 0x123456789))
    for size in (isa.B, isa.H, isa.W, isa.DW):
        out.append(Insn(isa.STX | isa.MEM | size, 10, 1, -16))
        out.append(Insn(isa.STX | isa.MEM | size, 10, 2, -16))  # sil
        out.append(Insn(isa.ST | isa.MEM | size, 10, 0, -300, 7))
        out.append(Insn(isa.LDX | isa.MEM | size, 8, 10, -16))
        if size != isa.DW:
            out.append(Insn(isa.LDX | isa.MEMSX | size, 7, 10, -16))
    for size in (isa.W, isa.DW):
        for op in isa.ATOMIC_OPS:
            out.append(Insn(isa.STX | isa.ATOMIC | size, 10, 0 if op == isa.CMPXCHG else 3, -8, op))
            out.append(Insn(isa.STX | isa.ATOMIC | size, 10, 0, -8, op))
    return out


def test_every_instruction_kind_encodes_to_valid_x86():
    import capstone

    body = _every_kind_of_insn()
    jumps = []
    for c in (isa.JMP, isa.JMP32):
        for op in (
            isa.JEQ,
            isa.JGT,
            isa.JGE,
            isa.JSET,
            isa.JNE,
            isa.JSGT,
            isa.JSGE,
            isa.JLT,
            isa.JLE,
            isa.JSLT,
            isa.JSLE,
        ):
            jumps.append(Insn(c | op | isa.K, 6, 0, 1, -3))
            jumps.append(Insn(c | op | isa.X, 6, 7, 1, 0))
            jumps.append(mov(0, 0)[0])
    p = prog(
        "p", mov(0, 0), body, jumps, [Insn(isa.JMP32 | isa.JA, 0, 0, 0, 1)], mov(0, 1), exit_()
    )
    s = compile_system(Case({"p": p}))
    f = s.progs["p"].funcs[0]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    size = sum(i.size for i in md.disasm(f.code, f.address))
    assert size == len(f.code)
    # every BPF slot starts on an instruction boundary
    starts = {i.address for i in md.disasm(f.code, f.address)} | {f.address + len(f.code)}
    assert all(a in starts for a in f.insn_addrs)
