"""The eBPF instruction set as a table (RFC 9669 plus the Linux extensions).

An opcode byte is composed from class | size/source | mode/op, exactly as in
``include/uapi/linux/bpf.h``; ``OPCODES`` maps every valid opcode byte to a
one-line description. ``Insn`` is one 8-byte slot; ``ld_imm64`` takes two
slots, the second with opcode 0 carrying the high 32 bits, as in the kernel.
Jump and call offsets therefore count slots, which keeps pcs identical to the
kernel's (xlated dumps, line info, verifier logs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.errors import DecodeError

__all__ = [
    "Insn",
    "OPCODES",
    "decode",
    "encode",
    "decode_program",
    "encode_program",
    "validate",
    "function_starts",
    "ld_imm64",
    "cls",
    "is_jump",
    "jump_target",
    "is_ld_imm64",
    # classes
    "LD",
    "LDX",
    "ST",
    "STX",
    "ALU",
    "JMP",
    "JMP32",
    "ALU64",
    # sizes and modes
    "W",
    "H",
    "B",
    "DW",
    "IMM",
    "ABS",
    "IND",
    "MEM",
    "MEMSX",
    "ATOMIC",
    "SIZE_BYTES",
    # sources
    "K",
    "X",
    "TO_LE",
    "TO_BE",
    # ALU ops
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "OR",
    "AND",
    "LSH",
    "RSH",
    "NEG",
    "MOD",
    "XOR",
    "MOV",
    "ARSH",
    "END",
    # JMP ops
    "JA",
    "JEQ",
    "JGT",
    "JGE",
    "JSET",
    "JNE",
    "JSGT",
    "JSGE",
    "CALL",
    "EXIT",
    "JLT",
    "JLE",
    "JSLT",
    "JSLE",
    # atomics
    "FETCH",
    "XCHG",
    "CMPXCHG",
    "ATOMIC_OPS",
    # pseudo sources
    "PSEUDO_MAP_FD",
    "PSEUDO_MAP_VALUE",
    "PSEUDO_BTF_ID",
    "PSEUDO_FUNC",
    "PSEUDO_MAP_IDX",
    "PSEUDO_MAP_IDX_VALUE",
    "PSEUDO_CALL",
    "PSEUDO_KFUNC_CALL",
    "LD_IMM64",
]

# Instruction classes (low 3 bits).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)

# Load/store size (bits 3-4) and mode (bits 5-7).
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
IMM, ABS, IND, MEM, MEMSX, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0

# Source bit (bit 3) for ALU/JMP; for END it selects the byte order.
K, X = 0x00, 0x08
TO_LE, TO_BE = 0x00, 0x08

# ALU operations (bits 4-7).
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
NEG, MOD, XOR, MOV, ARSH, END = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0

# Jump operations (bits 4-7).
JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
CALL, EXIT, JLT, JLE, JSLT, JSLE = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0

# Atomic operations live in imm.
FETCH = 0x01
XCHG = 0xE0 | FETCH
CMPXCHG = 0xF0 | FETCH
ATOMIC_OPS = {
    ADD: "add",
    OR: "or",
    AND: "and",
    XOR: "xor",
    ADD | FETCH: "fetch_add",
    OR | FETCH: "fetch_or",
    AND | FETCH: "fetch_and",
    XOR | FETCH: "fetch_xor",
    XCHG: "xchg",
    CMPXCHG: "cmpxchg",
}

# ld_imm64 src values and call src values.
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE, PSEUDO_BTF_ID, PSEUDO_FUNC = 1, 2, 3, 4
PSEUDO_MAP_IDX, PSEUDO_MAP_IDX_VALUE = 5, 6
PSEUDO_CALL, PSEUDO_KFUNC_CALL = 1, 2

LD_IMM64 = LD | IMM | DW  # 0x18


def cls(opcode: int) -> int:
    return opcode & 0x07


_ALU_DOC = {
    ADD: "dst += src",
    SUB: "dst -= src",
    MUL: "dst *= src",
    DIV: "dst /= src (off=1: signed); x/0 = 0",
    OR: "dst |= src",
    AND: "dst &= src",
    LSH: "dst <<= src (masked to width)",
    RSH: "dst >>= src (logical, masked)",
    NEG: "dst = -dst",
    MOD: "dst %= src (off=1: signed); x%0 = x",
    XOR: "dst ^= src",
    MOV: "dst = src (off=8/16/32: sign-extending movsx)",
    ARSH: "dst s>>= src (arithmetic, masked)",
}
_JMP_DOC = {
    JEQ: "==",
    JGT: "> (unsigned)",
    JGE: ">= (unsigned)",
    JSET: "& (bit test)",
    JNE: "!=",
    JSGT: "> (signed)",
    JSGE: ">= (signed)",
    JLT: "< (unsigned)",
    JLE: "<= (unsigned)",
    JSLT: "< (signed)",
    JSLE: "<= (signed)",
}


def _build_table() -> dict[int, str]:
    t: dict[int, str] = {}
    for c, width in ((ALU, "32"), (ALU64, "64")):
        for op, doc in _ALU_DOC.items():
            srcs = (K,) if op == NEG else (K, X)
            for s in srcs:
                t[c | s | op] = f"alu{width} {doc}, src={'imm' if s == K else 'reg'}"
    t[ALU | TO_LE | END] = "dst = htole(dst), imm = 16/32/64"
    t[ALU | TO_BE | END] = "dst = htobe(dst), imm = 16/32/64"
    t[ALU64 | TO_LE | END] = "dst = bswap(dst), imm = 16/32/64 (unconditional)"
    for c, width in ((JMP, "64"), (JMP32, "32")):
        for op, doc in _JMP_DOC.items():
            for s in (K, X):
                t[c | s | op] = f"jmp{width} if dst {doc} {'imm' if s == K else 'src'} goto pc+off"
    t[JMP | JA] = "goto pc+off"
    t[JMP32 | JA] = "gotol pc+imm (32-bit offset)"
    t[JMP | CALL] = "call: src=0 helper imm, src=1 bpf-to-bpf pc+imm, src=2 kfunc btf id imm"
    t[JMP | EXIT] = "return r0 to the caller"
    t[LD_IMM64] = "dst = imm64 (two slots); src selects a pseudo (map fd, map value, func)"
    for size, sname in ((B, "u8"), (H, "u16"), (W, "u32"), (DW, "u64")):
        t[LDX | MEM | size] = f"dst = *({sname} *)(src + off)"
        t[ST | MEM | size] = f"*({sname} *)(dst + off) = imm"
        t[STX | MEM | size] = f"*({sname} *)(dst + off) = src"
        if size != DW:
            t[LDX | MEMSX | size] = f"dst = *(s{sname[1:]} *)(src + off), sign-extended"
            t[LD | ABS | size] = f"legacy: r0 = ntoh(*({sname} *)(skb->data + imm))"
            t[LD | IND | size] = f"legacy: r0 = ntoh(*({sname} *)(skb->data + src + imm))"
    for size, sname in ((W, "u32"), (DW, "u64")):
        t[STX | ATOMIC | size] = f"atomic op (imm) on *({sname} *)(dst + off) with src"
    return t


#: Every valid opcode byte -> one line of documentation.
OPCODES: dict[int, str] = _build_table()


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction slot: ``opcode:8 dst:4 src:4 off:s16 imm:s32``."""

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        return encode(self)

    @property
    def cls(self) -> int:
        return self.opcode & 0x07


