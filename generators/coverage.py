"""Which bug-class shapes a case reaches, from its structure and its runs.

``coverage(case, outcomes)`` names shapes from the instructions (so it works
on shrunk and hand-written cases too, not only on what the generator meant)
and from the reference interpreter's events (what a run actually did: 33
tail calls, a throw three frames down, a direct tail call executed right after
its slot was deleted). The fuzzer prints a summary of these names; the tests
assert that the fast path reaches every name in ``SHAPES``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis.control import currently_in_test_context, event, target

from generators.census import ISA_SHAPES, census
from harness.formats import isa
from harness.outcome import RunOutcome, Status
from harness.reference.helpers import HELPER_IDS, TAIL_CALL
from harness.reference.interp import run_case
from harness.system import Case, Program

__all__ = [
    "coverage",
    "record",
    "summary",
    "report",
    "SHAPES",
    "ISA_SHAPES",
    "FunctionFacts",
    "program_facts",
]

#: Every shape the generators must reach as a matter of course.
SHAPES: tuple[str, ...] = (
    # tail calls (limit arithmetic, empty slot budget, u32 index, CF)
    "tail_calls=33", "tail_call_limit_hit", "self_loop", "cycle", "empty_slot",
    "out_of_range", "index>2^32", "direct_tail_call", "indirect_tail_call",
    # the hierarchy and counter placement
    "tail_call_in_subprog", "failed_tail_call_in_subprog", "hierarchy",
    "unaligned_caller_of_tail_call",
    # subprograms
    "subprograms", "call_depth>=4", "call_depth=8", "args=5", "call_twice",
    # helpers and stack
    "helper_between_call_and_tail_call", "helper_then_stack_access", "stack_buffer_to_helper",
    "unaligned_stack", "stack>64", "stack_256", "combined_stack>=480",
    "tail_call_callers_240", "private_stack_eligible", "atomic_count",
    # exceptions
    "throw", "throw_depth>=2", "throw_with_callback", "throw_without_callback",
    "throw_last_insn", "throw_after_tail_call",
    # scripts
    "poke_transition", "poke_delete", "poke_reinsert",
    # types and outcomes
    "raw_tp", "sched_cls", "ctx_read",
)  # fmt: skip

_UPDATE = HELPER_IDS["bpf_map_update_elem"]


def _round16(n: int) -> int:
    return (n + 15) & ~15


@dataclass
class FunctionFacts:
    name: str
    start: int
    end: int
    stack: int = 0
    calls: list[str] = field(default_factory=list)
    #: pc -> ("direct", key) | ("big", key) | ("indirect", None)
    tail_calls: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    helpers: list[int] = field(default_factory=list)
    throws: int = 0
    throw_last: bool = False
    call_before_helper_before_tail: bool = False
    helper_then_stack: bool = False
    max_args: int = 0
    call_twice: bool = False
    atomic: bool = False
    ctx_read: bool = False


def _analyse(prog: Program, start: int, end: int, name: str) -> FunctionFacts:
    """One pass over a function's slots, in layout order (forward jumps only
    in generated code, so layout order is an order of execution)."""
    f = FunctionFacts(name, start, end)
    insns = prog.insns
    fp_regs: dict[int, int] = {}  # registers holding r10 + off
    ctx_regs = {1}  # registers holding ctx (r1 on entry, copied by mov)
    seen_call = seen_helper = seen_helper_after_call = False
    last_callee = None
    pc = start
    while pc < end:
        i = insns[pc]
        c, op = i.cls, i.opcode & 0xF0
        if i.opcode == isa.LD_IMM64:
            fp_regs.pop(i.dst, None)
            ctx_regs.discard(i.dst)
            pc += 2
            continue
        if c in (isa.LDX, isa.ST, isa.STX):
            base = i.src if c == isa.LDX else i.dst
            if base == 10:
                f.stack = max(f.stack, -i.off)
                if seen_helper:
                    f.helper_then_stack = True
            elif c == isa.LDX and base in ctx_regs:
                f.ctx_read = True
            if c == isa.STX and i.opcode & 0xE0 == isa.ATOMIC:
                f.atomic = True
            if c == isa.LDX:
                fp_regs.pop(i.dst, None)
                ctx_regs.discard(i.dst)
        elif c in (isa.ALU, isa.ALU64):
            is_mov_reg = op == isa.MOV and i.opcode & isa.X and c == isa.ALU64
            if is_mov_reg and i.src == 10:
                fp_regs[i.dst] = 0
            elif op == isa.ADD and not i.opcode & isa.X and i.dst in fp_regs:
                fp_regs[i.dst] += i.imm
            else:
                fp_regs.pop(i.dst, None)
            if is_mov_reg and i.src in ctx_regs:
                ctx_regs.add(i.dst)
            else:
                ctx_regs.discard(i.dst)
        elif i.opcode == isa.JMP | isa.CALL:
            for r, off in fp_regs.items():
                if 1 <= r <= 5:  # a stack pointer handed to a helper
                    f.stack = max(f.stack, -off)
            if i.src == isa.PSEUDO_CALL:
                callee = prog.function_name(pc + 1 + i.imm)
                f.calls.append(callee)
                f.max_args = max(f.max_args, _args_set(insns, start, pc))
                f.call_twice |= callee == last_callee
                last_callee = callee
                seen_call = True
            else:
                last_callee = None
            if i.src == isa.PSEUDO_KFUNC_CALL:
                f.throws += 1
                rest = insns[pc + 1 : end]
                if not rest or (len(rest) == 1 and rest[0].opcode == isa.JMP | isa.EXIT):
                    f.throw_last = True
            elif i.src == 0 and i.imm == TAIL_CALL:
                f.tail_calls[pc] = _key_kind(insns, start, pc)
                f.call_before_helper_before_tail |= seen_helper_after_call
            elif i.src == 0:
                f.helpers.append(i.imm)
                seen_helper = True
                seen_helper_after_call |= seen_call
            for r in range(6):
                fp_regs.pop(r, None)
                ctx_regs.discard(r)
        pc += 1
    return f


def _args_set(insns: list, start: int, pc: int) -> int:
    """Argument registers set by the run of movs right before a call."""
    regs = set()
    q = pc - 1
    while (
        q >= start
        and insns[q].cls == isa.ALU64
        and insns[q].opcode & 0xF0 == isa.MOV
        and 1 <= insns[q].dst <= 5
    ):
        regs.add(insns[q].dst)
        q -= 1
    return len(regs)


def _key_kind(insns: list, start: int, pc: int) -> tuple[str, int | None]:
    prev = insns[pc - 1] if pc - 1 >= start else None
    if prev is not None and prev.opcode == isa.ALU64 | isa.MOV | isa.K and prev.dst == 3:
        return ("direct", prev.imm & 0xFFFFFFFF)
    if pc - 2 >= start and insns[pc - 2].opcode == isa.LD_IMM64 and insns[pc - 2].dst == 3:
        lo, hi = insns[pc - 2].imm & 0xFFFFFFFF, insns[pc - 1].imm & 0xFFFFFFFF
        return ("big" if hi else "direct", lo)
    return ("indirect", None)


def program_facts(prog: Program) -> dict[str, FunctionFacts]:
    starts = prog.function_starts()
    out = {}
    for s, e in zip(starts, starts[1:] + [len(prog.insns)], strict=True):
        name = prog.function_name(s)
        out[name] = _analyse(prog, s, e, name)
    return out


def _static(case: Case, names: set[str]) -> dict[str, dict[str, FunctionFacts]]:
    facts = {n: program_facts(p) for n, p in case.programs.items()}
    for pname, prog in case.programs.items():
        names.add(prog.type)
        fs = facts[pname]
        has_tc = any(f.tail_calls for f in fs.values())
        for f in fs.values():
            if f.calls:
                names.add("subprograms")
            if f.stack % 8:
                names.add("unaligned_stack")
                if f.calls and any(fs[c].tail_calls for c in f.calls if c in fs):
                    names.add("unaligned_caller_of_tail_call")
            if f.stack > 64:
                names.add("stack>64")
                if prog.type == "raw_tp" and not has_tc:
                    names.add("private_stack_eligible")
            if f.stack >= 256:
                names.add("stack_256")
            if f.max_args >= 5:
                names.add("args=5")
            if f.call_twice:
                names.add("call_twice")
            if f.call_before_helper_before_tail:
                names.add("helper_between_call_and_tail_call")
            if f.helper_then_stack:
                names.add("helper_then_stack_access")
            if _UPDATE in f.helpers:
                names.add("stack_buffer_to_helper")
            if f.throw_last:
                names.add("throw_last_insn")
            if f.atomic:
                names.add("atomic_count")
            if f.ctx_read and prog.type == "raw_tp":
                names.add("ctx_read")
            for kind, _ in f.tail_calls.values():
                names.add("indirect_tail_call" if kind == "indirect" else "direct_tail_call")
            if f.tail_calls and f.name != "main":
                names.add("tail_call_in_subprog")

        # call paths from main: height, combined stack, caller frames above
        # tail-calling subprograms (exactly 240 is the accepted maximum)
        def walk(fname: str, depth: int, above: int, seen: tuple[str, ...], fs=fs) -> int:
            f = fs[fname]
            if fname != "main" and f.tail_calls and above == 240:
                names.add("tail_call_callers_240")
            total = above + _round16(f.stack)
            if total >= 480:
                names.add("combined_stack>=480")
            best = depth
            for c in dict.fromkeys(f.calls):
                if c in fs and c not in seen:
                    best = max(best, walk(c, depth + 1, total, (*seen, c)))
            return best

        height = walk("main", 1, 0, ("main",))
        if height >= 4:
            names.add("call_depth>=4")
        if height >= 8:
            names.add("call_depth=8")
    return facts


def _dynamic(case: Case, outcomes: list[RunOutcome], facts, names: set[str]) -> None:
    prog_array = next((m for m in case.maps.values() if m.kind == "prog_array"), None)
    size = prog_array.max_entries if prog_array else 0
    runs = [s for s in case.script() if s.kind == "run"]
    changed: dict[int, str] = {}  # slot -> "update"/"delete"/"reinsert" since the last run
    deleted: set[int] = set()
    run_i = 0
    for step in case.script():
        if step.kind != "run":
            if prog_array is not None and step.map == prog_array.name:
                if step.kind == "delete":
                    changed[step.key] = "delete"
                    deleted.add(step.key)
                else:
                    changed[step.key] = "reinsert" if step.key in deleted else "update"
            continue
        if run_i >= len(outcomes):
            break
        out = outcomes[run_i]
        entry = runs[run_i].program
        run_i += 1
        _one_run(case, entry, out, facts, size, changed, names)
        changed = {}


def _one_run(case, entry, out: RunOutcome, facts, size, changed, names) -> None:
    if out.status is Status.BUDGET:
        names.add("budget")
    if out.tail_calls == 33:
        names.add("tail_calls=33")
    stack = [(entry, "main")]
    visited = [entry]
    tail_seen = False
    for ev in out.events:
        w = ev.where
        if ev.kind == "call":
            stack.append((w.prog, ev.data[0]))
        elif ev.kind == "ret":
            if stack:
                stack.pop()
        elif ev.kind == "tail_call":
            index, counter, tgt = ev.data
            site = facts.get(w.prog, {}).get(w.func)
            kind = site.tail_calls.get(w.pc) if site else None
            if counter >= 33:
                names.add("tail_call_limit_hit")
            if index >= size:
                names.add("out_of_range")
            elif tgt is None and counter < 33:
                names.add("empty_slot")
            if kind and kind[0] == "big":
                names.add("index>2^32")
            if tgt is None and w.func != "main":
                names.add("failed_tail_call_in_subprog")
            if kind and kind[0] == "direct" and index in changed:
                names.add("poke_transition")
                names.add(
                    "poke_delete"
                    if changed[index] == "delete"
                    else "poke_reinsert"
                    if changed[index] == "reinsert"
                    else "poke_transition"
                )
            if tgt is not None:
                if tgt == w.prog:
                    names.add("self_loop")
                elif tgt in visited:
                    names.add("cycle")
                visited.append(tgt)
                if len(stack) >= 2 and out.tail_calls >= 2:
                    names.add("hierarchy")
                tail_seen = True
                if stack:
                    stack[-1] = (tgt, "main")
        elif ev.kind == "throw":
            names.add("throw")
            if len(stack) >= 2:
                names.add("throw_depth>=2")
            if tail_seen:
                names.add("throw_after_tail_call")
            while len(stack) > 1 and stack[-1][1] != "main":
                stack.pop()
            boundary = case.programs[stack[-1][0]] if stack else None
            if boundary is not None and boundary.exception_callback:
                names.add("throw_with_callback")
                stack[-1] = (stack[-1][0], boundary.exception_callback)
            else:
                names.add("throw_without_callback")


def coverage(case: Case, outcomes: list[RunOutcome] | None = None) -> set[str]:
    """Names of the shapes ``case`` reaches (see ``SHAPES``); runs the reference
    interpreter when ``outcomes`` is not given."""
    if outcomes is None:
        outcomes = run_case(case)
    names: set[str] = set()
    facts = _static(case, names)
    _dynamic(case, outcomes, facts, names)
    census(case, names)
    return names


def record(case: Case, outcomes: list[RunOutcome] | None = None) -> set[str]:
    """``coverage`` plus Hypothesis ``event``s for each name and a ``target``
    on the most tail calls any run took (inside a test only)."""
    names = coverage(case, outcomes)
    if currently_in_test_context():
        for n in sorted(names):
            if n[:4] not in ("isa:", "reg:", "val:"):  # hundreds: the census reports them
                event(f"shape: {n}")
        if outcomes:
            target(max(o.tail_calls for o in outcomes), label="tail calls")
    return names


def summary(counts: Counter, total: int, shapes: Iterable[str] = SHAPES) -> str:
    """A table of how many cases reached each shape."""
    rows = [f"{'shape':36} {'cases':>7} {'share':>7}"]
    for s in list(shapes) + sorted(set(counts) - set(shapes) - set(ISA_SHAPES)):
        if s[:4] in ("isa:", "reg:", "val:") and s not in shapes:
            continue
        n = counts.get(s, 0)
        rows.append(f"{s:36} {n:7d} {100.0 * n / max(total, 1):6.1f}%")
    return "\n".join(rows)


def report(counts: Counter, total: int) -> list[str]:
    """The campaign summary's coverage lines: every control-transfer shape
    with its count, then the instruction-shape census in one line per
    family (reached of required, the rarest), and every required shape
    never reached, by name."""
    lines = [
        f"  {s:40s} {counts.get(s, 0):7d}  {100.0 * counts.get(s, 0) / max(total, 1):5.1f}%"
        for s in list(SHAPES)
        + sorted(k for k in counts if k not in SHAPES and k[:4] not in ("isa:", "reg:", "val:"))
    ]
    for family, title in (
        ("isa:", "instruction forms"),
        ("reg:", "register roles"),
        ("val:", "boundary values"),
    ):
        req = [s for s in ISA_SHAPES if s.startswith(family)]
        got = [s for s in req if counts.get(s)]
        extra = sum(1 for k in counts if k.startswith(family) and k not in req)
        rare = min(got, key=lambda s: counts[s]) if got else None
        tail = f", rarest {rare} ({counts[rare]})" if rare else ""
        lines.append(f"  {title}: {len(got)} of {len(req)} reached (+{extra} other shapes){tail}")
    missing = [s for s in (*SHAPES, *ISA_SHAPES) if not counts.get(s)]
    if missing:
        lines.append(f"  never reached ({len(missing)}): {', '.join(missing)}")
    return lines
