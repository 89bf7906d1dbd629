"""What the 6.18 verifier hands the x86-64 JIT: the "xlated" program.

The JIT never sees a case's raw instructions. The verifier first splits the
program into functions and rewrites a few instructions; this module models the
rewrites that change the JIT's output or the program's native behaviour:

* ``ld_imm64`` map references become the map's address (``PSEUDO_MAP_VALUE``:
  ``map + offsetof(struct bpf_array, value) + off``);
* ``call bpf_tail_call`` becomes ``BPF_JMP | BPF_TAIL_CALL`` (opcode 0xf5), with
  ``imm = poke index + 1`` when the key is a known constant (direct tail call,
  ``do_misc_fixups``) and 0 otherwise;
* a 32-bit ``cmpxchg`` is followed by ``mov32 r0, r0`` (the zero extension
  ``opt_subreg_zext_lo32_rnd_hi32`` adds for every JIT);
* div/mod by a register get the divide-by-zero / -1 guards of
  ``do_misc_fixups`` (``[R,W]x div 0 -> 0``, ``mod 0 -> x``, ``sdiv -1`` ...);
  ``sdiv/smod`` by the constant -1 become ``neg`` / ``mov 0``;
* a program that calls ``bpf_throw`` but has no exception callback gets the
  hidden default callback ``r0 = r1; exit`` appended (``add_hidden_subprog``),
  so the default callback returns the full 64-bit cookie;
* per function: the verifier's stack depth, ``tail_call_reachable``
  (``check_max_stack_depth_subprog``), private-stack eligibility.

Rules the model uses where the kernel relies on full verification:

* **Stack depth** = ``round_up(deepest r10-relative byte, 8)`` per function, as
  ``grow_stack_state`` keeps it. "r10-relative" covers direct ``[r10 + off]``
  accesses and pointers derived in straight-line code as ``rX = r10; rX += K``
  (``K`` counts as an access at ``r10 + K``: such pointers are passed to helpers
  that read/write from there up). Tracking is reset at every jump target, so a
  derived pointer used only after a branch is counted at its definition only.
* **Constant tail-call key** (direct tail call): the ``call 12`` at ``pc`` is
  direct iff, inside the straight-line region ending at ``pc`` (no pc in it
  after its first is a jump target or follows an unconditional ``ja``/``exit``),
  r3 was last written by ``r3 = K`` (``mov``/``mov32`` imm, no intervening write
  of r3 of any kind, no intervening call), r2 was last written by an
  ``ld_imm64`` of a prog array, and ``K < max_entries`` (``record_func_key``
  poisons larger keys). Every path to the call then carries the same key and
  map, so the rule is sound; it is incomplete (a constant reaching the call
  over a branch is treated as variable, which only costs the direct form).
* Dead code is not removed (the kernel's ``opt_remove_dead_code`` needs the
  verifier's branch knowledge), and helpers are not inlined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import Unsupported
from harness.formats import isa
from harness.formats.isa import Insn
from harness.reference.helpers import BPF_THROW, TAIL_CALL
from harness.system import Case, Program

from .encoder import BPF_REG_AX

__all__ = [
    "BPF_TAIL_CALL",
    "XInsn",
    "XFunc",
    "XProg",
    "PokeDesc",
    "translate",
    "stack_depth_of",
    "round_up",
]

#: BPF_JMP | BPF_TAIL_CALL, the verifier's internal opcode (BPF_TAIL_CALL = 0xf0).
BPF_TAIL_CALL = isa.JMP | 0xF0
HIDDEN_CB_NAME = "exception_cb_default"
#: offsetof(struct bpf_array, value)
ARRAY_VALUE_OFF = 0x138


def round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass
class XInsn:
    """One xlated slot plus what the JIT must resolve for it."""

    insn: Insn
    #: pc of the case instruction this slot came from (None: hidden callback)
    orig_pc: int | None
    #: calls: "helper:<id>", "kfunc:<n>" or "func:<index in XProg.funcs>"
    call: str | None = None
    #: ld_imm64 first slot: (map name, byte offset added to the map address)
    map_ref: tuple[str, int] | None = None
    #: jumps: the target as an index into the function's xlated insns
    target: int | None = None


@dataclass
class PokeDesc:
    """bpf_jit_poke_descriptor for one direct tail call."""

    map: str
    key: int
    orig_pc: int


@dataclass
class XFunc:
    name: str
    #: case pc of the first instruction (len(insns) for the hidden callback)
    start_pc: int
    insns: list[XInsn]
    #: case pc -> index of the first xlated slot it became (function-local pcs)
    orig_index: dict[int, int]
    #: number of case slots the function covers
    orig_len: int
    stack_depth: int = 0
    #: the deepest r10-relative byte before rounding: what 5.10's verifier
    #: recorded as ``aux->stack_depth`` (6.18 rounds it up to 8)
    raw_stack_depth: int = 0
    tail_call_reachable: bool = False
    has_tail_call: bool = False
    exception_cb: bool = False
    private_stack: bool = False
    #: verifier's subprog stack depth rounded to 16 (what priv-stack compares)
    callees: list[int] = field(default_factory=list)


@dataclass
class XProg:
    name: str
    type: str
    funcs: list[XFunc]
    pokes: list[PokeDesc]
    exception_boundary: bool
    exception_callback: int | None


_CLOBBERED = frozenset(range(6))
_NONE: frozenset[int] = frozenset()


def _writes(insn: Insn) -> frozenset[int] | tuple[int]:
    """Registers an instruction may write (calls clobber r0-r5)."""
    c = insn.opcode & 0x07
    if c in (isa.ALU, isa.ALU64, isa.LDX) or insn.opcode == isa.LD_IMM64:
        return (insn.dst,)
    if c == isa.LD:  # legacy packet loads
        return _CLOBBERED
    if c == isa.STX and insn.opcode & 0xE0 == isa.ATOMIC:
        if insn.imm == isa.CMPXCHG:
            return (0,)
        if insn.imm & isa.FETCH:
            return (insn.src,)
        return _NONE
    if c == isa.JMP and insn.opcode & 0xF0 == isa.CALL:
        return _CLOBBERED
    return _NONE


def _jump_targets(insns: list[Insn], lo: int, hi: int) -> set[int]:
    out = set()
    for pc in range(lo, hi):
        i = insns[pc]
        if isa.is_jump(i):
            out.add(isa.jump_target(pc, i))
    return out


def _is_uncond(i: Insn) -> bool:
    return i.opcode in (isa.JMP | isa.JA, isa.JMP32 | isa.JA, isa.JMP | isa.EXIT)


def stack_depth_of(insns: list[Insn], lo: int, hi: int) -> int:
    """The verifier's stack depth of the function at [lo, hi) (see module doc)."""
    return round_up(_deepest(insns, lo, hi, _jump_targets(insns, lo, hi)), 8)


