"""Fidelity of the x86-64 model: its code against the kernel's, region by region.

``compare(case, model, kernel)`` takes the two ``NativeSystem`` of one case
(``harness.jit.x86_64.compile_system`` and the ``kernel`` engine's
``build_native``), disassembles every function with capstone and cuts it into
regions: the **prologue** (function start to the first BPF instruction's
address), the **epilogue** (the code of the first ``exit``, which the JIT emits
once and every other exit jumps to) and one region per BPF instruction.
Instructions are compared as capstone mnemonic + operands with every address
made symbolic, plus the encoded length (so an encoding choice that changes
length still shows):

* call/jmp targets: ``prog:func`` (a function start), ``tail:prog`` (a
  program's tail-call entry), ``helper:<id>``, ``kfunc:<n>``, ``return_thunk``,
  ``thunk:rcx``; a target inside the same function becomes ``@<pc>`` (the
  start of that instruction's code), ``@exit`` (the epilogue) or
  ``@<region>+<offset>``;
* immediates: ``map:<name>`` (+offset) for a map's ``struct bpf_array`` and its
  values, ``percpu`` for per-cpu addresses (private stacks, the inlined
  ``smp_processor_id``), ``this_cpu_off`` for the ``gs:`` displacement.

What the kernel does differently **by design** is reported as such, not as a
model difference (``Region.status == "by-design"`` with the reason):
instructions the verifier removed as dead code, helpers it inlines (array
``map_lookup_elem``, ``get_smp_processor_id``, ``bpf_loop``: the model emits a
call), branches the verifier resolved (``opt_hard_wire_dead_code_branches``),
jump widths that follow from those layout changes, and nop padding. Verifier
rewrites of helper calls into direct calls (``array_map_update_elem`` ...)
are already named ``helper:<id>`` by the kernel engine's symbol table. The
hidden default exception callback is a stand-in on the kernel side (6.18
reports it nowhere), so it is listed but never counted.

``side_by_side(report)`` prints the two listings in two columns, BPF
instruction headers interleaved, differing lines marked ``!`` (``~`` for a
by-design difference). ``measure(seeds)`` runs ``compare`` over generated
systems; ``python -m harness.report.fidelity --seeds N`` prints its figures.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from harness.formats import isa
from harness.formats.isa import Insn
from harness.native.image import NativeFunc, NativeSystem
from harness.reference.helpers import BPF_THROW, TAIL_CALL
from harness.system import Case

__all__ = [
    "CONTROL",
    "CATEGORIES",
    "INLINED_HELPERS",
    "Line",
    "Region",
    "FuncReport",
    "Report",
    "compare",
    "side_by_side",
    "kernel_system",
    "Tally",
    "measure",
    "main",
]

#: region categories, in report order; all but "other" are control transfers
CATEGORIES = (
    "prologue",
    "epilogue",
    "call",
    "helper",
    "kfunc",
    "throw",
    "tail_call",
    "exit",
    "other",
)
CONTROL = frozenset(CATEGORIES) - {"other"}

#: helpers the 6.18 verifier inlines (``map_gen_lookup`` of array maps,
#: ``bpf_get_smp_processor_id`` on x86-64, ``inline_bpf_loop``); the model
#: keeps them as calls
INLINED_HELPERS = {1: "array map_lookup_elem", 8: "bpf_get_smp_processor_id", 181: "bpf_loop"}

#: the verifier's hidden default exception callback (``r0 = r1; exit``)
_HIDDEN_CB = (
    Insn(isa.ALU64 | isa.MOV | isa.X, 0, 1, 0, 0),
    Insn(isa.JMP | isa.EXIT, 0, 0, 0, 0),
)
#: the kernel engine's stand-in code for that callback lives from here up
_STANDIN_BASE = 0xFFFF_FFFF_C0F0_0000
_HEX = re.compile(r"-?0x[0-9a-f]+")
_U64 = (1 << 64) - 1
_JUMPS = ("jmp", "call")


def _cs():
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    if not hasattr(_cs, "md"):
        _cs.md = Cs(CS_ARCH_X86, CS_MODE_64)
    return _cs.md


# --- results -------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One x86 instruction, raw and normalised."""

    offset: int  #: from the function's start
    raw: bytes
    mnemonic: str
    ops: str  #: capstone's operands, addresses as they are
    norm: str  #: mnemonic + operands with addresses made symbolic

    @property
    def key(self) -> tuple[str, int]:
        """What is compared: the normalised text and the encoded length."""
        return self.norm, len(self.raw)

    def text(self) -> str:
        return f"{self.offset:4x} {self.raw.hex():20.20} {self.norm}"


