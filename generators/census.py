"""The instruction-shape census: which forms of the ISA a case contains, with
which registers, and with which boundary values.

Names, all from the instructions (so shrunk and hand-written cases count too):

- ``isa:<form>``: one per opcode x source x width, with the variants the JITs
  emit differently (``alu64.sdiv.reg``, ``alu32.movsx8``, ``alu32.be16``,
  ``alu64.bswap64``, ``jmp32.jsge.imm``, ``gotol``, ``ldsx.h``,
  ``atomic32.fetch_and``, ``stx.b``...).
- ``isa:atomic64.<op>@stack``, ``@map``: where an atomic operates.
- ``isa:<form>/<class>``: the same with the x86-64 encoding class of its
  destination (its base register for stores and atomics): ``lo8``
  (r0/r3/r4/r6: rax, rdx, rcx, rbx, byte access without REX), ``rex8``
  (r1/r2: rdi, rsi, whose low bytes need REX), ``ext`` (r5/r7/r8/r9: r8,
  r13-r15, REX.B/R), ``fp`` (r10: rbp, a base that always needs a disp8).
- ``reg:<role>=rN``: every register in every role the verifier allows
  (``alu.dst``, ``jmp.src``, ``stx.b.src``, ``ldx.base``...).
- ``val:<where>:<class>``: boundary classes of operand values (``0``, ``1``,
  ``-1``, ``s8min``...``u32max``, ``pow2``, ``pow2-1``, ``pow2+1``), and pair
  classes (``equal``, ``lo_equal_hi_differ``); divisors 0 and -1 of a register
  division, shifts by 0 and by width - 1.

Values are the ones the code shows: immediates, and registers whose value a
forward pass over straight-line code can name (constants, copies, loads from
ctx and from an array map as the first run sees it). Run-time values the pass
cannot name (a counter, a helper's result) are not classified.
"""

from __future__ import annotations

from functools import lru_cache

from harness.formats import isa
from harness.system import Case

__all__ = ["ISA_SHAPES", "REG_CLASS", "census"]

_U64 = (1 << 64) - 1

#: BPF register -> x86-64 encoding class (harness.jit.x86_64.encoder:
#: is_ereg, is_ereg_8l; the kernel's reg2hex).
REG_CLASS = ("lo8", "rex8", "rex8", "lo8", "lo8", "ext", "lo8", "ext", "ext", "ext", "fp")

_SIZE = {isa.B: "b", isa.H: "h", isa.W: "w", isa.DW: "dw"}
_ALU_NAMES = {
    isa.ADD: "add",
    isa.SUB: "sub",
    isa.MUL: "mul",
    isa.DIV: "div",
    isa.OR: "or",
    isa.AND: "and",
    isa.LSH: "lsh",
    isa.RSH: "rsh",
    isa.NEG: "neg",
    isa.MOD: "mod",
    isa.XOR: "xor",
    isa.MOV: "mov",
    isa.ARSH: "arsh",
}
_JMP_NAMES = {
    isa.JEQ: "jeq",
    isa.JGT: "jgt",
    isa.JGE: "jge",
    isa.JSET: "jset",
    isa.JNE: "jne",
    isa.JSGT: "jsgt",
    isa.JSGE: "jsge",
    isa.JLT: "jlt",
    isa.JLE: "jle",
    isa.JSLT: "jslt",
    isa.JSLE: "jsle",
}
_SHIFTS = (isa.LSH, isa.RSH, isa.ARSH)