def _deepest(insns: list[Insn], lo: int, hi: int, targets: set[int]) -> int:
    """The deepest r10-relative byte the function at [lo, hi) touches, unrounded."""
    deepest = 0
    known: dict[int, int] = {10: 0}  # reg -> offset from r10
    pc = lo
    while pc < hi:
        i = insns[pc]
        if pc in targets:
            known = {10: 0}
        c, code = i.opcode & 0x07, i.opcode & 0xF0
        base = None
        if c == isa.LDX:
            base = i.src
        elif c in (isa.ST, isa.STX):
            base = i.dst
        if base is not None and base in known:
            deepest = max(deepest, -(known[base] + i.off))
        if c == isa.ALU64 and code == isa.MOV and i.opcode & isa.X and i.off == 0:
            if i.src in known:
                known[i.dst] = known[i.src]
            else:
                known.pop(i.dst, None)
        elif c == isa.ALU64 and code in (isa.ADD, isa.SUB) and not i.opcode & isa.X:
            if i.dst in known:
                known[i.dst] += i.imm if code == isa.ADD else -i.imm
                if i.dst != 10:
                    deepest = max(deepest, -known[i.dst])
        else:
            for r in _writes(i):
                if r != 10:
                    known.pop(r, None)
        pc += 2 if i.opcode == isa.LD_IMM64 else 1
    return max(deepest, 0)