_FMT = struct.Struct("<BBhi")


def encode(insn: Insn) -> bytes:
    return _FMT.pack(insn.opcode, (insn.src << 4) | insn.dst, insn.off, insn.imm)


def decode(raw: bytes) -> Insn:
    """Decode one slot without validating it (use ``validate`` for that)."""
    if len(raw) != 8:
        raise DecodeError(f"an instruction is 8 bytes, got {len(raw)}")
    opcode, regs, off, imm = _FMT.unpack(raw)
    return Insn(opcode, regs & 0x0F, regs >> 4, off, imm)


def ld_imm64(dst: int, value: int, src: int = 0) -> tuple[Insn, Insn]:
    """The two slots of ``dst = value ll`` (value taken modulo 2**64)."""
    value &= (1 << 64) - 1
    lo, hi = value & 0xFFFFFFFF, value >> 32
    s32 = lambda v: v - (1 << 32) if v & 0x80000000 else v  # noqa: E731
    return Insn(LD_IMM64, dst, src, 0, s32(lo)), Insn(0, 0, 0, 0, s32(hi))


def is_ld_imm64(insn: Insn) -> bool:
    return insn.opcode == LD_IMM64


#: opcodes of jumps with a pc-relative target (not call/exit): a set, since
#: every pass over a program asks this of every slot
_JUMPS = frozenset(
    op for op in range(256) if op & 0x07 in (JMP, JMP32) and op & 0xF0 not in (CALL, EXIT)
)


