"""Load a ``Case`` into the running kernel and read back what its JIT made.

``load_case(case)`` creates the maps, loads every program with program BTF
(``func_info`` for every function, one ``line_info`` per instruction, the
exception-callback tag), fills the maps from ``MapDef.init`` and returns a
``LoadedSystem``: the live fds plus methods that return plain, picklable data
(``TestRun``, ``bytes``, ``SystemImage``), so the whole thing can run inside
a disposable worker process and ship its results back to the parent.

Translation at load time: a map ``ld_imm64`` (src=1 map fd, src=2 map value)
carries an index into ``case.maps`` and becomes the map's fd; a kfunc call
(src=2) carries jitdiff's kfunc number (``harness.reference.helpers.KFUNCS``) and
becomes the kfunc's vmlinux BTF id.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections import Counter
from dataclasses import dataclass, field

from harness.errors import CaseError, Unsupported
from harness.formats import isa
from harness.formats.isa import Insn
from harness.kernel import bpf as _bpf
from harness.kernel.bpf import Fd, MapType, ProgType, Rejected, TestRun
from harness.kernel.btf import LINKAGE_GLOBAL, LINKAGE_STATIC, ProgramBtf, line_to_pc
from harness.kernel.btf import func_id as _kfunc_btf_id
from harness.kernel.btf import kernel_layout as _kernel_layout
from harness.kernel.crashes import known_crash
from harness.kernel.kallsyms import kallsyms
from harness.native.image import Layout
from harness.reference.helpers import KFUNCS
from harness.system import Case, Program

__all__ = [
    "UNKNOWN_ADDRESS",
    "PROG_TYPE_IDS",
    "KnownKernelBug",
    "Rejected",
    "FuncImage",
    "MapRef",
    "ProgImage",
    "SystemImage",
    "LoadedSystem",
    "load_case",
    "function_names",
    "bind",
    "program_btf",
    "load_order",
    "slot_starts",
]

PROG_TYPE_IDS = {"raw_tp": ProgType.RAW_TRACEPOINT, "sched_cls": ProgType.SCHED_CLS}

#: x86-64 register of each BPF register (R10 aside), as the 6.18 JIT maps them.
X86_REG = ("rax", "rdi", "rsi", "rdx", "rcx", "r8", "rbx", "r13", "r14", "r15")

#: arguments in the BTF prototype of a static subprogram; the verifier checks
#: static functions by their register use, not their prototype.
STATIC_NARGS = 5


class KnownKernelBug(Unsupported):
    """The case has a shape known to oops this kernel during load; it is
    refused unless ``load_case(..., allow_known_crashes=True)``."""


# --- plain data returned to the caller ---------------------------------------


@dataclass(frozen=True)
class FuncImage:
    #: function label (``Program.function_name``)
    name: str
    #: BPF pc of the function's first instruction in the case's program
    start_pc: int
    #: ``jited_ksyms[i]``: the host address of the image's first byte
    address: int
    code: bytes
    #: host address of each BPF slot, indexed by ``pc - start_pc``, from
    #: ``jited_line_info``. The first entry is the function's start (the
    #: prologue), not its first instruction's code; the second slot of an
    #: ld_imm64 repeats the first's; None for an instruction the verifier
    #: removed as dead.
    insn_addrs: tuple[int | None, ...]


@dataclass(frozen=True)
class MapRef:
    """A map pointer the JIT embedded as ``movabs reg, imm64``."""

    map: str
    #: "map" (src=1, the ``struct bpf_array``) or "value" (src=2, a value address)
    kind: str
    #: index of the ld_imm64 in the xlated program, and its original pc (the pc
    #: of the nearest line record at or before it, for a verifier-inserted load)
    xlated_pc: int
    pc: int
    #: address of the movabs and its immediate
    insn_address: int
    value: int
    #: src=2: byte offset into the map's values
    offset: int = 0


@dataclass(frozen=True)
class ProgImage:
    name: str
    id: int
    type: str
    #: functions the kernel kept, in order; [0] is main
    funcs: tuple[FuncImage, ...]
    #: the verifier's final program (map loads show src=1/2 and imm = map id)
    xlated: tuple[Insn, ...]
    map_ids: tuple[int, ...]
    map_refs: tuple[MapRef, ...]
    #: index into ``funcs`` of the exception callback
    exception_callback: int | None


@dataclass(frozen=True)
class SystemImage:
    """A snapshot of the live JIT text of a loaded system (direct tail-call
    sites show the prog arrays' state at the time of the snapshot)."""

    progs: dict[str, ProgImage]
    #: map name -> address of its ``struct bpf_array`` (found in the code;
    #: absent for a map no program loads)
    maps: dict[str, int]
    map_ids: dict[str, int]
    #: target of the ``jmp`` that ends every image
    return_thunk: int
    #: every call/jmp target outside the system's images -> kallsyms name
    #: (``name`` or ``name+0x..``)
    symbols: dict[int, str]
    layout: Layout


# --- helpers -------------------------------------------------------------


def _ident(label: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in label) or "f"
    return "_" + s if s[0].isdigit() else s


def function_names(prog: Program) -> dict[int, str]:
    """start pc -> BTF name (a C identifier, unique within the program)."""
    out: dict[int, str] = {}
    used: set[str] = set()
    for start in prog.function_starts():
        base = _ident(prog.function_name(start))
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}_{n}"
        used.add(name)
        out[start] = name
    return out