def _const_key(
    case: Case, insns: list[Insn], lo: int, pc: int, targets: set[int]
) -> tuple[str, int] | None:
    """(map name, key) when the tail call at ``pc`` has a constant key (module doc)."""
    b = pc
    while b > lo and b not in targets and not _is_uncond(insns[b - 1]):
        b -= 1
    # slot b may be a jump target itself: that is fine, the region starts there.
    r2: str | None = None
    r3: int | None = None
    q = b
    while q < pc:
        i = insns[q]
        w = _writes(i)
        if i.opcode == isa.LD_IMM64:
            if i.dst == 2:
                r2 = None
                if i.src == isa.PSEUDO_MAP_FD:
                    m = case.map_by_index(i.imm)
                    if m.kind == "prog_array":
                        r2 = m.name
            elif i.dst == 3:
                r3 = None
            q += 2
            continue
        if i.opcode in (isa.ALU64 | isa.MOV | isa.K, isa.ALU | isa.MOV | isa.K) and i.dst == 3:
            r3 = (i.imm & 0xFFFFFFFF) if i.cls == isa.ALU else (i.imm & ((1 << 64) - 1))
        elif 3 in w:
            r3 = None
        if 2 in w:
            r2 = None
        q += 1
    if r2 is None or r3 is None:
        return None
    if r3 >= case.maps[r2].max_entries:
        return None
    return r2, r3


def _div_patch(i: Insn) -> list[tuple[Insn, int | None]] | None:
    """do_misc_fixups() patchlets for div/mod; (insn, relative jump or None)."""
    c, code = i.cls, i.opcode & 0xF0
    if c not in (isa.ALU, isa.ALU64) or code not in (isa.DIV, isa.MOD):
        return None
    is64 = c == isa.ALU64
    alu = isa.ALU64 if is64 else isa.ALU
    jmp = isa.JMP if is64 else isa.JMP32
    isdiv = code == isa.DIV
    if not i.opcode & isa.X:
        if i.off == 1 and i.imm == -1:
            if isdiv:
                return [(Insn(alu | isa.NEG | isa.K, i.dst), None)]
            return [(Insn(isa.ALU | isa.MOV | isa.K, i.dst, 0, 0, 0), None)]
        return None
    ja = Insn(isa.JMP | isa.JA, 0, 0, 1, 0)
    ax = BPF_REG_AX
    if isdiv and i.off == 1:
        return [
            (Insn(isa.ALU64 | isa.MOV | isa.X, ax, i.src), None),
            (Insn(alu | isa.ADD | isa.K, ax, 0, 0, 1), None),
            (Insn(jmp | isa.JGT | isa.K, ax, 0, 4, 1), None),
            (Insn(jmp | isa.JEQ | isa.K, ax, 0, 1, 0), None),
            (Insn(alu | isa.MOV | isa.K, i.dst, 0, 0, 0), None),
            (Insn(alu | isa.NEG | isa.K, i.dst), None),
            (ja, None),
            (i, None),
        ]
    if not isdiv and i.off == 1:
        p = [
            (Insn(isa.ALU64 | isa.MOV | isa.X, ax, i.src), None),
            (Insn(alu | isa.ADD | isa.K, ax, 0, 0, 1), None),
            (Insn(jmp | isa.JGT | isa.K, ax, 0, 3, 1), None),
            (Insn(jmp | isa.JEQ | isa.K, ax, 0, 3 + (0 if is64 else 1), 1), None),
            (Insn(isa.ALU | isa.MOV | isa.K, i.dst, 0, 0, 0), None),
            (ja, None),
            (i, None),
            (ja, None),
            (Insn(isa.ALU | isa.MOV | isa.X, i.dst, i.dst), None),
        ]
        return p[:-2] if is64 else p
    if isdiv:
        return [
            (Insn(jmp | isa.JNE | isa.K, i.src, 0, 2, 0), None),
            (Insn(isa.ALU | isa.XOR | isa.X, i.dst, i.dst), None),
            (ja, None),
            (i, None),
        ]
    p = [
        (Insn(jmp | isa.JEQ | isa.K, i.src, 0, 1 + (0 if is64 else 1), 0), None),
        (i, None),
        (ja, None),
        (Insn(isa.ALU | isa.MOV | isa.X, i.dst, i.dst), None),
    ]
    return p[:-2] if is64 else p