@dataclass
class Region:
    kind: str  #: "prologue", "epilogue" or "insn"
    category: str  #: one of CATEGORIES
    pc: int | None  #: the BPF instruction (None for the prologue)
    bpf: str  #: its text
    model: list[Line] = field(default_factory=list)
    kernel: list[Line] = field(default_factory=list)
    #: "same", "by-design" (the kernel differs on purpose: ``reason``),
    #: "differs" (a model difference: ``reason`` says where)
    status: str = "same"
    reason: str = ""

    @property
    def control(self) -> bool:
        return self.category in CONTROL

    @property
    def label(self) -> str:
        return self.kind if self.pc is None or self.kind != "insn" else str(self.pc)

    def first_difference(self) -> tuple[Line | None, Line | None]:
        """The first pair of lines that differ (None: missing on that side)."""
        sm = difflib.SequenceMatcher(
            None, [x.key for x in self.model], [x.key for x in self.kernel], autojunk=False
        )
        for tag, i1, i2, j1, j2 in sm.get_opcodes():
            if tag != "equal":
                m = self.model[i1] if i1 < i2 else None
                k = self.kernel[j1] if j1 < j2 else None
                return m, k
        return None, None


@dataclass
class FuncReport:
    prog: str
    index: int  #: in the model's function list
    name: str
    start_pc: int
    role: str  #: "main", "subprog", "exception_cb" ("+boundary" for a throwing main)
    model_address: int | None
    kernel_address: int | None
    regions: list[Region] = field(default_factory=list)
    #: why the function is not compared ("" when it is)
    skipped: str = ""


