"""BTF: a small reader for the kernel's ``/sys/kernel/btf/vmlinux`` and a
writer for the little program BTF jitdiff loads.

The reader answers three questions without bpftool: where a (nested,
possibly anonymous) struct member lives, which BTF id a kfunc has (the imm of
a ``call`` with src=2), and the struct offsets the native code depends on
(``kernel_layout()``). Offsets move between kernel builds, so nothing here is
hard-coded; ``harness.native.image.KERNEL_LAYOUT`` is only the x86-64 model's
default.

The writer emits INT, FUNC_PROTO, FUNC and DECL_TAG types plus a string
table, and the ``func_info``/``line_info`` records ``BPF_PROG_LOAD`` takes
with it. One ``line_info`` per instruction makes the kernel report the host
address of every BPF instruction (``jited_line_info``); the line number
carries the original pc, so the mapping survives the verifier's rewriting.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass

from harness.errors import JitdiffError
from harness.native.image import Layout

__all__ = [
    "Kind",
    "BtfType",
    "Member",
    "Btf",
    "BtfExt",
    "BtfError",
    "vmlinux",
    "struct_member_offset",
    "func_id",
    "kernel_layout",
    "ProgramBtf",
    "LINKAGE_STATIC",
    "LINKAGE_GLOBAL",
]

MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off str_len
TYPE = struct.Struct("<III")  # name_off info size_or_type
LINKAGE_STATIC, LINKAGE_GLOBAL = 0, 1


class BtfError(JitdiffError):
    """Malformed BTF, or a type/member that is not there."""


class Kind(enum.IntEnum):
    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


#: bytes of kind-specific data after the common 12-byte header: (fixed, per vlen item)
_EXTRA = {
    Kind.INT: (4, 0),
    Kind.ARRAY: (12, 0),
    Kind.STRUCT: (0, 12),
    Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8),
    Kind.FUNC_PROTO: (0, 8),
    Kind.VAR: (4, 0),
    Kind.DATASEC: (0, 12),
    Kind.DECL_TAG: (4, 0),
    Kind.ENUM64: (0, 12),
}
_MODIFIERS = (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG)


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type: int
    #: offset from the start of the enclosing struct, in bits
    bit_offset: int
    #: bitfield width in bits, 0 for an ordinary member
    bitfield_size: int = 0


@dataclass(frozen=True, slots=True)
class BtfType:
    id: int
    kind: Kind
    name: str
    vlen: int
    kind_flag: bool
    #: size (INT, STRUCT, UNION, ENUM, DATASEC, FLOAT) or referenced type id
    size_or_type: int
    #: offset of the kind-specific data in the type section
    data: int


class Btf:
    """A parsed BTF blob (split BTF is not supported: vmlinux is the base)."""

    def __init__(self, blob: bytes):
        if len(blob) < HEADER.size:
            raise BtfError("BTF blob shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = HEADER.unpack_from(
            blob
        )
        if magic != MAGIC or version != 1:
            raise BtfError(f"not BTF v1 (magic {magic:#x}, version {version})")
        self._types = memoryview(blob)[hdr_len + type_off : hdr_len + type_off + type_len]
        self._strs = bytes(blob[hdr_len + str_off : hdr_len + str_off + str_len])
        self.types: list[BtfType | None] = [None]  # id 0 is void
        self._by_name: dict[str, list[int]] | None = None
        pos = 0
        tid = 1
        while pos < len(self._types):
            name_off, info, size_or_type = TYPE.unpack_from(self._types, pos)
            vlen, kind, kflag = info & 0xFFFF, (info >> 24) & 0x1F, bool(info >> 31)
            try:
                k = Kind(kind)
            except ValueError:
                raise BtfError(f"type {tid}: unknown kind {kind}") from None
            fixed, per = _EXTRA.get(k, (0, 0))
            self.types.append(
                BtfType(tid, k, self.string(name_off), vlen, kflag, size_or_type, pos + 12)
            )
            pos += 12 + fixed + per * vlen
            tid += 1

    def string(self, off: int) -> str:
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def __len__(self) -> int:
        return len(self.types)

    def type(self, tid: int) -> BtfType:
        t = self.types[tid] if 0 < tid < len(self.types) else None
        if t is None:
            raise BtfError(f"no BTF type {tid}")
        return t

    def find(self, name: str, kind: Kind | tuple[Kind, ...]) -> BtfType:
        """The first type called ``name`` of ``kind`` (a FWD never counts)."""
        if self._by_name is None:
            index: dict[str, list[int]] = {}
            for t in self.types[1:]:
                if t is not None and t.name:
                    index.setdefault(t.name, []).append(t.id)
            self._by_name = index
        kinds = (kind,) if isinstance(kind, Kind) else kind
        for tid in self._by_name.get(name, ()):
            t = self.types[tid]
            if t is not None and t.kind in kinds:
                return t
        raise BtfError(f"no {'/'.join(k.name for k in kinds)} named {name!r} in BTF")

    def members(self, t: BtfType) -> list[Member]:
        if t.kind not in (Kind.STRUCT, Kind.UNION):
            raise BtfError(
                f"type {t.id} ({t.name or 'anonymous'}) is a {t.kind.name}, not a struct"
            )
        out = []
        for i in range(t.vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._types, t.data + 12 * i)
            if t.kind_flag:
                out.append(Member(self.string(name_off), mtype, off & 0xFFFFFF, off >> 24))
            else:
                out.append(Member(self.string(name_off), mtype, off))
        return out

    def resolve(self, tid: int) -> BtfType:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self.type(tid)
        while t.kind in _MODIFIERS:
            t = self.type(t.size_or_type)
        return t

    def member_bit_offset(self, struct_name: str, path: str) -> int:
        """Bit offset of ``path`` (dotted, e.g. ``map.max_entries``) inside
        ``struct struct_name``; members of anonymous structs and unions are
        found as if they were direct members, as in C."""
        t = self.find(struct_name, (Kind.STRUCT, Kind.UNION))
        total = 0
        for part in path.split("."):
            found = self._member(t, part)
            if found is None:
                raise BtfError(f"{struct_name} has no member {path!r} (missing {part!r})")
            off, m = found
            total += off
            t = self.resolve(m.type)
        return total

    def _member(self, t: BtfType, name: str) -> tuple[int, Member] | None:
        for m in self.members(t):
            if m.name == name:
                return m.bit_offset, m
        for m in self.members(t):
            inner = self.resolve(m.type)
            if not m.name and inner.kind in (Kind.STRUCT, Kind.UNION):
                found = self._member(inner, name)
                if found is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def member_offset(self, struct_name: str, path: str) -> int:
        bits = self.member_bit_offset(struct_name, path)
        if bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield at bit {bits}")
        return bits // 8

    def func_id(self, name: str) -> int:
        return self.find(name, Kind.FUNC).id

    # --- what a BPF object's BTF declares (maps in .maps, sections, tags) ---

    def size_of(self, tid: int) -> int:
        """The byte size of type ``tid``, as ``btf__resolve_size`` computes it."""
        t = self.resolve(tid)
        if t.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
            return t.size_or_type
        if t.kind in (Kind.DATASEC,):
            return t.size_or_type
        if t.kind == Kind.PTR:
            return 8
        if t.kind == Kind.ARRAY:
            elem, _, nelems = self.array(t)
            return nelems * self.size_of(elem)
        if t.kind == Kind.VAR:
            return self.size_of(t.size_or_type)
        raise BtfError(f"type {t.id} ({t.kind.name}) has no size")

    def array(self, t: BtfType) -> tuple[int, int, int]:
        """An ARRAY's (element type, index type, number of elements)."""
        if t.kind != Kind.ARRAY:
            raise BtfError(f"type {t.id} is a {t.kind.name}, not an array")
        elem, index, nelems = struct.unpack_from("<III", self._types, t.data)
        return elem, index, nelems

    def datasec_vars(self, t: BtfType) -> list[tuple[int, int, int]]:
        """A DATASEC's variables: (VAR type id, offset, size) each."""
        if t.kind != Kind.DATASEC:
            raise BtfError(f"type {t.id} is a {t.kind.name}, not a DATASEC")
        return [struct.unpack_from("<III", self._types, t.data + 12 * i) for i in range(t.vlen)]

    def decl_tags(self, prefix: str = "") -> list[tuple[str, int, int]]:
        """DECL_TAG types whose value starts with ``prefix``: (value, target
        type id, component index; -1 tags the declaration itself)."""
        out = []
        for t in self.types[1:]:
            if t is not None and t.kind == Kind.DECL_TAG and t.name.startswith(prefix):
                (idx,) = struct.unpack_from("<i", self._types, t.data)
                out.append((t.name, t.size_or_type, idx))
        return out

    def linkage(self, t: BtfType) -> int:
        """A FUNC's linkage (``LINKAGE_STATIC``, ``LINKAGE_GLOBAL``, 2 = extern)."""
        if t.kind != Kind.FUNC:
            raise BtfError(f"type {t.id} is a {t.kind.name}, not a FUNC")
        return t.vlen