def _forms(opcode: int) -> list[tuple[str, int, int]]:
    """The forms of one opcode of the ISA table: (name, off, imm) with the
    off/imm that select the variant (-1: any)."""
    c, code = opcode & 0x07, opcode & 0xF0
    if c in (isa.ALU, isa.ALU64):
        w = "alu64" if c == isa.ALU64 else "alu32"
        if code == isa.END:
            kind = "bswap" if c == isa.ALU64 else "be" if opcode & isa.TO_BE else "le"
            return [(f"{w}.{kind}{b}", -1, b) for b in (16, 32, 64)]
        src = "reg" if opcode & isa.X else "imm"
        name = _ALU_NAMES[code]
        if code == isa.NEG:
            return [(f"{w}.neg", -1, -1)]
        out = [(f"{w}.{name}.{src}", 0, -1)]
        if code in (isa.DIV, isa.MOD):
            out.append((f"{w}.s{name}.{src}", 1, -1))
        if code == isa.MOV and opcode & isa.X:
            out += [(f"{w}.movsx{b}", b, -1) for b in ((8, 16, 32) if c == isa.ALU64 else (8, 16))]
        return out
    if c in (isa.JMP, isa.JMP32):
        w = "jmp" if c == isa.JMP else "jmp32"
        if code == isa.JA:
            return [("gotol" if c == isa.JMP32 else "ja", -1, -1)]
        if code == isa.CALL:
            return [("call.helper", -1, -1), ("call.bpf", -1, -1), ("call.kfunc", -1, -1)]
        if code == isa.EXIT:
            return [("exit", -1, -1)]
        return [(f"{w}.{_JMP_NAMES[code]}.{'reg' if opcode & isa.X else 'imm'}", -1, -1)]
    size = _SIZE[opcode & 0x18]
    mode = opcode & 0xE0
    if opcode == isa.LD_IMM64:
        return [("ld_imm64", -1, -1), ("ld_imm64.map_fd", -1, -1), ("ld_imm64.map_value", -1, -1)]
    if c == isa.LDX:
        return [(f"{'ldsx' if mode == isa.MEMSX else 'ldx'}.{size}", -1, -1)]
    if c == isa.ST:
        return [(f"st.{size}", -1, -1)]
    if c == isa.STX and mode == isa.ATOMIC:
        w = "atomic64" if size == "dw" else "atomic32"
        return [(f"{w}.{n}", -1, op) for op, n in isa.ATOMIC_OPS.items()]
    if c == isa.STX:
        return [(f"stx.{size}", -1, -1)]
    return []  # legacy packet loads (below)


def _required() -> tuple[str, ...]:
    names = []
    for opcode in isa.OPCODES:
        # legacy LD_ABS/LD_IND: the reference interpreter refuses them
        # (harness.reference.interp), so no engine pair can compare them
        if opcode & 0x07 == isa.LD and opcode != isa.LD_IMM64:
            continue
        for n, _, _ in _forms(opcode):
            names.append(f"isa:{n}")
            if n in ("ja", "gotol", "exit") or n.startswith("call"):
                continue
            # a map fd is only ever a helper's argument (r1, r2)
            classes = ("rex8",) if n == "ld_imm64.map_fd" else ("lo8", "rex8", "ext")
            if n.startswith(("st.", "stx.", "atomic")):
                classes += ("fp",)  # the base register of a store
            names += [f"isa:{n}/{k}" for k in classes]
    names += [
        f"isa:atomic{w}.{op}@{where}"
        for w in (32, 64)
        for op in isa.ATOMIC_OPS.values()
        for where in ("stack", "map")
    ]
    regs = range(11)
    scalars = range(10)  # r10 is never written, and as an ALU or jump operand it is a pointer
    for role in ("alu.dst", "alu.src", "jmp.dst", "jmp.src", "ldx.dst", "atomic.src"):
        names += [f"reg:{role}=r{r}" for r in scalars]
    for role in ("ldx.base", "stx.base", "atomic.base", "stx.b.src", "stx.h.src", "stx.w.src"):
        names += [f"reg:{role}=r{r}" for r in regs]
    names += [f"reg:stx.dw.src=r{r}" for r in regs]
    for where in ("alu.reg", "jmp.reg"):
        names += [f"val:{where}:{c}" for c in _VALUE_CLASSES]
    # an immediate is a sign-extended s32: never u32max, s64max or s64min
    imm_classes = [c for c in _VALUE_CLASSES if c not in ("u32max", "s64max", "s64min")]
    for where in ("alu.imm", "jmp.imm"):
        names += [f"val:{where}:{c}" for c in imm_classes]
    names += [
        "val:jmp.reg:equal",
        "val:jmp32.reg:equal",
        "val:jmp.imm:equal",
        "val:jmp32.imm:equal",
        "val:jmp.reg:lo_equal_hi_differ",
        "val:alu.reg:equal",
    ]
    for op in ("div", "mod", "sdiv", "smod"):
        names += [f"val:{op}.reg:divisor=0", f"val:{op}.reg:divisor=-1"]
    for w in ("alu32", "alu64"):
        for op in ("lsh", "rsh", "arsh"):
            names += [f"val:{w}.{op}.imm:0", f"val:{w}.{op}.imm:width-1"]
    return tuple(dict.fromkeys(names))


