"""Plain code generation: every instruction of the ISA table
(``harness.formats.isa``) in the operand forms the JITs special-case, as
statements among the control-transfer ones.

ALU and ALU64, immediate and register source, signed div/mod, divisors that
are zero or -1 at run time, shifts by 0 and width - 1 and by register, neg,
movsx, le/be/bswap; JMP and JMP32 on every condition against an immediate or
a register, often equal at run time, with an else branch behind goto or
gotol; loads (sign-extending ones too) and stores of every size from and to
the stack, the ``data`` map value and (raw_tp) ctx, through base registers of
every encoding class, with r0-r10 as the source of stores; every atomic, 32
and 64 bit, on the stack and on map values.

Validity by construction (the 6.18 verifier): a statement gives each register
it reads a scalar first (r0-r5 are dead between statements; r6-r9 hold
scalars, except r6 while it holds ctx, which only ever serves as a load base);
ALU never sees a pointer, so no 32-bit pointer arithmetic and no pointer in
r0; immediate divisors are never 0 and immediate shifts stay below the width;
stack accesses use the slots the prologue initialised, size-aligned (atomics
too); a pointer parked in one of r6-r9 for a map access is replaced by a load
before the statement ends; r10 is never written, and when it is stored (the
encoding that needs REX for its low byte) the slot is overwritten with a
scalar straight after, so no address ever reaches a value the engines compare.
Branch operands are loaded at run time: against a constant the verifier knows
the outcome and hard-wires the jump, so the JIT would never see it.
"""

from __future__ import annotations

from generators import stack
from generators.edges import EDGES, U64, edge_imm32, edge_shift, edge_u64, s32
from generators.emit import R0, R1, R2, R3, R4, R5, R6, R10
from generators.plan import FnState
from generators.values import load_runtime
from harness.formats import isa

__all__ = ["ALU_FORMS", "CONDITIONS", "emit_alu", "emit_branch", "emit_memory", "emit_atomic"]

SCRATCH = (R0, R1, R2, R3, R4, R5)

#: ALU forms, simplest first: name -> (op, off).
ALU_FORMS: dict[str, tuple[int, int]] = {
    "add": (isa.ADD, 0),
    "sub": (isa.SUB, 0),
    "mul": (isa.MUL, 0),
    "or": (isa.OR, 0),
    "and": (isa.AND, 0),
    "xor": (isa.XOR, 0),
    "mov": (isa.MOV, 0),
    "lsh": (isa.LSH, 0),
    "rsh": (isa.RSH, 0),
    "arsh": (isa.ARSH, 0),
    "neg": (isa.NEG, 0),
    "div": (isa.DIV, 0),
    "mod": (isa.MOD, 0),
    "sdiv": (isa.DIV, 1),
    "smod": (isa.MOD, 1),
    "movsx": (isa.MOV, 8),
    "end": (isa.END, 0),
}
#: forms with many variants come up more often: end has nine (le/be/bswap x
#: 16/32/64), movsx five
_FORMS = (*ALU_FORMS, "end", "end", "movsx")
#: a cpu v4 form's older sibling (Config.cpu_v4 off)
_V3_FORMS = {"sdiv": "div", "smod": "mod", "movsx": "mov"}

#: every jump condition, simplest first.
CONDITIONS = (
    isa.JEQ,
    isa.JNE,
    isa.JGT,
    isa.JGE,
    isa.JLT,
    isa.JLE,
    isa.JSGT,
    isa.JSGE,
    isa.JSLT,
    isa.JSLE,
    isa.JSET,
)

_ATOMICS = tuple(isa.ATOMIC_OPS)


def _writable(st: FnState) -> list[int]:
    """Registers a statement may write: r0-r5 and the function's scalars
    (never r10, never r6 while it holds ctx)."""
    return [*SCRATCH, *st.scalars]


