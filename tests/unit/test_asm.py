"""harness.formats.asm: the kernel/LLVM syntax in both directions."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import AsmError
from harness.formats import isa
from harness.formats.asm import assemble, disassemble, format_insn
from harness.formats.isa import Insn

S32 = st.integers(-(1 << 31), (1 << 31) - 1)
S16 = st.integers(-(1 << 15), (1 << 15) - 1)
REG = st.integers(0, 10)
WREG = st.integers(0, 9)  # writable: r10 is read-only
MAPS = ["jmp_table", "counts"]


# ------------------------------------------------------------ strategies


@st.composite
def _slot(draw, op: int) -> list[Insn]:
    """One valid instruction for opcode ``op`` (two slots for ld_imm64); jump
    and call targets are placeholders fixed up by ``programs``."""
    c, code, x = op & 0x07, op & 0xF0, op & isa.X
    if op == isa.LD_IMM64:
        # a pseudo func's imm is a function's pc: a random one starts no
        # function inside the program (validate refuses it)
        src = draw(st.integers(0, isa.PSEUDO_MAP_IDX_VALUE).filter(lambda s: s != isa.PSEUDO_FUNC))
        imm = draw(st.sampled_from([0, 1, 2, 5]) | S32)
        # the high word is an offset only for the map-value sources (kernel rule)
        hi_ok = src in (0, isa.PSEUDO_MAP_VALUE, isa.PSEUDO_MAP_IDX_VALUE)
        hi = draw(st.just(0) | S32) if hi_ok else 0
        return [Insn(op, draw(WREG), src, 0, imm), Insn(0, imm=hi)]
    if c in (isa.ALU, isa.ALU64):
        dst = draw(WREG)
        if code == isa.END:
            return [Insn(op, dst, imm=draw(st.sampled_from([16, 32, 64])))]
        if code == isa.NEG:
            return [Insn(op, dst)]
        off = 0
        if code in (isa.DIV, isa.MOD):
            off = draw(st.sampled_from([0, 1]))
        elif code == isa.MOV and x:
            off = draw(st.sampled_from([0, 8, 16, 32] if c == isa.ALU64 else [0, 8, 16]))
        if x:
            return [Insn(op, dst, draw(REG), off)]
        return [Insn(op, dst, 0, off, draw(S32))]
    if c in (isa.JMP, isa.JMP32):
        if op == isa.JMP | isa.EXIT:
            return [Insn(op)]
        if op == isa.JMP | isa.CALL:
            src = draw(st.sampled_from([0, 1, 2]))
            return [Insn(op, src=src, imm=0 if src == 1 else draw(st.sampled_from([1, 12]) | S32))]
        if code == isa.JA:
            return [Insn(op)]
        if x:
            return [Insn(op, draw(REG), draw(REG))]
        return [Insn(op, draw(REG), 0, 0, draw(S32))]
    if c == isa.LD:  # legacy packet loads
        src = draw(REG) if op & 0xE0 == isa.IND else 0
        return [Insn(op, 0, src, 0, draw(S32))]
    if c == isa.LDX:
        return [Insn(op, draw(WREG), draw(REG), draw(S16))]
    if c == isa.ST:
        return [Insn(op, draw(REG), 0, draw(S16), draw(S32))]
    imm = draw(st.sampled_from(sorted(isa.ATOMIC_OPS))) if op & 0xE0 == isa.ATOMIC else 0
    return [Insn(op, draw(REG), draw(REG), draw(S16), imm)]


@st.composite
def programs(draw, *, min_size: int = 1, max_size: int = 12):
    """(insns, labels): a random program that passes ``isa.validate``."""
    ops = draw(st.lists(st.sampled_from(sorted(isa.OPCODES)), min_size=min_size, max_size=max_size))
    slots: list[list[Insn]] = [draw(_slot(op)) for op in ops]
    starts, pc = [], 0
    for s in slots:
        starts.append(pc)
        pc += len(s)
    # calls first: their targets start functions, and a jump stays inside its
    # own function (check_subprogs), so jump targets are drawn after
    firsts: list[Insn] = []
    for at, s in zip(starts, slots, strict=True):
        i = s[0]
        if i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_CALL:
            i = Insn(i.opcode, src=1, imm=draw(st.sampled_from(starts)) - (at + 1))
        firsts.append(i)
    funcs = sorted({0} | {at + 1 + i.imm for at, i in zip(starts, firsts) if i.src == 1
                          and i.opcode == isa.JMP | isa.CALL})  # fmt: skip
    insns: list[Insn] = []
    for at, s, i in zip(starts, slots, firsts, strict=True):
        lo = max(f for f in funcs if f <= at)
        hi = min([f for f in funcs if f > at] + [pc])
        rel = draw(st.sampled_from([t for t in starts if lo <= t < hi])) - (at + 1)
        if isa.is_jump(i) and i.opcode == isa.JMP32 | isa.JA:
            i = Insn(i.opcode, imm=rel)
        elif isa.is_jump(i):
            i = Insn(i.opcode, i.dst, i.src, rel, i.imm)
        insns += [i, *s[1:]]
    labels = {
        p: f"L{p}" for p in draw(st.lists(st.sampled_from(starts + [len(insns)]), unique=True))
    }
    isa.validate(insns)
    return insns, labels


# ------------------------------------------------------------ round trips


@settings(max_examples=400)
@given(programs())
def test_disassemble_then_assemble_is_identity(prog):
    insns, labels = prog
    text = disassemble(insns, labels=labels, maps=MAPS)
    assert assemble(text, maps=MAPS) == (insns, labels)


@given(programs())
def test_round_trip_without_labels_or_maps(prog):
    insns, _ = prog
    assert assemble(disassemble(insns))[0] == insns


@pytest.mark.parametrize(
    "text",
    [
        "r0 = 1", "w1 += w2", "r1 = -r1", "w3 = -w3", "r1 s/= r2", "r1 s%= 3", "r1 s>>= 3",
        "r1 = (s8)r2", "r1 = (s16)r2", "r1 = (s32)r2", "w1 = (s8)w2", "r1 = be16 r1",
        "r1 = le32 r1", "r1 = bswap64 r1", "r0 = *(u64 *)(r10 - 8)", "r0 = *(s32 *)(r1 + 4)",
        "*(u32 *)(r10 - 4) = 7", "*(u8 *)(r1 + 0) = r2", "lock *(u64 *)(r1 + 0) += r2",
        "lock *(u32 *)(r1 + 0) |= w2", "lock *(u64 *)(r1 + 0) &= r2",
        "lock *(u32 *)(r1 + 0) ^= w2", "r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)",
        "w2 = atomic_fetch_or((u32 *)(r1 + 0), w2)", "r2 = atomic_fetch_and((u64 *)(r1 + 0), r2)",
        "r2 = atomic_fetch_xor((u64 *)(r1 + 0), r2)", "r2 = xchg_64(r1 + 0, r2)",
        "w2 = xchg32_32(r1 + 0, w2)", "r0 = cmpxchg_64(r1 + 0, r0, r2)",
        "w0 = cmpxchg32_32(r1 + 0, w0, w2)", "r1 = 0x1234 ll", "call bpf_tail_call",
        "call bpf_throw", "r0 = *(u8 *)skb[12]", "r0 = *(u16 *)skb[r1 + 4]", "r1 = 0x7fffffff",
        "r1 = -0x80000000", "r1 = map[#3] ll",
    ],
)  # fmt: skip
def test_canonical_forms_print_as_written(text):
    insns, _ = assemble(text + "\nexit")
    assert format_insn(insns, 0) == text


def test_encodings_match_the_kernel():
    cases = {
        "r0 = 1": Insn(0xB7, 0, 0, 0, 1),
        "w1 += w2": Insn(0x0C, 1, 2),
        "r1 s/= r2": Insn(0x3F, 1, 2, 1),
        "r1 s%= 3": Insn(0x97, 1, 0, 1, 3),
        "r1 = (s32)r2": Insn(0xBF, 1, 2, 32),
        "w1 = (s8)w2": Insn(0xBC, 1, 2, 8),
        "r1 = be16 r1": Insn(0xDC, 1, 0, 0, 16),
        "r1 = bswap64 r1": Insn(0xD7, 1, 0, 0, 64),
        "if r1 & 0x10 goto +0": Insn(0x45, 1, 0, 0, 16),
        "if w1 s< 5 goto +0": Insn(0xC6, 1, 0, 0, 5),
        "r0 = *(s32 *)(r1 + 4)": Insn(0x81, 0, 1, 4),
        "*(u32 *)(r10 - 4) = 7": Insn(0x62, 10, 0, -4, 7),
        "lock *(u32 *)(r1 + 0) |= w2": Insn(0xC3, 1, 2, 0, isa.OR),
        "r2 = atomic_fetch_add((u64 *)(r1 + 0), r2)": Insn(0xDB, 1, 2, 0, isa.ADD | isa.FETCH),
        "r0 = cmpxchg_64(r1 + 8, r0, r2)": Insn(0xDB, 1, 2, 8, isa.CMPXCHG),
        "w2 = xchg32_32(r1 - 2, w2)": Insn(0xC3, 1, 2, -2, isa.XCHG),
        "call 12": Insn(0x85, 0, 0, 0, 12),
        "call bpf_throw": Insn(0x85, 0, 2, 0, 1),
        "r0 = *(u16 *)skb[r1 + 4]": Insn(0x48, 0, 1, 0, 4),
    }
    for text, want in cases.items():
        assert assemble(text + "\nexit")[0][0] == want, text


def test_ld_imm64_takes_two_slots_and_pseudo_sources():
    text = """
        r1 = 0x1122334455667788 ll
        r2 = map[jmp_table] ll
        r3 = map_value[counts]+8 ll
        r4 = func[cb] ll
        exit
    cb:
        exit
    """
    insns, labels = assemble(text, maps=MAPS)
    assert insns[0:2] == list(isa.ld_imm64(1, 0x1122334455667788))
    assert insns[2] == Insn(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, 0)
    assert insns[4:6] == [Insn(isa.LD_IMM64, 3, isa.PSEUDO_MAP_VALUE, 0, 1), Insn(0, imm=8)]
    assert insns[6] == Insn(isa.LD_IMM64, 4, isa.PSEUDO_FUNC, 0, 9 - 7)
    assert labels == {9: "cb"}
    out = disassemble(insns, labels=labels, maps=MAPS)
    assert "r3 = map_value[counts]+8 ll" in out and "r4 = func[cb] ll" in out
    # unknown map indices stay readable and round-trip
    assert "map[#0]" in disassemble(insns)


def test_jumps_calls_and_labels():
    text = """
    main:
        if r1 > r2 goto out
        call sub
        gotol out
        goto +0
    out:
        exit
    sub:
        r0 = 2
        exit
    """
    insns, labels = assemble(text)
    assert labels == {0: "main", 4: "out", 5: "sub"}
    assert insns[0].off == 3
    assert insns[1] == Insn(0x85, 0, 1, 0, 5 - 2)
    assert insns[2] == Insn(isa.JMP32 | isa.JA, imm=1)
    out = disassemble(insns, labels=labels)
    assert out.splitlines()[:3] == ["main:", "    if r1 > r2 goto out", "    call sub"]
    bare = disassemble(insns)
    assert "call pc+3" in bare and "goto +0" in bare and "gotol +1" in bare


def test_reads_bpftool_and_llvm_spacing_and_comments():
    a, _ = assemble("r0 = *(u64 *)(r10 -8) ; bpftool\nr0 = *(u64 *)(r10 - 0x8)  # llvm\nexit")
    assert a[0] == a[1] == Insn(0x79, 0, 10, -8)


def test_first_line_offsets_error_lines():
    with pytest.raises(AsmError) as e:
        assemble("r0 = 1\n\nr0 +== 2\nexit", file="x.case", first_line=10)
    assert (e.value.file, e.value.line) == ("x.case", 12)
    assert str(e.value).startswith("x.case:12:")


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("r0 = 1\nr11 = 1\nexit", 2, "register"),
        ("r0 = 1\ngoto nowhere\nexit", 2, "unknown label"),
        ("a:\nexit\na:\nexit", 3, "already defined"),
        ("exit\nw1 += r2", 2, "register"),
        ("exit\nr1 = 0x100000000", 2, "out of range"),
        ("exit\nr0 = *(u64 *)(r10 - 40000)", 2, "out of range"),
        ("exit\nr1 = map[nope] ll", 2, "unknown map"),
        ("exit\ncall nope", 2, "unknown label"),
        ("exit\nr2 = atomic_fetch_add((u64 *)(r1 + 0), r3)", 2, "source register"),
        ("exit\nr0 = *(s64 *)(r1 + 0)", 2, "sign-extending"),
        ("exit\nfoo bar", 2, "cannot parse"),
        ("exit\nr0 = 1 @", 2, "unexpected character"),
        # validate errors point at the offending instruction's line
        ("r0 = 1\ngoto +5\nexit", 2, "outside the program"),
        ("r0 = 1\nr10 = 1\nexit", 2, "read-only"),
        ("r0 = 1\nr0 = 1\nr1 = 0 ll\ngoto -2", 4, "middle of ld_imm64"),
    ],
)
def test_errors_name_the_line(text, line, needle):
    with pytest.raises(AsmError) as e:
        assemble(text, maps=MAPS, file="t.s")
    assert (e.value.file, e.value.line) == ("t.s", line)
    assert needle in e.value.message


# ------------------------------------------------------------ capstone

capstone = pytest.importorskip("capstone")

# Capstone 5's BPF decoder predates these, so they are not cross-checked:
# the whole JMP32 class (including gotol), sign-extending loads (MEMSX),
# unconditional bswap (ALU64 | END), and atomics other than plain add (it
# prints every atomic as xadd). movsx and sdiv/smod share opcodes with
# mov/div, so they are drawn with off=0 here.
_CAPSTONE_SKIP = {
    op
    for op in isa.OPCODES
    if op & 0x07 == isa.JMP32
    or (op & 0x07 == isa.LDX and op & 0xE0 == isa.MEMSX)
    or op == isa.ALU64 | isa.END
}


def _family(text: str) -> str:
    """The capstone mnemonic our text corresponds to."""
    size = {"8": "b", "16": "h", "32": "w", "64": "dw"}
    alu = dict(zip(
        ["+=", "-=", "*=", "/=", "|=", "&=", "<<=", ">>=", "%=", "^=", "=", "s>>="],
        ["add", "sub", "mul", "div", "or", "and", "lsh", "rsh", "mod", "xor", "mov", "arsh"],
        strict=True,
    ))  # fmt: skip
    jmp = dict(zip(
        ["==", ">", ">=", "&", "!=", "s>", "s>=", "<", "<=", "s<", "s<="],
        ["jeq", "jgt", "jge", "jset", "jne", "jsgt", "jsge", "jlt", "jle", "jslt", "jsle"],
        strict=True,
    ))  # fmt: skip
    if text in ("exit",) or text.startswith("call "):
        return text.split()[0]
    if text.startswith("goto "):
        return "jmp"
    if m := re.match(r"if r\d+ (\S+) ", text):
        return jmp[m[1]]
    if text.endswith(" ll") or " = ll[" in text:
        return "lddw"
    if m := re.match(r"lock \*\(u(\d+) ", text):
        return "xadd" + size[m[1]]
    if m := re.match(r"r0 = \*\(u(\d+) \*\)skb", text):
        return "ld" + size[m[1]]
    if m := re.match(r"r\d+ = \*\(u(\d+) \*\)", text):
        return "ldx" + size[m[1]]
    if m := re.match(r"\*\(u(\d+) \*\)\(.*\) = (r?)", text):
        return ("stx" if m[2] else "st") + size[m[1]]
    if m := re.match(r"r\d+ = (be|le)(\d+) ", text):
        return m[1] + m[2]
    m = re.match(r"([rw])\d+ (\S+) (-?)", text)
    assert m, text
    name = "neg" if m[3] == "-" and re.match(r"[rw]\d+ = -[rw]", text) else alu[m[2]]
    return name + ("64" if m[1] == "r" else "")


@settings(max_examples=300)
@given(st.data())
def test_decoder_agrees_with_capstone(data):
    op = data.draw(st.sampled_from(sorted(set(isa.OPCODES) - _CAPSTONE_SKIP)))
    slots = data.draw(_slot(op))
    i = slots[0]
    if op & 0xF0 in (isa.DIV, isa.MOD, isa.MOV) and op & 0x07 in (isa.ALU, isa.ALU64):
        i = Insn(i.opcode, i.dst, i.src, 0, i.imm)
    if op & 0x07 == isa.STX and op & 0xE0 == isa.ATOMIC:
        i = Insn(i.opcode, i.dst, i.src, i.off, isa.ADD)
    if op == isa.JMP | isa.CALL:
        i = Insn(i.opcode, imm=i.imm & 0xFFFF)
    slots = [i, *slots[1:]]
    raw = isa.encode_program(slots)
    md = capstone.Cs(capstone.CS_ARCH_BPF, capstone.CS_MODE_BPF_EXTENDED)
    got = list(md.disasm(raw, 0))
    assert got, f"capstone cannot decode {raw.hex()}"
    ours = format_insn(slots, 0)
    assert got[0].mnemonic == _family(ours), (ours, got[0].mnemonic, got[0].op_str)


def test_capstone_sees_our_encoding_of_a_listing():
    insns, _ = assemble("r1 = 0x1234 ll\nif r1 > r2 goto +0\n*(u8 *)(r1 + 0) = r2\nexit")
    md = capstone.Cs(capstone.CS_ARCH_BPF, capstone.CS_MODE_BPF_EXTENDED)
    names = [i.mnemonic for i in md.disasm(isa.encode_program(insns), 0)]
    assert names == ["lddw", "jgt", "stxb", "exit"]
