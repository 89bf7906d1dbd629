"""The bpf_conformance ``.data`` format and its ubpf-style assembly.

A ``.data`` file is a few sections, each introduced by a ``-- name`` line:
``asm`` (ubpf assembly: ``mov %r0, 1``, ``ldxdw %r0, [%r1+8]``, ``jeq %r1, 5,
label``, ``lock fetch add [%r10-8], %r1``), ``raw`` (instruction bytes, either
eight hex bytes or one little-endian ``0x`` u64 per slot), ``mem`` (hex bytes
the program gets a pointer to in r1, with their length in r2), ``result`` (the
expected r0), ``error`` (the program must be rejected), ``no register offset``
and ``c`` (notes for other tools, ignored). Text before the first section is a
comment.

``load`` reads one file into a ``ConformanceTest``. A file that must be
rejected (bad assembly, a reserved field set, a register read before it is
written) raises ``AsmError`` naming the file and line, so the negative suite
checks the same code path a user's typo goes through. Tests that need
features outside Linux semantics (``callx``, the ubpf test helpers behind
``call N``) load with ``skip`` set to the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness import formats
from harness.errors import AsmError, DecodeError
from harness.formats import isa
from harness.formats.isa import Insn

__all__ = ["ConformanceTest", "load", "parse", "assemble"]

_SECTIONS = ("asm", "raw", "mem", "result", "error", "no register offset", "c")

_ALU = {
    "add": isa.ADD, "sub": isa.SUB, "mul": isa.MUL, "div": isa.DIV, "sdiv": isa.DIV,
    "or": isa.OR, "and": isa.AND, "lsh": isa.LSH, "rsh": isa.RSH, "neg": isa.NEG,
    "mod": isa.MOD, "smod": isa.MOD, "xor": isa.XOR, "mov": isa.MOV, "arsh": isa.ARSH,
}  # fmt: skip
_JMP = {
    "jeq": isa.JEQ, "jgt": isa.JGT, "jge": isa.JGE, "jset": isa.JSET, "jne": isa.JNE,
    "jsgt": isa.JSGT, "jsge": isa.JSGE, "jlt": isa.JLT, "jle": isa.JLE, "jslt": isa.JSLT,
    "jsle": isa.JSLE,
}  # fmt: skip
_SIZE = {"b": isa.B, "h": isa.H, "w": isa.W, "dw": isa.DW}
_ATOMIC = {"add": isa.ADD, "or": isa.OR, "and": isa.AND, "xor": isa.XOR}
# movsx<from><width>: movsx832 = w = (s8)w, movsx3264 = r = (s32)r.
_MOVSX = {
    "movsx832": (isa.ALU, 8), "movsx1632": (isa.ALU, 16), "movsx864": (isa.ALU64, 8),
    "movsx1664": (isa.ALU64, 16), "movsx3264": (isa.ALU64, 32),
}  # fmt: skip
_MEM_RE = re.compile(r"\[\s*(%\w+)\s*(?:([+-])\s*(\w+)\s*)?\]\Z")
_LABEL_RE = re.compile(r"[A-Za-z_.][\w.]*\Z")


@dataclass
class ConformanceTest:
    path: str
    #: None when the program uses an encoding Linux lacks (``callx``).
    insns: list[Insn] | None
    #: the bytes r1 points to; r2 holds their length.
    mem: bytes
    #: expected r0 as a u64, if the file gives one.
    result: int | None
    #: the ``-- error`` text, if the file expects a rejection.
    error: str | None
    #: why the test is outside Linux semantics, or None.
    skip: str | None = None


class _Ctx:
    def __init__(self, file: str | None):
        self.file, self.line = file, 0

    def err(self, message: str, line: int | None = None) -> AsmError:
        return AsmError(message, file=self.file, line=self.line if line is None else line)

    def num(self, text: str, bits: int, what: str) -> int:
        """A ``bits``-wide field; decimal must fit signed, hex may use all bits."""
        t = text.strip()
        neg = t.startswith("-")
        body = t.lstrip("+-")
        try:
            if body.lower().startswith("0x"):
                v = int(body, 16)
                hi = (1 << bits) - 1
            else:
                v = int(body, 10)
                hi = (1 << (bits - 1)) - 1 + (1 if neg else 0)
        except ValueError:
            raise self.err(f"invalid {what} {t!r}") from None
        if v > hi:
            raise self.err(f"{what} {t} out of {bits}-bit range")
        v = -v if neg else v
        return v - (1 << bits) if v >= 1 << (bits - 1) else v

    def reg(self, text: str) -> int:
        m = re.fullmatch(r"%r(\d+)", text.strip())
        if not m or int(m[1]) > 10:
            raise self.err(f"Invalid register {text.strip()!r}")
        return int(m[1])

    def mem(self, text: str) -> tuple[int, int]:
        m = _MEM_RE.match(text.strip())
        if not m:
            raise self.err(f"expected a memory operand [%rN+off], got {text.strip()!r}")
        off = 0 if m[3] is None else self.num(("-" if m[2] == "-" else "") + m[3], 16, "offset")
        return self.reg(m[1]), off


@dataclass
class _Pending:
    insns: list[Insn]
    line: int
    label: str | None = None  # unresolved jump/call target
    field: str = "off"


def assemble(
    text: str, *, file: str | None = None, first_line: int = 1
) -> tuple[list[Insn], list[int], str | None]:
    """Assemble ubpf syntax; returns (slots, source line of each slot, skip reason)."""
    cx = _Ctx(file)
    out: list[_Pending] = []
    labels: dict[str, int] = {}
    pc = 0
    skip: str | None = None
    for n, raw in enumerate(text.splitlines()):
        cx.line = first_line + n
        body = raw.split("#", 1)[0].strip()
        if not body:
            continue
        if body.endswith(":") and " " not in body:
            name = body[:-1]
            if not _LABEL_RE.match(name):
                raise cx.err(f"invalid label {name!r}")
            if name in labels:
                raise cx.err(f"duplicate label {name}")
            labels[name] = pc
            continue
        mnemonic, _, rest = body.partition(" ")
        ops = [o.strip() for o in rest.split(",")] if rest.strip() else []
        if mnemonic == "exit" and "exit" not in labels:
            # bpf_conformance's assembler names the first exit `exit`.
            labels["exit"] = pc
        p, why = _insn(cx, mnemonic, ops)
        skip = skip or why
        out.append(p)
        pc += len(p.insns)
    insns: list[Insn] = []
    lines: list[int] = []
    for p in out:
        if p.label is not None:
            if p.label not in labels:
                raise cx.err(f"Invalid label {p.label}", p.line)
            rel = labels[p.label] - len(insns) - 1
            i = p.insns[0]
            if p.field == "off":
                if not -(1 << 15) <= rel < 1 << 15:
                    raise cx.err(f"jump to {p.label} does not fit 16 bits", p.line)
                p.insns[0] = Insn(i.opcode, i.dst, i.src, rel, i.imm)
            else:
                p.insns[0] = Insn(i.opcode, i.dst, i.src, i.off, rel)
        insns.extend(p.insns)
        lines.extend([p.line] * len(p.insns))
    return insns, lines, skip


def _target(cx: _Ctx, text: str) -> tuple[int, str | None]:
    t = text.strip()
    if t[:1] in "+-":
        return cx.num(t, 16, "offset"), None
    if not _LABEL_RE.match(t):
        raise cx.err(f"invalid jump target {t!r}")
    return 0, t


def _arity(cx: _Ctx, mnemonic: str, ops: list[str], n: int) -> None:
    if len(ops) != n or any(not o for o in ops):
        raise cx.err(f"Invalid number of operands for {mnemonic}: expected {n}, got {len(ops)}")


def _insn(cx: _Ctx, m: str, ops: list[str]) -> tuple[_Pending, str | None]:
    P = lambda *insns, label=None, field="off": _Pending(list(insns), cx.line, label, field)  # noqa: E731
    if m == "exit":
        _arity(cx, m, ops, 0)
        return P(Insn(isa.JMP | isa.EXIT)), None
    if m in ("ja", "ja32"):
        _arity(cx, m, ops, 1)
        off, label = _target(cx, ops[0])
        if m == "ja":
            return P(Insn(isa.JMP | isa.JA, off=off), label=label), None
        return P(Insn(isa.JMP32 | isa.JA, imm=off), label=label, field="imm"), None
    if m == "call":
        return _call(cx, ops, P)
    if m == "lock":
        return _lock(cx, ops, P), None
    if m == "lddw":
        _arity(cx, m, ops, 2)
        return P(*isa.ld_imm64(cx.reg(ops[0]), cx.num(ops[1], 64, "immediate"))), None
    if m in _MOVSX:
        _arity(cx, m, ops, 2)
        c, off = _MOVSX[m]
        return P(Insn(c | isa.X | isa.MOV, cx.reg(ops[0]), cx.reg(ops[1]), off)), None
    if mm := re.fullmatch(r"(le|be|swap|bswap)(16|32|64)", m):
        _arity(cx, m, ops, 1)
        op = {"le": isa.ALU | isa.TO_LE, "be": isa.ALU | isa.TO_BE}.get(mm[1], isa.ALU64)
        return P(Insn(op | isa.END, cx.reg(ops[0]), imm=int(mm[2]))), None
    if mm := re.fullmatch(r"ldx(s?)(b|h|w|dw)", m):
        _arity(cx, m, ops, 2)
        if mm[1] and mm[2] == "dw":
            raise cx.err("Invalid mnemonic: ldxsdw")
        src, off = cx.mem(ops[1])
        mode = isa.MEMSX if mm[1] else isa.MEM
        return P(Insn(isa.LDX | mode | _SIZE[mm[2]], cx.reg(ops[0]), src, off)), None
    if mm := re.fullmatch(r"st(x?)(b|h|w|dw)", m):
        _arity(cx, m, ops, 2)
        dst, off = cx.mem(ops[0])
        if mm[1]:
            return P(Insn(isa.STX | isa.MEM | _SIZE[mm[2]], dst, cx.reg(ops[1]), off)), None
        imm = cx.num(ops[1], 32, "immediate")
        return P(Insn(isa.ST | isa.MEM | _SIZE[mm[2]], dst, 0, off, imm)), None
    if mm := re.fullmatch(r"([a-z]+?)(32|64)?", m):
        name, width = mm[1], mm[2]
        if name in _JMP and width != "64":
            _arity(cx, m, ops, 3)
            c = isa.JMP32 if width == "32" else isa.JMP
            off, label = _target(cx, ops[2])
            dst = cx.reg(ops[0])
            if ops[1].startswith("%"):
                return P(Insn(c | isa.X | _JMP[name], dst, cx.reg(ops[1]), off), label=label), None
            imm = cx.num(ops[1], 32, "immediate")
            return P(Insn(c | isa.K | _JMP[name], dst, 0, off, imm), label=label), None
        if name in _ALU:
            c = isa.ALU if width == "32" else isa.ALU64
            signed = 1 if name in ("sdiv", "smod") else 0
            if name == "neg":
                _arity(cx, m, ops, 1)
                return P(Insn(c | isa.NEG, cx.reg(ops[0]))), None
            _arity(cx, m, ops, 2)
            dst = cx.reg(ops[0])
            if ops[1].startswith("%"):
                return P(Insn(c | isa.X | _ALU[name], dst, cx.reg(ops[1]), signed)), None
            imm = cx.num(ops[1], 32, "immediate")
            return P(Insn(c | isa.K | _ALU[name], dst, 0, signed, imm)), None
    raise cx.err(f"Invalid mnemonic: {m}")


def _call(cx: _Ctx, ops: list[str], P) -> tuple[_Pending, str | None]:
    op = isa.JMP | isa.CALL
    if len(ops) == 1 and " " in ops[0]:
        ops = ops[0].split(None, 1)
    if len(ops) == 1 and ops[0].startswith("%"):
        # callx: an indirect call through a register; Linux has no such insn.
        cx.reg(ops[0])
        return P(), "callx (indirect call through a register) is not in the Linux ISA"
    if len(ops) == 1:
        ops = ["helper", ops[0]]
    _arity(cx, "call", ops, 2)
    mode, target = ops
    if mode == "local":
        off, label = _target(cx, target) if target[:1] in "+-" else (0, target)
        return P(Insn(op, src=isa.PSEUDO_CALL, imm=off), label=label, field="imm"), None
    imm = cx.num(target, 32, "helper id")
    if mode == "helper":
        why = f"call {imm}: ubpf test helper, not the Linux helper with that id"
        return P(Insn(op, imm=imm)), why
    if mode == "runtime":
        return P(
            Insn(op, src=isa.PSEUDO_KFUNC_CALL, imm=imm)
        ), f"call runtime {imm}: ubpf runtime function"
    raise cx.err(f"Invalid call mode {mode}")


def _lock(cx: _Ctx, ops: list[str], P) -> _Pending:
    # `lock [fetch] op[32] [%rD+off], %rS`: the first operand holds the words.
    words = ops[0].split() if ops else []
    if len(ops) != 2 or not words or not ops[1]:
        raise cx.err("Invalid number of operands for lock")
    fetch = words[0] == "fetch"
    words = words[1:] if fetch else words
    if len(words) != 2:
        raise cx.err("Invalid number of operands for lock")
    mm = re.fullmatch(r"(add|or|and|xor|xchg|cmpxchg)(32)?", words[0])
    if not mm:
        raise cx.err(f"Invalid atomic operation {words[0]!r}")
    size = isa.W if mm[2] else isa.DW
    if mm[1] == "xchg":
        imm = isa.XCHG
    elif mm[1] == "cmpxchg":
        imm = isa.CMPXCHG
    else:
        imm = _ATOMIC[mm[1]] | (isa.FETCH if fetch else 0)
    if fetch and mm[1] in ("xchg", "cmpxchg"):
        raise cx.err(f"{mm[1]} always fetches; drop 'fetch'")
    dst, off = cx.mem(words[1])
    return P(Insn(isa.STX | isa.ATOMIC | size, dst, cx.reg(ops[1]), off, imm))


def _sections(cx: _Ctx, text: str) -> dict[str, tuple[int, list[str]]]:
    """Section name -> (line of its first content line, lines)."""
    out: dict[str, tuple[int, list[str]]] = {}
    cur: list[str] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("--"):
            cx.line = n
            name = line[2:].strip()
            if name not in _SECTIONS:
                raise cx.err(f"unknown section '-- {name}'")
            if name in out:
                raise cx.err(f"duplicate section '-- {name}'")
            cur = []
            out[name] = (n + 1, cur)
        elif cur is not None:
            cur.append(line)
    return out


def _raw(cx: _Ctx, first: int, lines: list[str]) -> tuple[list[Insn], list[int]]:
    data = bytearray()
    starts: list[int] = []  # source line of each byte
    for n, line in enumerate(lines, first):
        cx.line = n
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        if body.lower().startswith("0x") and " " not in body:
            # one slot as a little-endian u64, the way lddw.data writes it
            try:
                chunk = int(body, 16).to_bytes(8, "little")
            except (ValueError, OverflowError):
                raise cx.err(f"invalid raw slot {body!r}: expected a 64-bit hex number") from None
        else:
            try:
                chunk = bytes.fromhex(body)
            except ValueError:
                raise cx.err(f"invalid raw bytes {body!r}") from None
        data += chunk
        starts += [n] * len(chunk)
    if len(data) % 8:
        raise cx.err(f"raw program length {len(data)} is not a multiple of 8")
    insns = [isa.decode(bytes(data[o : o + 8])) for o in range(0, len(data), 8)]
    return insns, [starts[o] for o in range(0, len(data), 8)]


def parse(text: str, *, file: str | None = None) -> ConformanceTest:
    """Parse the text of a ``.data`` file (see ``load``)."""
    cx = _Ctx(file)
    secs = _sections(cx, text)
    insns: list[Insn] | None = None
    lines: list[int] = []
    skip = None
    if "asm" in secs:
        first, body = secs["asm"]
        insns, lines, skip = assemble("\n".join(body), file=file, first_line=first)
    if "raw" in secs:
        raw, raw_lines = _raw(cx, *secs["raw"])
        if insns is not None and raw != insns:
            raise cx.err("-- raw does not match -- asm", secs["raw"][0])
        insns, lines = (insns, lines) if insns is not None else (raw, raw_lines)
    if not insns:
        cx.line = secs["asm"][0] if "asm" in secs else None
        raise cx.err("no program: the file has no instructions in -- asm or -- raw")
    if skip and skip.startswith("callx"):
        insns = None  # there is no Linux encoding to give
    else:
        try:
            isa.validate(insns)
        except DecodeError as e:
            m = re.match(r"insn (\d+): ", str(e))
            raise cx.err(str(e), lines[int(m[1])] if m else None) from None
        _check_initialized(cx, insns, lines)
    mem = b""
    if "mem" in secs:
        first, body = secs["mem"]
        try:
            mem = bytes.fromhex(" ".join(ln.split("#", 1)[0] for ln in body))
        except ValueError:
            raise cx.err("invalid hex in -- mem", first) from None
    result = None
    if "result" in secs:
        first, body = secs["result"]
        words = " ".join(body).split()
        if len(words) != 1:
            raise cx.err("-- result holds one number", first)
        try:
            result = int(words[0], 0) & ((1 << 64) - 1)
        except ValueError:
            raise cx.err(f"invalid result {words[0]!r}", first) from None
    error = "\n".join(secs["error"][1]).strip() if "error" in secs else None
    return ConformanceTest(file or "<text>", insns, mem, result, error, skip)


def load(path: str | Path) -> ConformanceTest:
    """Read one ``.data`` file; rejected programs raise ``AsmError`` naming it."""
    p = str(path)
    return parse(formats.read_text(p), file=p)


# Registers the conformance runner sets before the first instruction: r1 and
# r2 (pointer to and length of mem) and the frame pointer.
_ENTRY = frozenset({1, 2, 10})
_ARGS = frozenset({1, 2, 3, 4, 5})


def _check_initialized(cx: _Ctx, insns: list[Insn], lines: list[int]) -> None:
    """Reject a read of a register no path has written, as the verifier does.

    This is the one verifier rule the negative suite tests (``or %r0, %r10``
    reads r0 before any write). A forward must-analysis: the state at a pc is
    the set of registers written on every path to it; a helper call writes r0
    and clobbers r1-r5; a bpf-to-bpf callee starts with the argument
    registers its callers set, and r6-r9 survive the call.
    """
    n = len(insns)
    state: list[frozenset[int] | None] = [None] * n
    work = [0]
    state[0] = _ENTRY

    def flow(pc: int, s: frozenset[int]) -> None:
        if not 0 <= pc < n:
            return
        old = state[pc]
        new = s if old is None else old & s
        if new != old:
            state[pc] = new
            work.append(pc)

    while work:
        pc = work.pop()
        s = state[pc]
        assert s is not None
        i = insns[pc]
        if i.opcode == isa.LD_IMM64:
            flow(pc + 2, s | {i.dst})
            continue
        if i.opcode == isa.JMP | isa.EXIT:
            continue
        if i.opcode == isa.JMP | isa.CALL:
            if i.src == isa.PSEUDO_CALL:
                flow(pc + 1 + i.imm, (s & _ARGS) | {10})
            flow(pc + 1, (s - _ARGS) | {0})
            continue
        _, writes = _uses(i)
        after = s | writes
        if isa.is_jump(i):
            flow(isa.jump_target(pc, i), after)
            if i.opcode & 0xF0 == isa.JA:
                continue
        flow(pc + 1, after)
    for pc, s in enumerate(state):
        if s is None:  # unreachable, or the second slot of an ld_imm64
            continue
        reads, _ = _uses(insns[pc])
        missing = sorted(reads - s)
        if missing:
            raise cx.err(f"Invalid: r{missing[0]} is read before it is written", lines[pc])


def _uses(i: Insn) -> tuple[frozenset[int], frozenset[int]]:
    """(registers read, registers written) by one instruction."""
    c, code, x = i.cls, i.opcode & 0xF0, i.opcode & isa.X
    r: set[int] = set()
    w: set[int] = set()
    if c in (isa.ALU, isa.ALU64):
        if code == isa.MOV:
            r |= {i.src} if x else set()
        else:
            r.add(i.dst)
            if x and code not in (isa.NEG, isa.END):
                r.add(i.src)
        w.add(i.dst)
    elif c in (isa.JMP, isa.JMP32):
        if i.opcode == isa.JMP | isa.EXIT:
            r.add(0)
        elif isa.is_jump(i) and code != isa.JA:
            r.add(i.dst)
            if x:
                r.add(i.src)
    elif c == isa.LDX:
        r.add(i.src)
        w.add(i.dst)
    elif c == isa.ST:
        r.add(i.dst)
    elif c == isa.STX:
        r |= {i.dst, i.src}
        if i.opcode & 0xE0 == isa.ATOMIC:
            if i.imm == isa.CMPXCHG:
                r.add(0)
                w.add(0)
            elif i.imm & isa.FETCH:
                w.add(i.src)
    elif c == isa.LD and i.opcode != isa.LD_IMM64:  # legacy packet loads
        r.add(6)  # they read the skb from r6 implicitly
        if i.opcode & 0xE0 == isa.IND:
            r.add(i.src)
        w.add(0)
    return frozenset(r), frozenset(w)
