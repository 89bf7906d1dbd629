"""The decisions a system is built from, shared by the builder modules.

``SystemPlan`` holds what is fixed for the whole system (features, program
type, prog array slots, map shapes, ctx); ``FnPlan`` is what a caller needs to
know about a function already built (arguments, stack, call height, whether a
tail call is reachable below it); ``FnState`` is the function being emitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from generators.config import Config
from generators.draw import Draw
from generators.edges import edge_imm32
from generators.emit import R6, R7, R8, R9, Fn

__all__ = ["SystemPlan", "FnPlan", "FnState", "frame_size", "imm32"]


def imm32(draw: Draw) -> int:
    """A signed 32-bit immediate aimed at the edges (see generators.edges);
    simplest 0."""
    return edge_imm32(draw)


def frame_size(n: int, config: Config) -> int:
    """A frame's stack as the verifier adds it up along a call chain (JIT on;
    ``Config.stack_rounding_16`` off: 6.1's interpreter granularity)."""
    if config.stack_rounding_16:
        return (n + 15) & ~15
    return (max(n, 1) + 31) & ~31


@dataclass
class SystemPlan:
    draw: Draw
    config: Config
    features: frozenset[str]
    ptype: str
    n_progs: int
    #: prog array slots -> program index (None = empty); None: no prog array.
    slots: list[int | None] | None
    ctx: bytes
    #: ``data``: one array value (max_entries 1, so ld_imm64 map_value works)
    #: holding the bytes behind every run-time-only value (conditions, keys).
    data_size: int
    data_init: bytes
    #: ``bufs``: an array written by bpf_map_update_elem from stack buffers.
    bufs_size: int
    bufs_entries: int
    used_maps: set[str] = field(default_factory=set)
    #: prog array keys used by direct (constant key) tail calls.
    direct_keys: set[int] = field(default_factory=set)
    #: programs that drew subprograms instead of tail calls
    #: (``Config.tail_calls_with_subprograms`` off).
    no_tail_calls: set[int] = field(default_factory=set)

    #: programs that drew tail calls instead of throws
    #: (``Config.tail_calls_in_throwing_programs`` off).
    no_throws: set[int] = field(default_factory=set)

    def throws_in(self, prog: int) -> bool:
        """Whether program ``prog`` may call bpf_throw (sched_cls only)."""
        return self.ptype == "sched_cls" and self.on("throws") and prog not in self.no_throws

    def tail_calls_in(self, prog: int) -> bool:
        """Whether program ``prog`` may tail-call."""
        return self.slots is not None and prog not in self.no_tail_calls

    def on(self, feature: str) -> bool:
        return feature in self.features

    @property
    def prog_names(self) -> list[str]:
        return [f"p{i}" for i in range(self.n_progs)]


@dataclass
class FnPlan:
    name: str
    takes_ctx: bool
    nargs: int
    #: verifier stack depth (deepest byte touched below fp).
    stack: int = 0
    has_tail_call: bool = False
    #: frames on the deepest call path starting here (a leaf is 1).
    height: int = 1
    #: largest sum of frame_size(stack) along a call path starting here.
    chain_stack: int = 0
    #: largest sum of frame_size(stack) of the frames above a tail-calling
    #: subprogram, on a path starting here (-1: no tail call below).
    tc_prefix: int = -1
    #: instructions the verifier walks with every call inlined.
    cost: int = 0
    callees: list[str] = field(default_factory=list)
    fn: Fn | None = None


@dataclass
class FnState:
    sp: SystemPlan
    plan: FnPlan
    fn: Fn
    prog: int
    is_main: bool
    #: registers r6-r9 that hold scalars (r6 holds ctx when the function has it).
    scalars: list[int]
    #: stack layout (see generators.stack).
    stack: object = None
    #: functions this one may call (already built, constraints checked per call).
    candidates: list[FnPlan] = field(default_factory=list)
    conds: int = 0
    #: slots of plain code (generators.insns) outside the limits on the
    #: function's size and expanded cost (systems without a prog array).
    plain: int = 0
    inlined: int = 0
    #: part of a deep program: calls prefer the tallest callee.
    deep: bool = False

    @property
    def has_ctx(self) -> bool:
        return self.is_main or self.plan.takes_ctx

    @property
    def draw(self) -> Draw:
        return self.sp.draw


SCALARS = (R7, R8, R9)
CTX_REG = R6
