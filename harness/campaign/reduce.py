"""Case-level reduction, after choice shrinking: delete what the bug doesn't need.

Choice shrinking keeps the generator's scaffolding (counters, argument set-up,
stack traffic); this pass removes it directly from the system: whole programs,
script steps, map entries and single instructions, re-targeting jumps and calls
the way the kernel's ``bpf_adj_branches`` does when it removes instructions.
An edit is kept only while the same divergence persists (the caller's
predicate; the campaign asks for the same signature: engine, oracle and kind of
first differing event, so a reduction never walks from the JIT bug to some
other difference); an edit that makes the program invalid shows up as a
poisoned reference and is dropped. The budget is attempts, not the clock, so
reduction is deterministic; ``stop`` lets a campaign past its deadline cut it
short with the best case so far.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from harness.formats import isa
from harness.formats.isa import Insn
from harness.system import Case, Program

__all__ = ["delete_insn", "reduce_case"]


def _targets(insns: list[Insn], pc: int, i: Insn) -> int | None:
    if isa.is_jump(i):
        return isa.jump_target(pc, i)
    if i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_CALL:
        return pc + 1 + i.imm
    if i.opcode == isa.LD_IMM64 and i.src == isa.PSEUDO_FUNC:
        return pc + 1 + i.imm
    return None


def delete_insn(prog: Program, pc: int) -> Program | None:
    """``prog`` without the instruction at ``pc`` (both slots of ld_imm64), or
    None when that cannot be done (a function's last instruction)."""
    insns = prog.insns
    size = 2 if insns[pc].opcode == isa.LD_IMM64 else 1
    starts = prog.function_starts()
    ends = [s - 1 for s in starts[1:]] + [len(insns) - 1]
    if pc + size - 1 in ends or (pc in starts and pc + size - 1 >= len(insns)):
        return None
    new: list[Insn] = []
    q = 0
    while q < len(insns):
        i = insns[q]
        if pc <= q < pc + size:
            q += 1
            continue
        nq = q if q < pc else q - size
        t = _targets(insns, q, i)
        if t is not None:
            nt = t if t <= pc else t - size
            rel = nt - (nq + 1)
            if i.opcode == isa.JMP32 | isa.JA:
                i = Insn(i.opcode, i.dst, i.src, i.off, rel)
            elif isa.is_jump(i):
                if not -(1 << 15) <= rel < (1 << 15):
                    return None
                i = Insn(i.opcode, i.dst, i.src, rel, i.imm)
            else:
                i = Insn(i.opcode, i.dst, i.src, i.off, rel)
        new.append(i)
        q += 1
    labels = {}
    for lpc, name in prog.labels.items():
        npc = lpc if lpc <= pc else lpc - size
        labels.setdefault(npc, name)
    return Program(prog.name, prog.type, new, labels, prog.exception_callback)


def _referenced(case: Case) -> set[str]:
    used = {s.program for s in case.script() if s.kind == "run"}
    for m in case.maps.values():
        used |= {v for v in m.init.values() if isinstance(v, str)}
    used |= {s.value for s in case.steps if s.kind == "update" and isinstance(s.value, str)}
    return used


def _variants(case: Case):
    """Candidate simplifications, biggest first."""
    # drop a program nothing runs (and the slots that name it)
    for name in list(case.programs):
        if len(case.programs) == 1:
            break
        c = copy.deepcopy(case)
        del c.programs[name]
        for m in c.maps.values():
            m.init = {k: v for k, v in m.init.items() if v != name}
        c.steps = [s for s in c.steps if s.value != name and s.program != name]
        if c.programs and any(s.kind == "run" for s in c.script()):
            yield c
    # drop a script step (keep at least one run)
    for k in range(len(case.steps) - 1, -1, -1):
        c = copy.deepcopy(case)
        del c.steps[k]
        if any(s.kind == "run" for s in c.steps):
            yield c
    # drop the ctx bytes, then maps no instruction refers to
    if case.ctx:
        c = copy.deepcopy(case)
        c.ctx = b""
        yield c
    for idx, name in enumerate(case.maps):
        c = _without_map(case, idx, name)
        if c is not None:
            yield c
    # drop an initial map entry
    for name, m in case.maps.items():
        for key in list(m.init):
            c = copy.deepcopy(case)
            del c.maps[name].init[key]
            yield c
    # drop runs of instructions, halving the run length (ddmin), from the end
    for name, prog in case.programs.items():
        n = len(prog.insns)
        k = n // 2
        while k >= 1:
            # short runs at every position (a call and the use of its result,
            # a dead function body), long ones at half-overlapping positions
            for start in range(n - k, -1, -1 if k <= 8 else -(k // 2)):
                p = _delete_run(prog, start, k)
                if p is not None:
                    c = copy.copy(case)
                    c.programs = dict(case.programs)
                    c.programs[name] = p
                    yield c
            k //= 2
    yield from _simplified(case)


def _simplified(case: Case):
    """Register moves turned into ``rX = 0``: the move's source then often
    becomes dead and a later deletion can take it."""
    for name, prog in case.programs.items():
        for pc, i in enumerate(prog.insns):
            if i.opcode == isa.ALU64 | isa.MOV | isa.X and not i.off:
                insns = list(prog.insns)
                insns[pc] = Insn(isa.ALU64 | isa.MOV | isa.K, i.dst, 0, 0, 0)
                c = copy.copy(case)
                c.programs = dict(case.programs)
                c.programs[name] = Program(
                    prog.name, prog.type, insns, dict(prog.labels), prog.exception_callback
                )
                yield c


def _without_map(case: Case, idx: int, name: str) -> Case | None:
    """The case without map ``idx`` if no instruction or step uses it; later
    maps' ld_imm64 indices shift down by one."""
    if any(s.map == name for s in case.steps):
        return None
    progs = {}
    for pname, prog in case.programs.items():
        insns = []
        for i in prog.insns:
            if i.opcode == isa.LD_IMM64 and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
                if i.imm == idx:
                    return None
                if i.imm > idx:
                    i = Insn(i.opcode, i.dst, i.src, i.off, i.imm - 1)
            insns.append(i)
        progs[pname] = Program(
            prog.name, prog.type, insns, dict(prog.labels), prog.exception_callback
        )
    c = copy.deepcopy(case)
    c.programs = progs
    del c.maps[name]
    return c


def _delete_run(prog: Program, start: int, k: int) -> Program | None:
    """Delete the instructions starting in [start, start + k), last first."""
    pcs = [
        pc
        for pc in range(start, min(start + k, len(prog.insns)))
        if not (pc > 0 and prog.insns[pc - 1].opcode == isa.LD_IMM64)
    ]
    for pc in reversed(pcs):
        prog = delete_insn(prog, pc)
        if prog is None:
            return None
    return prog if pcs else None


def reduce_case(
    case: Case,
    fails: Callable[[Case], bool],
    *,
    max_tries: int = 2000,
    stop: Callable[[], bool] | None = None,
) -> Case:
    """Greedy reduction to a fixpoint or ``max_tries`` attempts; deterministic
    unless ``stop`` (asked before each attempt) ends it early."""
    tries = 0
    changed = True
    while changed:
        changed = False
        for cand in _variants(case):
            if tries >= max_tries or (stop is not None and stop()):
                return case
            tries += 1
            if fails(cand):
                case = cand
                changed = True
                break
    return case