def is_jump(insn: Insn) -> bool:
    """A jump with a pc-relative target (not call/exit)."""
    return insn.opcode in _JUMPS


def jump_target(pc: int, insn: Insn) -> int:
    """Absolute slot index a jump at ``pc`` goes to (``gotol`` uses imm)."""
    if insn.opcode == JMP32 | JA:
        return pc + 1 + insn.imm
    return pc + 1 + insn.off


def _bad(pc: int, insn: Insn, why: str) -> DecodeError:
    return DecodeError(f"insn {pc}: {why} (opcode {insn.opcode:#04x} {encode(insn).hex()})")


def function_starts(insns: list[Insn] | tuple[Insn, ...], extra: int | None = None) -> list[int]:
    """Function start pcs the way the kernel finds them (``add_subprog_and_kfunc``):
    0, every pseudo-call target and every ``ld_imm64`` pseudo-func target, plus
    ``extra`` (an exception callback, which the kernel knows from BTF)."""
    starts = {0}
    if extra is not None:
        starts.add(extra)
    for pc, i in enumerate(insns):
        if i.opcode == JMP | CALL and i.src == PSEUDO_CALL:
            starts.add(pc + 1 + i.imm)
        elif i.opcode == LD_IMM64 and i.src == PSEUDO_FUNC:
            starts.add(pc + 1 + i.imm)
    return sorted(starts)


