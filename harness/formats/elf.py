"""BPF ELF objects (``clang -target bpf -O2 -g``) read the way libbpf loads them.

An object becomes one ``harness.system.Case``:

- programs: every function symbol in an executable section other than
  ``.text``, in section order; the program type comes from the section name
  (libbpf's ``section_defs``: ``tc``, ``classifier``, ``raw_tp/...``, ...);
- subprograms: functions in ``.text`` (from the symbol table and the
  ``.BTF.ext`` func_info), appended to each program that calls them, depth
  first in call order, as ``bpf_object__reloc_code`` does; the exception
  callback a program names with a ``exception_callback:NAME`` decl tag is
  appended last, as ``bpf_object__relocate`` does;
- maps: the BTF-defined maps of ``.maps`` (array, prog array, with the initial
  prog-array slots ``__array(values, ...)`` declares through ``.rel.maps``),
  then one single-entry array per ``.data``/``.rodata``/``.bss`` section (value
  = the section's bytes), named as ``bpftool gen skeleton`` names them
  (``data``, ``bss``, ``rodata``, ``data_custom``);
- relocations: ``ld_imm64`` against a map (map pointer), against a global-data
  section (map value plus offset) or against a function (callback pointer);
  calls against ``.text`` (bpf-to-bpf) and against ``__ksym`` externs (kfuncs:
  ``bpf_throw``).

The script defaults to running each program once with a zero ctx; a sidecar
case file next to the object (``prog.bpf.o`` -> ``prog.bpf.case``) gives the
ctx, the runs, updates and expectations instead (``docs/case-format.md``).

What jitdiff cannot model (another map type, an unknown helper or kfunc, CO-RE
relocations) is refused with one ``CaseError`` naming the object, the section
and the instruction.
"""

from __future__ import annotations

import io
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness import formats
from harness.errors import CaseError
from harness.formats import isa
from harness.formats.isa import Insn
from harness.kernel.btf import LINKAGE_GLOBAL, Btf, BtfError, BtfExt, Kind
from harness.reference.helpers import HELPERS, KFUNC_IDS
from harness.system import Case, MapDef, Program, Step

__all__ = ["parse", "load", "sidecar_of", "is_object", "PROGRAM_SECTIONS"]

EM_BPF = 247
R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_32 = 1, 2, 3, 10
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY = 2, 3
_MAP_TYPE_NAMES = {
    1: "hash",
    2: "array",
    3: "prog_array",
    4: "perf_event_array",
    5: "percpu_hash",
    6: "percpu_array",
    7: "stack_trace",
    8: "cgroup_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
    12: "array_of_maps",
    13: "hash_of_maps",
    14: "devmap",
    15: "sockmap",
    16: "cpumap",
    17: "xskmap",
    18: "sockhash",
    21: "queue",
    22: "stack",
    25: "sk_storage",
    27: "ringbuf",
    28: "inode_storage",
    29: "task_storage",
    30: "bloom_filter",
    31: "user_ringbuf",
    32: "cgrp_storage",
    33: "arena",
}

