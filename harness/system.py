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

from harness.formats import isa
from harness.formats.isa import Insn

__all__ = ["Program", "MapDef", "Step", "Expect", "Case", "PROG_TYPES", "functions_of"]

#: Program types a case may use. raw_tp passes ctx (a u64 array of at most 96
#: bytes) unchanged; sched_cls allows tail calls and bpf_throw together;
#: "test" is the bpf_conformance convention: r1 = a writable memory buffer
#: (the ctx bytes), r2 = its length; no kernel loads it.
PROG_TYPES = ("raw_tp", "sched_cls", "test")


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
    starts = {0}
    if extra is not None:
        starts.add(extra)
    for pc, i in enumerate(insns):
        if i.opcode == isa.JMP | isa.CALL and i.src == isa.PSEUDO_CALL:
            starts.add(pc + 1 + i.imm)
        elif i.opcode == isa.LD_IMM64 and i.src == isa.PSEUDO_FUNC:
            starts.add(pc + 1 + i.imm)
    return sorted(starts)


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

    def script(self) -> list[Step]:
        """The steps, defaulting to one run of the first program."""
        if self.steps:
            return self.steps
        return [Step("run", program=next(iter(self.programs)))]