def _value(st: FnState, reg: int, ready: set[int], base: int | None = None) -> int | None:
    """Give ``reg`` a scalar unless it holds one already (``ready``): an edge
    constant (mov, mov32 or ld_imm64), a run-time value, or a copy of a
    scalar (not of ``base``, which holds a pointer for the moment). Returns
    the value when the generator knows it."""
    draw, fn = st.draw, st.fn
    options = ("keep", "const", "runtime", "copy") if reg in ready else ("const", "runtime", "copy")
    kind = draw.choice(options)
    ready.add(reg)
    if kind == "keep":
        return None
    if kind == "copy":
        src = draw.choice([r for r in st.scalars if r != base] or [reg])
        if src != reg:
            fn.mov(reg, src)
        return None
    if kind == "runtime":
        signed = draw.boolean(0.3) and st.sp.config.cpu_v4
        return load_runtime(st, reg, signed=signed)[1]
    v = edge_u64(draw)
    form = draw.integer(0, 2)
    if form == 0:
        fn.mov(reg, imm=s32(v))  # sign-extends
        return s32(v) & U64
    if form == 1:
        fn.mov(reg, imm=s32(v), w64=False)  # zero-extends
        return v & 0xFFFFFFFF
    fn.ld64(reg, v)
    return v


def _data_place(st: FnState, want: int) -> tuple[str, int, int, bool] | None:
    """A place in ``data`` whose first-run value is ``want`` (0 or -1 as
    a divisor the verifier cannot see), or None."""
    data = st.sp.data_init
    for size in (8, 4, 2, 1):
        if len(data) % size:
            continue
        for off in range(0, len(data) - size + 1, size):
            v = int.from_bytes(data[off : off + size], "little")
            if v == 0 == want:
                return ("data", off, size, False)
            # -1 from a narrower place needs a sign-extending load (cpu v4)
            if want and v == (1 << (8 * size)) - 1 and (size == 8 or st.sp.config.cpu_v4):
                return ("data", off, size, size < 8)
    return None


def _mix(st: FnState, reg: int) -> None:
    """Fold a result into a scalar, so the function's return value shows it."""
    if reg not in st.scalars:
        st.fn.alu(st.draw.choice((isa.ADD, isa.XOR)), st.draw.choice(st.scalars), reg)


# ---- ALU ---------------------------------------------------------------------


def emit_alu(st: FnState) -> None:
    draw, fn = st.draw, st.fn
    ready = set(st.scalars)
    form = draw.choice(_FORMS)
    if not st.sp.config.cpu_v4:
        form = _V3_FORMS.get(form, form)
    op, off = ALU_FORMS[form]
    w64 = draw.boolean()
    if op in (isa.DIV, isa.MOD) and not st.sp.config.jit_alu64_divmod:
        w64 = False
    width = 64 if w64 else 32
    dst = draw.choice(_writable(st))
    _value(st, dst, ready)
    if form == "neg":
        fn.alu(isa.NEG, dst, w64=w64)
    elif form == "end":
        kind = draw.choice(("le", "be", "bswap"))
        if kind == "bswap" and not st.sp.config.cpu_v4:
            kind = "le"
        fn.end(dst, draw.choice((16, 32, 64)), kind)
    elif form == "movsx":
        src = draw.choice(_writable(st))
        _value(st, src, ready)
        fn.alu(isa.MOV, dst, src, w64=w64, off=draw.choice((8, 16, 32) if w64 else (8, 16)))
    elif draw.boolean():
        src = draw.choice(_writable(st))
        place = None
        if op in (isa.DIV, isa.MOD) and src != dst and draw.boolean(0.6):
            # the divisors the JITs special-case, unknown to the verifier
            # when a data word holds them (it allows a register divisor it
            # cannot prove non-zero), else as constants
            want = draw.choice((0, U64))
            place = _data_place(st, want)
            if place is None:
                fn.mov(src, imm=s32(want))
            else:
                load_runtime(st, src, at=place[:3], signed=place[3])
            ready.add(src)
        else:
            _value(st, src, ready)
        fn.alu(op, dst, src, w64=w64, off=off)
    elif op in (isa.LSH, isa.RSH, isa.ARSH):
        fn.alu(op, dst, imm=edge_shift(draw, width), w64=w64)
    else:
        imm = edge_imm32(draw)
        if op in (isa.DIV, isa.MOD) and imm == 0:
            imm = -1  # the verifier refuses a division by an immediate zero
        fn.alu(op, dst, imm=imm, w64=w64, off=off)
    _mix(st, dst)


# ---- branches ----------------------------------------------------------------


