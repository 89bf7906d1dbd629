"""Byte-level x86-64 encoding helpers, ported from ``arch/x86/net/bpf_jit_comp.c``.

Names follow the kernel (``EMIT*``, ``add_1mod``, ``add_2reg``, ``emit_mov_imm32``,
``emit_ldx`` ...) so the port can be read side by side with the C source.
Register numbers are the kernel's BPF numbering: 0-10 are BPF r0-r10,
``BPF_REG_AX`` (11) is host r10, ``AUX_REG`` (13) host r11, ``X86_REG_R9`` (14)
and ``X86_REG_R12`` (15) the host registers of those names.
"""

from __future__ import annotations

from harness.formats import isa

__all__ = [
    "BPF_REG_AX",
    "AUX_REG",
    "X86_REG_R9",
    "X86_REG_R12",
    "X86_JB",
    "X86_JAE",
    "X86_JE",
    "X86_JNE",
    "X86_JBE",
    "X86_JA",
    "X86_JL",
    "X86_JGE",
    "X86_JLE",
    "X86_JG",
    "X86_PATCH_SIZE",
    "NOP5",
    "Emitter",
    "is_imm8",
    "is_imm8_jmp_offset",
    "is_simm32",
    "is_uimm32",
    "add_1mod",
    "add_2mod",
    "add_3mod",
    "add_1reg",
    "add_2reg",
    "is_ereg",
    "is_ereg_8l",
]

BPF_REG_AX = 11  # MAX_BPF_REG
AUX_REG = 13  # MAX_BPF_JIT_REG + 1
X86_REG_R9 = 14
X86_REG_R12 = 15

X86_JB, X86_JAE, X86_JE, X86_JNE, X86_JBE, X86_JA = 0x72, 0x73, 0x74, 0x75, 0x76, 0x77
X86_JL, X86_JGE, X86_JLE, X86_JG = 0x7C, 0x7D, 0x7E, 0x7F

X86_PATCH_SIZE = 5

#: x86_nops[] of arch/x86/kernel/alternative.c (the "P6" nops, ASM_NOP_MAX = 8).
X86_NOPS: dict[int, bytes] = {
    1: bytes([0x90]),
    2: bytes([0x66, 0x90]),
    3: bytes([0x0F, 0x1F, 0x00]),
    4: bytes([0x0F, 0x1F, 0x40, 0x00]),
    5: bytes([0x0F, 0x1F, 0x44, 0x00, 0x00]),
    6: bytes([0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00]),
    7: bytes([0x0F, 0x1F, 0x80, 0x00, 0x00, 0x00, 0x00]),
    8: bytes([0x0F, 0x1F, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00]),
}
ASM_NOP_MAX = 8
NOP5 = X86_NOPS[5]

REG2HEX = {
    0: 0,  # rax
    1: 7,  # rdi
    2: 6,  # rsi
    3: 2,  # rdx
    4: 1,  # rcx
    5: 0,  # r8
    6: 3,  # rbx
    7: 5,  # r13
    8: 6,  # r14
    9: 7,  # r15
    10: 5,  # rbp
    BPF_REG_AX: 2,  # r10
    AUX_REG: 3,  # r11
    X86_REG_R9: 1,  # r9
    X86_REG_R12: 4,  # r12
}
_EREGS = frozenset({5, AUX_REG, 7, 8, 9, X86_REG_R9, X86_REG_R12, BPF_REG_AX})
_EREGS_8L = _EREGS | {1, 2, 10}


def is_imm8(value: int) -> bool:
    return -128 <= value <= 127


def is_imm8_jmp_offset(value: int) -> bool:
    # 6.13+: positive 8-bit jump offsets are capped at 123 so that the passes
    # always converge (see the long comment above is_imm8_jmp_offset()).
    return -128 <= value <= 123


def is_simm32(value: int) -> bool:
    return -(1 << 31) <= value < (1 << 31)


def is_uimm32(value: int) -> bool:
    return 0 <= value < (1 << 32)