def slot_starts(insns: list[Insn]) -> list[int]:
    """pcs that begin an instruction (not the second slot of ld_imm64)."""
    out, pc = [], 0
    while pc < len(insns):
        out.append(pc)
        pc += 2 if insns[pc].opcode == isa.LD_IMM64 else 1
    return out


def _map_refs(prog: Program) -> list[int]:
    """Indices into ``case.maps`` the program's ld_imm64s name."""
    out = []
    for pc in slot_starts(prog.insns):
        i = prog.insns[pc]
        if i.opcode == isa.LD_IMM64 and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            out.append(i.imm)
    return out


def load_order(case: Case) -> list[str]:
    """Programs ordered so that a tail-call target (a program in the initial
    contents of a prog array that P loads) comes before P; cycles (self or
    mutual tail calls) are broken in the case's order."""
    maps = list(case.maps.values())
    deps: dict[str, list[str]] = {}
    for name, prog in case.programs.items():
        d = []
        for idx in _map_refs(prog):
            if 0 <= idx < len(maps) and maps[idx].kind == "prog_array":
                d += [v for v in maps[idx].init.values() if isinstance(v, str)]
        deps[name] = d
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str) -> None:
        if state.get(n) or n not in case.programs:
            return
        state[n] = 1
        for d in deps[n]:
            visit(d)
        state[n] = 2
        order.append(n)

    for n in case.programs:
        visit(n)
    return order


#: insn_addrs entry for a live instruction whose line record is wrong (None
#: means the verifier removed the instruction)
UNKNOWN_ADDRESS = -1


def _sweep(code: bytes, address: int):
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    return Cs(CS_ARCH_X86, CS_MODE_64).disasm_lite(code, address)


def _imm_target(op_str: str) -> int | None:
    try:
        return int(op_str, 16) if op_str.startswith("0x") else None
    except ValueError:
        return None


# --- the loaded system ---------------------------------------------------


@dataclass
class _Prog:
    name: str
    program: Program
    fd: Fd
    log: str
    #: program BTF type id -> function start pc
    func_of_type: dict[int, int]
    names: dict[int, str]