def emit_branch(st: FnState, body=None) -> None:
    """``if a <cond> b goto else; body; [goto(l) end; else: body;] end:``
    with ``a`` loaded at run time and ``b`` an immediate or a register,
    often equal to ``a`` at run time (``>`` and ``>=`` differ only there).
    ``body``: emitters for the branch bodies (never calls: a subprogram
    called only from a branch the verifier finds dead would be dead too)."""
    draw, fn = st.draw, st.fn
    ready = set(st.scalars)
    cond = draw.choice(CONDITIONS)
    jmp32 = draw.boolean()
    dst = draw.choice(_writable(st))
    signed = draw.boolean(0.3) and st.sp.config.cpu_v4
    _, known, place = load_runtime(st, dst, signed=signed)
    ready.add(dst)
    other = fn.new_label()
    if draw.boolean():
        src = draw.choice(_writable(st))
        if src != dst:
            # the same place again (equal, and the verifier cannot tell),
            # another run-time value, the value itself or one whose low half
            # agrees and high half differs (jmp and jmp32 disagree), an edge
            how = draw.choice(("same", "runtime", "known", "half", "edge", "imm"))
            if how == "same":
                load_runtime(st, src, at=place, signed=signed)
            elif how == "runtime":
                load_runtime(st, src)
            elif how == "known" and known is not None:
                fn.ld64(src, known)
            elif how == "half" and known is not None:
                fn.ld64(src, known ^ ((edge_u64(draw) | 1) << 32) & U64)
            elif how == "imm":
                fn.mov(src, imm=edge_imm32(draw))
            else:
                fn.ld64(src, draw.choice(EDGES))
        fn.jump(cond, dst, other, src=src, jmp32=jmp32)
    else:
        if known is not None and draw.boolean(0.6):
            imm = s32(known + draw.choice((0, 0, 1, -1)))
        else:
            imm = edge_imm32(draw)
        fn.jump(cond, dst, other, imm=imm, jmp32=jmp32)
    body = body or (emit_alu,)
    draw.choice(body)(st)
    if draw.boolean(0.4):
        end = fn.new_label()
        fn.goto(end, long=draw.boolean() and st.sp.config.cpu_v4)
        fn.label(other)
        draw.choice(body)(st)
        fn.label(end)
    else:
        fn.label(other)


# ---- loads and stores --------------------------------------------------------