def is_ereg(reg: int) -> bool:
    return reg in _EREGS


def is_ereg_8l(reg: int) -> bool:
    return reg in _EREGS_8L


def is_axreg(reg: int) -> bool:
    return reg == 0


def add_1mod(byte: int, reg: int) -> int:
    return byte | 1 if is_ereg(reg) else byte


def add_2mod(byte: int, r1: int, r2: int) -> int:
    if is_ereg(r1):
        byte |= 1
    if is_ereg(r2):
        byte |= 4
    return byte


def add_3mod(byte: int, r1: int, r2: int, index: int) -> int:
    if is_ereg(r1):
        byte |= 1
    if is_ereg(index):
        byte |= 2
    if is_ereg(r2):
        byte |= 4
    return byte


def add_1reg(byte: int, dst_reg: int) -> int:
    return (byte + REG2HEX[dst_reg]) & 0xFF


def add_2reg(byte: int, dst_reg: int, src_reg: int) -> int:
    return (byte + REG2HEX[dst_reg] + (REG2HEX[src_reg] << 3)) & 0xFF


#: simple_alu_opcodes[]
SIMPLE_ALU = {
    isa.ADD: 0x01,
    isa.SUB: 0x29,
    isa.AND: 0x21,
    isa.OR: 0x09,
    isa.XOR: 0x31,
    isa.LSH: 0xE0,
    isa.RSH: 0xE8,
    isa.ARSH: 0xF8,
}