@dataclass
class LoadedSystem:
    """Live kernel objects of one case. Close it (or use ``with``); every
    method returns plain data."""

    case: Case
    maps: dict[str, Fd] = field(default_factory=dict)
    progs: dict[str, _Prog] = field(default_factory=dict)
    btfs: list[Fd] = field(default_factory=list)
    #: CPU that test runs are pinned to (None: leave the affinity alone)
    cpu: int | None = 0

    # -- identity ------------------------------------------------------------

    @property
    def logs(self) -> dict[str, str]:
        """The verifier's log of every program (level 1)."""
        return {n: p.log for n, p in self.progs.items()}

    def prog_ids(self) -> dict[str, int]:
        return {n: _bpf.prog_info(p.fd).id for n, p in self.progs.items()}

    def map_ids(self) -> dict[str, int]:
        return {n: _bpf.map_info(fd).id for n, fd in self.maps.items()}

    # -- maps ----------------------------------------------------------------

    def _map(self, name: str):
        if name not in self.maps:
            raise CaseError(f"no map {name!r}")
        return self.case.maps[name], self.maps[name]

    def update(self, map_name: str, key: int, value: str | bytes) -> None:
        """Set a slot: a program name for a prog array (the kernel then pokes
        every direct tail-call site of that slot), bytes for an array."""
        mdef, fd = self._map(map_name)
        if mdef.kind == "prog_array":
            if not isinstance(value, str) or value not in self.progs:
                raise CaseError(f"{map_name}[{key}]: {value!r} is not a program of the case")
            raw = struct.pack("<I", int(self.progs[value].fd))
        else:
            if not isinstance(value, (bytes, bytearray)) or len(value) > mdef.value_size:
                raise CaseError(f"{map_name}[{key}]: value must be <= {mdef.value_size} bytes")
            raw = bytes(value).ljust(mdef.value_size, b"\0")
        _bpf.map_update(fd, struct.pack("<I", key), raw)

    def delete(self, map_name: str, key: int) -> bool:
        """Empty a prog-array slot; False when it was already empty. (Array
        elements cannot be deleted: the kernel's EINVAL is raised.)"""
        _, fd = self._map(map_name)
        return _bpf.map_delete(fd, struct.pack("<I", key))

    def map_contents(self, map_name: str) -> bytes:
        """Every value concatenated in key order. For a prog array, each slot
        reads as the u32 id of its program (0 when empty)."""
        mdef, fd = self._map(map_name)
        out = bytearray()
        size = 4 if mdef.kind == "prog_array" else mdef.value_size
        for key in range(mdef.max_entries):
            v = _bpf.map_lookup(fd, struct.pack("<I", key), size)
            out += v if v is not None else bytes(size)
        return bytes(out)

    def slots(self, map_name: str) -> dict[int, str]:
        """A prog array's filled slots -> program names (via prog ids)."""
        by_id = {v: k for k, v in self.prog_ids().items()}
        raw = self.map_contents(map_name)
        out = {}
        for key in range(len(raw) // 4):
            (pid,) = struct.unpack_from("<I", raw, 4 * key)
            if pid:
                out[key] = by_id.get(pid, f"id:{pid}")
        return out

    # -- running -------------------------------------------------------------

    def test_run(self, prog: str, ctx: bytes = b"") -> TestRun:
        """One ``BPF_PROG_TEST_RUN`` of ``prog``. raw_tp: ``ctx`` is the u64
        argument array (<= 96 bytes). sched_cls: ``ctx`` is the packet data,
        zero-padded to an Ethernet header (the kernel refuses less); the
        program sees it through the kernel's ``struct sk_buff``."""
        p = self.progs[prog]
        if p.program.type == "raw_tp":
            kw = {"ctx": ctx}
        else:
            kw = {"data": ctx.ljust(_bpf.ETH_HLEN, b"\0"), "repeat": 1}
        # Pinned to one CPU for determinism (per-cpu data, smp_processor_id);
        # BPF_F_TEST_RUN_ON_CPU would run in IPI context with another `current`.
        old = None
        if self.cpu is not None:
            old = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu} if self.cpu in old else {min(old)})
        try:
            return _bpf.prog_test_run(p.fd, **kw)
        finally:
            if old is not None:
                os.sched_setaffinity(0, old)

    # -- images --------------------------------------------------------------

    def images(self) -> SystemImage:
        """Snapshot every program's JIT images, line addresses, xlated code
        and the map addresses embedded in the code."""
        map_ids = self.map_ids()
        name_of_id = {v: k for k, v in map_ids.items()}
        layout = _kernel_layout()
        progs: dict[str, ProgImage] = {}
        for name, p in self.progs.items():
            progs[name] = self._image(p, _bpf.prog_info(p.fd), name_of_id)
        maps: dict[str, int] = {}
        for pi in progs.values():
            for ref in pi.map_refs:
                base = ref.value - (layout.array_ptrs + ref.offset if ref.kind == "value" else 0)
                maps.setdefault(ref.map, base)
        ranges = sorted(
            (f.address, f.address + len(f.code)) for pi in progs.values() for f in pi.funcs
        )
        starts = [r[0] for r in ranges]

        def internal(a: int) -> bool:
            i = bisect.bisect_right(starts, a) - 1
            return i >= 0 and a < ranges[i][1]

        ks = kallsyms()
        symbols: dict[int, str] = {}
        # the return thunk: the external target of the `jmp` that follows
        # `leave` in every epilogue (an image may end in a jump inside itself,
        # or in a call to bpf_throw, so the last instruction is not enough)
        after_leave: Counter = Counter()
        for pi in progs.values():
            for f in pi.funcs:
                prev = None
                for _addr, _size, mnem, ops in _sweep(f.code, f.address):
                    t = _imm_target(ops) if mnem == "jmp" and prev == "leave" else None
                    if t is not None and not internal(t):
                        after_leave[t] += 1
                    prev = mnem
        thunk = after_leave.most_common(1)[0][0] if after_leave else 0
        for pi in progs.values():
            for f in pi.funcs:
                for _addr, _size, mnem, ops in _sweep(f.code, f.address):
                    target = _imm_target(ops) if mnem in ("call", "jmp") else None
                    if target is not None and not internal(target) and target not in symbols:
                        symbols[target] = ks.describe(target)
        return SystemImage(progs, maps, map_ids, thunk, symbols, layout)

    def _image(self, p: _Prog, info: _bpf.ProgInfo, map_name: dict[int, str]) -> ProgImage:
        insns = p.program.insns
        starts = p.program.function_starts()
        # Functions the kernel kept, identified by their BTF type (func_info
        # insn_offs are in xlated numbering, which dead-code removal shifts).
        kept = [p.func_of_type[tid] for _off, tid in info.func_info] or [0]
        # Original pc -> host address, through the line numbers we wrote.
        # A pc can have several records: the kernel copies line info into the
        # hidden subprograms it appends (the default exception callback), whose
        # code lies outside every reported function; keep the one inside.
        addrs_of_pc: dict[int, list[int]] = {}
        for rec, addr in zip(info.line_info, info.jited_line_info, strict=True):
            addrs_of_pc.setdefault(line_to_pc(rec[3]), []).append(addr)
        funcs = []
        for start, (address, code) in zip(kept, info.func_images(), strict=True):
            i = starts.index(start)
            end = starts[i + 1] if i + 1 < len(starts) else len(insns)
            addrs: list[int | None] = []
            for pc in slot_starts(insns[start:end]):
                recs = addrs_of_pc.get(start + pc, ())
                inside = [a for a in recs if address <= a <= address + len(code)]
                if not inside and recs:
                    # with a hidden subprogram 6.18 reports other images'
                    # addresses in the program's first records
                    # (docs/kernel-findings.md): a function's first record
                    # names its start anyway; any other is unknown, not dead
                    inside = [address] if pc == 0 else [UNKNOWN_ADDRESS]
                addrs.append(inside[0] if inside else None)
                if insns[start + pc].opcode == isa.LD_IMM64:
                    addrs.append(addrs[-1])  # the second slot repeats the first
            funcs.append(
                FuncImage(p.program.function_name(start), start, address, code, tuple(addrs))
            )

        xlated = tuple(isa.decode(info.xlated[o : o + 8]) for o in range(0, len(info.xlated), 8))
        refs = self._find_map_refs(info, xlated, funcs, map_name)
        cb = p.program.exception_callback_pc()
        cb_index = kept.index(cb) if cb is not None and cb in kept else None
        return ProgImage(
            p.name,
            info.id,
            p.program.type,
            tuple(funcs),
            xlated,
            info.map_ids,
            tuple(refs),
            cb_index,
        )

    @staticmethod
    def _find_map_refs(info, xlated, funcs, map_name) -> list[MapRef]:
        # No info API gives a map's kernel address; the JIT embeds it as
        # `movabs <reg>, imm64` at the ld_imm64's line address. Search forward
        # from there for a movabs into the ld_imm64's register (the first
        # instruction of a function reports the prologue's address instead).
        line_offs = [rec[0] for rec in info.line_info]
        func_offs = [off for off, _ in info.func_info] or [0]
        refs = []
        for k in slot_starts(list(xlated)):
            ins = xlated[k]
            if ins.opcode != isa.LD_IMM64 or ins.src not in (1, 2) or k + 1 >= len(xlated):
                continue
            fi = bisect.bisect_right(func_offs, k) - 1
            r = bisect.bisect_right(line_offs, k) - 1
            if r < 0 or fi < 0 or fi >= len(funcs):
                continue
            pc = line_to_pc(info.line_info[r][3])
            # the code of insn k is at or after the address of its line (the
            # nearest record at or before k; a function's first record points
            # at the function's start)
            start = info.jited_line_info[r]
            f = funcs[fi]
            reg = X86_REG[ins.dst] if ins.dst < len(X86_REG) else None
            for addr, _size, mnem, ops in _sweep(f.code, f.address):
                if addr < start or mnem != "movabs":
                    continue
                dst, _, imm = ops.partition(", ")
                if dst == reg:
                    refs.append(
                        MapRef(
                            map_name.get(ins.imm, f"id:{ins.imm}"),
                            "map" if ins.src == 1 else "value",
                            k,
                            pc,
                            addr,
                            int(imm, 16),
                            xlated[k + 1].imm if ins.src == 2 else 0,
                        )
                    )
                    break
        return refs

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        for p in self.progs.values():
            p.fd.close()
        for fd in self.maps.values():
            fd.close()
        for fd in self.btfs:
            fd.close()

    def __enter__(self) -> LoadedSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- loading -------------------------------------------------------------


