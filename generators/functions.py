"""Functions and their call DAGs: the body of every program.

A program is a list of subprograms where function i calls only functions
defined before it (so calls are acyclic, as the verifier demands, and
deleting a function is a local change), plus ``main``, which calls whichever
subprograms nothing else calls so that every subprogram is reachable. Calls
pass up to five arguments (ctx first when the callee needs it for tail calls
or ctx reads) and results flow back through r0 into the callee-saved r6-r9,
which every function mixes into its return value: a JIT that clobbers one
changes the result.

Per call the static limits are checked against what the callee already
knows about itself (``FnPlan``): call height (MAX_CALL_FRAMES), the stack
summed along the chain (512 bytes, each frame rounded to 16), the caller
frames above a tail-calling subprogram (< 256 bytes), and the instructions
the verifier walks with everything inlined.
"""

from __future__ import annotations

from generators import exceptions, helpers, insns, stack, tail_calls
from generators.edges import edge_u64
from generators.config import Config
from generators.emit import R0, R1, R2, R6, R7, R8, R9, R10, Fn
from generators.plan import FnPlan, FnState, SystemPlan, frame_size, imm32
from generators.values import emit_condition
from harness.formats import isa

__all__ = ["build_function", "build_program", "emit_count", "ProgramParts"]

_ALU_OPS = (
    isa.ADD,
    isa.XOR,
    isa.SUB,
    isa.OR,
    isa.AND,
    isa.MUL,
    isa.LSH,
    isa.RSH,
    isa.ARSH,
    isa.NEG,
)


# ---- statements -------------------------------------------------------------


def _alu(st: FnState) -> None:
    draw, fn = st.draw, st.fn
    op = draw.choice(_ALU_OPS)
    dst = draw.choice(st.scalars)
    w64 = not draw.boolean(0.25)
    if op == isa.NEG:
        fn.alu(op, dst, w64=w64)
    elif op in (isa.LSH, isa.RSH, isa.ARSH):
        fn.alu(op, dst, imm=draw.integer(0, 63 if w64 else 31), w64=w64)
    elif draw.boolean():
        fn.alu(op, dst, draw.choice(st.scalars), w64=w64)
    else:
        fn.alu(op, dst, imm=imm32(draw), w64=w64)


def _ld64(st: FnState) -> None:
    st.fn.ld64(st.draw.choice(st.scalars), edge_u64(st.draw))


def _stack_store(st: FnState) -> None:
    off, size = st.draw.choice(stack.readable(st.stack))
    if st.draw.boolean(0.7):
        st.fn.stx(size, R10, off, st.draw.choice(st.scalars))
    else:
        st.fn.st(size, R10, off, imm32(st.draw))


def _stack_load(st: FnState) -> None:
    off, size = st.draw.choice(stack.readable(st.stack))
    st.fn.ldx(size, R0, R10, off)
    st.fn.alu(st.draw.choice((isa.ADD, isa.XOR)), st.draw.choice(st.scalars), R0)


