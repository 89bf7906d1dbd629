"""bpf_throw from any depth, with and without an exception callback.

Only sched_cls programs may call bpf_throw (raw_tp loads are refused). Every
throw is conditional on a run-time value, so the code after the throwing call
stays reachable for the verifier: a subprogram the verifier proves dead is
removed, and with an exception callback laid out after it the 6.18 kernel
oopses while loading. For the same reason the callback is laid out right
after main. A throw may end a function: ``if cond goto T; ...; exit;
T: r1 = cookie; call bpf_throw; exit``. 6.18's check_subprogs still demands
exit or ja in the last slot (only its comment mentions bpf_throw), but that
exit is dead, the verifier removes it, and the JIT sees the throw last.
"""

from __future__ import annotations

from generators.emit import R0, R1, R6, R10, Fn
from generators.helpers import SMP_ID
from generators.plan import FnState, SystemPlan, imm32
from generators.values import emit_condition
from harness.formats import isa

__all__ = ["emit_throw", "emit_cookie", "build_callback", "CALLBACK"]

#: label of the exception callback (a global function with one scalar argument).
CALLBACK = "exception_cb"


def emit_cookie(st: FnState) -> None:
    if st.draw.boolean(0.6):
        st.fn.mov(R1, st.draw.choice(st.scalars))
    else:
        st.fn.mov(R1, imm=imm32(st.draw))


def emit_throw(st: FnState) -> None:
    """``if <run-time value> skip; r1 = cookie; call bpf_throw; skip:``"""
    fn = st.fn
    skip = fn.new_label()
    emit_condition(st, R0, skip)
    emit_cookie(st)
    fn.throw()
    fn.label(skip)


def build_callback(sp: SystemPlan) -> Fn:
    """The exception callback: r0 = f(cookie); may use its own stack and a
    helper (its frame replaces main's, so a JIT must rebuild it right)."""
    draw = sp.draw
    fn = Fn(CALLBACK)
    fn.mov(R6, R1)
    if draw.boolean(0.4):
        off = -8 * draw.integer(1, 8)
        fn.stx(8, R10, off, R6)
        fn.ldx(4, R1, R10, off)
        fn.alu(isa.ADD, R6, R1)
    if draw.boolean(0.3):
        fn.helper(SMP_ID)
        fn.alu(isa.ADD, R6, R0)
    fn.mov(R0, R6)
    fn.alu(draw.choice((isa.ADD, isa.XOR)), R0, imm=imm32(draw))
    fn.exit()
    return fn