_VALUE_CLASSES = (
    "0",
    "1",
    "-1",
    *(f"{k}{b}{m}" for b in (8, 16, 32) for k, m in (("s", "max"), ("s", "min"), ("u", "max"))),
    "s64max",
    "s64min",
    "pow2",
    "pow2-1",
    "pow2+1",
)


@lru_cache(maxsize=8192)
def _classes(v: int, w: int) -> tuple[str, ...]:
    """Boundary classes of ``v`` as a ``w``-bit operand."""
    mask = (1 << w) - 1
    v &= mask
    out = []
    if v == 0:
        out.append("0")
    elif v == 1:
        out.append("1")
    elif v == mask:
        out.append("-1")
    for b in (8, 16, 32, 64):
        if b > w:
            break
        smax = (1 << (b - 1)) - 1
        if v == smax:
            out.append(f"s{b}max")
        if v == smax + 1 or v == (-(smax + 1)) & mask:
            out.append(f"s{b}min")
        if b < w and v == (1 << b) - 1:
            out.append(f"u{b}max")
    if v > 1 and not v & (v - 1):
        out.append("pow2")
    elif v > 2 and not (v + 1) & v:
        out.append("pow2-1")
    elif v > 3 and not (v - 1) & (v - 2):
        out.append("pow2+1")
    return tuple(out)


_STATIC: dict[tuple[int, int, int, int, int], tuple[str, ...]] = {}


def _static(i: isa.Insn) -> tuple[str, ...]:
    """The names ``i`` reaches whatever the values: its form, the form with
    its destination's (or base's) class, its registers' roles. Cached: a
    census runs on every generated system."""
    op, c = i.opcode, i.opcode & 0x07
    imm = i.imm if c == isa.STX or op & 0xF0 == isa.END else 0
    key = (op, i.dst, i.src, i.off, imm)
    names = _STATIC.get(key)
    if names is not None:
        return names
    if op == isa.JMP | isa.CALL:
        form = ("call.helper", "call.bpf", "call.kfunc")[min(i.src, 2)]
    elif op == isa.LD_IMM64:
        form = ("ld_imm64", "ld_imm64.map_fd", "ld_imm64.map_value")[min(i.src, 2)]
    else:
        form = next((n for n, o, m in _forms(op) if o in (-1, i.off) and m in (-1, i.imm)), "other")
    out = [f"isa:{form}"]
    code, d, s = op & 0xF0, f"r{i.dst}", f"r{i.src}"
    if c in (isa.JMP, isa.JMP32) and code in (isa.CALL, isa.EXIT, isa.JA):
        pass
    elif c in (isa.ALU, isa.ALU64, isa.JMP, isa.JMP32):
        role = "alu" if c in (isa.ALU, isa.ALU64) else "jmp"
        out += [f"isa:{form}/{REG_CLASS[i.dst]}", f"reg:{role}.dst={d}"]
        if op & isa.X and code not in (isa.END, isa.NEG):
            out.append(f"reg:{role}.src={s}")
    elif c == isa.LDX:
        out += [f"isa:{form}/{REG_CLASS[i.dst]}", f"reg:ldx.dst={d}", f"reg:ldx.base={s}"]
    elif c == isa.ST:
        out += [f"isa:{form}/{REG_CLASS[i.dst]}", f"reg:stx.base={d}"]
    elif c == isa.STX and op & 0xE0 == isa.ATOMIC:
        out += [f"isa:{form}/{REG_CLASS[i.dst]}", f"reg:atomic.base={d}", f"reg:atomic.src={s}"]
    elif c == isa.STX:
        out += [f"isa:{form}/{REG_CLASS[i.dst]}", f"reg:stx.base={d}", f"reg:{form}.src={s}"]
    elif op == isa.LD_IMM64:
        out.append(f"isa:{form}/{REG_CLASS[i.dst]}")
    names = _STATIC[key] = tuple(out)
    return names