def bind(
    prog: Program, case: Case, map_fds: list[Fd] | list[int], kfunc_id=_kfunc_btf_id
) -> list[Insn]:
    """Rewrite map indices to fds and jitdiff kfunc numbers to BTF ids
    (``kfunc_id(name)``: the running kernel's by default; a guest's reads
    the guest's vmlinux BTF)."""
    out = list(prog.insns)
    for pc in slot_starts(out):
        i = out[pc]
        if i.opcode == isa.LD_IMM64 and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            if not 0 <= i.imm < len(map_fds):
                raise CaseError(f"{prog.name}+{pc}: map index {i.imm} out of range")
            out[pc] = Insn(i.opcode, i.dst, i.src, i.off, int(map_fds[i.imm]))
        elif i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_KFUNC_CALL:
            if i.imm not in KFUNCS:
                raise CaseError(f"{prog.name}+{pc}: unknown kfunc number {i.imm}")
            out[pc] = Insn(i.opcode, i.dst, i.src, 0, kfunc_id(KFUNCS[i.imm]))
    return out


def program_btf(prog: Program) -> tuple[ProgramBtf, bytes, dict[int, int], dict[int, str]]:
    b = ProgramBtf()
    names = function_names(prog)
    cb = prog.exception_callback_pc()
    records, func_of_type = [], {}
    for start, name in names.items():
        if start == cb:
            tid = b.func(name, 1, LINKAGE_GLOBAL)  # one scalar argument: the cookie
        elif start == 0:
            tid = b.func(name, 1, LINKAGE_GLOBAL if cb is not None else LINKAGE_STATIC)
        else:
            tid = b.func(name, STATIC_NARGS, LINKAGE_STATIC)
        records.append((start, tid))
        func_of_type[tid] = start
    if cb is not None:
        b.decl_tag(f"exception_callback:{names[cb]}", records[0][1], -1)
    return b, b.func_info(records), func_of_type, names


