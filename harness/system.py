"""A *system* of eBPF programs: the unit jitdiff generates, runs and stores.

One ``Case`` holds several named programs (each one flat instruction stream,
``main`` at pc 0, subprograms after it, as the kernel loads them), the maps
they share (prog arrays with slot -> program assignments, array maps with
initial values), the ctx bytes, and a script of steps: run a program, update
or delete a map slot, run again, each run with optional expectations.

Instructions refer to maps by index into ``Case.maps`` (``ld_imm64`` with
src=PSEUDO_MAP_FD or PSEUDO_MAP_VALUE, imm = index), to helpers by their
Linux id and to kfuncs by jitdiff's own kfunc number (``harness.reference.helpers``);
each engine binds those to real fds and BTF ids when it loads the system.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import CaseError, DecodeError
from harness.formats import isa
from harness.formats.isa import Insn

__all__ = [
    "Program",
    "MapDef",
    "Step",
    "Expect",
    "Case",
    "PROG_TYPES",
    "MAP_KINDS",
    "functions_of",
    "map_problem",
    "MAX_MAPS",
    "MAX_MAP_BYTES",
    "MAX_VALUE_SIZE",
    "MAX_INSNS",
]

#: Program types a case may use. raw_tp passes ctx (a u64 array of at most 96
#: bytes) unchanged; sched_cls allows tail calls and bpf_throw together;
#: "test" is the bpf_conformance convention: r1 = a writable memory buffer
#: (the ctx bytes), r2 = its length; no kernel loads it.
PROG_TYPES = ("raw_tp", "sched_cls", "test")
MAP_KINDS = ("prog_array", "array")

# Limits a valid Case keeps (``Case.check``). The kernel's own come first: it
# refuses max_entries or value_size 0 (EINVAL), a prog array's value_size other
# than 4 (EINVAL, fd_array_map_alloc_check), value_size above INT_MAX (E2BIG,
# array_map_alloc_check), more than BPF_COMPLEXITY_LIMIT_INSNS instructions
# (E2BIG) and more than MAX_USED_MAPS maps in one program. Within those, a
# u32 max_entries times a 2 GiB value is terabytes the kernel answers with
# ENOMEM, and every engine holds each map whole (the interpreter in a
# bytearray, the executor at a fixed 64 KiB stride per map, the kernel
# engines read every key back after each run), so jitdiff bounds a map's
# storage itself.
#: the kernel's value_size limit (INT_MAX: round_up(value_size, 8) must not overflow)
MAX_VALUE_SIZE = (1 << 31) - 1
#: jitdiff's bound on one map's storage, round_up(value_size, 8) * max_entries
#: (8 bytes a slot for a prog array): what the native executor lays out per map
MAX_MAP_BYTES = 60 * 1024
#: MAX_USED_MAPS: a program can refer to at most this many maps
MAX_MAPS = 64
#: BPF_COMPLEXITY_LIMIT_INSNS: the most instructions a privileged load takes
MAX_INSNS = 1_000_000


@dataclass
class Program:
    name: str
    type: str
    insns: list[Insn]
    #: pc -> label, for rendering and reports; function starts are labelled too.
    labels: dict[int, str] = field(default_factory=dict)
    #: label of the exception callback function, if the program has one.
    exception_callback: str | None = None

    def label_pc(self, label: str) -> int:
        for pc, name in self.labels.items():
            if name == label:
                return pc
        raise KeyError(label)

    def function_starts(self) -> list[int]:
        return functions_of(self.insns, self.exception_callback_pc())

    def exception_callback_pc(self) -> int | None:
        return None if self.exception_callback is None else self.label_pc(self.exception_callback)

    def function_name(self, start: int) -> str:
        return self.labels.get(start, "main" if start == 0 else f"f{start}")


def functions_of(insns: list[Insn], extra: int | None = None) -> list[int]:
    """Function start pcs the way the kernel finds them: 0, every pseudo-call
    target and every ``ld_imm64`` pseudo-func target (plus ``extra``)."""
    return isa.function_starts(insns, extra)


@dataclass
class MapDef:
    name: str
    #: "prog_array" (values are program names) or "array" (values are bytes).
    kind: str
    max_entries: int
    #: bytes per value; a prog array's is 4 (a prog fd), as in the kernel.
    value_size: int = 4
    #: initial slots: key -> program name (prog_array) or bytes (array).
    init: dict[int, str | bytes] = field(default_factory=dict)


def map_problem(m: MapDef) -> str | None:
    """Why the kernel (or jitdiff's emulation bound) refuses map ``m``, or None."""
    if m.kind not in MAP_KINDS:
        return f"map kind {m.kind!r} is not one of {', '.join(MAP_KINDS)}"
    if not 1 <= m.max_entries <= 0xFFFF_FFFF:
        return f"max_entries={m.max_entries}: the kernel takes 1..4294967295 (EINVAL)"
    if m.kind == "prog_array" and m.value_size != 4:
        return f"a prog_array's value_size is 4 (a prog fd), not {m.value_size} (EINVAL)"
    if m.value_size < 1:
        return f"value_size={m.value_size}: the kernel takes at least 1 (EINVAL)"
    if m.value_size > MAX_VALUE_SIZE:
        return f"value_size={m.value_size}: above the kernel's INT_MAX (E2BIG)"
    stride = 8 if m.kind == "prog_array" else (m.value_size + 7) & ~7
    if stride * m.max_entries > MAX_MAP_BYTES:
        return (
            f"max_entries={m.max_entries} value_size={m.value_size} needs "
            f"{stride * m.max_entries} bytes, above jitdiff's bound of {MAX_MAP_BYTES} a map"
        )
    return None


@dataclass
class Expect:
    retval: int | None = None
    tail_calls: int | None = None
    #: (map name, key) -> expected value bytes after the run.
    maps: dict[tuple[str, int], bytes] = field(default_factory=dict)
    #: the low 32 bits of r0 only: what BPF_PROG_TEST_RUN reports, so an
    #: expectation taken from the kernel can be written down
    retval32: int | None = None

    def empty(self) -> bool:
        return (
            self.retval is None
            and self.retval32 is None
            and self.tail_calls is None
            and not self.maps
        )


@dataclass
class Step:
    #: "run", "update" or "delete".
    kind: str
    #: run: the entry program; update/delete: unused.
    program: str | None = None
    map: str | None = None
    key: int | None = None
    #: update: a program name (prog array) or bytes (array).
    value: str | bytes | None = None
    expect: Expect = field(default_factory=Expect)


@dataclass
class Case:
    programs: dict[str, Program]
    maps: dict[str, MapDef] = field(default_factory=dict)
    ctx: bytes = b""
    steps: list[Step] = field(default_factory=list)
    #: free text kept at the top of the file (what the case is, where it came from).
    comment: str = ""

    def map_index(self, name: str) -> int:
        return list(self.maps).index(name)

    def map_by_index(self, index: int) -> MapDef:
        return list(self.maps.values())[index]

    def check(self) -> None:
        """Raise ``CaseError`` unless every engine can take this case: maps
        within the limits above, programs that pass ``isa.validate`` function by
        function, and a script naming programs, maps and keys that exist. The
        parser checks the same with file and line; this is for a Case built in
        code (a generator, a reducer), checked by every engine before it runs."""
        if not self.programs:
            raise CaseError("a case needs at least one program")
        if len(self.maps) > MAX_MAPS:
            raise CaseError(f"{len(self.maps)} maps, above MAX_USED_MAPS ({MAX_MAPS})")
        for name, m in self.maps.items():
            why = map_problem(m)
            if why:
                raise CaseError(f"map {name}: {why}")
            for key, value in m.init.items():
                _check_slot(self, m, key, value, "slot")
        for name, prog in self.programs.items():
            if prog.type not in PROG_TYPES:
                raise CaseError(f"program {name}: type {prog.type!r} is not one of {PROG_TYPES}")
            if not prog.insns or len(prog.insns) > MAX_INSNS:
                raise CaseError(f"program {name}: {len(prog.insns)} instructions (1..{MAX_INSNS})")
            try:
                cb = prog.exception_callback_pc()
            except KeyError:
                raise CaseError(
                    f"program {name}: exception callback {prog.exception_callback} has no label"
                ) from None
            try:
                isa.validate(prog.insns, extra_start=cb)
            except DecodeError as e:
                raise CaseError(f"program {name}: {e}") from None
            for pc, i in enumerate(prog.insns):
                if (
                    i.opcode == isa.LD_IMM64
                    and i.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE)
                    and not 0 <= i.imm < len(self.maps)
                ):
                    raise CaseError(f"program {name}, insn {pc}: map index {i.imm} has no map")
        for k, st in enumerate(self.steps):
            if st.kind == "run":
                if st.program not in self.programs:
                    raise CaseError(f"step {k}: run of unknown program {st.program!r}")
                for (mname, key), value in st.expect.maps.items():
                    m = self.maps.get(mname)
                    if m is None or m.kind != "array":
                        raise CaseError(f"step {k}: expect map of unknown array map {mname!r}")
                    _check_slot(self, m, key, value, f"step {k}: expect map")
            elif st.kind in ("update", "delete"):
                m = self.maps.get(st.map or "")
                if m is None:
                    raise CaseError(f"step {k}: {st.kind} of unknown map {st.map!r}")
                if st.kind == "update":
                    _check_slot(self, m, st.key, st.value, f"step {k}: update")
                elif not isinstance(st.key, int) or not 0 <= st.key < m.max_entries:
                    raise CaseError(f"step {k}: key {st.key!r} out of range for map {m.name}")
            else:
                raise CaseError(f"step {k}: unknown step kind {st.kind!r}")

    def script(self) -> list[Step]:
        """The steps, defaulting to one run of the first program."""
        if self.steps:
            return self.steps
        return [Step("run", program=next(iter(self.programs)))]


def _check_slot(case: Case, m: MapDef, key, value, what: str) -> None:
    if not isinstance(key, int) or not 0 <= key < m.max_entries:
        raise CaseError(f"{what}: key {key!r} out of range for map {m.name}")
    if m.kind == "prog_array":
        if value not in case.programs:
            raise CaseError(f"{what}: map {m.name} slot {key}: unknown program {value!r}")
    elif not isinstance(value, (bytes, bytearray)) or len(value) > m.value_size:
        # shorter is zero-padded, as every engine does
        raise CaseError(f"{what}: map {m.name} slot {key}: a value is {m.value_size} bytes")