#: .BTF.ext header after the common 8 bytes: func_info off/len, line_info off/len
#: (then, when hdr_len says so, core_relo off/len)
_EXT_HEADER = struct.Struct("<HBBIIIII")


class BtfExt:
    """The ``.BTF.ext`` section of a BPF object: per ELF section, ``func_info``
    records (byte offset of a function in the section, its FUNC type id) and
    CO-RE relocations (byte offset of the instruction, type id, access string).
    Offsets are in bytes here, as clang writes them (libbpf divides by 8)."""

    def __init__(self, blob: bytes, btf: Btf):
        if len(blob) < _EXT_HEADER.size:
            raise BtfError(".BTF.ext shorter than its header")
        magic, version, _flags, hdr_len, fi_off, fi_len, _li_off, _li_len = _EXT_HEADER.unpack_from(
            blob
        )
        if magic != MAGIC or version != 1:
            raise BtfError(f".BTF.ext is not v1 (magic {magic:#x}, version {version})")
        core_off = core_len = 0
        if hdr_len >= _EXT_HEADER.size + 8:
            core_off, core_len = struct.unpack_from("<II", blob, _EXT_HEADER.size)
        body = blob[hdr_len:]
        self.func_info = self._records(body, fi_off, fi_len, btf, "<II")
        self.core_relos = self._records(body, core_off, core_len, btf, "<IIII")

    @staticmethod
    def _records(body: bytes, off: int, length: int, btf: Btf, fmt: str):
        """section name -> list of records (tuples of ``fmt``)."""
        out: dict[str, list[tuple[int, ...]]] = {}
        if not length:
            return out
        if off + length > len(body) or length < 4:
            raise BtfError(".BTF.ext record table runs past the section")
        (rec_size,) = struct.unpack_from("<I", body, off)
        need = struct.calcsize(fmt)
        if rec_size < need:
            raise BtfError(f".BTF.ext records of {rec_size} bytes, need {need}")
        pos, end = off + 4, off + length
        while pos < end:
            if pos + 8 > end:
                raise BtfError(".BTF.ext section header runs past its table")
            name_off, n = struct.unpack_from("<II", body, pos)
            pos += 8
            if pos + n * rec_size > end:
                raise BtfError(".BTF.ext records run past their table")
            recs = [struct.unpack_from(fmt, body, pos + k * rec_size) for k in range(n)]
            out.setdefault(btf.string(name_off), []).extend(recs)
            pos += n * rec_size
        return out