def load_case(
    case: Case, *, cpu: int | None = 0, allow_known_crashes: bool = False
) -> LoadedSystem:
    """Create the maps, load the programs (targets before the programs that
    tail-call them), then fill the maps. Raises ``Rejected`` (errno and
    verifier log; ``what`` names the program) when the kernel refuses a
    program, ``KnownKernelBug`` for a shape known to crash this kernel.
    Nothing stays open when it raises."""
    for prog in case.programs.values():
        if prog.type not in PROG_TYPE_IDS:
            # e.g. "test" (the bpf_conformance convention): no kernel program type
            raise Unsupported(f"{prog.name}: the kernel cannot load program type {prog.type!r}")
    # crashes.py is the one list of shapes known to oops this kernel
    why = None if allow_known_crashes else known_crash(case)
    if why:
        raise KnownKernelBug(why)
    sysm = LoadedSystem(case, cpu=cpu)
    try:
        fds = []
        for name, m in case.maps.items():
            if m.kind == "prog_array":
                fd = _bpf.map_create(MapType.PROG_ARRAY, 4, 4, m.max_entries, name)
            elif m.kind == "array":
                fd = _bpf.map_create(MapType.ARRAY, 4, m.value_size, m.max_entries, name)
            else:
                raise CaseError(f"map {name}: unknown kind {m.kind!r}")
            sysm.maps[name] = fd
            fds.append(fd)
        for name, m in case.maps.items():
            if m.kind == "array":
                for key, value in m.init.items():
                    sysm.update(name, key, value)
        for name in load_order(case):
            prog = case.programs[name]
            b, func_info, func_of_type, names = program_btf(prog)
            try:
                btf_fd, _ = _bpf.btf_load(b.blob())
            except Rejected as r:
                raise Rejected(r.errno, r.log, f"btf of {name}") from None
            sysm.btfs.append(btf_fd)
            fd, log = _bpf.prog_load(
                PROG_TYPE_IDS[prog.type],
                isa.encode_program(bind(prog, case, fds)),
                name=name,
                btf=btf_fd,
                func_info=func_info,
                line_info=b.line_info(slot_starts(prog.insns)),
            )
            sysm.progs[name] = _Prog(name, prog, fd, log, func_of_type, names)
        # Prog arrays last: every target exists, and the kernel pokes the
        # direct tail-call sites of already-loaded programs on each update.
        for name, m in case.maps.items():
            if m.kind == "prog_array":
                for key, value in m.init.items():
                    sysm.update(name, key, value)
    except BaseException:
        sysm.close()
        raise
    return sysm