def _ctx_read(st: FnState) -> None:
    draw, ctx = st.draw, st.sp.ctx
    size = draw.choice((8, 4, 2, 1))
    off = size * draw.integer(0, len(ctx) // size - 1)
    st.fn.ldx(size, R0, R6, off)
    st.fn.alu(draw.choice((isa.ADD, isa.XOR)), draw.choice(st.scalars), R0)


def emit_count(st: FnState) -> None:
    """counts[prog] += 1, atomically or by load/add/store: the number of runs
    (and so of tail calls taken) ends up in the map."""
    fn = st.fn
    st.sp.used_maps.add("counts")
    fn.map_value(R1, "counts", 8 * st.prog)
    # the draw stays when atomics are off, so systems keep their shape
    if st.draw.boolean() or not st.sp.config.jit_atomics:
        fn.ldx(8, R2, R1, 0)
        fn.alu(isa.ADD, R2, imm=1)
        fn.stx(8, R1, 0, R2)
    else:
        fn.mov(R2, imm=1)
        fn.atomic_add(8, R1, 0, R2)


def _callable(st: FnState, c: FnPlan) -> bool:
    cfg = st.sp.config
    own = frame_size(st.plan.stack, cfg)
    if c.takes_ctx and not st.has_ctx:
        return False
    if c.height > cfg.max_call_depth - (1 if st.is_main else 2):
        return False
    if own + c.chain_stack > cfg.max_stack:
        return False
    if c.tc_prefix >= 0 and own + c.tc_prefix >= cfg.tail_call_caller_stack:
        return False
    limit = cfg.max_expanded_insns if st.sp.slots is None else cfg.max_expanded_insns_tail_calls
    return st.inlined + c.cost <= limit


def _emit_call(st: FnState, c: FnPlan) -> None:
    draw, fn = st.draw, st.fn
    reg = R1
    if c.takes_ctx:
        fn.mov(R1, R6)
        reg = R2
    for a in range(reg, reg + c.nargs):
        if draw.boolean(0.7):
            fn.mov(a, draw.choice(st.scalars))
        else:
            fn.mov(a, imm=imm32(draw))
    fn.call(c.name)
    st.plan.callees.append(c.name)
    st.inlined += c.cost
    fn.alu(draw.choice((isa.ADD, isa.XOR, isa.SUB)), draw.choice(st.scalars), R0)


def _call(st: FnState, repeat: bool = True) -> None:
    options = [c for c in st.candidates if _callable(st, c)]
    if not options:
        return _alu(st)
    if st.deep and st.draw.boolean(0.7):
        # go deep: the tallest callee, so chains reach MAX_CALL_FRAMES
        c = max(options, key=lambda c: c.height)
    else:
        c = st.draw.choice(options)
    _emit_call(st, c)
    # the hierarchy: the same subprogram twice (each may tail-call back)
    if repeat and st.draw.boolean(0.3) and _callable(st, c):
        _emit_call(st, c)


def _cond(st: FnState) -> None:
    """``if <run-time value> goto skip; 1-2 statements; skip:``"""
    skip = st.fn.new_label()
    emit_condition(st, R0, skip)
    st.conds += 1
    n = 0
    while st.draw.more(n, min_size=1, max_size=2, average=0.5):
        n += 1
        kinds = [k for k in _kinds(st) if k not in ("cond", "ld64", "stack_load", "ctx_read")]
        _STATEMENTS[st.draw.choice(kinds)](st)
    st.fn.label(skip)


def _branch(st: FnState) -> None:
    """A branch on every condition; its bodies are the plain-code statements
    this system has (never calls, see ``insns.emit_branch``)."""
    body = [_PLAIN[k] for k in _PLAIN if st.sp.on(k) and k != "branches"]
    insns.emit_branch(st, body or [_alu])


_PLAIN = {
    "alu_ops": insns.emit_alu,
    "branches": _branch,
    "memory_ops": insns.emit_memory,
    "atomics": insns.emit_atomic,
}

_STATEMENTS = {
    "alu": _alu,
    "ld64": _ld64,
    "stack_store": _stack_store,
    "stack_load": _stack_load,
    "call": _call,
    "tail_call": tail_calls.emit_tail_call,
    "helper": helpers.emit_helper,
    "count": emit_count,
    "ctx_read": _ctx_read,
    "throw": exceptions.emit_throw,
    "cond": _cond,
}


def _kinds(st: FnState) -> list[str]:
    """Statement kinds this function may use, simplest first."""
    sp = st.sp
    kinds = ["alu", "ld64"]
    if st.stack.depth:
        kinds += ["stack_store", "stack_load"]
    if any(_callable(st, c) for c in st.candidates):
        kinds.append("call")
    tail_ok = st.is_main or sp.on("tail_calls_in_subprograms")
    if sp.tail_calls_in(st.prog) and st.has_ctx and tail_ok:
        kinds.append("tail_call")
    if sp.on("helpers"):
        kinds.append("helper")
    kinds.append("count")
    if sp.ptype == "raw_tp" and st.has_ctx and sp.on("ctx_reads") and sp.ctx:
        kinds.append("ctx_read")
    if sp.throws_in(st.prog):
        kinds.append("throw")
    if sp.on("conditionals"):
        kinds.append("cond")
    return kinds


# ---- functions --------------------------------------------------------------


def _prologue(st: FnState) -> None:
    """Save ctx in r6, take the arguments into the callee-saved registers."""
    draw, fn, plan = st.draw, st.fn, st.plan
    if st.has_ctx:
        fn.mov(R6, R1)
    first = 2 if plan.takes_ctx else 1
    args = list(range(first, first + plan.nargs))
    for i, reg in enumerate(st.scalars):
        if i < len(args):
            fn.mov(reg, args[i])
        elif draw.boolean(0.2):
            fn.ld64(reg, edge_u64(draw))
        else:
            fn.mov(reg, imm=imm32(draw))
    for a in args[len(st.scalars) :]:
        fn.alu(draw.choice((isa.ADD, isa.XOR)), draw.choice(st.scalars), a)


def _epilogue(st: FnState) -> None:
    """r0 = a mix of every callee-saved scalar; exit. Now and then a throw
    on the way out, laid out as the function's last instruction."""
    sp, draw, fn = st.sp, st.draw, st.fn
    throw_label = None
    if sp.throws_in(st.prog) and draw.boolean(0.3):
        throw_label = fn.new_label()
        emit_condition(st, R0, throw_label)
    fn.mov(R0, st.scalars[0])
    for reg in st.scalars[1:]:
        fn.alu(draw.choice((isa.ADD, isa.XOR, isa.SUB)), R0, reg, w64=not draw.boolean(0.2))
    fn.exit()
    if throw_label is not None:
        fn.label(throw_label)
        exceptions.emit_cookie(st)
        fn.throw()
        # check_subprogs still wants exit/ja as the last slot; the verifier
        # never reaches it and removes it as dead code, so the JIT sees the
        # throw as the function's last instruction
        fn.exit()


def build_function(
    sp: SystemPlan,
    prog: int,
    plan: FnPlan,
    candidates: list[FnPlan],
    *,
    is_main: bool,
    forced: list[FnPlan] = (),
    count: bool = False,
    deep: bool = False,
) -> FnPlan:
    """Emit ``plan``'s function and fill in what its callers need to know."""
    cfg, draw = sp.config, sp.draw
    fn = Fn(plan.name)
    scalars = [R7, R8, R9] if (is_main or plan.takes_ctx) else [R6, R7, R8, R9]
    st = FnState(sp, plan, fn, prog, is_main, scalars, candidates=candidates, deep=deep)
    _prologue(st)
    # the stack, bounded by what the callees this function must call allow
    limit = cfg.max_stack
    unit = frame_size(1, cfg)
    for c in forced:
        limit = min(limit, cfg.max_stack - c.chain_stack)
        if c.tc_prefix >= 0:
            limit = min(limit, cfg.tail_call_caller_stack - unit - c.tc_prefix)
    limit -= limit % unit
    want_buffer = sp.on("helpers") and sp.on("stack_buffers")
    if deep and not is_main:
        limit = min(limit, 64)  # eight frames must fit in 512 bytes together
    st.stack = stack.draw_layout(st, limit=limit, want_buffer=want_buffer)
    plan.stack = st.stack.depth
    stack.emit_init(st, st.stack)
    if count:
        emit_count(st)
    for c in forced:
        _emit_call(st, c)
    if deep and not is_main and any(_callable(st, c) for c in candidates):
        _call(st, repeat=False)
    n = 0
    plain = [k for k in _PLAIN if sp.on(k)]
    while fn.size - st.plain < cfg.max_insns_per_function and draw.more(
        n, max_size=16, average=5.0
    ):
        n += 1
        _STATEMENTS[draw.choice(_kinds(st))](st)
        # plain code between the control-transfer statements, on top of
        # them (competing for the function's room, it halved the deep
        # chains and hierarchies a system reached), except with a prog array:
        # a run repeats the code up to 34 times, so there it shares the room
        if plain and draw.boolean(cfg.plain_code):
            size = fn.size
            _PLAIN[draw.choice(plain)](st)
            if sp.slots is None:
                st.plain += fn.size - size
    onward = [k for k, v in enumerate(sp.slots or ()) if v not in (None, prog)]
    if is_main and prog == 0 and onward and sp.tail_calls_in(prog) and draw.boolean(0.75):
        # the entry hands over to another program on its way out: otherwise
        # the other programs were often never entered (in half the systems
        # that had one never entered, no tail call ran at all)
        tail_calls.emit_tail_call(st, onward=draw.choice(onward))
    _epilogue(st)
    # what callers need to know
    by_name = {c.name: c for c in candidates}
    callees = [by_name[n] for n in dict.fromkeys(plan.callees)]
    own = frame_size(plan.stack, cfg)
    plan.height = 1 + max((c.height for c in callees), default=0)
    plan.chain_stack = own + max((c.chain_stack for c in callees), default=0)
    prefixes = [own + c.tc_prefix for c in callees if c.tc_prefix >= 0]
    if plan.has_tail_call and not is_main:
        prefixes.append(0)
    plan.tc_prefix = max(prefixes, default=-1)
    plan.cost = fn.size - st.plain + st.inlined + 8 * st.conds
    plan.fn = fn
    return plan


class ProgramParts:
    """A program before linking: its functions in layout order."""

    def __init__(self, name: str, main: FnPlan, subs: list[FnPlan], callback: Fn | None):
        self.name, self.main, self.subs, self.callback = name, main, subs, callback

    def layout(self) -> list[Fn]:
        # the exception callback right after main (see generators.exceptions)
        fns = [self.main.fn]
        if self.callback is not None:
            fns.append(self.callback)
        return fns + [s.fn for s in self.subs]


def _fitting(subs: list[FnPlan], cfg: Config) -> list[FnPlan]:
    """``subs`` without those main could not call under 6.1's count, where
    main's frame is 32 bytes even when empty: a subprogram nobody else calls
    whose chain (or tail-call prefix) leaves main no room goes, and so, in
    turn, do callees only it called that leave no room either."""
    unit = frame_size(0, cfg)
    while True:
        called = {n for s in subs for n in s.callees}
        unfit = {
            s.name
            for s in subs
            if s.name not in called
            and (
                s.chain_stack + unit > cfg.max_stack
                or (s.tc_prefix >= 0 and cfg.tail_call_caller_stack - unit - s.tc_prefix < unit)
            )
        }
        if not unfit:
            return subs
        subs = [s for s in subs if s.name not in unfit]


def build_program(sp: SystemPlan, prog: int) -> ProgramParts:
    draw, cfg = sp.draw, sp.config
    subs: list[FnPlan] = []
    with_subs = sp.on("subprograms")
    if with_subs and sp.slots is not None and not cfg.tail_calls_with_subprograms:
        # the kernel refuses the mix: this program draws subprograms or tail
        # calls (a per-program draw keeps both shapes and shrinking local)
        if draw.boolean(0.5):
            sp.no_tail_calls.add(prog)
        else:
            with_subs = False
    if not cfg.tail_calls_in_throwing_programs and sp.throws_in(prog) and sp.tail_calls_in(prog):
        # the kernel crashes on the mix: this program draws one or the other
        if draw.boolean(0.5):
            sp.no_tail_calls.add(prog)
        else:
            sp.no_throws.add(prog)
    # a deep program: many subprograms, each calling the tallest one before it
    deep = with_subs and draw.boolean(0.25)
    if with_subs:
        average = 8.0 if deep else 2.5
        while draw.more(len(subs), max_size=cfg.max_functions - 1, average=average):
            ctx_p = 0.6 if (sp.on("tail_calls_in_subprograms") or sp.on("ctx_reads")) else 0.2
            takes_ctx = draw.boolean(ctx_p)
            nargs = draw.integer(0, 4 if takes_ctx else 5)
            plan = FnPlan(f"f{len(subs)}", takes_ctx, nargs)
            build_function(
                sp, prog, plan, list(subs), is_main=False, count=draw.boolean(0.15), deep=deep
            )
            subs.append(plan)
    if not cfg.stack_rounding_16:
        subs = _fitting(subs, cfg)
    called = {n for s in subs for n in s.callees}
    forced = [s for s in subs if s.name not in called]
    main = FnPlan("main", True, 0)
    count = sp.slots is not None or draw.boolean(0.3)
    build_function(sp, prog, main, list(subs), is_main=True, forced=forced, count=count, deep=deep)
    callback = None
    # the callback is a subprogram too (subprog_cnt > 1 with any tail call)
    mix_ok = cfg.tail_calls_with_subprograms or not sp.tail_calls_in(prog)
    if sp.ptype == "sched_cls" and sp.on("exception_callbacks") and mix_ok and draw.boolean(0.6):
        callback = exceptions.build_callback(sp)
    return ProgramParts(sp.prog_names[prog], main, subs, callback)