#: libbpf's section_defs, as (prefix, kernel program type, jitdiff type or None).
#: A prefix ending in "+" also matches "prefix/anything"; the others match
#: exactly or with "/..." for the few libbpf accepts that way (tc/ingress...).
PROGRAM_SECTIONS: tuple[tuple[str, str, str | None], ...] = (
    ("tc", "sched_cls", "sched_cls"),
    ("tc/ingress", "sched_cls", "sched_cls"),
    ("tc/egress", "sched_cls", "sched_cls"),
    ("tcx/ingress", "sched_cls", "sched_cls"),
    ("tcx/egress", "sched_cls", "sched_cls"),
    ("netkit/primary", "sched_cls", "sched_cls"),
    ("netkit/peer", "sched_cls", "sched_cls"),
    ("classifier", "sched_cls", "sched_cls"),
    ("raw_tracepoint+", "raw_tracepoint", "raw_tp"),
    ("raw_tp+", "raw_tracepoint", "raw_tp"),
    ("raw_tracepoint.w+", "raw_tracepoint_writable", None),
    ("raw_tp.w+", "raw_tracepoint_writable", None),
    ("action", "sched_act", None),
    ("socket", "socket_filter", None),
    ("xdp", "xdp", None),
    ("xdp.frags", "xdp", None),
    ("xdp/devmap", "xdp", None),
    ("xdp/cpumap", "xdp", None),
    ("tracepoint+", "tracepoint", None),
    ("tp+", "tracepoint", None),
    ("tp_btf+", "tracing", None),
    ("fentry+", "tracing", None),
    ("fexit+", "tracing", None),
    ("fmod_ret+", "tracing", None),
    ("freplace+", "ext", None),
    ("kprobe+", "kprobe", None),
    ("kretprobe+", "kprobe", None),
    ("uprobe+", "kprobe", None),
    ("uretprobe+", "kprobe", None),
    ("ksyscall+", "kprobe", None),
    ("usdt+", "kprobe", None),
    ("perf_event", "perf_event", None),
    ("lsm+", "lsm", None),
    ("iter+", "tracing", None),
    ("syscall", "syscall", None),
    ("struct_ops+", "struct_ops", None),
    ("sk_skb", "sk_skb", None),
    ("sk_msg", "sk_msg", None),
    ("sockops", "sock_ops", None),
    ("flow_dissector", "flow_dissector", None),
    ("lwt_in", "lwt_in", None),
    ("lwt_out", "lwt_out", None),
    ("lwt_xmit", "lwt_xmit", None),
    ("cgroup_skb/ingress", "cgroup_skb", None),
    ("cgroup_skb/egress", "cgroup_skb", None),
    ("cgroup+", "cgroup", None),
)
_SUPPORTED = ", ".join(sorted({t for _, _, t in PROGRAM_SECTIONS if t}))
_DATA_RE = re.compile(r"\.(data|rodata|bss)(\..+)?\Z")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: the largest global-data section jitdiff maps (the engines lay maps out in
#: emulated memory; real programs keep far less in .data/.bss)
MAX_DATA = 1 << 20
#: one zero ctx for the default script: the most a raw_tp test run takes (12
#: u64 arguments), and more than the 14-byte Ethernet header sched_cls needs.
DEFAULT_CTX = bytes(96)


def is_object(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` starts with the ELF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def sidecar_of(path: str | os.PathLike[str]) -> Path:
    """The sidecar case file of an object: ``prog.bpf.o`` -> ``prog.bpf.case``."""
    p = Path(path)
    return p.with_suffix(".case") if p.suffix == ".o" else p.with_name(p.name + ".case")


def load(path: str | os.PathLike[str], *, sidecar: bool = True) -> Case:
    """Read a BPF object; with ``sidecar``, apply its sidecar case file if there is one."""
    p = Path(path)
    case = parse(p.read_bytes(), file=str(p))
    side = sidecar_of(p)
    if sidecar and side.is_file():
        from harness.formats import casefile

        text = formats.read_text(side, CaseError)
        case = casefile.apply_script(case, text, file=str(side))
    return case


def parse(data: bytes, *, file: str = "<object>") -> Case:
    """The case a BPF object holds, with the default script (each program once)."""
    # pyelftools and the BTF reader report a damaged object in their own terms
    # (wherever in the object the damage is): one line naming the file instead
    try:
        case = _parse(data, file)
    except (ELFError, struct.error, ValueError, IndexError, KeyError, OverflowError) as e:
        raise CaseError(f"not a readable ELF object ({type(e).__name__}: {e})", file=file) from None
    except BtfError as e:
        raise CaseError(f".BTF: {e}", file=file) from None
    try:  # the limits every case keeps (a .bss of megabytes, say)
        case.check()
    except CaseError as e:
        raise CaseError(e.message, file=file) from None
    return case


def _parse(data: bytes, file: str) -> Case:
    obj = _Object(data, file)
    maps = obj.maps()
    programs = obj.programs(list(maps))
    if not programs:
        raise CaseError("no BPF programs (no functions in a SEC() section)", file=file)
    steps = [Step("run", program=name) for name in programs]
    comment = f"Read from {Path(file).name} (a BPF ELF object)."
    return Case(programs=programs, maps=maps, ctx=DEFAULT_CTX, steps=steps, comment=comment)


# ---------------------------------------------------------------- the object


@dataclass
class _Func:
    name: str
    section: str
    shndx: int
    #: instruction index in the section
    start: int
    insns: list[Insn]
    is_global: bool = False


@dataclass
class _Sym:
    name: str
    shndx: int | str
    value: int
    type: str
    bind: str


@dataclass
class _Reloc:
    type: int
    sym: _Sym


@dataclass
class _Layout:
    """One program being linked: its instructions and where each function went."""

    insns: list[Insn] = field(default_factory=list)
    placed: dict[int, int] = field(default_factory=dict)  # id(_Func) -> pc
    labels: dict[int, str] = field(default_factory=dict)


class _Object:
    def __init__(self, data: bytes, file: str):
        self.file = file
        self.elf = ELFFile(io.BytesIO(data))
        self._read()

    def err(self, message: str) -> CaseError:
        return CaseError(message, file=self.file)

    def _read(self) -> None:
        elf = self.elf
        if elf.elfclass != 64 or not elf.little_endian:
            raise self.err("not a 64-bit little-endian ELF object (clang -target bpf)")
        if elf.header["e_machine"] not in ("EM_BPF", EM_BPF):
            raise self.err(f"machine {elf.header['e_machine']}, not BPF (clang -target bpf)")
        self.sections = {i: s for i, s in enumerate(elf.iter_sections())}
        self.symtab = next(
            (s for s in self.sections.values() if s["sh_type"] == "SHT_SYMTAB"), None
        )
        if self.symtab is None:
            raise self.err("no symbol table")
        self.syms = [
            _Sym(
                s.name,
                s["st_shndx"],
                s["st_value"],
                s["st_info"]["type"],
                s["st_info"]["bind"],
            )
            for s in self.symtab.iter_symbols()
        ]
        btf_sec = elf.get_section_by_name(".BTF")
        self.btf = Btf(btf_sec.data()) if btf_sec is not None else None
        ext = elf.get_section_by_name(".BTF.ext")
        self.ext = BtfExt(ext.data(), self.btf) if ext is not None and self.btf else None
        # relocations per target section index: byte offset -> _Reloc
        self.relocs: dict[int, dict[int, _Reloc]] = {}
        for sec in self.sections.values():
            if sec["sh_type"] == "SHT_RELA":
                raise self.err(f"{sec.name}: RELA relocations (clang -target bpf writes REL)")
            if sec["sh_type"] != "SHT_REL":
                continue
            target = sec["sh_info"]
            table = self.relocs.setdefault(target, {})
            for r in sec.iter_relocations():
                table[r["r_offset"]] = _Reloc(r["r_info_type"], self.syms[r["r_info_sym"]])
        self.text = next(
            (i for i, s in self.sections.items() if s.name == ".text" and self._exec(s)), None
        )
        self.funcs = self._functions()

    @staticmethod
    def _exec(sec) -> bool:
        return sec["sh_type"] == "SHT_PROGBITS" and bool(sec["sh_flags"] & 0x4)  # SHF_EXECINSTR

    # ---------------------------------------------------------- functions

    def _functions(self) -> dict[int, list[_Func]]:
        """Functions per executable section, sorted by start: the symbol table's
        FUNC symbols, plus any function only ``.BTF.ext`` func_info names."""
        out: dict[int, list[_Func]] = {}
        for idx, sec in self.sections.items():
            if not self._exec(sec) or not sec["sh_size"]:
                continue
            raw = sec.data()
            if len(raw) % 8:
                raise self.err(f"section {sec.name}: size {len(raw)} is not a multiple of 8")
            insns = [isa.decode(raw[o : o + 8]) for o in range(0, len(raw), 8)]
            starts: dict[int, tuple[str, bool]] = {}
            for s in self.syms:
                if s.type == "STT_FUNC" and s.shndx == idx:
                    if s.value % 8:
                        raise self.err(f"section {sec.name}: function {s.name} is not aligned")
                    starts[s.value // 8] = (s.name, s.bind == "STB_GLOBAL")
            if self.ext is not None and self.btf is not None:
                for off, tid in self.ext.func_info.get(sec.name, ()):
                    t = self.btf.type(tid)
                    if off // 8 not in starts:
                        starts[off // 8] = (t.name, self.btf.linkage(t) == LINKAGE_GLOBAL)
            bounds = sorted(starts) + [len(insns)]
            funcs = []
            for a, b in zip(bounds, bounds[1:]):
                name, glob = starts[a]
                funcs.append(_Func(name, sec.name, idx, a, insns[a:b], glob))
            out[idx] = funcs
        return out

    def _func_at(self, shndx: int, start: int) -> _Func | None:
        return next((f for f in self.funcs.get(shndx, ()) if f.start == start), None)

    def _func_named(self, name: str) -> _Func | None:
        for funcs in self.funcs.values():
            for f in funcs:
                if f.name == name:
                    return f
        return None

    # ---------------------------------------------------------- maps

    def maps(self) -> dict[str, MapDef]:
        self.map_index: dict[str, int] = {}  # symbol name in .maps -> index
        self.data_index: dict[int, int] = {}  # data section index -> map index
        out: dict[str, MapDef] = {}
        maps_sec = next((i for i, s in self.sections.items() if s.name == ".maps"), None)
        if maps_sec is not None:
            for m in self._btf_maps(maps_sec):
                self.map_index[m.name] = len(out)
                out[m.name] = m
        for idx, sec in self.sections.items():
            # libbpf's rule: .data, .data.*, .rodata, .rodata.* with bytes, and .bss
            mt = _DATA_RE.match(sec.name)
            if not mt or not sec["sh_size"]:
                continue
            if (sec["sh_type"], mt.group(1) == "bss") not in (
                ("SHT_PROGBITS", False),
                ("SHT_NOBITS", True),
            ) or (mt.group(1) == "bss" and mt.group(2)):
                continue
            name = mt.group(1) + re.sub(r"[^A-Za-z0-9_]", "_", mt.group(2) or "")
            if name in out:
                raise self.err(f"section {sec.name}: map name {name} is taken by a .maps map")
            if sec["sh_size"] > MAX_DATA:
                raise self.err(
                    f"section {sec.name}: {sec['sh_size']} bytes, jitdiff maps at most {MAX_DATA}"
                )
            data = bytes(sec["sh_size"]) if sec["sh_type"] == "SHT_NOBITS" else sec.data()
            self.data_index[idx] = len(out)
            out[name] = MapDef(name, "array", 1, len(data), {0: data} if any(data) else {})
        return out

    def _btf_maps(self, maps_sec: int) -> list[MapDef]:
        """``parse_btf_map_def`` for the maps jitdiff models."""
        btf = self.btf
        if btf is None:
            raise self.err("section .maps: BTF-defined maps need .BTF (compile with -g)")
        try:
            sec = btf.find(".maps", Kind.DATASEC)
        except BtfError:
            raise self.err("section .maps: no .maps DATASEC in .BTF") from None
        out = []
        by_offset = {}
        for var_id, offset, size in btf.datasec_vars(sec):
            var = btf.type(var_id)
            where = f"section .maps, map {var.name}"
            st = btf.resolve(var.size_or_type)
            if st.kind != Kind.STRUCT:
                raise self.err(f"{where}: a map definition must be a struct")
            fields: dict[str, int] = {}
            key_size = value_size = None
            values_off = None
            for m in btf.members(st):
                mt = btf.resolve(m.type)
                if m.name in ("type", "max_entries", "map_flags", "numa_node", "pinning",
                              "key_size", "value_size", "map_extra"):  # fmt: skip
                    # __uint(name, N) is `int (*name)[N]`
                    if mt.kind != Kind.PTR or btf.resolve(mt.size_or_type).kind != Kind.ARRAY:
                        raise self.err(f"{where}: field {m.name} is not __uint(...)")
                    fields[m.name] = btf.array(btf.resolve(mt.size_or_type))[2]
                elif m.name in ("key", "value"):
                    if mt.kind != Kind.PTR:
                        raise self.err(f"{where}: field {m.name} is not __type(...)")
                    size_ = btf.size_of(mt.size_or_type)
                    if m.name == "key":
                        key_size = size_
                    else:
                        value_size = size_
                elif m.name == "values":
                    values_off = m.bit_offset // 8
                else:
                    raise self.err(f"{where}: unknown map field {m.name!r}")
            key_size = fields.get("key_size", key_size)
            value_size = fields.get("value_size", value_size)
            mtype = fields.get("type")
            if mtype not in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PROG_ARRAY):
                what = _MAP_TYPE_NAMES.get(mtype, f"type {mtype}") if mtype else "no type"
                raise self.err(f"{where}: map type {what} is not modelled (array, prog_array)")
            for unmodelled in ("map_flags", "numa_node", "map_extra"):
                if fields.get(unmodelled):
                    raise self.err(f"{where}: {unmodelled} is not modelled")
            kind = "array" if mtype == BPF_MAP_TYPE_ARRAY else "prog_array"
            if key_size != 4:
                raise self.err(f"{where}: key size {key_size}, an {kind} key is a u32")
            if kind == "prog_array":
                if value_size not in (None, 4):
                    raise self.err(f"{where}: a prog_array's value is a u32, not {value_size}")
                value_size = 4
            elif not value_size:
                raise self.err(f"{where}: no value size (__type(value, ...) or value_size)")
            if "max_entries" not in fields or not fields["max_entries"]:
                raise self.err(f"{where}: no max_entries")
            if values_off is not None and kind != "prog_array":
                raise self.err(f"{where}: initial values (__array) are modelled for prog_array")
            m = MapDef(var.name, kind, fields["max_entries"], value_size)
            out.append(m)
            by_offset[var.name] = (offset, size, values_off, m)
        # __array(values, ...) initial slots: R_BPF_64_ABS64 relocations in .maps
        for r_off, rel in sorted(self.relocs.get(maps_sec, {}).items()):
            owner = next((v for v in by_offset.values() if v[0] <= r_off < v[0] + v[1]), None)
            if owner is None or owner[2] is None:
                raise self.err(f"section .maps: relocation at {r_off} outside any __array(values)")
            offset, _, values_off, m = owner
            slot, rem = divmod(r_off - offset - values_off, 8)
            if rem or slot < 0 or slot >= m.max_entries:
                raise self.err(f"section .maps, map {m.name}: bad initial slot at offset {r_off}")
            prog = self._program_symbol(rel.sym)
            if prog is None:
                raise self.err(
                    f"section .maps, map {m.name}: slot {slot} holds {rel.sym.name}, not a program"
                )
            m.init[slot] = prog
        return out

    def _program_symbol(self, sym: _Sym) -> str | None:
        if sym.type != "STT_FUNC" or not isinstance(sym.shndx, int) or sym.shndx == self.text:
            return None
        return sym.name

    # ---------------------------------------------------------- programs

    def _prog_type(self, section: str) -> str:
        for prefix, ktype, ours in PROGRAM_SECTIONS:
            base = prefix.rstrip("+")
            if section == base or (prefix.endswith("+") and section.startswith(base + "/")):
                if ours is None:
                    raise self.err(
                        f"section {section}: program type {ktype} is not modelled "
                        f"(jitdiff runs {_SUPPORTED})"
                    )
                return ours
        raise self.err(f"section {section}: not a program section libbpf knows (SEC name)")

    def programs(self, map_names: list[str]) -> dict[str, Program]:
        self.map_names = map_names
        self.core = self.ext.core_relos if self.ext is not None else {}
        cbs = self._exception_callbacks()
        out: dict[str, Program] = {}
        for idx in sorted(self.funcs):
            if idx == self.text:
                continue
            sec = self.sections[idx]
            ptype = self._prog_type(sec.name)
            for f in self.funcs[idx]:
                if not f.is_global:
                    raise self.err(
                        f"section {sec.name}: program {f.name} is static (libbpf needs it global)"
                    )
                if not _IDENT_RE.match(f.name):
                    raise self.err(f"section {sec.name}: program name {f.name!r} is not usable")
                out[f.name] = self._link(f, ptype, cbs.get(f.name))
        return out

    def _exception_callbacks(self) -> dict[str, str]:
        """Program name -> exception callback name, from ``exception_callback:``
        decl tags on the program's FUNC (bpf_experimental.h's ``__exception_cb``)."""
        if self.btf is None:
            return {}
        out = {}
        for value, target, comp in self.btf.decl_tags("exception_callback:"):
            t = self.btf.type(target)
            if t.kind != Kind.FUNC or comp != -1:
                raise self.err(f".BTF: tag {value!r} is not on a function declaration")
            out[t.name] = value.partition(":")[2]
        return out

    def _link(self, main: _Func, ptype: str, cb: str | None) -> Program:
        lay = _Layout()
        self._append(lay, main, "main")
        self._relocate(lay, main)
        if cb is not None:
            f = self._func_named(cb)
            if f is None or f.shndx != self.text:
                raise self.err(
                    f"section {main.section}: program {main.name}: exception callback {cb} "
                    "is not a function in .text"
                )
            if id(f) not in lay.placed:
                self._append(lay, f, f.name)
                self._relocate(lay, f)
            cb = lay.labels[lay.placed[id(f)]]
        try:
            isa.validate(lay.insns)
        except Exception as e:
            raise self.err(f"section {main.section}: program {main.name}: {e}") from None
        return Program(main.name, ptype, lay.insns, lay.labels, cb)

    def _append(self, lay: _Layout, f: _Func, label: str) -> None:
        if label in lay.labels.values():
            label = f"{label}_{len(lay.insns)}"
        lay.placed[id(f)] = len(lay.insns)
        lay.labels[len(lay.insns)] = label
        lay.insns += f.insns

    def _relocate(self, lay: _Layout, f: _Func) -> None:
        """``bpf_object__reloc_code`` and ``bpf_object__relocate_data`` for one
        appended function: calls append their callee (depth first) and point
        at it; map and data references become map indices."""
        base = lay.placed[id(f)]
        relocs = self.relocs.get(f.shndx, {})
        core = {off // 8 for off, *_ in self.core.get(f.section, ())}
        pc = 0
        while pc < len(f.insns):
            i = f.insns[pc]
            sec_pc = f.start + pc
            where = f"section {f.section}, insn {sec_pc} ({f.name}+{pc})"
            if sec_pc in core:
                raise self.err(f"{where}: CO-RE relocation (BPF_CORE_READ, kernel types)")
            rel = relocs.get(sec_pc * 8)
            if i.opcode == isa.LD_IMM64:
                if pc + 1 >= len(f.insns):
                    raise self.err(f"{where}: ld_imm64 is missing its second slot")
                if rel is not None:
                    lo, hi = self._ld_imm64(lay, f, pc, i, f.insns[pc + 1], rel, where)
                    lay.insns[base + pc], lay.insns[base + pc + 1] = lo, hi
                elif i.src:
                    raise self.err(f"{where}: ld_imm64 with src {i.src} and no relocation")
                pc += 2
                continue
            if i.opcode == isa.JMP | isa.CALL:
                lay.insns[base + pc] = self._call(lay, f, pc, i, rel, where)
            elif rel is not None:
                raise self.err(f"{where}: relocation type {rel.type} against {rel.sym.name}")
            pc += 1

    def _ld_imm64(self, lay, f, pc, i, hi, rel, where) -> tuple[Insn, Insn]:
        sym = rel.sym
        if rel.type != R_BPF_64_64:
            raise self.err(f"{where}: ld_imm64 relocation type {rel.type} (expected R_BPF_64_64)")
        if sym.shndx == "SHN_UNDEF":
            raise self.err(f"{where}: extern {sym.name} (__ksym/__kconfig variable) not modelled")
        sec = self.sections.get(sym.shndx) if isinstance(sym.shndx, int) else None
        if sec is None:
            raise self.err(f"{where}: relocation against {sym.name} in no section")
        if sec.name == ".maps":
            if sym.name not in self.map_index:
                raise self.err(f"{where}: {sym.name} is not a map in .maps")
            return Insn(i.opcode, i.dst, isa.PSEUDO_MAP_FD, 0, self.map_index[sym.name]), Insn(0)
        if sym.shndx in self.data_index:
            # libbpf: insn[1].imm = insn[0].imm (clang's addend) + the symbol's offset
            off = i.imm + sym.value
            m = self.map_names[self.data_index[sym.shndx]]
            if not 0 <= off < sec["sh_size"] or hi.imm:
                raise self.err(f"{where}: offset {off} outside {sec.name} (map {m})")
            return (
                Insn(i.opcode, i.dst, isa.PSEUDO_MAP_VALUE, 0, self.data_index[sym.shndx]),
                Insn(0, 0, 0, 0, off),
            )
        if sym.shndx == self.text:  # a callback's address (bpf_loop and friends)
            target = self._place(lay, (sym.value + i.imm) // 8, where)
            return Insn(
                i.opcode, i.dst, isa.PSEUDO_FUNC, 0, target - (lay.placed[id(f)] + pc) - 1
            ), Insn(0)
        raise self.err(f"{where}: reference to {sym.name} in section {sec.name} is not modelled")

    def _call(self, lay, f, pc, i, rel, where) -> Insn:
        if i.src == 0:
            if rel is not None:
                raise self.err(f"{where}: helper call with a relocation against {rel.sym.name}")
            if i.imm not in HELPERS:
                raise self.err(f"{where}: helper #{i.imm} is not modelled")
            return i
        if i.src != isa.PSEUDO_CALL:
            raise self.err(f"{where}: call with src {i.src} (clang writes 0 or 1)")
        if rel is not None and rel.sym.shndx == "SHN_UNDEF":
            # an extern function: a kfunc declared __ksym, resolved by libbpf against BTF
            name = rel.sym.name
            if name not in KFUNC_IDS:
                raise self.err(f"{where}: kfunc {name} is not modelled (known: bpf_throw)")
            if self.btf is None or not self._ksym_in_btf(name):
                raise self.err(f"{where}: extern {name} has no BTF in .ksyms for libbpf")
            return Insn(i.opcode, 0, isa.PSEUDO_KFUNC_CALL, 0, KFUNC_IDS[name])
        if rel is not None:
            if rel.type != R_BPF_64_32 or rel.sym.shndx != self.text:
                raise self.err(f"{where}: call relocated against {rel.sym.name}, not into .text")
            target = rel.sym.value // 8 + i.imm + 1
        else:
            if f.shndx != self.text:
                raise self.err(
                    f"{where}: call inside section {f.section}; subprograms live in .text"
                )
            target = f.start + pc + 1 + i.imm
        at = self._place(lay, target, where)
        return Insn(i.opcode, 0, isa.PSEUDO_CALL, 0, at - (lay.placed[id(f)] + pc) - 1)

    def _place(self, lay: _Layout, text_insn: int, where: str) -> int:
        """The pc of the .text function starting at ``text_insn`` in this program,
        appending it (and what it calls) the first time."""
        sub = self._func_at(self.text, text_insn) if self.text is not None else None
        if sub is None:
            raise self.err(f"{where}: call target .text+{text_insn} is not a function start")
        if id(sub) not in lay.placed:
            self._append(lay, sub, sub.name)
            self._relocate(lay, sub)
        return lay.placed[id(sub)]

    def _ksym_in_btf(self, name: str) -> bool:
        try:
            ksyms = self.btf.find(".ksyms", Kind.DATASEC)
        except BtfError:
            return False
        return any(self.btf.type(v).name == name for v, _, _ in self.btf.datasec_vars(ksyms))
