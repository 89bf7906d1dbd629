"""Prog-array graphs, tail-call sites and the scripts that poke the slots.

The graph is the prog array's slot table over the system's programs: self
loops and cycles (a self loop reaches the 33-call limit), empty slots, and
per call site a key that is direct (``r3 = K`` right before the call, as the
kernel needs for its patched direct jumps), empty, out of range, above 2^32
(``r3 = (1 << 32) | k`` through ld_imm64: the index is u32, so it hits slot
k) or computed at run time (from a map value, ctx or the run counter).
"""

from __future__ import annotations

from generators.edges import edge_bytes
from generators.emit import R0, R1, R2, R3, R6
from generators.plan import FnState, SystemPlan, imm32
from generators.values import load_unknown
from harness.formats import isa
from harness.reference.helpers import TAIL_CALL
from harness.system import Step

__all__ = ["draw_slots", "emit_tail_call", "draw_script"]


def draw_slots(draw, config, features, n_progs: int) -> list[int | None]:
    """Slot -> program index (None: empty). Slot 0 -> p0 is the simplest
    table: the entry program tail-calls itself.

    Programs are renumbered so that every one but the entry is in some slot:
    a program no slot held ran only if a script update happened to insert it,
    and programs held by neither were 19% of all generated instructions,
    generated, compiled and mapped for nothing. The renumbering keeps the
    first-drawn order, so a table that shrinks towards p0 shrinks the system
    with it."""
    m = draw.integer(1, config.max_prog_array_size)
    slots: list[int | None] = []
    for _ in range(m):
        if "empty_slots" in features and draw.boolean(0.3):
            slots.append(None)
        else:
            slots.append(draw.integer(0, n_progs - 1))
    index = {0: 0}
    for v in slots:
        if v is not None and v not in index:
            index[v] = len(index)
    return [None if v is None else index[v] for v in slots]


def emit_tail_call(st: FnState, onward: int | None = None) -> None:
    """``bpf_tail_call(ctx = r6, &progs, key)``; on failure execution falls
    through with r0-r5 unreadable (r6-r9 survive). ``onward``: a direct
    call to that slot."""
    sp, draw, fn = st.sp, st.draw, st.fn
    slots = sp.slots
    m = len(slots)
    filled = [k for k, v in enumerate(slots) if v is not None]
    empty = [k for k, v in enumerate(slots) if v is None]
    kinds = ["direct"]
    if empty and sp.on("empty_slots"):
        kinds.append("empty")
    if sp.on("out_of_range"):
        kinds.append("out_of_range")
    if sp.on("big_index"):
        kinds.append("big_index")
    if sp.on("indirect_tail_calls"):
        kinds.append("indirect")
    kind = "onward" if onward is not None else draw.choice(kinds)
    sp.used_maps.add("progs")
    if kind == "indirect":
        load_unknown(st, R3)
        mask = draw.choice((7, 3, 1, 15, 0xFF, 0xFFFFFFFF))
        if mask != 0xFFFFFFFF:
            fn.alu(isa.AND, R3, imm=mask)
    if draw.boolean(0.2):
        # a live r0 at the tail call: the target must not see it (BREG)
        fn.mov(R0, imm=imm32(draw))
    fn.mov(R1, R6)
    fn.map_ptr(R2, "progs")
    if kind == "direct":
        key = draw.choice(filled) if filled and draw.boolean(0.75) else draw.integer(0, m - 1)
        sp.direct_keys.add(key)
        fn.mov(R3, imm=key)
    elif kind == "onward":
        sp.direct_keys.add(onward)
        fn.mov(R3, imm=onward)
    elif kind == "empty":
        key = draw.choice(empty)
        sp.direct_keys.add(key)
        fn.mov(R3, imm=key)
    elif kind == "out_of_range":
        # mov imm sign-extends: -1 is index 0xffffffff
        fn.mov(R3, imm=draw.choice((m, m + 1, -1, 0x7FFFFFFF, 255)))
    elif kind == "big_index":
        k = draw.integer(0, m - 1)
        hi = draw.choice((1, 0xFFFFFFFF, 0x80000000, 2))
        fn.ld64(R3, (hi << 32) | k)
    fn.helper(TAIL_CALL)
    st.plan.has_tail_call = True


def draw_script(sp: SystemPlan) -> list[Step]:
    """Run the entry program, then (with ``pokes``) change slots and data
    between runs: the full poke cycle run, update, run, delete, run,
    re-insert, run on a slot a direct tail call uses, plus random steps."""
    draw, names = sp.draw, sp.prog_names
    steps = [Step("run", program=names[0])]
    if not sp.on("pokes"):
        return steps
    limit = sp.config.max_steps
    if sp.slots is not None and "progs" in sp.used_maps and draw.boolean(0.5):
        keys = sorted(sp.direct_keys) or list(range(len(sp.slots)))
        k = draw.choice(keys)
        prog = draw.choice(names)
        steps += [
            Step("update", map="progs", key=k, value=prog),
            Step("run", program=names[0]),
            Step("delete", map="progs", key=k),
            Step("run", program=names[0]),
            Step("update", map="progs", key=k, value=prog),
            Step("run", program=names[0]),
        ]
    kinds = ["run"]
    if sp.slots is not None and "progs" in sp.used_maps:
        kinds += ["update", "delete"]
    if "data" in sp.used_maps:
        kinds.append("data")
    while draw.more(len(steps), max_size=limit, average=1.5):
        kind = draw.choice(kinds)
        if kind == "run":
            steps.append(Step("run", program=draw.choice(names)))
        elif kind == "data":
            value = edge_bytes(draw, sp.data_size)
            steps.append(Step("update", map="data", key=0, value=value))
        else:
            keys = sorted(sp.direct_keys) if sp.direct_keys and draw.boolean() else None
            k = draw.choice(keys) if keys else draw.integer(0, len(sp.slots) - 1)
            if kind == "delete":
                steps.append(Step("delete", map="progs", key=k))
            else:
                steps.append(Step("update", map="progs", key=k, value=draw.choice(names)))
    if steps[-1].kind != "run":
        steps.append(Step("run", program=names[0]))
    return steps
