"""The host side of the guest agent's protocol (``agent/agent.c``).

A case becomes one request: a list of operations built here with the same
code that loads a case into the host kernel (``harness.kernel.loader``: load
order, program BTF with func_info/line_info and the exception-callback tag,
kfunc binding), so a system loads in a guest exactly as it does on the host.
Map references stay indices (the agent turns them into its fds); kfunc
numbers become BTF ids of the guest's own vmlinux. The reply becomes the
same ``Answer`` the host's worker gives, so ``kernel-native``'s outcome code
judges both.

Wire format: little-endian; a message is ``u32 length`` + bytes; a blob is
``u32 length`` + bytes. Request: ``u32 nops`` then per op ``u32 code`` and its
fields. Reply: ``u32 ndone`` then per op ``u32 code, u32 errno`` and its
results. A failed map creation or program load ends the request. A loaded
program's reply ends with its JIT image size: a program the JIT gave up on
(the kernel falls back to the interpreter) is ``unsupported``, never run.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from harness.errors import CaseError, Unsupported
from harness.formats import isa
from harness.kernel import bpf
from harness.kernel.bpf import MapType, ProgInfo, Rejected
from harness.kernel.loader import PROG_TYPE_IDS, bind, load_order, program_btf, slot_starts
from harness.kernel.worker import Answer, NativeRun
from harness.system import Case

__all__ = ["Hello", "Request", "build", "parse_reply", "parse_hello", "MAGIC"]

MAGIC = 0x4741444A
VERSION = 2
MAP_CREATE, MAP_UPDATE, MAP_DELETE, PROG_LOAD, TEST_RUN, PROG_INFO = range(1, 7)
_MAP_TYPES = {"array": MapType.ARRAY, "prog_array": MapType.PROG_ARRAY}


def _blob(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def u32(self) -> int:
        (v,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        return v

    def blob(self) -> bytes:
        n = self.u32()
        b = self.data[self.pos : self.pos + n]
        if len(b) != n:
            raise ValueError("truncated message")
        self.pos += n
        return b


@dataclass(frozen=True)
class Hello:
    release: str
    machine: str
    jit_enable: str
    btf: bytes


def parse_hello(data: bytes) -> Hello:
    r = _Reader(data)
    if r.u32() != MAGIC or r.u32() != VERSION:
        raise ValueError("not a jitdiff agent (or another protocol version)")
    return Hello(r.blob().decode(), r.blob().decode(), r.blob().decode().strip(), r.blob())


@dataclass
class Request:
    """What each operation of the request means, to read its reply."""

    case: Case
    payload: bytes = b""
    #: per op: (kind, detail): ("map", name), ("init", map), ("load", prog),
    #: ("run", step index), ("step", step index), ("info", prog)
    ops: list[tuple[str, object]] = field(default_factory=list)
    progs: list[str] = field(default_factory=list)


def build(case: Case, kfunc_id, *, images: bool = False) -> Request:
    """The request that plays ``case``: maps, programs, initial slots, then the
    script (test runs, prog-array updates and deletes); with ``images`` every
    program's info (JIT image, xlated code) right after loading."""
    for prog in case.programs.values():
        if prog.type not in PROG_TYPE_IDS:
            raise Unsupported(f"{prog.name}: the kernel cannot load program type {prog.type!r}")
    req = Request(case)
    parts: list[bytes] = []

    def op(code: int, kind: str, what: object, body: bytes) -> None:
        parts.append(struct.pack("<I", code) + body)
        req.ops.append((kind, what))

    names = list(case.maps)
    for name, m in case.maps.items():
        if m.kind not in _MAP_TYPES:
            raise CaseError(f"map {name}: unknown kind {m.kind!r}")
        size = 4 if m.kind == "prog_array" else m.value_size
        body = struct.pack("<IIII", _MAP_TYPES[m.kind], 4, size, m.max_entries)
        op(MAP_CREATE, "map", name, body + _blob(bpf._name(name)))

    def update(kind: str, what: object, map_name: str, key: int, value) -> None:
        m = case.maps[map_name]
        if m.kind == "prog_array":
            if not isinstance(value, str) or value not in case.programs:
                raise CaseError(f"{map_name}[{key}]: {value!r} is not a program of the case")
            raw, is_prog = struct.pack("<I", req.progs.index(value)), 1
        else:
            if not isinstance(value, (bytes, bytearray)) or len(value) > m.value_size:
                raise CaseError(f"{map_name}[{key}]: value must be <= {m.value_size} bytes")
            raw, is_prog = bytes(value).ljust(m.value_size, b"\0"), 0
        body = struct.pack("<III", names.index(map_name), key, is_prog) + _blob(raw)
        op(MAP_UPDATE, kind, what, body)

    for name, m in case.maps.items():
        if m.kind == "array":
            for key, value in m.init.items():
                update("init", name, name, key, value)
    for name in load_order(case):
        prog = case.programs[name]
        b, func_info, _types, _names = program_btf(prog)
        code = isa.encode_program(bind(prog, case, list(range(len(names))), kfunc_id))
        body = struct.pack("<I", PROG_TYPE_IDS[prog.type]) + b"".join(
            _blob(x)
            for x in (
                bpf._name(name),
                code,
                b.blob(),
                func_info,
                b.line_info(slot_starts(prog.insns)),
            )
        )
        op(PROG_LOAD, "load", name, body)
        req.progs.append(name)
    for name, m in case.maps.items():
        if m.kind == "prog_array":
            for key, value in m.init.items():
                update("init", name, name, key, value)
    if images:
        for i, name in enumerate(req.progs):
            op(PROG_INFO, "info", name, struct.pack("<I", i))
    for i, step in enumerate(case.script()):
        if step.kind == "run":
            prog = case.programs[step.program]
            skb = prog.type != "raw_tp"
            data = case.ctx.ljust(bpf.ETH_HLEN, b"\0") if skb else case.ctx
            body = struct.pack("<II", req.progs.index(step.program), int(skb)) + _blob(data)
            op(TEST_RUN, "run", i, body)
        elif step.kind == "update":
            try:
                update("step", i, step.map, step.key, step.value)
            except CaseError:
                continue  # the host's loader refuses it too and plays on
        elif step.kind == "delete":
            body = struct.pack("<II", names.index(step.map), step.key)
            op(MAP_DELETE, "step", i, body)
    req.payload = struct.pack("<I", len(parts)) + b"".join(parts)
    return req