@dataclass
class Report:
    case: Case
    funcs: list[FuncReport]
    #: what the kernel does differently by design in this case, one line each
    notes: list[str] = field(default_factory=list)

    def regions(
        self, categories: Iterable[str] = CATEGORIES
    ) -> Iterable[tuple[FuncReport, Region]]:
        cats = set(categories)
        for f in self.funcs:
            if f.skipped:
                continue
            for r in f.regions:
                if r.category in cats:
                    yield f, r

    @property
    def counts(self) -> dict[str, Counter]:
        """category -> Counter of region statuses."""
        out: dict[str, Counter] = {c: Counter() for c in CATEGORIES}
        for _, r in self.regions():
            out[r.category][r.status] += 1
        return out

    def differences(
        self, categories: Iterable[str] = CATEGORIES
    ) -> list[tuple[FuncReport, Region]]:
        """The model differences (not the by-design ones)."""
        return [(f, r) for f, r in self.regions(categories) if r.status == "differs"]

    def identical(self, categories: Iterable[str] = CONTROL) -> bool:
        """No model difference in these categories."""
        return not self.differences(categories)

    def summary(self) -> str:
        lines = []
        for cat, c in self.counts.items():
            if c:
                lines.append(f"{cat:10} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
        for f, r in self.differences():
            m, k = r.first_difference()
            lines.append(
                f"DIFF {f.prog}:{f.name} {r.label} [{r.category}] {r.reason}: "
                f"model {m.norm if m else '-'} | kernel {k.norm if k else '-'}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# --- normalisation -------------------------------------------------------------


class _Names:
    """Symbolic names for the addresses one system's code contains."""

    def __init__(self, system: NativeSystem, case: Case):
        self.system = system
        self.exact: dict[int, str] = dict(system.symbols)
        self.funcs: list[tuple[int, int, str]] = []
        for p in system.progs.values():
            for f in p.funcs:
                self.funcs.append((f.address, f.address + len(f.code), f"{p.name}:{_fname(p, f)}"))
                self.exact.setdefault(f.address, f"{p.name}:{_fname(p, f)}")
        for p in system.progs.values():
            # a tail-call entry is never a function start
            self.exact[p.tail_call_entry] = f"tail:{p.name}"
        if system.this_cpu_off:
            self.exact[system.this_cpu_off] = "this_cpu_off"
        self.ranges: list[tuple[int, int, str]] = []
        lay = system.layout
        for name, base in system.maps.items():
            m = case.maps.get(name)
            entries = m.max_entries if m else 1
            size = max(m.value_size, 8) if m else 8
            self.ranges.append((base, base + lay.array_ptrs + entries * size + 1, f"map:{name}"))
        for base, size in system.percpu_regions:
            self.ranges.append((base, base + size, "percpu"))

    def value(self, v: int) -> str | None:
        v &= _U64
        if v in self.exact:
            return self.exact[v]
        for lo, hi, name in self.ranges:
            if lo <= v < hi:
                if name.startswith("map:") and v != lo:
                    return f"{name}+{v - lo:#x}"
                return name
        for lo, hi, name in self.funcs:
            if lo < v < hi:
                return f"{name}+{v - lo:#x}"
        return None


def _fname(prog, f: NativeFunc) -> str:
    # the hidden default callback has another name on each side
    return (
        "exception_cb"
        if prog.exception_callback is not None and f is prog.funcs[prog.exception_callback]
        else f.name
    )


def _normalise(mnem: str, ops: str, names: _Names, local: Callable[[int], str | None]) -> str:
    if mnem.startswith("j") or mnem == "call":
        if _HEX.fullmatch(ops):
            t = int(ops, 16) & _U64
            name = local(t) or names.value(t)
            return f"{mnem} {name or '?'}"

    def sub(m: re.Match) -> str:
        name = names.value(int(m.group(0), 16))
        return name if name is not None else m.group(0)

    return f"{mnem} {_HEX.sub(sub, ops)}".rstrip()


# --- regions -------------------------------------------------------------------


def _category(insn: Insn) -> str:
    if insn.opcode == isa.JMP | isa.EXIT:
        return "exit"
    if insn.opcode == isa.JMP | isa.CALL:
        if insn.src == isa.PSEUDO_CALL:
            return "call"
        if insn.src == isa.PSEUDO_KFUNC_CALL:
            return "throw" if insn.imm == BPF_THROW else "kfunc"
        return "tail_call" if insn.imm == TAIL_CALL else "helper"
    return "other"


def _bpf_text(case: Case, prog: str, pc: int, insn: Insn) -> str:
    p = case.programs[prog]
    if pc >= len(p.insns):
        return "(hidden default exception callback) " + (
            "exit" if insn.opcode == isa.JMP | isa.EXIT else "r0 = r1"
        )
    try:
        from harness.formats.asm import format_insn  # type: ignore[attr-defined]

        return format_insn(p.insns, pc, labels=p.labels, maps=list(case.maps))
    except (ImportError, TypeError, AttributeError, IndexError, KeyError, ValueError):
        return f"{isa.encode(insn).hex()} ({isa.OPCODES.get(insn.opcode, '?')})"


def _insns(case: Case, prog: str, f: NativeFunc) -> list[tuple[int, Insn]]:
    """(pc, insn) of a function's instruction starts (no ld_imm64 second slots)."""
    p = case.programs[prog]
    out, skip = [], False
    for d in range(len(f.insn_addrs)):
        pc = f.start_pc + d
        if skip:
            skip = False
            continue
        insn = p.insns[pc] if pc < len(p.insns) else _HIDDEN_CB[min(pc - len(p.insns), 1)]
        skip = insn.opcode == isa.LD_IMM64
        out.append((d, insn))
    return out


@dataclass
class _Cut:
    """One side's function, cut into regions: label -> (start, end) offsets."""

    spans: dict[str, tuple[int, int]]
    order: list[str]
    epilogue_pc: int | None
    lines: dict[str, list[Line]]


def _cut(case: Case, prog, f: NativeFunc, names: _Names) -> _Cut:
    starts = _insns(case, prog.name, f)
    end = len(f.code)
    offs = [min(max(f.insn_addrs[d] - f.address, 0), end) for d, _ in starts]
    spans: dict[str, tuple[int, int]] = {"prologue": (0, offs[0] if offs else end)}
    order = ["prologue"]
    for k, (d, _insn) in enumerate(starts):
        nxt = offs[k + 1] if k + 1 < len(starts) else end
        spans[str(f.start_pc + d)] = (offs[k], max(nxt, offs[k]))
        order.append(str(f.start_pc + d))
    raw = [(a - f.address, n, m, o) for a, n, m, o in _cs().disasm_lite(f.code, f.address)]
    first_mnem = {}
    for o, _s, m, _ops in raw:
        first_mnem.setdefault(o, m)
    epi = None
    for d, insn in starts:
        lo, hi = spans[str(f.start_pc + d)]
        if insn.opcode == isa.JMP | isa.EXIT and hi > lo and first_mnem.get(lo) != "jmp":
            epi = f.start_pc + d
            break
    # local jump targets: the start of an instruction's code, the epilogue,
    # or an offset inside a region
    starts_at: dict[int, str] = {}
    for lab in reversed(order):
        lo, hi = spans[lab]
        if hi > lo:
            starts_at[lo] = "@exit" if epi is not None and lab == str(epi) else f"@{lab}"

    def local(t: int) -> str | None:
        o = t - f.address
        if not 0 <= o <= end:
            return None
        if o in starts_at:
            return starts_at[o]
        if o == end:
            return "@end"
        for lab in order:
            lo, hi = spans[lab]
            if lo <= o < hi:
                return f"@{'exit' if epi is not None and lab == str(epi) else lab}+{o - lo:#x}"
        return None

    lines: dict[str, list[Line]] = {lab: [] for lab in order}
    bounds = sorted(
        (spans[lab][0], spans[lab][1], lab) for lab in order if spans[lab][1] > spans[lab][0]
    )
    bi = 0
    for o, size, mnem, ops in raw:
        while bi + 1 < len(bounds) and o >= bounds[bi][1]:
            bi += 1
        lab = bounds[bi][2] if bounds else "prologue"
        norm = _normalise(mnem, ops, names, lambda t: local(t))
        lines[lab].append(Line(o, f.code[o : o + size], mnem, ops, norm))
    return _Cut(spans, order, epi, lines)


# --- comparison ----------------------------------------------------------------


def _resplit(mc: _Cut, kc: _Cut) -> bool:
    """Move the kernel's uncertain region boundaries onto the model's.

    The kernel reports no address for a function's first instruction (its
    line record names the function start; the kernel engine infers the
    prologue's end), and none for an instruction it removed or whose record
    it overwrote (6.18 fills the first records of a program with a hidden
    exception callback from that callback's image). A boundary next to such
    an instruction is uncertain: over each run of regions joined by uncertain
    boundaries, when the kernel's code is the model's, split it as the model
    does; otherwise greedily, region by region, while the kernel's code starts
    with the model's (an empty kernel region stays empty). True if anything
    moved."""
    labels = kc.order
    first = labels[1] if len(labels) > 1 else None

    def empty(lab: str) -> bool:
        return not kc.lines[lab]

    groups: list[list[str]] = []
    for i, lab in enumerate(labels):
        uncertain = i > 0 and (lab == first or empty(lab) or empty(labels[i - 1]))
        if uncertain:
            groups[-1].append(lab)
        else:
            groups.append([lab])
    moved = False
    for g in groups:
        if len(g) < 2:
            continue
        klines = [x for lab in g for x in kc.lines[lab]]
        take: list[int] = []
        rest = [x.key for x in klines]
        for lab in g:
            want = [x.key for x in mc.lines.get(lab, [])]
            if rest[: len(want)] == want:
                take.append(len(want))
                rest = rest[len(want) :]
            elif empty(lab):
                take.append(0)
            else:
                break
        if len(take) != len(g) or rest:
            continue
        at = 0
        for lab, n in zip(g, take, strict=True):
            new = klines[at : at + n]
            moved |= new != kc.lines[lab]
            kc.lines[lab] = new
            at += n
    return moved


def _calls(lines: list[Line], target: str) -> bool:
    return any(x.mnemonic == "call" and x.norm == f"call {target}" for x in lines)


def _is_nop_padding(x: Line) -> bool:
    return x.mnemonic == "nop"


def _keys(lines: list[Line], drop_nops: bool = False) -> list[tuple[str, int]]:
    return [x.key for x in lines if not (drop_nops and _is_nop_padding(x))]


def _norms(lines: list[Line]) -> list[str]:
    return [x.norm for x in lines]


def _by_design(r: Region, insn: Insn | None, dead: bool | None) -> str:
    """Why a differing region differs on purpose, or ''."""
    if r.kind == "insn" and not r.kernel and r.model:
        if dead:
            return "dead code: the verifier removed this instruction"
        if (
            insn is not None
            and isa.cls(insn.opcode) in (isa.JMP, isa.JMP32)
            and (insn.opcode & 0xF0) not in (isa.CALL, isa.EXIT)
        ):
            return "branch resolved by the verifier (opt_remove_nops / dead-code branch)"
        if dead is None:
            return "dead code (inferred: the kernel emitted nothing here)"
    if r.category == "helper" and insn is not None and insn.imm in INLINED_HELPERS:
        h = f"helper:{insn.imm}"
        if _calls(r.model, h) and not _calls(r.kernel, h):
            return f"inlined by the kernel: {INLINED_HELPERS[insn.imm]}"
    if (
        insn is not None
        and isa.cls(insn.opcode) in (isa.JMP, isa.JMP32)
        and (insn.opcode & 0xF0) not in (isa.CALL, isa.EXIT, isa.JA)
        and len(r.kernel) <= 1
        and all(x.mnemonic == "jmp" for x in r.kernel)
    ):
        return "branch resolved by the verifier (opt_hard_wire_dead_code_branches)"
    if _keys(r.model, True) == _keys(r.kernel, True) and r.category not in ("tail_call",):
        return "nop padding"
    return ""


def compare(
    case: Case,
    model: NativeSystem,
    kernel: NativeSystem,
    *,
    dead: dict[str, set[int]] | None = None,
) -> Report:
    """Compare the model's code with the kernel's for one case.

    ``dead``: program -> pcs the verifier removed (``kernel_system`` gives
    it); without it, an instruction the kernel emitted nothing for while the
    model did is taken to be dead code, and said to be inferred."""
    mnames, knames = _Names(model, case), _Names(kernel, case)
    funcs: list[FuncReport] = []
    notes: set[str] = set()
    for pname, mp in model.progs.items():
        kp = kernel.progs.get(pname)
        kfuncs = {f.start_pc: f for f in kp.funcs} if kp else {}
        for idx, mf in enumerate(mp.funcs):
            kf = kfuncs.get(mf.start_pc)
            role = "main" if idx == 0 else "subprog"
            if mp.exception_callback == idx:
                role = "exception_cb"
            elif idx == 0 and mp.exception_boundary:
                role = "main+boundary"
            fr = FuncReport(
                pname,
                idx,
                mf.name,
                mf.start_pc,
                role,
                mf.address,
                kf.address if kf else None,
            )
            funcs.append(fr)
            if kf is None:
                fr.skipped = "the kernel removed this function (dead code)"
                notes.add(f"{pname}:{mf.name}: removed by the verifier as dead code")
                continue
            if kf.address >= _STANDIN_BASE:
                fr.skipped = "kernel side is the engine's stand-in (6.18 reports no image for it)"
            mc, kc = _cut(case, mp, mf, mnames), _cut(case, kp, kf, knames)
            if _resplit(mc, kc):
                notes.add(
                    f"{pname}:{mf.name}: region boundaries the kernel does not report "
                    "(prologue end, removed instructions) taken from the model where the "
                    "code agrees"
                )
            insns = dict(_insns(case, pname, mf))
            pdead = dead.get(pname, set()) if dead is not None else None
            layout_changed = False
            for lab in mc.order:
                pc = None if lab == "prologue" else int(lab)
                insn = insns[pc - mf.start_pc] if pc is not None else None
                if pc is None:
                    kind, cat, text = "prologue", "prologue", "(prologue)"
                elif pc == mc.epilogue_pc or (pc == kc.epilogue_pc and mc.epilogue_pc is None):
                    kind, cat, text = "epilogue", "epilogue", _bpf_text(case, pname, pc, insn)
                else:
                    kind, cat, text = "insn", _category(insn), _bpf_text(case, pname, pc, insn)
                r = Region(kind, cat, pc, text, mc.lines.get(lab, []), kc.lines.get(lab, []))
                if _keys(r.model) != _keys(r.kernel):
                    why = _by_design(
                        r, insn, (pc in pdead) if pdead is not None and pc is not None else None
                    )
                    if why:
                        r.status, r.reason = "by-design", why
                        layout_changed |= why != "nop padding"
                        notes.add(f"{pname}:{mf.name} {r.label}: {why}")
                    else:
                        r.status = "differs"
                fr.regions.append(r)
            if mc.epilogue_pc != kc.epilogue_pc:
                notes.add(
                    f"{pname}:{mf.name}: the epilogue is at pc {mc.epilogue_pc} in the model, "
                    f"{kc.epilogue_pc} in the kernel"
                )
            for r in fr.regions:
                if r.status != "differs":
                    continue
                same_text = _norms(r.model) == _norms(r.kernel)
                if (
                    same_text
                    and layout_changed
                    and all(
                        a.mnemonic.startswith("j") or a.key == b.key
                        for a, b in zip(r.model, r.kernel, strict=True)
                    )
                ):
                    r.status = "by-design"
                    r.reason = "jump width follows the kernel's layout (code removed or inlined)"
                    continue
                r.reason = _describe(r)
    return Report(case, funcs, sorted(notes))


def _describe(r: Region) -> str:
    m, k = r.first_difference()
    if m is not None and k is not None and m.norm == k.norm:
        return f"encoding: {m.norm} is {m.raw.hex()} in the model, {k.raw.hex()} in the kernel"
    if m is None:
        return f"the kernel has more: {k.norm if k else '?'}"
    if k is None:
        return f"the model has more: {m.norm}"
    return f"{m.norm} | {k.norm}"


# --- side by side --------------------------------------------------------------


def side_by_side(report: Report, width: int = 160) -> str:
    """The two listings in two columns (model left, kernel right), BPF
    instruction headers interleaved; ``!`` marks a model difference, ``~`` a
    by-design one."""
    col = max((width - 5) // 2, 20)

    def cut(s: str) -> str:
        return s if len(s) <= col else s[: col - 1] + ">"

    out = [f"  {'model (x86_64)':{col}} | kernel"]
    for f in report.funcs:
        ma = f"{f.model_address:#x}" if f.model_address is not None else "-"
        ka = f"{f.kernel_address:#x}" if f.kernel_address is not None else "-"
        out.append(f"== {f.prog} func {f.index} {f.name} [{f.role}] model @ {ma}, kernel @ {ka}")
        if f.skipped:
            out.append(f"   ({f.skipped})")
        for r in f.regions:
            mark = {"same": " ", "by-design": "~", "differs": "!"}[r.status]
            head = (
                r.bpf if r.kind == "insn" else f"{r.kind}: {r.bpf}" if r.pc is not None else r.kind
            )
            why = f"  <- {r.reason}" if r.reason else ""
            pc = f"{r.pc}: " if r.pc is not None else ""
            out.append(f"{mark} ; {pc}{head}  [{r.category}]{why}")
            sm = difflib.SequenceMatcher(
                None, [x.key for x in r.model], [x.key for x in r.kernel], autojunk=False
            )
            for tag, i1, i2, j1, j2 in sm.get_opcodes():
                g = " " if tag == "equal" else mark
                left, right = r.model[i1:i2], r.kernel[j1:j2]
                for n in range(max(len(left), len(right))):
                    a = left[n].text() if n < len(left) else ""
                    b = right[n].text() if n < len(right) else ""
                    out.append(f"{g} {cut(a):{col}} | {cut(b)}".rstrip())
    if report.notes:
        out.append("by design / notes:")
        out += [f"  {n}" for n in report.notes]
    return "\n".join(out) + "\n"


# --- the kernel side -------------------------------------------------------------


def kernel_system(engine, case: Case) -> tuple[NativeSystem | None, dict[str, set[int]], str]:
    """(the kernel's ``NativeSystem``, dead pcs per program, why not) through a
    ``KernelEngine`` (its worker process does the loading)."""
    from harness.engines.kernel import NotReplayable, build_native

    ans = engine.snapshot(case)
    if ans.status != "ok":
        first = (ans.detail or ans.log or ans.status).strip().splitlines()
        return None, {}, f"kernel {ans.status}: {first[0] if first else ''}"
    dead = {
        name: {f.start_pc + d for f in pi.funcs for d, a in enumerate(f.insn_addrs) if a is None}
        for name, pi in ans.image.progs.items()
    }
    image = ans.image
    thunks = [a for a, n in image.symbols.items() if n.endswith("return_thunk")]
    if len(thunks) == 1 and image.return_thunk != thunks[0]:
        # the engine takes the return thunk to be the commonest final jmp
        # target; when most images end otherwise (in a throw, in a jump to
        # their own epilogue) that guess misses, but the name does not
        image = replace(image, return_thunk=thunks[0])
    try:
        native, _ = build_native(case, image, engine._offset(image, case))
    except NotReplayable as e:
        return None, dead, f"not replayable: {e}"
    return native, dead, ""


# --- measurement -----------------------------------------------------------------


@dataclass
class Tally:
    """Figures over many systems."""

    seeds: list[int] = field(default_factory=list)
    compared: int = 0
    skipped: Counter = field(default_factory=Counter)
    #: (category, role) -> Counter of statuses
    regions: dict[tuple[str, str], Counter] = field(default_factory=dict)
    #: systems whose control-transfer code has no model difference
    control_identical: int = 0
    #: systems with no model difference at all
    all_identical: int = 0
    #: difference kind -> (count, seed of the smallest example, size, description)
    kinds: dict[str, list] = field(default_factory=dict)
    by_design: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, seed: int, report: Report) -> None:
        self.compared += 1
        self.control_identical += report.identical(CONTROL)
        self.all_identical += report.identical(CATEGORIES)
        size = sum(len(p.insns) for p in report.case.programs.values())
        for f, r in report.regions():
            role = f.role.partition("+")[0] if r.category in ("prologue", "epilogue") else "-"
            self.regions.setdefault((r.category, role), Counter())[r.status] += 1
            if r.status == "by-design":
                self.by_design[r.reason] += 1
            if r.status == "differs":
                k = kind_of(f, r)
                entry = self.kinds.setdefault(k, [0, seed, size, ""])
                entry[0] += 1
                if size < entry[2] or not entry[3]:
                    entry[1:] = [seed, size, f"{f.prog}:{f.name} {r.label}: {r.reason}"]

    def render(self) -> str:
        skipped = "".join(f", {v} skipped ({k})" for k, v in self.skipped.most_common())
        out = [
            f"systems: {len(self.seeds)} seeds, {self.compared} compared{skipped}; "
            f"{self.seconds:.0f} s"
        ]
        if self.compared:
            out.append(
                f"control-transfer code identical (no model difference): {self.control_identical}"
                f"/{self.compared} systems ({100 * self.control_identical / self.compared:.1f}%);"
                f" all code: {self.all_identical}/{self.compared}"
                f" ({100 * self.all_identical / self.compared:.1f}%)"
            )
        out.append(
            f"{'category':12} {'role':13} {'regions':>8} {'same':>7} {'by-design':>10} "
            f"{'differs':>8} {'identical%':>11} {'same+design%':>13}"
        )
        order = {c: i for i, c in enumerate(CATEGORIES)}
        for (cat, role), c in sorted(
            self.regions.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])
        ):
            n = sum(c.values())
            out.append(
                f"{cat:12} {role:13} {n:8} {c['same']:7} {c['by-design']:10} {c['differs']:8} "
                f"{100 * c['same'] / n:10.1f}% {100 * (c['same'] + c['by-design']) / n:12.1f}%"
            )
        if self.kinds:
            out.append("model differences (kind: regions, smallest example):")
            for k, (n, seed, size, desc) in sorted(self.kinds.items(), key=lambda kv: -kv[1][0]):
                out.append(f"  {k}: {n} (seed {seed}, {size} insns) {desc}")
        if self.by_design:
            out.append("by design (regions):")
            for k, n in self.by_design.most_common():
                out.append(f"  {n:6} {k}")
        return "\n".join(out)