def _piece(st: FnState, sizes: tuple[int, ...]) -> tuple[int, int] | None:
    """An initialised, aligned stack piece of one of ``sizes`` bytes."""
    draw = st.draw
    pieces = [(o, s) for o, s in stack.readable(st.stack) if s >= min(sizes)]
    if not pieces:
        return None
    off, size = draw.choice(pieces)
    s = draw.choice([x for x in sizes if x <= size])
    return off + s * draw.integer(0, size // s - 1), s


def _stack_base(st: FnState, avoid: set[int]) -> int:
    """r10, or a copy of it in one of r1-r5 (another base encoding)."""
    draw = st.draw
    if draw.boolean(0.6):
        return R10
    base = draw.choice([r for r in (R1, R2, R3, R4, R5) if r not in avoid])
    st.fn.mov(base, R10)
    return base


def _data_base(st: FnState, avoid: set[int], off: int) -> tuple[int, int]:
    """A register holding &data + k, and the access offset from it."""
    draw = st.draw
    base = draw.choice([r for r in _writable(st) if r not in avoid])
    k = draw.choice((off, 0))
    st.fn.map_value(base, "data", k)
    return base, off - k


def _restore(st: FnState, base: int, off: int, size: int) -> None:
    """A scalar register that held a map pointer for one access gets a
    scalar again (the value there)."""
    if base in st.scalars:
        st.fn.ldx(size, base, base, off)


def emit_memory(st: FnState) -> None:
    sp, draw, fn = st.sp, st.draw, st.fn
    targets = ["data"]
    if st.stack.depth:
        targets.append("stack")
    if sp.ptype == "raw_tp" and st.has_ctx and sp.on("ctx_reads"):
        targets.append("ctx")
    target = draw.choice(targets)
    kind = draw.choice(("ldx", "stx", "st", "ldsx")) if target != "ctx" else "ldx"
    if kind == "ldsx" and not sp.config.cpu_v4:
        kind = "ldx"
    ready = set(st.scalars)
    if target == "data":
        sp.used_maps.add("data")
    if target == "ctx":
        size = draw.choice((8, 4, 2, 1))
        off = size * draw.integer(0, len(sp.ctx) // size - 1)
        base = R6
        if draw.boolean():
            base = draw.choice((R1, R2, R3, R4, R5))
            fn.mov(base, R6)
        dst = draw.choice(_writable(st))
        fn.ldx(size, dst, base, off)
        _mix(st, dst)
        return
    sizes = (4, 2, 1) if kind == "ldsx" else (8, 4, 2, 1)
    if target == "stack":
        off, size = _piece(st, sizes)
        if kind == "stx" and size == 8 and draw.boolean(0.3):
            return _spill_fp(st, off)
        base = _stack_base(st, set())
    else:
        size = draw.choice([s for s in sizes if s <= sp.data_size])
        a = size * draw.integer(0, sp.data_size // size - 1)
        base, off = _data_base(st, set(), a)
    if kind in ("ldx", "ldsx"):
        dst = draw.choice(_writable(st))
        (fn.ldsx if kind == "ldsx" else fn.ldx)(size, dst, base, off)
        if dst != base:
            _restore(st, base, off, size)
        _mix(st, dst)
        return
    t = None
    if kind == "st":
        fn.st(size, base, off, edge_imm32(draw))
    elif target == "data" and size < 8 and draw.boolean(0.3):
        # the low bytes of r10 (bpl needs REX): into a map value, since the
        # verifier refuses a partial pointer spill to the stack. Read back
        # masked to the low three bits (zero: every engine's frame pointer
        # is 8-byte aligned), then a scalar over it: no address stays there
        fn.stx(size, base, off, R10)
        t = draw.choice([r for r in _writable(st) if r != base])
        fn.ldx(size, t, base, off)
        fn.alu(isa.AND, t, imm=7)
        fn.stx(size, base, off, draw.choice([r for r in st.scalars if r not in (base, t)]))
    else:
        src = draw.choice([r for r in _writable(st) if r != base])
        _value(st, src, ready, base)
        fn.stx(size, base, off, src)
    _restore(st, base, off, size)
    if t is not None:
        _mix(st, t)


def _spill_fp(st: FnState, off: int) -> None:
    """``*(u64 *)(r10 + off) = r10``, loaded back and used as the frame
    pointer it is (a load through it); then a scalar over the slot, so no
    later load sees an address."""
    draw, fn = st.draw, st.fn
    fn.stx(8, R10, off, R10)
    others = [(o, s) for o, s in stack.readable(st.stack) if o + s <= off or o >= off + 8]
    if others:
        t = draw.choice(_writable(st))
        p = draw.choice([r for r in SCRATCH if r != t])
        o, s = draw.choice(others)
        fn.ldx(8, p, R10, off)
        fn.ldx(s, t, p, o)
        _mix(st, t)
    fn.stx(8, R10, off, draw.choice(st.scalars))


# ---- atomics -----------------------------------------------------------------


def emit_atomic(st: FnState) -> None:
    sp, draw, fn = st.sp, st.draw, st.fn
    ready = set(st.scalars)
    op = draw.choice(_ATOMICS)
    size = draw.choice((8, 4))
    cmpxchg = op == isa.CMPXCHG
    avoid = {R0} if cmpxchg else set()
    piece = _piece(st, (size,)) if st.stack.depth else None
    if piece is not None and draw.boolean():
        off = piece[0]
        base = _stack_base(st, avoid)
    else:
        sp.used_maps.add("data")
        a = size * draw.integer(0, sp.data_size // size - 1)
        base, off = _data_base(st, avoid, a)
    src = draw.choice([r for r in _writable(st) if r != base])
    _value(st, src, ready, base)
    if cmpxchg and src != R0:
        # r0 is the expected value: often what is there, so the swap happens
        if draw.boolean():
            fn.ldx(size, R0, base, off)
        else:
            _value(st, R0, ready, base)
    fn.atomic(size, base, off, src, op)
    results = [R0] if cmpxchg else [src] if op & isa.FETCH else []
    if draw.boolean(0.5):
        t = draw.choice([r for r in _writable(st) if r not in (base, *results)])
        fn.ldx(size, t, base, off)
        results.append(t)
    # the base first: a result folded into a scalar that still held the
    # map pointer would be pointer arithmetic
    _restore(st, base, off, size)
    for r in results:
        _mix(st, r)