@functools.lru_cache(maxsize=2)
def vmlinux(path: str = "/sys/kernel/btf/vmlinux") -> Btf:
    """The running kernel's BTF, parsed once per process (~5 MB, a second)."""
    try:
        with open(path, "rb") as f:
            return Btf(f.read())
    except OSError as e:
        raise BtfError(f"cannot read {path}: {e.strerror}") from None


def struct_member_offset(struct_name: str, path: str) -> int:
    """Byte offset of a (nested) member in a vmlinux struct."""
    return vmlinux().member_offset(struct_name, path)


def func_id(name: str) -> int:
    """vmlinux BTF id of a kernel function (a kfunc's ``call`` src=2 imm)."""
    return vmlinux().func_id(name)


def kernel_layout() -> Layout:
    """The struct offsets the JIT's code uses, read from this kernel's BTF.
    ``tail_call_offset`` keeps its default: it is a property of the JIT's
    prologue, discovered from the images elsewhere."""
    b = vmlinux()
    return Layout(
        array_max_entries=b.member_offset("bpf_array", "map.max_entries"),
        array_ptrs=b.member_offset("bpf_array", "ptrs"),
        map_type=b.member_offset("bpf_map", "map_type"),
        prog_bpf_func=b.member_offset("bpf_prog", "bpf_func"),
    )


