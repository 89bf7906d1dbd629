"""Values the verifier cannot know: loaded from a map value, the run counter
or (raw_tp) ctx. Conditions and computed tail-call keys are built on them, so
both sides of every branch stay reachable for the verifier (no dead code, no
dead subprograms) while the run itself stays deterministic.
"""

from __future__ import annotations

from generators.emit import R6
from generators.plan import FnState
from harness.formats import isa

__all__ = ["load_unknown", "emit_condition"]


def load_unknown(st: FnState, dst: int, *, sources: tuple[str, ...] | None = None) -> int:
    """Emit ``dst = <run-time value>``; returns its width in bytes."""
    sp, draw, fn = st.sp, st.draw, st.fn
    options = ["data", "counter"]
    if sp.ptype == "raw_tp" and st.has_ctx and sp.on("ctx_reads"):
        options.append("ctx")
    if sources is not None:
        options = [o for o in options if o in sources] or ["data"]
    src = draw.choice(options)
    size = draw.choice((1, 4, 2, 8))
    if src == "ctx" and size <= len(sp.ctx):
        off = size * draw.integer(0, len(sp.ctx) // size - 1)
        fn.ldx(size, dst, R6, off)
        return size
    if src == "counter":
        sp.used_maps.add("counts")
        fn.map_value(dst, "counts", 8 * st.prog)
        fn.ldx(8, dst, dst, 0)
        return 8
    sp.used_maps.add("data")
    size = min(size, sp.data_size)
    while sp.data_size % size and size > 1:
        size //= 2
    off = size * draw.integer(0, sp.data_size // size - 1)
    fn.map_value(dst, "data", off)
    fn.ldx(size, dst, dst, 0)
    return size


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