def _cmpxchg_patch(i: Insn) -> list[tuple[Insn, int | None]] | None:
    """opt_subreg_zext_lo32_rnd_hi32(): a 32-bit cmpxchg is followed by
    BPF_ZEXT_REG(r0) (``mov32 r0, r0``, imm 1) on every JIT, needs_zext or not:
    x86's cmpxchg leaves rax's upper half alone when the comparison succeeds."""
    if i.opcode != isa.STX | isa.ATOMIC | isa.W or i.imm != isa.CMPXCHG:
        return None
    return [(i, None), (Insn(isa.ALU | isa.MOV | isa.X, 0, 0, 0, 1), None)]


def _tail_call_reachable(funcs: list[XFunc]) -> None:
    """Which functions keep the tail-call counter: those with a tail call and
    those that (directly or not) call one. This is what 6.18.44 emits,
    measured on 300 generated systems against the real JIT (docs/fidelity.md);
    an earlier reading of check_max_stack_depth_subprog() as a flag sticky
    for the rest of a walk over-marked later siblings' chains."""
    memo: dict[int, bool] = {}

    def reachable(idx: int, depth: int = 0) -> bool:
        if depth > 64:
            raise Unsupported("call chain deeper than the model walks (recursion?)")
        if idx not in memo:
            f = funcs[idx]
            memo[idx] = f.has_tail_call or any(reachable(c, depth + 1) for c in f.callees)
        return memo[idx]

    for idx in range(len(funcs)):
        funcs[idx].tail_call_reachable = reachable(idx)