def parse_reply(req: Request, data: bytes) -> tuple[Answer, dict[str, ProgInfo]]:
    """The reply as the host worker's ``Answer`` (runs with retval and array
    maps), and each program's ``ProgInfo`` when the request asked for images."""
    case = req.case
    arrays = [n for n, m in case.maps.items() if m.kind == "array"]
    r = _Reader(data)
    n = r.u32()
    runs: list[NativeRun] = []
    infos: dict[str, ProgInfo] = {}
    for k in range(n):
        code, err = r.u32(), r.u32()
        kind, what = req.ops[k]
        if code == PROG_LOAD:
            stage, log = r.u32(), r.blob().decode(errors="replace")
            if err:
                rej = Rejected(err, log, f"btf of {what}" if stage else f"prog {what}")
                detail = f"{rej.what} rejected ({rej.errno_name}): {rej.reason}"
                return Answer("rejected", detail, log), infos
            if r.u32() == 0:  # jited_prog_len
                return Answer(
                    "unsupported",
                    f"prog {what}: the JIT gave up on it and the kernel would run it in the "
                    "interpreter (no JIT image)",
                ), infos
        elif code == TEST_RUN:
            retval, nmaps = r.u32(), r.u32()
            values = [r.blob() for _ in range(nmaps)]
            if err:
                runs.append(NativeRun(None, error=f"bpf(PROG_TEST_RUN): {_errno_name(err)}"))
            else:
                runs.append(NativeRun(retval, dict(zip(arrays, values, strict=True))))
        elif code == PROG_INFO:
            if not err:
                infos[str(what)] = bpf.parse_prog_info(*(r.blob() for _ in range(9)))
        elif code == MAP_CREATE and err:
            return Answer("error", f"map {what}: bpf(MAP_CREATE): {_errno_name(err)}"), infos
        elif kind == "init" and err:
            return Answer("error", f"map {what}: initial value: {_errno_name(err)}"), infos
    want = len(req.ops)
    if n != want:
        return Answer("error", f"the agent answered {n} of {want} operations"), infos
    return Answer("ok", runs=tuple(runs)), infos


def _errno_name(e: int) -> str:
    return f"{bpf._errno_name(e)} {os.strerror(e)}"
