"""Values the verifier cannot know: loaded from a map value, the run counter
or (raw_tp) ctx. Conditions and computed tail-call keys are built on them, so
both sides of every branch stay reachable for the verifier (no dead code, no
dead subprograms) while the run itself stays deterministic.
"""

from __future__ import annotations

from generators.emit import R6
from generators.plan import FnState
from harness.formats import isa

__all__ = ["load_unknown", "load_runtime", "emit_condition"]


def load_unknown(st: FnState, dst: int, *, sources: tuple[str, ...] | None = None) -> int:
    """Emit ``dst = <run-time value>``; returns its width in bytes."""
    return load_runtime(st, dst, sources=sources)[0]


def load_runtime(
    st: FnState,
    dst: int,
    *,
    sources: tuple[str, ...] | None = None,
    at: tuple[str, int, int] | None = None,
    signed: bool = False,
) -> tuple[int, int | None, tuple[str, int, int]]:
    """Emit ``dst = <run-time value>`` (``signed``: a sign-extending load, 1-4
    bytes). Returns (width in bytes, the value as the first run sees it when
    the generator knows it, the place (source, offset, width)); ``at``: load
    that place again (two loads of one place compare equal at run time, and
    the verifier cannot tell)."""
    sp, draw, fn = st.sp, st.draw, st.fn
    if at is None:
        options = ["data", "counter"]
        if sp.ptype == "raw_tp" and st.has_ctx and sp.on("ctx_reads"):
            options.append("ctx")
        if sources is not None:
            options = [o for o in options if o in sources] or ["data"]
        src = draw.choice(options)
        size = draw.choice((1, 4, 2, 8))
        if signed and size == 8:
            size = 4
        off = None
    else:
        src, off, size = at
    load = fn.ldsx if signed else fn.ldx
    if src == "ctx" and size <= len(sp.ctx):
        if off is None:
            off = size * draw.integer(0, len(sp.ctx) // size - 1)
        # sign-extending loads from ctx are not for every program type: the
        # verifier's raw_tp access check never sees them, so load and extend
        fn.ldx(size, dst, R6, off)
        if signed:
            fn.alu(isa.MOV, dst, dst, off=8 * size)
        return size, _known(sp.ctx, off, size, signed), (src, off, size)
    if src == "counter":
        sp.used_maps.add("counts")
        fn.map_value(dst, "counts", 8 * st.prog)
        fn.ldx(8, dst, dst, 0)
        return 8, None, ("counter", 0, 8)
    sp.used_maps.add("data")
    if off is None:
        size = min(size, sp.data_size)
        while sp.data_size % size and size > 1:
            size //= 2
        off = size * draw.integer(0, sp.data_size // size - 1)
    fn.map_value(dst, "data", off)
    load(size, dst, dst, 0)
    return size, _known(sp.data_init, off, size, signed), ("data", off, size)


def _known(data: bytes, off: int, size: int, signed: bool) -> int:
    v = int.from_bytes(data[off : off + size], "little")
    if signed and v >> (8 * size - 1):
        v -= 1 << (8 * size)
    return v & ((1 << 64) - 1)


def emit_condition(st: FnState, reg: int, label: str) -> None:
    """``if <reg: a run-time value> ... goto label``, taken about half the time."""
    draw, fn = st.draw, st.fn
    width = load_unknown(st, reg)
    kind = draw.choice(("jset", "jgt", "jeq", "jne"))
    if kind == "jset":
        fn.jump(isa.JSET, reg, label, imm=1 << draw.integer(0, min(8 * width, 31) - 1))
    elif kind == "jgt":
        top = (1 << min(8 * width, 31)) - 1
        fn.jump(isa.JGT, reg, label, imm=draw.integer(0, top) if width > 1 else 127)
    else:
        fn.jump(isa.JEQ if kind == "jeq" else isa.JNE, reg, label, imm=draw.integer(0, 3))