def translate(case: Case, prog: Program, *, private_stack_min: int = 64) -> XProg:
    """The xlated program and per-function facts the JIT needs."""
    insns = list(prog.insns)
    n = len(insns)
    cb_pc = prog.exception_callback_pc()
    starts = prog.function_starts()
    throws = any(
        i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL and i.imm == BPF_THROW
        for i in insns
    )
    bounds = list(zip(starts, starts[1:] + [n], strict=True))
    index_of_start = {s: k for k, s in enumerate(starts)}
    funcs: list[XFunc] = []
    pokes: list[PokeDesc] = []
    any_tail_call = False

    for lo, hi in bounds:
        targets = _jump_targets(insns, lo, hi)
        entries: list[tuple[XInsn, int | None, int | None]] = []  # (x, orig target, rel)
        orig_index: dict[int, int] = {}
        callees: list[int] = []
        has_tc = False
        pc = lo
        while pc < hi:
            i = insns[pc]
            orig_index[pc] = len(entries)
            c = i.opcode & 0x07
            if i.opcode == isa.LD_IMM64:
                if pc + 1 >= hi:
                    raise Unsupported("ld_imm64 split across functions")
                second = insns[pc + 1]
                ref = None
                if i.src == isa.PSEUDO_MAP_FD:
                    ref = (case.map_by_index(i.imm).name, 0)
                elif i.src == isa.PSEUDO_MAP_VALUE:
                    # array_map_direct_value_addr(): &array->value + off
                    ref = (case.map_by_index(i.imm).name, ARRAY_VALUE_OFF + second.imm)
                elif i.src != 0:
                    raise Unsupported(f"ld_imm64 with pseudo source {i.src}")
                entries.append((XInsn(i, pc, map_ref=ref), None, None))
                entries.append((XInsn(second, pc), None, None))
                orig_index[pc + 1] = orig_index[pc]
                pc += 2
                continue
            if c == isa.LD:
                raise Unsupported("legacy packet loads (LD_ABS/LD_IND)")
            if i.opcode == isa.JMP | isa.CALL:
                if i.src == isa.PSEUDO_CALL:
                    callee = index_of_start[pc + 1 + i.imm]
                    callees.append(callee)
                    entries.append((XInsn(i, pc, call=f"func:{callee}"), None, None))
                elif i.src == isa.PSEUDO_KFUNC_CALL:
                    entries.append((XInsn(i, pc, call=f"kfunc:{i.imm}"), None, None))
                elif i.imm == TAIL_CALL:
                    has_tc = any_tail_call = True
                    key = _const_key(case, insns, lo, pc, targets)
                    imm = 0
                    if key is not None:
                        pokes.append(PokeDesc(key[0], key[1], pc))
                        imm = len(pokes)
                    entries.append((XInsn(Insn(BPF_TAIL_CALL, 0, 0, 0, imm), pc), None, None))
                else:
                    entries.append((XInsn(i, pc, call=f"helper:{i.imm}"), None, None))
                pc += 1
                continue
            patch = _div_patch(i) or _cmpxchg_patch(i)
            if patch is not None:
                for p, _ in patch:
                    if isa.is_jump(p):
                        entries.append((XInsn(p, pc), None, p.off))
                    else:
                        entries.append((XInsn(p, pc), None, None))
                pc += 1
                continue
            if isa.is_jump(i):
                entries.append((XInsn(i, pc), isa.jump_target(pc, i), None))
            else:
                entries.append((XInsn(i, pc), None, None))
            pc += 1
        # Re-target jumps (bpf_adj_branches: a jump to a patched insn lands on
        # the first slot of its patchlet).
        xinsns: list[XInsn] = []
        for k, (x, orig_t, rel) in enumerate(entries):
            if orig_t is not None:
                t = orig_index[orig_t] if orig_t < hi else len(entries)
                x.target = t
                x.insn = _with_jump(x.insn, t - (k + 1))
            elif rel is not None:
                x.target = k + 1 + rel
            xinsns.append(x)
        deepest = _deepest(insns, lo, hi, targets)
        funcs.append(
            XFunc(
                name=prog.function_name(lo),
                start_pc=lo,
                insns=xinsns,
                orig_index=orig_index,
                orig_len=hi - lo,
                stack_depth=round_up(deepest, 8),
                raw_stack_depth=deepest,
                has_tail_call=has_tc,
                callees=callees,
            )
        )

    cb_index = index_of_start.get(cb_pc) if cb_pc is not None else None
    if throws and cb_index is None:
        # add_hidden_subprog(): r0 = r1; exit
        hidden = [
            XInsn(Insn(isa.ALU64 | isa.MOV | isa.X, 0, 1), None),
            XInsn(Insn(isa.JMP | isa.EXIT), None),
        ]
        funcs.append(XFunc(HIDDEN_CB_NAME, n, hidden, {}, 0))
        cb_index = len(funcs) - 1
    if cb_index is not None:
        funcs[cb_index].exception_cb = True
        if funcs[cb_index].has_tail_call:
            raise Unsupported("tail call within the exception callback (verifier rejects)")

    _tail_call_reachable(funcs)

    # Private stack: raw_tp, no tail call anywhere; per function reachable from
    # main (not from the exception callback), round_up(depth, 16) >= 64.
    if prog.type == "raw_tp" and not any_tail_call:
        cb_tree = _reach(funcs, cb_index) if cb_index is not None else set()
        for k in _reach(funcs, 0):
            if k in cb_tree:
                continue
            if round_up(funcs[k].stack_depth, 16) >= private_stack_min:
                funcs[k].private_stack = True

    return XProg(prog.name, prog.type, funcs, pokes, throws, cb_index)


def _reach(funcs: list[XFunc], root: int) -> set[int]:
    seen = {root}
    todo = [root]
    while todo:
        for c in funcs[todo.pop()].callees:
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def _with_jump(i: Insn, rel: int) -> Insn:
    if i.opcode == isa.JMP32 | isa.JA:
        return Insn(i.opcode, i.dst, i.src, i.off, rel)
    return Insn(i.opcode, i.dst, i.src, rel, i.imm)