def census(case: Case, names: set[str]) -> None:
    """Add the ISA shapes ``case`` contains to ``names`` (see the module doc)."""
    contents: dict[int, bytes] = {}
    for k, m in enumerate(case.maps.values()):
        if m.kind == "array" and m.max_entries == 1 and isinstance(m.init.get(0), bytes):
            contents[k] = m.init[0]
    ctx = case.ctx
    add, update = names.add, names.update
    ALU, ALU64, JMP, JMP32, LDX, STX = isa.ALU, isa.ALU64, isa.JMP, isa.JMP32, isa.LDX, isa.STX
    X, MOV, ADD, CALL = isa.X, isa.MOV, isa.ADD, isa.CALL
    for prog in case.programs.values():
        insns = prog.insns
        labels = prog.labels
        starts = {isa.jump_target(pc, i) for pc, i in enumerate(insns) if isa.is_jump(i)}
        starts.update(labels)
        # register -> ("k", value) | ("u", id) | ("p", region, offset):
        # constants, values known only by identity, pointers
        regs: list = [None] * 11
        fresh = 0
        pc = 0
        n = len(insns)
        while pc < n:
            i = insns[pc]
            if pc in starts:
                regs = [None] * 10 + [("p", "fp", 0)]
                if pc in labels:
                    regs[1] = ("p", "ctx", 0)  # or an argument: only loads use it
            update(_static(i))
            op = i.opcode
            c, code, dst = op & 0x07, op & 0xF0, i.dst
            if op == isa.LD_IMM64:
                hi = insns[pc + 1].imm & 0xFFFFFFFF if pc + 1 < n else 0
                if i.src == 0:
                    regs[dst] = ("k", (hi << 32) | (i.imm & 0xFFFFFFFF))
                elif i.src == isa.PSEUDO_MAP_VALUE:
                    regs[dst] = ("p", i.imm, hi)
                else:
                    regs[dst] = None
                pc += 2
                continue
            if c == ALU or c == ALU64:
                w = 64 if c == ALU64 else 32
                d = regs[dst]
                if op & X:
                    s = regs[i.src]
                    if code != MOV and (i.src == dst or (s is not None and s == d)):
                        add("val:alu.reg:equal")
                    if s is not None and code != MOV:
                        if s[0] == "k":
                            update(_reg_names("alu", code, i.off, s[1], w))
                elif code != isa.END and code != isa.NEG:
                    update(_imm_names("alu", code, i.imm, w))
                if code == MOV and not i.off and (w == 64 or not op & X):
                    regs[dst] = regs[i.src] if op & X else ("k", i.imm & ((1 << w) - 1))
                elif code == ADD and not op & X and d is not None and d[0] == "p":
                    regs[dst] = ("p", d[1], d[2] + i.imm)
                else:
                    fresh += 1
                    regs[dst] = ("u", fresh)
            elif c == JMP or c == JMP32:
                if code == CALL:
                    for r in range(6):
                        fresh += 1
                        regs[r] = ("u", fresh)
                if code == CALL or code == isa.EXIT or code == isa.JA:
                    pc += 1
                    continue
                w = 64 if c == JMP else 32
                j = "jmp" if w == 64 else "jmp32"
                d = regs[dst]
                dk = d is not None and d[0] == "k"
                if dk:
                    update(_classes_named("jmp.reg", d[1], w))
                if op & X:
                    s = regs[i.src]
                    if i.src == dst or (s is not None and s == d):
                        add(f"val:{j}.reg:equal")
                    elif dk and s is not None and s[0] == "k":
                        a, b = d[1] & ((1 << w) - 1), s[1] & ((1 << w) - 1)
                        if a == b:
                            add(f"val:{j}.reg:equal")
                        elif w == 64 and a & 0xFFFFFFFF == b & 0xFFFFFFFF:
                            add("val:jmp.reg:lo_equal_hi_differ")
                    if s is not None and s[0] == "k":
                        update(_classes_named("jmp.reg", s[1], w))
                else:
                    update(_classes_named("jmp.imm", i.imm & _U64, w))
                    if dk and (d[1] ^ i.imm) & ((1 << w) - 1) == 0:
                        add(f"val:{j}.imm:equal")
            elif c == LDX:
                b = regs[i.src]
                v = None
                if b is not None and b[0] == "p":
                    size = isa.SIZE_BYTES[op & 0x18]
                    where = b[2] + i.off
                    data = ctx if b[1] == "ctx" else contents.get(b[1])
                    if data is not None and 0 <= where and where + size <= len(data):
                        v = int.from_bytes(data[where : where + size], "little")
                        if op & 0xE0 == isa.MEMSX and v >> (8 * size - 1):
                            v = (v - (1 << (8 * size))) & _U64
                if v is None:
                    fresh += 1
                    regs[dst] = ("u", fresh)
                else:
                    regs[dst] = ("k", v)
            elif c == STX and op & 0xE0 == isa.ATOMIC:
                b = regs[dst]
                if b is not None and b[0] == "p" and b[1] != "ctx":
                    add(_static(i)[0] + ("@stack" if b[1] == "fp" else "@map"))
                r = 0 if i.imm == isa.CMPXCHG else i.src if i.imm & isa.FETCH else None
                if r is not None:
                    fresh += 1
                    regs[r] = ("u", fresh)
            pc += 1