def validate(insns: list[Insn] | tuple[Insn, ...], *, extra_start: int | None = None) -> None:
    """Reject encodings the kernel rejects: unknown opcodes, reserved fields set,
    bad registers, a truncated ld_imm64, calls outside the program, and jumps
    outside their own function (``check_subprogs``: "jump out of range"; a
    jump into another function is no control flow any JIT defines).
    ``extra_start``: one more function start (the exception callback's pc)."""
    n = len(insns)
    starts = [s for s in function_starts(insns, extra_start) if 0 <= s < n] + [n]
    func = 0  # index in starts of the function holding pc
    pc = 0
    while pc < n:
        while starts[func + 1] <= pc:
            func += 1
        i = insns[pc]
        op = i.opcode
        if op not in OPCODES:
            raise _bad(pc, i, "unknown opcode")
        if i.dst > 10 or i.src > 10:
            raise _bad(pc, i, "register number above r10")
        c, code = op & 0x07, op & 0xF0
        if op == LD_IMM64:
            if pc + 1 >= n:
                raise _bad(pc, i, "ld_imm64 is missing its second slot")
            nxt = insns[pc + 1]
            if nxt.opcode or nxt.dst or nxt.src or nxt.off:
                raise _bad(pc, i, "ld_imm64 second slot must be zero except imm")
            if i.src > PSEUDO_MAP_IDX_VALUE or i.off:
                raise _bad(pc, i, "ld_imm64 with an unknown pseudo source or off")
            if i.dst == 10:
                raise _bad(pc, i, "r10 is read-only")
            if i.src not in (0, PSEUDO_MAP_VALUE, PSEUDO_MAP_IDX_VALUE) and nxt.imm:
                raise _bad(pc, i, "ld_imm64 pseudo source with a non-zero high word")
            if i.src == PSEUDO_FUNC and not 0 <= pc + 1 + i.imm < n:
                raise _bad(pc, i, "func target outside the program")
            pc += 2
            continue
        if c in (ALU, ALU64):
            if code == END:
                if i.imm not in (16, 32, 64) or i.src or i.off:
                    raise _bad(pc, i, "byte swap needs imm 16/32/64 and zero src/off")
            elif code in (DIV, MOD):
                if i.off not in (0, 1):
                    raise _bad(pc, i, "div/mod off must be 0 (unsigned) or 1 (signed)")
            elif code == MOV:
                allowed = (0, 8, 16, 32) if c == ALU64 else (0, 8, 16)
                if i.off not in allowed or (i.off and op & X == 0):
                    raise _bad(pc, i, "movsx needs a register source and off 8/16(/32)")
            elif i.off:
                raise _bad(pc, i, "reserved off field is not zero")
            if code != END and op & X == 0 and i.src:
                raise _bad(pc, i, "reserved src field is not zero")
            if code != END and op & X and i.imm:
                raise _bad(pc, i, "reserved imm field is not zero")
            if code == NEG and (i.src or i.imm):
                raise _bad(pc, i, "neg takes no operand")
            if i.dst == 10:
                raise _bad(pc, i, "r10 is read-only")
        elif c in (JMP, JMP32):
            if code == CALL:
                if c != JMP or i.dst or i.off or i.src > PSEUDO_KFUNC_CALL:
                    raise _bad(pc, i, "malformed call")
                if i.src == PSEUDO_CALL and not 0 <= pc + 1 + i.imm < n:
                    raise _bad(pc, i, "call target outside the program")
            elif code == EXIT:
                if c != JMP or i.dst or i.src or i.off or i.imm:
                    raise _bad(pc, i, "malformed exit")
            elif code == JA:
                if i.dst or i.src or (c == JMP and i.imm) or (c == JMP32 and i.off):
                    raise _bad(pc, i, "reserved field of ja is not zero")
            else:
                if op & X == 0 and i.src:
                    raise _bad(pc, i, "reserved src field is not zero")
                if op & X and i.imm:
                    raise _bad(pc, i, "reserved imm field is not zero")
            if is_jump(i):
                t = jump_target(pc, i)
                if not 0 <= t < n:
                    raise _bad(pc, i, f"jump target {t} outside the program")
                lo, hi = starts[func], starts[func + 1]
                if not lo <= t < hi:
                    raise _bad(
                        pc,
                        i,
                        f"jump out of range from insn {pc} to {t} (its function is {lo}..{hi - 1})",
                    )
                if t > 0 and insns[t - 1].opcode == LD_IMM64:
                    raise _bad(pc, i, "jump into the middle of ld_imm64")
        elif c == LDX:
            if i.imm:
                raise _bad(pc, i, "reserved imm field is not zero")
            if i.dst == 10:
                raise _bad(pc, i, "r10 is read-only")
        elif c == ST:
            if i.src:
                raise _bad(pc, i, "reserved src field is not zero")
        elif c == STX:
            if op & 0xE0 == ATOMIC:
                if i.imm not in ATOMIC_OPS:
                    raise _bad(pc, i, f"unknown atomic operation {i.imm:#x}")
            elif i.imm:
                raise _bad(pc, i, "reserved imm field is not zero")
        elif c == LD and op & 0xE0 in (ABS, IND):
            if i.dst or i.off or (op & 0xE0 == ABS and i.src):
                raise _bad(pc, i, "reserved field of legacy packet load is not zero")
        pc += 1


def decode_program(raw: bytes) -> list[Insn]:
    if len(raw) % 8:
        raise DecodeError(f"program length {len(raw)} is not a multiple of 8")
    insns = [decode(raw[o : o + 8]) for o in range(0, len(raw), 8)]
    validate(insns)
    return insns


def encode_program(insns: list[Insn] | tuple[Insn, ...]) -> bytes:
    return b"".join(encode(i) for i in insns)
