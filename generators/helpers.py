"""Helper calls at counter-sensitive points.

A helper call clobbers r0-r5 (and, in a JIT, whatever caller-saved host
registers hold the tail-call counter or the private frame pointer), so one
placed between a subprogram call and a tail call, or before a stack access,
exposes a JIT that keeps state there. ``bpf_map_update_elem`` copies a stack
buffer into the ``bufs`` array: the stack's bytes end up in the map contents.
"""

from __future__ import annotations

from generators.emit import R0, R1, R2, R3, R4, R10
from generators.plan import FnState
from harness.formats import isa
from harness.reference.helpers import HELPER_IDS

__all__ = ["emit_helper", "helper_kinds"]

LOOKUP = HELPER_IDS["bpf_map_lookup_elem"]
UPDATE = HELPER_IDS["bpf_map_update_elem"]
DELETE = HELPER_IDS["bpf_map_delete_elem"]
KTIME = HELPER_IDS["bpf_ktime_get_ns"]
PRANDOM = HELPER_IDS["bpf_get_prandom_u32"]
SMP_ID = HELPER_IDS["bpf_get_smp_processor_id"]


def helper_kinds(st: FnState) -> list[str]:
    kinds = ["smp_id"]
    lay = st.stack
    if lay is not None and lay.key is not None:
        kinds += ["lookup", "delete"]
        if lay.buffer is not None:
            kinds.append("update")
    if st.sp.on("nondeterministic_helpers"):
        kinds += ["prandom", "ktime"]
    return kinds


def _mix_r0(st: FnState) -> None:
    op = st.draw.choice((isa.ADD, isa.XOR, isa.SUB))
    st.fn.alu(op, st.draw.choice(st.scalars), R0)


def emit_helper(st: FnState) -> None:
    sp, draw, fn = st.sp, st.draw, st.fn
    kind = draw.choice(helper_kinds(st))
    lay = st.stack
    if kind in ("smp_id", "prandom", "ktime"):
        fn.helper({"smp_id": SMP_ID, "prandom": PRANDOM, "ktime": KTIME}[kind])
        if kind == "ktime":
            fn.alu(isa.RSH, R0, imm=draw.integer(0, 12))
        _mix_r0(st)
        return
    key_off = lay.key[0]
    if kind == "update":
        sp.used_maps.add("bufs")
        buf_off, size = lay.buffer
        # fresh register values into the buffer right before the copy
        for _ in range(draw.integer(0, 2)):
            slots = [o for o in range(buf_off, buf_off + size - 7) if o % 8 == 0]
            if slots:
                fn.stx(8, R10, draw.choice(slots), draw.choice(st.scalars))
        fn.map_ptr(R1, "bufs")
        fn.mov(R2, R10)
        fn.alu(isa.ADD, R2, imm=key_off)
        fn.mov(R3, R10)
        fn.alu(isa.ADD, R3, imm=buf_off)
        fn.mov(R4, imm=draw.choice((0, 0, 2)))  # BPF_ANY, BPF_EXIST
        fn.helper(UPDATE)
        _mix_r0(st)
        return
    target = draw.choice(("bufs", "data", "counts")) if kind == "lookup" else "bufs"
    sp.used_maps.add(target)
    fn.map_ptr(R1, target)
    fn.mov(R2, R10)
    fn.alu(isa.ADD, R2, imm=key_off)
    if kind == "delete":
        fn.helper(DELETE)  # arrays refuse: -EINVAL
        _mix_r0(st)
        return
    fn.helper(LOOKUP)
    # the verifier insists on the NULL check before any use of the value
    skip = fn.new_label()
    fn.jump(isa.JEQ, R0, skip, imm=0)
    vsize = {"bufs": sp.bufs_size, "data": sp.data_size, "counts": 8 * sp.n_progs}[target]
    size = 4 if vsize % 8 else 8
    off = size * draw.integer(0, vsize // size - 1)
    dst = draw.choice(st.scalars)
    fn.ldx(size, R1, R0, off)
    fn.alu(isa.XOR, dst, R1)
    if draw.boolean(0.4):
        fn.stx(size, R0, off, draw.choice(st.scalars))
    fn.label(skip)