@lru_cache(maxsize=8192)
def _classes_named(where: str, v: int, w: int) -> tuple[str, ...]:
    return tuple(f"val:{where}:{k}" for k in _classes(v, w))


@lru_cache(maxsize=8192)
def _reg_names(role: str, code: int, off: int, v: int, w: int) -> tuple[str, ...]:
    """Value names of a known register source of an ALU op."""
    out = list(_classes_named(f"{role}.reg", v, w))
    if code == isa.DIV or code == isa.MOD:
        op = ("s" if off == 1 else "") + ("div" if code == isa.DIV else "mod")
        v &= (1 << w) - 1
        if v == 0:
            out.append(f"val:{op}.reg:divisor=0")
        elif v == (1 << w) - 1:
            out.append(f"val:{op}.reg:divisor=-1")
    return tuple(out)


@lru_cache(maxsize=8192)
def _imm_names(role: str, code: int, imm: int, w: int) -> tuple[str, ...]:
    """Value names of an ALU immediate."""
    out = list(_classes_named(f"{role}.imm", imm & _U64, w))
    if code in _SHIFTS:
        name = f"alu{w}.{_ALU_NAMES[code]}"
        if imm == 0:
            out.append(f"val:{name}.imm:0")
        elif imm == w - 1:
            out.append(f"val:{name}.imm:width-1")
    return tuple(out)


#: Every ISA shape the default generator must reach: the forms of every
#: opcode in ``isa.OPCODES`` (legacy packet loads aside), each with every
#: register class as destination (as base for stores), every register in
#: every role the verifier allows, and the value classes of issue #12.
ISA_SHAPES: tuple[str, ...] = _required()
