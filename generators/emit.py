"""A small emitter: functions with symbolic labels, calls and map references,
linked into one flat program the way the kernel loads it.

Builders emit into an ``Fn``; jump targets are labels local to the function,
bpf-to-bpf calls name the callee, and map references name the map, so a
builder never computes an offset and deleting a function or a map is a local
change. ``link`` lays the functions out in the given order and resolves all of
it into ``Insn`` slots plus the ``{pc: label}`` table of function starts.
"""

from __future__ import annotations

from harness.formats import isa
from harness.formats.isa import Insn
from harness.reference.helpers import BPF_THROW
from harness.reference.interp import is_pointer

__all__ = ["Fn", "link", "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10"]

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)
_SIZES = {1: isa.B, 2: isa.H, 4: isa.W, 8: isa.DW}


class Fn:
    """One function being emitted. ``size`` counts slots (ld_imm64 is two)."""

    def __init__(self, name: str):
        self.name = name
        self.items: list[tuple] = []
        self.size = 0
        self._next_label = 0

    # ---- structure --------------------------------------------------------

    def new_label(self) -> str:
        self._next_label += 1
        return f"L{self._next_label}"

    def label(self, name: str) -> None:
        self.items.append(("label", name))

    def insn(self, i: Insn) -> None:
        self.items.append(("insn", i))
        self.size += 1

    def ld64(self, dst: int, value: int) -> None:
        if is_pointer(value):
            # the reference would take this scalar for one of its own pointers
            # (a run hypothesis found: 0x4e1f67c90000); the top bit moves it out
            value ^= 1 << 63
        self.items.append(("ld64", dst, value))
        self.size += 2

    def map_ptr(self, dst: int, name: str) -> None:
        """``dst = map[name]`` (ld_imm64 src=PSEUDO_MAP_FD)."""
        self.items.append(("map", dst, name, None))
        self.size += 2

    def map_value(self, dst: int, name: str, off: int) -> None:
        """``dst = &value(name) + off`` (ld_imm64 src=PSEUDO_MAP_VALUE)."""
        self.items.append(("map", dst, name, off))
        self.size += 2

    def call(self, callee: str) -> None:
        self.items.append(("call", callee))
        self.size += 1

    def jump(
        self,
        op: int,
        dst: int,
        label: str,
        *,
        imm: int = 0,
        src: int | None = None,
        jmp32: bool = False,
    ) -> None:
        cls = isa.JMP32 if jmp32 else isa.JMP
        opcode = cls | op | (isa.X if src is not None else isa.K)
        self.items.append(("jmp", opcode, dst, src or 0, 0 if src is not None else imm, label))
        self.size += 1

    def goto(self, label: str, *, long: bool = False) -> None:
        """``goto label``; ``long``: gotol, whose offset is in imm (JMP32 | JA)."""
        self.items.append(("jmp", (isa.JMP32 if long else isa.JMP) | isa.JA, 0, 0, 0, label))
        self.size += 1

    # ---- instructions -----------------------------------------------------

    def mov(self, dst: int, src: int | None = None, *, imm: int = 0, w64: bool = True) -> None:
        self.alu(isa.MOV, dst, src, imm=imm, w64=w64)

    def alu(
        self,
        op: int,
        dst: int,
        src: int | None = None,
        *,
        imm: int = 0,
        w64: bool = True,
        off: int = 0,
    ) -> None:
        """``off``: 1 for signed div/mod, 8/16/32 for movsx."""
        cls = isa.ALU64 if w64 else isa.ALU
        if op == isa.NEG:
            self.insn(Insn(cls | isa.NEG, dst))
        elif src is None:
            self.insn(Insn(cls | op | isa.K, dst, 0, off, imm))
        else:
            self.insn(Insn(cls | op | isa.X, dst, src, off))

    def end(self, dst: int, width: int, kind: str) -> None:
        """Byte order: ``le``/``be`` (ALU) or ``bswap`` (ALU64) of the low ``width`` bits."""
        code = {"le": isa.ALU | isa.TO_LE, "be": isa.ALU | isa.TO_BE, "bswap": isa.ALU64}[kind]
        self.insn(Insn(code | isa.END, dst, imm=width))

    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        self.insn(Insn(isa.LDX | isa.MEM | _SIZES[size], dst, src, off))

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        self.insn(Insn(isa.STX | isa.MEM | _SIZES[size], dst, src, off))

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        self.insn(Insn(isa.ST | isa.MEM | _SIZES[size], dst, 0, off, imm))

    def atomic_add(self, size: int, dst: int, off: int, src: int) -> None:
        self.atomic(size, dst, off, src, isa.ADD)

    def atomic(self, size: int, dst: int, off: int, src: int, op: int) -> None:
        """``op`` (an ``isa.ATOMIC_OPS`` key) on ``*(size *)(dst + off)`` with src."""
        self.insn(Insn(isa.STX | isa.ATOMIC | _SIZES[size], dst, src, off, op))

    def ldsx(self, size: int, dst: int, src: int, off: int) -> None:
        """``dst = *(s8/s16/s32 *)(src + off)``, sign-extended to 64 bits."""
        self.insn(Insn(isa.LDX | isa.MEMSX | _SIZES[size], dst, src, off))

    def helper(self, helper_id: int) -> None:
        self.insn(Insn(isa.JMP | isa.CALL, imm=helper_id))

    def throw(self) -> None:
        self.insn(Insn(isa.JMP | isa.CALL, src=isa.PSEUDO_KFUNC_CALL, imm=BPF_THROW))

    def exit(self) -> None:
        self.insn(Insn(isa.JMP | isa.EXIT))


def link(fns: list[Fn], map_index: dict[str, int]) -> tuple[list[Insn], dict[int, str]]:
    """Lay ``fns`` out in order (the first is main) and resolve every label,
    call and map reference. Returns the slots and ``{pc: function name}``."""
    starts: dict[str, int] = {}
    local: list[dict[str, int]] = []
    pc = 0
    for fn in fns:
        starts[fn.name] = pc
        labels: dict[str, int] = {}
        for item in fn.items:
            if item[0] == "label":
                labels[item[1]] = pc
            else:
                pc += 2 if item[0] in ("ld64", "map") else 1
        local.append(labels)
    out: list[Insn] = []
    for fn, labels in zip(fns, local, strict=True):
        for item in fn.items:
            kind = item[0]
            here = len(out)
            if kind == "insn":
                out.append(item[1])
            elif kind == "ld64":
                out.extend(isa.ld_imm64(item[1], item[2]))
            elif kind == "map":
                _, dst, name, off = item
                idx = map_index[name]
                if off is None:
                    out.extend((Insn(isa.LD_IMM64, dst, isa.PSEUDO_MAP_FD, 0, idx), Insn(0)))
                else:
                    out.extend(
                        (Insn(isa.LD_IMM64, dst, isa.PSEUDO_MAP_VALUE, 0, idx), Insn(0, imm=off))
                    )
            elif kind == "call":
                out.append(
                    Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, starts[item[1]] - (here + 1))
                )
            elif kind == "jmp":
                _, opcode, dst, src, imm, label = item
                delta = labels[label] - (here + 1)
                if opcode == isa.JMP32 | isa.JA:
                    out.append(Insn(opcode, imm=delta))
                else:
                    out.append(Insn(opcode, dst, src, delta, imm))
    return out, {pc: name for name, pc in starts.items()}