def kind_of(f: FuncReport, r: Region) -> str:
    """A difference's kind: where it is and its first differing pair, numbers
    abstracted."""
    m, k = r.first_difference()

    def shape(x: Line | None) -> str:
        return re.sub(r"-?0x[0-9a-f]+|\b\d+\b", "N", x.norm) if x else "-"

    role = f.role.partition("+")[0] if r.category in ("prologue", "epilogue") else ""
    where = f"{r.category}/{role}" if role else r.category
    if m is not None and k is not None and m.norm == k.norm:
        return f"{where}: encoding of {shape(m)} ({len(m.raw)} vs {len(k.raw)} bytes)"
    return f"{where}: model `{shape(m)}` kernel `{shape(k)}`"


def measure(
    seeds: Iterable[int],
    *,
    config=None,
    variant=None,
    on_report: Callable[[int, Report], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Tally:
    """``compare`` over ``generators.generate(seed, config)`` for every seed,
    skipping systems the model refuses or the kernel rejects."""
    import generators
    from harness import engines
    from harness.errors import JitdiffError
    from harness.jit import Variant, compile_system

    config = config or generators.Config()
    variant = variant or Variant()
    tally = Tally()
    t0 = time.monotonic()
    engine = engines.get("kernel")
    try:
        for seed in seeds:
            tally.seeds.append(seed)
            case = generators.generate(seed, config)
            try:
                model = compile_system(case, variant=variant)
            except JitdiffError as e:
                tally.skipped[f"model refused: {type(e).__name__}"] += 1
                continue
            kernel, dead, why = kernel_system(engine, case)
            if kernel is None:
                tally.skipped[why[:90]] += 1
                continue
            report = compare(case, model, kernel, dead=dead)
            tally.add(seed, report)
            if on_report:
                on_report(seed, report)
            if progress and tally.compared % 25 == 0:
                progress(f"{len(tally.seeds)} seeds, {tally.compared} compared")
    finally:
        engine.close()
    tally.seconds = time.monotonic() - t0
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.report.fidelity",
        description="How often the x86-64 model's code equals the kernel's, on generated systems",
    )
    ap.add_argument("--seeds", type=int, default=300, help="number of seeds")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--show", type=int, help="print the side-by-side listing of one seed")
    ap.add_argument("--width", type=int, default=160)
    args = ap.parse_args(argv)
    from harness.errors import JitdiffError
    from harness.kernel import available

    why = available()
    if why:
        print(f"fidelity: the kernel is unusable: {why}", file=sys.stderr)
        return 2
    if args.show is not None:
        reports: list[Report] = []
        measure([args.show], on_report=lambda _s, r: reports.append(r))
        if not reports:
            print(f"seed {args.show}: not compared (refused or rejected)", file=sys.stderr)
            return 2
        print(side_by_side(reports[0], args.width))
        return 0
    try:
        tally = measure(
            range(args.start, args.start + args.seeds),
            progress=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except JitdiffError as e:
        print(f"fidelity: {e}", file=sys.stderr)
        return 2
    print(f"$ python -m harness.report.fidelity --seeds {args.seeds} --start {args.start}")
    print(tally.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
