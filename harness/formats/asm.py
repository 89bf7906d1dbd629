"""Kernel/LLVM BPF assembly text, both directions.

The syntax is the one ``llvm-objdump -d`` and ``bpftool prog dump xlated``
print (``r0 = *(u64 *)(r10 - 8)``, ``if w1 s< 5 goto -2``, ``call
bpf_tail_call``), so a JIT developer can paste a dump into a case file and a
report reads like the kernel's own listings. jitdiff adds three things the
kernel prints differently or not at all, because a case has no fds or BTF ids:
maps are named (``map[jmp_table]``, ``map_value[counts]+8``; the imm holds the
map's index in the case's map list), pseudo-func targets are labels
(``func[cb]``), and bpf-to-bpf calls may name a label (``call sub1``).

One rule keeps the two directions exact inverses: every instruction that
``isa.validate`` accepts has exactly one printed form, and ``assemble`` reads
it back to the same slots. Immediates print in decimal when their magnitude
fits in 16 bits and in (signed) hex otherwise; ``ld_imm64`` values always
print as unsigned 64-bit hex. Slots with no textual form (unknown opcodes in a
report) print as ``.raw`` with their 8 bytes, which ``assemble`` also reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from harness.errors import AsmError, DecodeError
from harness.formats import isa
from harness.formats.isa import Insn
from harness.reference.helpers import HELPER_IDS, HELPERS, KFUNC_IDS, KFUNCS

__all__ = ["assemble", "disassemble", "format_insn"]

_U64 = (1 << 64) - 1

_ALU_OPS = {
    isa.ADD: "+=", isa.SUB: "-=", isa.MUL: "*=", isa.DIV: "/=", isa.OR: "|=",
    isa.AND: "&=", isa.LSH: "<<=", isa.RSH: ">>=", isa.MOD: "%=", isa.XOR: "^=",
    isa.MOV: "=", isa.ARSH: "s>>=",
}  # fmt: skip
_ALU_BY_SYM = {v: k for k, v in _ALU_OPS.items()}
_JMP_OPS = {
    isa.JEQ: "==", isa.JGT: ">", isa.JGE: ">=", isa.JSET: "&", isa.JNE: "!=",
    isa.JSGT: "s>", isa.JSGE: "s>=", isa.JLT: "<", isa.JLE: "<=", isa.JSLT: "s<",
    isa.JSLE: "s<=",
}  # fmt: skip
_JMP_BY_SYM = {v: k for k, v in _JMP_OPS.items()}
_SIZES = {isa.B: "8", isa.H: "16", isa.W: "32", isa.DW: "64"}
_SIZE_BY_BITS = {v: k for k, v in _SIZES.items()}
# Atomic ops printed as `lock *(uN *)(rX + off) OP= rY`, without fetch.
_LOCK_OPS = {isa.ADD: "+=", isa.OR: "|=", isa.AND: "&=", isa.XOR: "^="}
_LOCK_BY_SYM = {v: k for k, v in _LOCK_OPS.items()}
_FETCH_NAMES = {"add": isa.ADD, "or": isa.OR, "and": isa.AND, "xor": isa.XOR}
# ld_imm64 pseudo sources printed as `name[...]`; the rest use the raw form.
_PSEUDO_NAMES = {
    isa.PSEUDO_MAP_FD: "map", isa.PSEUDO_MAP_VALUE: "map_value", isa.PSEUDO_BTF_ID: "btf_id",
    isa.PSEUDO_FUNC: "func", isa.PSEUDO_MAP_IDX: "map_idx",
    isa.PSEUDO_MAP_IDX_VALUE: "map_idx_value",
}  # fmt: skip
_PSEUDO_BY_NAME = {v: k for k, v in _PSEUDO_NAMES.items()}

# Names that would read back as something other than a label.
_RESERVED = {f"{p}{n}" for p in "rw" for n in range(11)} | {
    "pc", "ll", "goto", "gotol", "if", "call", "exit", "lock", "skb", "kfunc",
    *_PSEUDO_BY_NAME,
} | set(HELPER_IDS) | set(KFUNC_IDS)  # fmt: skip
_LABEL_RE = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*\Z")


# ---------------------------------------------------------------- printing


def _imm(v: int) -> str:
    # Decimal reads best for offsets, small constants and errnos; hex for
    # masks and addresses. Both parse back, so the choice is only taste.
    return str(v) if -0x10000 < v < 0x10000 else ("-" if v < 0 else "") + hex(abs(v))


def _signed_off(v: int) -> str:
    return f"+{v}" if v >= 0 else str(v)


def _mem(base: int, off: int) -> str:
    return f"(r{base} {'-' if off < 0 else '+'} {abs(off)})"


def _target(pc: int, rel: int, labels: Mapping[int, str], *, call: bool = False) -> str:
    t = pc + 1 + rel
    name = labels.get(t)
    if name is not None and _printable_label(name):
        return name
    return ("pc" if call else "") + _signed_off(rel)


def _printable_label(name: str) -> bool:
    return bool(_LABEL_RE.match(name)) and name not in _RESERVED


def _map_ref(index: int, maps: Sequence[str]) -> str:
    if 0 <= index < len(maps) and _printable_label(maps[index]):
        return maps[index]
    return f"#{index}"


def _raw(insn: Insn) -> str:
    return ".raw " + " ".join(f"{b:02x}" for b in isa.encode(insn))


def format_insn(
    insns: Sequence[Insn],
    pc: int,
    *,
    labels: Mapping[int, str] | None = None,
    maps: Sequence[str] = (),
) -> str:
    """The text of the instruction at ``pc`` (both slots of an ``ld_imm64``)."""
    labels = labels or {}
    i = insns[pc]
    op, c, code = i.opcode, i.opcode & 0x07, i.opcode & 0xF0
    if op not in isa.OPCODES or i.dst > 10 or i.src > 10:
        return _raw(i)
    if c in (isa.ALU, isa.ALU64):
        p = "w" if c == isa.ALU else "r"
        d = f"{p}{i.dst}"
        if code == isa.END:
            kind = "bswap" if c == isa.ALU64 else ("be" if op & isa.TO_BE else "le")
            if i.src or i.off or i.imm not in (16, 32, 64):
                return _raw(i)
            return f"r{i.dst} = {kind}{i.imm} r{i.dst}"
        if code == isa.NEG:
            if i.src or i.off or i.imm:
                return _raw(i)
            return f"{d} = -{d}"
        sym = _ALU_OPS[code]
        if code in (isa.DIV, isa.MOD) and i.off == 1:
            sym = "s" + sym
        elif code == isa.MOV and i.off in (8, 16, 32) and op & isa.X:
            if i.imm:
                return _raw(i)
            return f"{d} = (s{i.off}){p}{i.src}"
        elif i.off:
            return _raw(i)
        if op & isa.X:
            if i.imm:
                return _raw(i)
            return f"{d} {sym} {p}{i.src}"
        if i.src:
            return _raw(i)
        return f"{d} {sym} {_imm(i.imm)}"
    if c in (isa.JMP, isa.JMP32):
        if op == isa.JMP | isa.EXIT:
            return "exit" if not (i.dst or i.src or i.off or i.imm) else _raw(i)
        if op == isa.JMP | isa.CALL:
            if i.dst or i.off:
                return _raw(i)
            if i.src == 0:
                h = HELPERS.get(i.imm)
                return f"call {h.name if h else _imm(i.imm)}"
            if i.src == isa.PSEUDO_CALL:
                return f"call {_target(pc, i.imm, labels, call=True)}"
            if i.src == isa.PSEUDO_KFUNC_CALL:
                k = KFUNCS.get(i.imm)
                return f"call {k}" if k else f"call kfunc#{i.imm}"
            return _raw(i)
        if op == isa.JMP | isa.JA:
            if i.dst or i.src or i.imm:
                return _raw(i)
            return f"goto {_target(pc, i.off, labels)}"
        if op == isa.JMP32 | isa.JA:
            if i.dst or i.src or i.off:
                return _raw(i)
            return f"gotol {_target(pc, i.imm, labels)}"
        p = "w" if c == isa.JMP32 else "r"
        if op & isa.X:
            if i.imm:
                return _raw(i)
            rhs = f"{p}{i.src}"
        else:
            if i.src:
                return _raw(i)
            rhs = _imm(i.imm)
        return f"if {p}{i.dst} {_JMP_OPS[code]} {rhs} goto {_target(pc, i.off, labels)}"
    size, mode = op & 0x18, op & 0xE0
    bits = _SIZES[size]
    if op == isa.LD_IMM64:
        if pc + 1 >= len(insns):
            return _raw(i)
        hi_insn = insns[pc + 1]
        if hi_insn.opcode or hi_insn.dst or hi_insn.src or hi_insn.off or i.off:
            return _raw(i)
        return f"r{i.dst} = {_ld_imm64_rhs(pc, i, hi_insn.imm, labels, maps)}"
    if c == isa.LD:  # legacy packet loads
        if i.dst or i.off or (mode == isa.ABS and i.src):
            return _raw(i)
        where = (
            str(i.imm) if mode == isa.ABS else f"r{i.src} {'-' if i.imm < 0 else '+'} {abs(i.imm)}"
        )
        return f"r0 = *(u{bits} *)skb[{where}]"
    if c == isa.LDX:
        if i.imm:
            return _raw(i)
        sign = "s" if mode == isa.MEMSX else "u"
        return f"r{i.dst} = *({sign}{bits} *){_mem(i.src, i.off)}"
    if c == isa.ST:
        if i.src:
            return _raw(i)
        return f"*(u{bits} *){_mem(i.dst, i.off)} = {_imm(i.imm)}"
    if mode == isa.MEM:
        if i.imm:
            return _raw(i)
        return f"*(u{bits} *){_mem(i.dst, i.off)} = r{i.src}"
    # STX | ATOMIC: LLVM prints the 32-bit forms with w registers.
    p = "w" if size == isa.W else "r"
    s = f"{p}{i.src}"
    if i.imm in _LOCK_OPS:
        return f"lock *(u{bits} *){_mem(i.dst, i.off)} {_LOCK_OPS[i.imm]} {s}"
    if i.imm & isa.FETCH and i.imm & ~isa.FETCH in _LOCK_OPS:
        name = isa.ATOMIC_OPS[i.imm]
        return f"{s} = atomic_{name}((u{bits} *){_mem(i.dst, i.off)}, {s})"
    suffix = "32_32" if size == isa.W else "_64"
    addr = _mem(i.dst, i.off)[1:-1]
    if i.imm == isa.XCHG:
        return f"{s} = xchg{suffix}({addr}, {s})"
    if i.imm == isa.CMPXCHG:
        return f"{p}0 = cmpxchg{suffix}({addr}, {p}0, {s})"
    return _raw(i)


def _ld_imm64_rhs(pc: int, i: Insn, hi: int, labels: Mapping[int, str], maps: Sequence[str]) -> str:
    lo = i.imm & 0xFFFFFFFF
    if i.src == 0:
        return f"{hex(((hi & 0xFFFFFFFF) << 32) | lo)} ll"
    name = _PSEUDO_NAMES.get(i.src)
    with_off = i.src in (isa.PSEUDO_MAP_VALUE, isa.PSEUDO_MAP_IDX_VALUE)
    if name is None or (hi and not with_off):
        # Pseudo sources with a stray high word have no named form.
        return f"ll[src={i.src}, imm={i.imm}, hi={hi}]"
    if i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
        arg = _map_ref(i.imm, maps)
    elif i.src == isa.PSEUDO_FUNC:
        arg = _target(pc, i.imm, labels, call=True)
    else:
        arg = str(i.imm)
    off = "" if not with_off or hi == 0 else _signed_off(hi)
    return f"{name}[{arg}]{off} ll"


def disassemble(
    insns: Sequence[Insn],
    *,
    labels: Mapping[int, str] | None = None,
    maps: Sequence[str] = (),
) -> str:
    """The program as text: labels at column 0, instructions indented 4 spaces."""
    labels = labels or {}
    out: list[str] = []
    pc = 0
    while pc < len(insns):
        if pc in labels:
            out.append(f"{labels[pc]}:")
        out.append("    " + format_insn(insns, pc, labels=labels, maps=maps))
        text_is_pair = insns[pc].opcode == isa.LD_IMM64 and not out[-1].lstrip().startswith(".raw")
        pc += 2 if text_is_pair else 1
    if len(insns) in labels:
        out.append(f"{labels[len(insns)]}:")
    return "\n".join(out) + ("\n" if out else "")


# ---------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)"  # number
    r"|(s>>=|s/=|s%=|s>=|s<=|s>|s<)"  # signed operators (before identifiers)
    r"|([A-Za-z_.][A-Za-z0-9_.]*)"  # identifier
    r"|(<<=|>>=|\+=|-=|\*=|/=|%=|\|=|&=|\^=|==|!=|>=|<=|[-+*/()\[\],=<>&#:]))"
)

# Fragments for the canonical token string (tokens joined by single spaces).
_N = r"((?:- )?(?:0[xX][0-9a-fA-F]+|\d+))"  # a signed number
_R = r"([rw]\d+)"
_MEMREF = r"\( (r\d+) (?:([+-]) (0[xX][0-9a-fA-F]+|\d+) )?\)"  # (rX +/- off)
_ADDR = r"(r\d+) (?:([+-]) (0[xX][0-9a-fA-F]+|\d+) )?"  # rX +/- off, no parens
_TGT = r"((?:pc )?[+-] \d+|[A-Za-z_.][A-Za-z0-9_.]*)"
_ST_SIZE = r"\* \( u(8|16|32|64) \* \) "


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern + r"\Z")


_P_EXIT = _re(r"exit")
_P_GOTO = _re(r"(goto|gotol) " + _TGT)
_P_CALL = _re(r"call (?:(kfunc) # " + _N + r"|" + _N + r"|" + _TGT + r")")
_P_IF = _re(
    r"if " + _R + r" (==|!=|>=|<=|>|<|&|s>=|s<=|s>|s<) (?:" + _R + "|" + _N + r") goto " + _TGT
)
_P_LOCK = _re(r"lock " + _ST_SIZE + _MEMREF + r" (\+=|\|=|&=|\^=) " + _R)
_P_FETCH = _re(
    _R + r" = atomic_fetch_(add|or|and|xor) \( \( u(32|64) \* \) " + _MEMREF + r" , " + _R + r" \)"
)
_P_XCHG = _re(_R + r" = xchg(_64|32_32) \( " + _ADDR + r", " + _R + r" \)")
_P_CMPXCHG = _re(_R + r" = cmpxchg(_64|32_32) \( " + _ADDR + r", " + _R + r" , " + _R + r" \)")
_P_STORE = _re(_ST_SIZE + _MEMREF + r" = (?:" + _R + "|" + _N + r")")
_P_LOAD = _re(_R + r" = \* \( ([us])(8|16|32|64) \* \) " + _MEMREF)
_P_SKB = _re(
    _R
    + r" = \* \( u(8|16|32) \* \) skb \[ (?:"
    + _N
    + r" |(r\d+) (?:([+-]) (0[xX][0-9a-fA-F]+|\d+) )?)\]"
)
_P_LDIMM = _re(_R + r" = " + _N + r" ll")
_P_PSEUDO = _re(
    _R + r" = ([a-z_]+) \[ (?:# " + _N + r"|" + _TGT + r"|" + _N + r") \] (?:([+-]) "
    r"(0[xX][0-9a-fA-F]+|\d+) )?ll"
)
_P_LDRAW = _re(_R + r" = ll \[ src = (\d+) , imm = " + _N + r" , hi = " + _N + r" \]")
_P_NEG = _re(_R + r" = - " + _R)
_P_MOVSX = _re(_R + r" = \( s(8|16|32) \) " + _R)
_P_END = _re(_R + r" = (be|le|bswap)(16|32|64) " + _R)
_P_ALU = _re(
    _R + r" (=|\+=|-=|\*=|/=|\|=|&=|<<=|>>=|%=|\^=|s>>=|s/=|s%=) (?:" + _R + "|" + _N + r")"
)


@dataclass
class _Line:
    """One parsed instruction line; ``fix`` resolves a label once all are known."""

    insns: list[Insn]
    line: int
    fix: tuple[str, str] | None = None  # (field "off"|"imm", label)


class _Asm:
    def __init__(self, maps: Sequence[str], file: str | None, line: int):
        self.maps, self.file, self.line = list(maps), file, line

    def err(self, message: str) -> AsmError:
        return AsmError(message, file=self.file, line=self.line)

    def num(self, text: str, lo: int, hi: int, what: str) -> int:
        v = _hex(text) if "x" in text.lower() else int(text.replace(" ", ""), 10)
        if not lo <= v <= hi:
            raise self.err(f"{what} {text.replace(' ', '')} out of range")
        return v

    def imm32(self, text: str) -> int:
        # Accept the unsigned spelling of a 32-bit pattern (0xffffffff == -1).
        v = self.num(text, -(1 << 31), (1 << 32) - 1, "immediate")
        return v - (1 << 32) if v >= 1 << 31 else v

    def off16(self, sign: str | None, text: str | None) -> int:
        if text is None:
            return 0
        return self.num(("- " if sign == "-" else "") + text, -(1 << 15), (1 << 15) - 1, "offset")

    def reg(self, text: str, prefix: str = "r", *, either: bool = False) -> int:
        if text[0] not in ("rw" if either else prefix) or not text[1:].isdigit():
            raise self.err(f"expected a {prefix}N register, got {text}")
        n = int(text[1:])
        if n > 10 or (len(text) > 2 and text[1] == "0"):
            raise self.err(f"no such register {text}")
        return n

    def target(self, text: str, field: str, bits: int) -> tuple[int, tuple[str, str] | None]:
        """A relative jump/call target: ``+N``, ``pc-N`` or a label."""
        if text[0] in "+-" or text.startswith("pc "):
            v = self.num(text.removeprefix("pc ").removeprefix("+ "), -(1 << (bits - 1)),
                         (1 << (bits - 1)) - 1, "jump offset")  # fmt: skip
            return v, None
        return 0, (field, text)


def _hex(text: str) -> int:
    t = text.replace(" ", "")
    return -int(t[1:], 16) if t.startswith("-") else int(t, 16)


def _tokens(a: _Asm, text: str) -> list[str]:
    toks, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise a.err(f"unexpected character {text[pos:].lstrip()[:1]!r}")
        toks.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return toks


def _strip_comment(text: str) -> str:
    # ';' always starts a comment; '#' only at the start of a word, because
    # `map[#3]` and `call kfunc#5` use it inside an operand.
    text = text.split(";", 1)[0]
    m = re.search(r"(?:^|\s)#", text)
    return text[: m.start()] if m else text


def _parse(a: _Asm, s: str) -> _Line:
    """Parse one instruction, given as its canonical token string."""
    L = lambda *insns, fix=None: _Line(list(insns), a.line, fix)  # noqa: E731

    if _P_EXIT.match(s):
        return L(Insn(isa.JMP | isa.EXIT))
    if m := _P_GOTO.match(s):
        if m[1] == "goto":
            off, fix = a.target(m[2], "off", 16)
            return L(Insn(isa.JMP | isa.JA, off=off), fix=fix)
        imm, fix = a.target(m[2], "imm", 32)
        return L(Insn(isa.JMP32 | isa.JA, imm=imm), fix=fix)
    if m := _P_CALL.match(s):
        op = isa.JMP | isa.CALL
        if m[1]:
            return L(Insn(op, src=isa.PSEUDO_KFUNC_CALL, imm=a.imm32(m[2])))
        if m[3]:
            return L(Insn(op, imm=a.imm32(m[3])))
        name = m[4]
        if name in HELPER_IDS:
            return L(Insn(op, imm=HELPER_IDS[name]))
        if name in KFUNC_IDS:
            return L(Insn(op, src=isa.PSEUDO_KFUNC_CALL, imm=KFUNC_IDS[name]))
        imm, fix = a.target(name, "imm", 32)
        return L(Insn(op, src=isa.PSEUDO_CALL, imm=imm), fix=fix)
    if m := _P_IF.match(s):
        c = isa.JMP32 if m[1][0] == "w" else isa.JMP
        p = m[1][0]
        dst = a.reg(m[1], p)
        off, fix = a.target(m[5], "off", 16)
        code = _JMP_BY_SYM[m[2]]
        if m[3]:
            return L(Insn(c | isa.X | code, dst, a.reg(m[3], p), off), fix=fix)
        return L(Insn(c | isa.K | code, dst, 0, off, a.imm32(m[4])), fix=fix)
    if m := _P_LOCK.match(s):
        size = _SIZE_BY_BITS[m[1]]
        if size not in (isa.W, isa.DW):
            raise a.err("atomic operations are 32 or 64 bits wide")
        base, off = a.reg(m[2]), a.off16(m[3], m[4])
        src = a.reg(m[6], "w" if size == isa.W else "r", either=True)
        return L(Insn(isa.STX | isa.ATOMIC | size, base, src, off, _LOCK_BY_SYM[m[5]]))
    if m := _P_FETCH.match(s):
        size = _SIZE_BY_BITS[m[3]]
        p = "w" if size == isa.W else "r"
        out, src = a.reg(m[1], p, either=True), a.reg(m[7], p, either=True)
        if out != src:
            raise a.err("atomic_fetch_* returns into its source register")
        imm = _FETCH_NAMES[m[2]] | isa.FETCH
        return L(Insn(isa.STX | isa.ATOMIC | size, a.reg(m[4]), src, a.off16(m[5], m[6]), imm))
    if m := _P_XCHG.match(s):
        size = isa.DW if m[2] == "_64" else isa.W
        p = "r" if size == isa.DW else "w"
        out, src = a.reg(m[1], p, either=True), a.reg(m[6], p, either=True)
        if out != src:
            raise a.err("xchg returns into its source register")
        return L(Insn(isa.STX | isa.ATOMIC | size, a.reg(m[3]), src, a.off16(m[4], m[5]), isa.XCHG))
    if m := _P_CMPXCHG.match(s):
        size = isa.DW if m[2] == "_64" else isa.W
        p = "r" if size == isa.DW else "w"
        if a.reg(m[1], p, either=True) or a.reg(m[6], p, either=True):
            raise a.err("cmpxchg compares with and returns into r0")
        src = a.reg(m[7], p, either=True)
        insn = Insn(isa.STX | isa.ATOMIC | size, a.reg(m[3]), src, a.off16(m[4], m[5]), isa.CMPXCHG)
        return L(insn)
    if m := _P_STORE.match(s):
        size, base, off = _SIZE_BY_BITS[m[1]], a.reg(m[2]), a.off16(m[3], m[4])
        if m[5]:
            src = a.reg(m[5], "r", either=size != isa.DW)
            return L(Insn(isa.STX | isa.MEM | size, base, src, off))
        return L(Insn(isa.ST | isa.MEM | size, base, 0, off, a.imm32(m[6])))
    if m := _P_LOAD.match(s):
        size = _SIZE_BY_BITS[m[3]]
        mode = isa.MEMSX if m[2] == "s" else isa.MEM
        if mode == isa.MEMSX and size == isa.DW:
            raise a.err("there is no sign-extending 64-bit load; use u64")
        dst = a.reg(m[1], "r", either=mode == isa.MEM and size != isa.DW)
        return L(Insn(isa.LDX | mode | size, dst, a.reg(m[4]), a.off16(m[5], m[6])))
    if m := _P_SKB.match(s):
        if a.reg(m[1]) != 0:
            raise a.err("legacy packet loads always load into r0")
        size = _SIZE_BY_BITS[m[2]]
        if m[3]:
            return L(Insn(isa.LD | isa.ABS | size, imm=a.imm32(m[3])))
        sign = "- " if m[5] == "-" else ""
        imm = a.imm32(sign + m[6]) if m[6] else 0
        return L(Insn(isa.LD | isa.IND | size, src=a.reg(m[4]), imm=imm))
    if m := _P_LDIMM.match(s):
        v = a.num(m[2], -(1 << 63), _U64, "64-bit immediate")
        return L(*isa.ld_imm64(a.reg(m[1]), v))
    if m := _P_PSEUDO.match(s):
        return _parse_pseudo(a, m, L)
    if m := _P_LDRAW.match(s):
        src = a.num(m[2], 0, 15, "pseudo source")
        lo, hi = a.imm32(m[3]), a.imm32(m[4])
        return L(Insn(isa.LD_IMM64, a.reg(m[1]), src, 0, lo), Insn(0, imm=hi))
    if m := _P_NEG.match(s):
        p = m[1][0]
        if m[1] != m[2]:
            raise a.err("neg negates a register in place: rX = -rX")
        c = isa.ALU if p == "w" else isa.ALU64
        return L(Insn(c | isa.NEG, a.reg(m[1], p)))
    if m := _P_MOVSX.match(s):
        p = m[1][0]
        c = isa.ALU if p == "w" else isa.ALU64
        if c == isa.ALU and m[2] == "32":
            raise a.err("32-bit movsx extends from s8 or s16 only")
        return L(Insn(c | isa.X | isa.MOV, a.reg(m[1], p), a.reg(m[3], p), int(m[2])))
    if m := _P_END.match(s):
        if m[1][1:] != m[4][1:]:
            raise a.err("byte swaps work in place: rX = be16 rX")
        dst = a.reg(m[1], "r", either=True)
        op = {"be": isa.ALU | isa.TO_BE, "le": isa.ALU | isa.TO_LE, "bswap": isa.ALU64 | isa.TO_LE}
        return L(Insn(op[m[2]] | isa.END, dst, imm=int(m[3])))
    if m := _P_ALU.match(s):
        p = m[1][0]
        c = isa.ALU if p == "w" else isa.ALU64
        sym, off = m[2], 0
        if sym in ("s/=", "s%="):
            sym, off = sym[1:], 1
        code = _ALU_BY_SYM[sym]
        dst = a.reg(m[1], p)
        if m[3]:
            return L(Insn(c | isa.X | code, dst, a.reg(m[3], p), off))
        return L(Insn(c | isa.K | code, dst, 0, off, a.imm32(m[4])))
    raise a.err(f"cannot parse instruction: {s}")


def _parse_pseudo(a: _Asm, m: re.Match[str], L: Callable[..., _Line]) -> _Line:
    dst, kind = a.reg(m[1]), m[2]
    src = _PSEUDO_BY_NAME.get(kind)
    if src is None:
        raise a.err(f"unknown ld_imm64 source {kind}[...]")
    with_off = src in (isa.PSEUDO_MAP_VALUE, isa.PSEUDO_MAP_IDX_VALUE)
    # groups: 3 = `#N`, 4 = label or +N/pc+N, 5 = plain number, 6/7 = offset
    if m[7] is not None and not with_off:
        raise a.err(f"{kind}[...] takes no offset")
    hi = a.imm32(("- " if m[6] == "-" else "") + m[7]) if m[7] is not None else 0
    fix = None
    if src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
        if m[3] is not None:
            imm = a.imm32(m[3])
        elif m[4] is not None and m[4] in a.maps:
            imm = a.maps.index(m[4])
        else:
            raise a.err(f"unknown map {m[4] or m[5]}")
    elif src == isa.PSEUDO_FUNC:
        if m[4] is None:
            raise a.err("func[...] takes a label or pc+N")
        imm, fix = a.target(m[4], "imm", 32)
    else:
        text = m[5] if m[5] is not None else m[4]
        if text is None or text[0] not in "-+0123456789":
            raise a.err(f"{kind}[...] takes a number")
        imm = a.imm32(text.removeprefix("+ "))
    return L(Insn(isa.LD_IMM64, dst, src, 0, imm), Insn(0, imm=hi), fix=fix)


def assemble(
    text: str,
    *,
    maps: Sequence[str] = (),
    file: str | None = None,
    first_line: int = 1,
    function: str | None = None,
) -> tuple[list[Insn], dict[int, str]]:
    """Assemble ``text``; returns the slots and the labels (pc -> name).

    Errors raise ``AsmError`` naming ``file`` and the line (counted from
    ``first_line``, so a program embedded in a larger file reports the file's
    own line numbers). The result has passed ``isa.validate``, with the label
    ``function`` (an exception callback) starting a function of its own.
    """
    a = _Asm(maps, file, first_line)
    lines: list[_Line] = []
    by_name: dict[str, int] = {}
    labels: dict[int, str] = {}
    label_line: dict[str, int] = {}
    pc = 0
    for n, raw in enumerate(text.splitlines()):
        a.line = first_line + n
        body = raw.strip()
        if body.startswith(".raw"):
            lines.append(_parse_raw(a, _strip_comment(body)[4:]))
            pc += 1
            continue
        toks = _tokens(a, _strip_comment(raw))
        while len(toks) >= 2 and toks[1] == ":":
            name = toks[0]
            if not _LABEL_RE.match(name) or name in _RESERVED:
                raise a.err(f"{name!r} cannot be a label name")
            if name in by_name:
                raise a.err(f"label {name} already defined on line {label_line[name]}")
            by_name[name], label_line[name] = pc, a.line
            labels.setdefault(pc, name)
            toks = toks[2:]
        if not toks:
            continue
        parsed = _parse(a, " ".join(toks))
        lines.append(parsed)
        pc += len(parsed.insns)

    insns: list[Insn] = []
    line_of: list[int] = []
    for ln in lines:
        if ln.fix is not None:
            field, name = ln.fix
            if name not in by_name:
                raise AsmError(f"unknown label {name}", file=file, line=ln.line)
            rel = by_name[name] - (len(insns) + 1)
            if field == "off" and not -(1 << 15) <= rel < 1 << 15:
                raise AsmError(f"jump to {name} does not fit 16 bits; use gotol", file=file,
                               line=ln.line)  # fmt: skip
            first = ln.insns[0]
            ln.insns[0] = Insn(first.opcode, first.dst, first.src,
                               rel if field == "off" else first.off,
                               rel if field == "imm" else first.imm)  # fmt: skip
        insns.extend(ln.insns)
        line_of.extend([ln.line] * len(ln.insns))
    try:
        isa.validate(insns, extra_start=by_name.get(function) if function else None)
    except DecodeError as e:
        m = re.match(r"insn (\d+): ", str(e))
        where = line_of[int(m[1])] if m and int(m[1]) < len(line_of) else None
        raise AsmError(str(e), file=file, line=where) from None
    return insns, labels


def _parse_raw(a: _Asm, rest: str) -> _Line:
    try:
        raw = bytes.fromhex(rest)
    except ValueError:
        raise a.err(".raw takes 8 hex bytes") from None
    if len(raw) != 8:
        raise a.err(".raw takes 8 hex bytes")
    return _Line([isa.decode(raw)], a.line)