# --- writer ------------------------------------------------------------------


class ProgramBtf:
    """Builds the BTF blob and records for one program.

    >>> b = ProgramBtf()
    >>> main = b.func("main", nargs=1, linkage=LINKAGE_GLOBAL)
    >>> b.decl_tag("exception_callback:cb", main)
    """

    FILE = "jitdiff"

    def __init__(self) -> None:
        self._strs = bytearray(b"\0")
        self._str_off: dict[str, int] = {"": 0}
        self._types: list[bytes] = []
        self._protos: dict[int, int] = {}
        self.u64 = self._add(self._type("u64", Kind.INT, 0, 8) + struct.pack("<I", 64))
        self.file_off = self.string(self.FILE)

    def string(self, s: str) -> int:
        off = self._str_off.get(s)
        if off is None:
            off = self._str_off[s] = len(self._strs)
            self._strs += s.encode() + b"\0"
        return off

    def _type(self, name: str, kind: Kind, vlen: int, size_or_type: int, kflag: bool = False):
        info = (int(kflag) << 31) | (int(kind) << 24) | vlen
        return TYPE.pack(self.string(name) if name else 0, info, size_or_type)

    def _add(self, raw: bytes) -> int:
        self._types.append(raw)
        return len(self._types)  # ids start at 1

    def proto(self, nargs: int) -> int:
        """``u64 (*)(u64, ..., u64)`` with ``nargs`` named scalar arguments."""
        if nargs not in self._protos:
            raw = self._type("", Kind.FUNC_PROTO, nargs, self.u64)
            for i in range(nargs):
                raw += struct.pack("<II", self.string(f"r{i + 1}"), self.u64)
            self._protos[nargs] = self._add(raw)
        return self._protos[nargs]

    def func(self, name: str, nargs: int, linkage: int = LINKAGE_STATIC) -> int:
        return self._add(self._type(name, Kind.FUNC, linkage, self.proto(nargs)))

    def decl_tag(self, value: str, target: int, component_idx: int = -1) -> int:
        """A declaration tag on type ``target`` (-1: the declaration itself)."""
        return self._add(
            self._type(value, Kind.DECL_TAG, 0, target) + struct.pack("<i", component_idx)
        )

    def blob(self) -> bytes:
        types = b"".join(self._types)
        strs = bytes(self._strs)
        return HEADER.pack(MAGIC, 1, 0, HEADER.size, 0, len(types), len(types), len(strs)) + (
            types + strs
        )

    @staticmethod
    def func_info(records: list[tuple[int, int]]) -> bytes:
        """``struct bpf_func_info {insn_off, type_id}`` records."""
        return b"".join(struct.pack("<II", off, tid) for off, tid in records)

    def line_info(self, insn_offs: list[int]) -> bytes:
        """One ``struct bpf_line_info`` per instruction start: the line is the
        pc + 1 (line 0 reads as "no line" to some tools) and the column 0,
        so ``line_col >> 10`` minus one recovers the original pc."""
        return b"".join(
            struct.pack("<IIII", off, self.file_off, 0, (off + 1) << 10) for off in insn_offs
        )


def line_to_pc(line_col: int) -> int:
    """The original pc a ``line_info`` record written by ``ProgramBtf`` names."""
    return (line_col >> 10) - 1