class Emitter:
    """The ``u8 *prog`` cursor of the kernel: a growing buffer."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def __len__(self) -> int:
        return len(self.buf)

    # EMIT(bytes, len): little-endian, truncated like the C casts.
    def emit(self, value: int, length: int) -> None:
        self.buf += (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")

    def emit1(self, b1: int) -> None:
        self.buf.append(b1 & 0xFF)

    def emit2(self, b1: int, b2: int) -> None:
        self.buf += bytes((b1 & 0xFF, b2 & 0xFF))

    def emit3(self, b1: int, b2: int, b3: int) -> None:
        self.buf += bytes((b1 & 0xFF, b2 & 0xFF, b3 & 0xFF))

    def emit4(self, b1: int, b2: int, b3: int, b4: int) -> None:
        self.buf += bytes((b1 & 0xFF, b2 & 0xFF, b3 & 0xFF, b4 & 0xFF))

    def emit1_off32(self, b1: int, off: int) -> None:
        self.emit1(b1)
        self.emit(off, 4)

    def emit2_off32(self, b1: int, b2: int, off: int) -> None:
        self.emit2(b1, b2)
        self.emit(off, 4)

    def emit3_off32(self, b1: int, b2: int, b3: int, off: int) -> None:
        self.emit3(b1, b2, b3)
        self.emit(off, 4)

    def emit4_off32(self, b1: int, b2: int, b3: int, b4: int, off: int) -> None:
        self.emit4(b1, b2, b3, b4)
        self.emit(off, 4)

    def raw(self, data: bytes) -> None:
        self.buf += data

    # ---- small helpers of bpf_jit_comp.c -------------------------------------

    def nops(self, length: int) -> None:
        """emit_nops()"""
        while length > 0:
            n = min(length, ASM_NOP_MAX)
            self.buf += X86_NOPS[n]
            length -= n

    def mov(self, dst: int, src: int) -> None:
        """EMIT_mov(DST, SRC)"""
        if dst != src:
            self.emit3(add_2mod(0x48, dst, src), 0x89, add_2reg(0xC0, dst, src))

    def maybe_emit_mod(self, dst: int, src: int, is64: bool) -> None:
        if is64:
            self.emit1(add_2mod(0x48, dst, src))
        elif is_ereg(dst) or is_ereg(src):
            self.emit1(add_2mod(0x40, dst, src))

    def maybe_emit_1mod(self, reg: int, is64: bool) -> None:
        if is64:
            self.emit1(add_1mod(0x48, reg))
        elif is_ereg(reg):
            self.emit1(add_1mod(0x40, reg))

    def mov_imm32(self, sign_propagate: bool, dst: int, imm32: int) -> None:
        """emit_mov_imm32()"""
        imm32 &= 0xFFFFFFFF
        if sign_propagate and imm32 & 0x80000000:
            # 'mov %rax, imm32' sign extends imm32
            self.emit3_off32(add_1mod(0x48, dst), 0xC7, add_1reg(0xC0, dst), imm32)
            return
        if imm32 == 0:
            if is_ereg(dst):
                self.emit1(add_2mod(0x40, dst, dst))
            self.emit2(0x31, add_2reg(0xC0, dst, dst))
            return
        if is_ereg(dst):
            self.emit1(add_1mod(0x40, dst))
        self.emit1_off32(add_1reg(0xB8, dst), imm32)

    def mov_imm64(self, dst: int, imm32_hi: int, imm32_lo: int, *, zext: bool = True) -> None:
        """emit_mov_imm64(); ``zext=False`` is fault "ld-imm64-sign-extends"
        (the u32 path sign-propagates)."""
        hi, lo = imm32_hi & 0xFFFFFFFF, imm32_lo & 0xFFFFFFFF
        imm64 = (hi << 32) | lo
        signed = imm64 - (1 << 64) if imm64 >> 63 else imm64
        if is_uimm32(imm64):
            self.mov_imm32(not zext, dst, lo)
        elif is_simm32(signed):
            self.mov_imm32(True, dst, lo)
        else:
            self.emit2(add_1mod(0x48, dst), add_1reg(0xB8, dst))
            self.emit(lo, 4)
            self.emit(hi, 4)

    def mov_reg(self, is64: bool, dst: int, src: int) -> None:
        """emit_mov_reg()"""
        if is64:
            self.mov(dst, src)
        else:
            if is_ereg(dst) or is_ereg(src):
                self.emit1(add_2mod(0x40, dst, src))
            self.emit2(0x89, add_2reg(0xC0, dst, src))

    def movsx_reg(
        self, num_bits: int, is64: bool, dst: int, src: int, *, rex_w: bool = True
    ) -> None:
        """emit_movsx_reg(); ``rex_w=False`` is fault "movsx64-no-rexw" (the
        64-bit forms get the 32-bit prefix)."""
        if is64:
            rex = 0x48 if rex_w else 0x40
            if num_bits == 8:
                self.emit4(add_2mod(rex, src, dst), 0x0F, 0xBE, add_2reg(0xC0, src, dst))
            elif num_bits == 16:
                self.emit4(add_2mod(rex, src, dst), 0x0F, 0xBF, add_2reg(0xC0, src, dst))
            elif num_bits == 32:
                self.emit3(add_2mod(rex, src, dst), 0x63, add_2reg(0xC0, src, dst))
        else:
            if num_bits == 8:
                self.emit4(add_2mod(0x40, src, dst), 0x0F, 0xBE, add_2reg(0xC0, src, dst))
            elif num_bits == 16:
                if is_ereg(dst) or is_ereg(src):
                    self.emit1(add_2mod(0x40, src, dst))
                self.emit3(add_2mod(0x0F, src, dst), 0xBF, add_2reg(0xC0, src, dst))

    def insn_suffix(self, ptr_reg: int, val_reg: int, off: int) -> None:
        """emit_insn_suffix()"""
        if is_imm8(off):
            self.emit2(add_2reg(0x40, ptr_reg, val_reg), off)
        else:
            self.emit1_off32(add_2reg(0x80, ptr_reg, val_reg), off)

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        """emit_ldx()"""
        if size == isa.B:
            self.emit3(add_2mod(0x48, src, dst), 0x0F, 0xB6)
        elif size == isa.H:
            self.emit3(add_2mod(0x48, src, dst), 0x0F, 0xB7)
        elif size == isa.W:
            if is_ereg(dst) or is_ereg(src):
                self.emit2(add_2mod(0x40, src, dst), 0x8B)
            else:
                self.emit1(0x8B)
        else:
            self.emit2(add_2mod(0x48, src, dst), 0x8B)
        self.insn_suffix(src, dst, off)

    def ldsx(self, size: int, dst: int, src: int, off: int, *, movzx: bool = False) -> None:
        """emit_ldsx(); ``movzx=True`` is fault "ldsx-movzx" (emit_ldx's
        0F B6/0F B7 for the byte and half-word loads)."""
        if size == isa.B:
            self.emit3(add_2mod(0x48, src, dst), 0x0F, 0xB6 if movzx else 0xBE)
        elif size == isa.H:
            self.emit3(add_2mod(0x48, src, dst), 0x0F, 0xB7 if movzx else 0xBF)
        elif size == isa.W:
            self.emit2(add_2mod(0x48, src, dst), 0x63)
        self.insn_suffix(src, dst, off)

    def stx(self, size: int, dst: int, src: int, off: int, *, rex_8l: bool = True) -> None:
        """emit_stx(); ``rex_8l=False`` is fault "stx-byte-no-rex" (is_ereg
        where is_ereg_8l belongs: sil/dil/bpl become dh/bh/ch)."""
        if size == isa.B:
            if is_ereg(dst) or (is_ereg_8l(src) if rex_8l else is_ereg(src)):
                self.emit2(add_2mod(0x40, dst, src), 0x88)
            else:
                self.emit1(0x88)
        elif size == isa.H:
            if is_ereg(dst) or is_ereg(src):
                self.emit3(0x66, add_2mod(0x40, dst, src), 0x89)
            else:
                self.emit2(0x66, 0x89)
        elif size == isa.W:
            if is_ereg(dst) or is_ereg(src):
                self.emit2(add_2mod(0x40, dst, src), 0x89)
            else:
                self.emit1(0x89)
        else:
            self.emit2(add_2mod(0x48, dst, src), 0x89)
        self.insn_suffix(dst, src, off)

    def atomic(
        self, atomic_op: int, dst: int, src: int, off: int, size: int, *, rex_w: bool = False
    ) -> None:
        """emit_atomic(); ``rex_w=True`` is fault "atomic32-as-64" (REX.W on
        32-bit atomics too)."""
        self.emit1(0xF0)  # lock prefix
        self.maybe_emit_mod(dst, src, size == isa.DW or rex_w)
        if atomic_op in (isa.ADD, isa.AND, isa.OR, isa.XOR):
            self.emit1(SIMPLE_ALU[atomic_op])
        elif atomic_op == isa.ADD | isa.FETCH:
            self.emit2(0x0F, 0xC1)
        elif atomic_op == isa.XCHG:
            self.emit1(0x87)
        elif atomic_op == isa.CMPXCHG:
            self.emit2(0x0F, 0xB1)
        else:
            raise ValueError(f"bpf_jit: unknown atomic opcode {atomic_op:#04x}")
        self.insn_suffix(dst, src, off)

    def three_vex(
        self, r: bool, x: bool, b: bool, m: int, w: bool, src_reg2: int, length: bool, pp: int
    ) -> None:
        """emit_3vex()"""
        vvvv = REG2HEX[src_reg2]
        if is_ereg(src_reg2):
            vvvv |= 1 << 3
        b1 = ((not r) << 7) | ((not x) << 6) | ((not b) << 5) | (m & 0x1F)
        b2 = (w << 7) | ((~vvvv & 0xF) << 3) | (length << 2) | (pp & 3)
        self.emit3(0xC4, b1, b2)

    def shiftx(self, dst: int, src: int, is64: bool, op: int) -> None:
        """emit_shiftx(): BMI2 shlx/shrx/sarx"""
        r = is_ereg(dst)
        self.three_vex(r, False, r, 2, is64, src, False, op)
        self.emit2(0xF7, add_2reg(0xC0, dst, dst))
