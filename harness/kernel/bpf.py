"""The ``bpf()`` system call through ctypes: maps, program load, test run, info.

Every command packs its ``union bpf_attr`` by hand at the offsets of
``include/uapi/linux/bpf.h`` (checked against the 6.18 kernel, see
``/work/shared/notes/kernel-x86-jit.md``); nothing here needs libbpf or
bpftool. Errors come back as values the caller can inspect without parsing
text: ``BpfError`` carries the command and errno, ``Rejected`` carries the
errno and the complete verifier (or BTF) log.

File descriptors are wrapped in ``Fd``, which closes itself as a context
manager and registers itself while open, so a test can assert that nothing
leaked (``open_fds()``).
"""

from __future__ import annotations

import ctypes
import enum
import errno as _errno
import os
import struct
import sys
from dataclasses import dataclass

from harness.errors import JitdiffError

__all__ = [
    "Cmd",
    "MapType",
    "ProgType",
    "BpfError",
    "Rejected",
    "Fd",
    "open_fds",
    "bpf",
    "map_create",
    "map_update",
    "map_lookup",
    "map_delete",
    "btf_load",
    "prog_load",
    "TestRun",
    "prog_test_run",
    "ProgInfo",
    "prog_info",
    "parse_prog_info",
    "MapInfo",
    "map_info",
    "prog_fd_by_id",
    "map_fd_by_id",
    "available",
]

SYS_BPF = 321  # x86-64
ATTR_SIZE = 160  # sizeof(union bpf_attr) the notes measured for BPF_PROG_LOAD
PROG_INFO_SIZE = 232
MAP_INFO_SIZE = 96
ETH_HLEN = 14  # skb test runs need at least an Ethernet header of packet data
RAW_TP_MAX_CTX = 96  # raw_tp test runs accept at most 12 u64 arguments

# The verifier log grows on demand up to this size (the kernel caps it at
# UINT_MAX >> 2; a log this large means a pathological program anyway).
LOG_START = 1 << 18
LOG_MAX = 1 << 26


class Cmd(enum.IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    MAP_DELETE_ELEM = 3
    MAP_GET_NEXT_KEY = 4
    PROG_LOAD = 5
    PROG_TEST_RUN = 10
    PROG_GET_NEXT_ID = 11
    MAP_GET_NEXT_ID = 12
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    BTF_LOAD = 18


class MapType(enum.IntEnum):
    ARRAY = 2
    PROG_ARRAY = 3


class ProgType(enum.IntEnum):
    SCHED_CLS = 3
    RAW_TRACEPOINT = 17


def _errno_name(e: int) -> str:
    # 524 is the kernel-internal ENOTSUPP, which leaks to user space from the
    # verifier (e.g. for some invalid map value accesses).
    return _errno.errorcode.get(e) or {524: "ENOTSUPP"}.get(e, str(e))


class BpfError(JitdiffError):
    """A ``bpf()`` command failed with ``errno`` (not a verifier rejection)."""

    def __init__(self, cmd: int, errno: int, what: str = ""):
        super().__init__(cmd, errno, what)
        self.cmd, self.errno, self.what = cmd, errno, what

    def __str__(self) -> str:
        try:
            name = Cmd(self.cmd).name
        except ValueError:
            name = str(self.cmd)
        what = f" ({self.what})" if self.what else ""
        return f"bpf({name}){what}: {_errno_name(self.errno)} {os.strerror(self.errno)}"


class Rejected(JitdiffError):
    """The kernel refused a program (``what="prog <name>"``) or program BTF
    (``what="btf"``): ``errno`` and the full ``log`` are kept as data."""

    def __init__(self, errno: int, log: str, what: str = ""):
        super().__init__(errno, log, what)
        self.errno, self.log, self.what = errno, log, what

    def __str__(self) -> str:
        return f"{self.what or 'load'} rejected ({self.errno_name}): {self.reason}"

    @property
    def errno_name(self) -> str:
        return _errno_name(self.errno)

    @property
    def reason(self) -> str:
        """The log's last line before the verifier's statistics (for display;
        callers that classify rejections should use ``errno`` and ``log``)."""
        lines = [ln for ln in self.log.splitlines() if ln.strip()]
        while lines and lines[-1].startswith(("processed ", "verification time", "stack depth")):
            lines.pop()
        return lines[-1] if lines else "(empty log)"


# --- file descriptors --------------------------------------------------------

_OPEN: dict[int, Fd] = {}


class Fd:
    """An owned bpf file descriptor; ``close()`` is idempotent.

    Open descriptors are held in a module registry (strong references), so a
    leaked one shows up in ``open_fds()`` instead of being closed behind the
    caller's back by the garbage collector.
    """

    __slots__ = ("fd", "kind", "label")

    def __init__(self, fd: int, kind: str, label: str = ""):
        self.fd, self.kind, self.label = fd, kind, label
        _OPEN[id(self)] = self

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            _OPEN.pop(id(self), None)
            os.close(fd)

    def __int__(self) -> int:
        if self.fd < 0:
            raise ValueError(f"{self!r} is closed")
        return self.fd

    def __reduce__(self):
        # A descriptor number means nothing in another process.
        raise TypeError(f"{self!r} cannot be pickled: fds stay in the process that opened them")

    def __enter__(self) -> Fd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.fd < 0 else f"fd={self.fd}"
        return f"Fd({self.kind} {self.label!r}, {state})"


def open_fds() -> list[Fd]:
    """Every ``Fd`` this process opened and has not closed yet."""
    return list(_OPEN.values())


# --- the system call ---------------------------------------------------------

_libc = None


def _syscall():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """Run one command on ``attr`` (a ctypes buffer, updated in place).
    Returns the non-negative result or raises ``OSError`` with errno set."""
    if not sys.platform.startswith("linux"):
        raise OSError(_errno.ENOSYS, "bpf() exists only on Linux")
    ret = _syscall()(
        ctypes.c_long(SYS_BPF),
        ctypes.c_long(cmd),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_long(ctypes.sizeof(attr)),
    )
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _call(cmd: Cmd, attr: ctypes.Array, what: str = "") -> int:
    try:
        return bpf(cmd, attr)
    except OSError as e:
        raise BpfError(cmd, e.errno or 0, what) from None


def _call_unless_absent(cmd: Cmd, attr: ctypes.Array, what: str) -> bool:
    """``_call``, but False when the element is not there (ENOENT)."""
    try:
        bpf(cmd, attr)
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise BpfError(cmd, e.errno or 0, what) from None
    return True


def _attr(size: int = ATTR_SIZE) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def _addr(buf: ctypes.Array | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def _buf(data: bytes) -> ctypes.Array:
    # create_string_buffer(b"") would still be 1 byte: fine, the size is passed apart
    return ctypes.create_string_buffer(bytes(data), max(len(data), 1))


def _name(name: str) -> bytes:
    # BPF object names: at most 15 chars of [A-Za-z0-9_.]
    clean = "".join(c if c.isalnum() or c in "_." else "_" for c in name)
    return clean.encode()[:15]


# --- maps --------------------------------------------------------------------


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = ""
) -> Fd:
    a = _attr()
    struct.pack_into("<IIIII", a, 0, map_type, key_size, value_size, max_entries, 0)
    a[28 : 28 + len(_name(name))] = _name(name)
    return Fd(_call(Cmd.MAP_CREATE, a, name), "map", name)


def _elem_attr(fd: Fd | int, key: bytes, value: ctypes.Array | None, flags: int):
    k = _buf(key)
    a = _attr()
    struct.pack_into("<IIQQQ", a, 0, int(fd), 0, _addr(k), _addr(value), flags)
    return a, k


def map_update(fd: Fd | int, key: bytes, value: bytes, flags: int = 0) -> None:
    v = _buf(value)
    a, _k = _elem_attr(fd, key, v, flags)
    _call(Cmd.MAP_UPDATE_ELEM, a, f"update {fd!r}")


def map_lookup(fd: Fd | int, key: bytes, value_size: int) -> bytes | None:
    """The value, or None when the key has no element (ENOENT: an empty
    prog-array slot)."""
    v = ctypes.create_string_buffer(value_size)
    a, _k = _elem_attr(fd, key, v, 0)
    return v.raw if _call_unless_absent(Cmd.MAP_LOOKUP_ELEM, a, f"lookup {fd!r}") else None


def map_delete(fd: Fd | int, key: bytes) -> bool:
    """Delete an element; False when there was none (ENOENT)."""
    a, _k = _elem_attr(fd, key, None, 0)
    return _call_unless_absent(Cmd.MAP_DELETE_ELEM, a, f"delete {fd!r}")


# --- loading -----------------------------------------------------------------


def _with_log(cmd: Cmd, fill, what: str, log_level: int) -> tuple[int, str]:
    """Run a loading command whose attr carries a log buffer; grow the buffer
    while the kernel reports ENOSPC (since 6.4 a truncated log fails the load
    even when verification passed). ``fill(attr, log_buf, log_size)``
    returns the attr and the offset of ``log_true_size``."""
    size = LOG_START if log_level else 0
    while True:
        log = ctypes.create_string_buffer(size) if size else None
        a, true_off = fill(log, size)
        try:
            fd = bpf(cmd, a)
        except OSError as e:
            err = e.errno or 0
            text = log.value.decode(errors="replace") if log is not None else ""
            if err == _errno.ENOSPC and log is not None and size < LOG_MAX:
                (true_size,) = struct.unpack_from("<I", a, true_off)
                size = min(LOG_MAX, max(size * 4, true_size + 1))
                continue
            raise Rejected(err, text, what) from None
        text = log.value.decode(errors="replace") if log is not None else ""
        return fd, text


def btf_load(blob: bytes, log_level: int = 1) -> tuple[Fd, str]:
    """``BPF_BTF_LOAD``: the program BTF fd and the BTF verifier's log."""
    data = _buf(blob)

    def fill(log, size):
        a = _attr()
        struct.pack_into("<QQIII", a, 0, _addr(data), _addr(log), len(blob), size, log_level)
        return a, 28

    fd, text = _with_log(Cmd.BTF_LOAD, fill, "btf", log_level)
    return Fd(fd, "btf", "program btf"), text


def prog_load(
    prog_type: int,
    insns: bytes,
    *,
    name: str = "",
    license: str = "GPL",
    log_level: int = 1,
    btf: Fd | None = None,
    func_info: bytes = b"",
    line_info: bytes = b"",
) -> tuple[Fd, str]:
    """``BPF_PROG_LOAD``: the program fd and the verifier log, or raises
    ``Rejected(errno, log)``. ``func_info`` is packed 8-byte
    ``{insn_off, type_id}`` records, ``line_info`` 16-byte records."""
    code = _buf(insns)
    lic = ctypes.create_string_buffer(license.encode())
    fi = _buf(func_info) if func_info else None
    li = _buf(line_info) if line_info else None

    def fill(log, size):
        a = _attr()
        struct.pack_into(
            "<IIQQIIQ", a, 0, prog_type, len(insns) // 8, _addr(code), _addr(lic),
            log_level if size else 0, size, _addr(log),
        )  # fmt: skip
        nm = _name(name)
        a[48 : 48 + len(nm)] = nm
        if btf is not None:
            struct.pack_into("<IIQI", a, 72, int(btf), 8, _addr(fi), len(func_info) // 8)
            struct.pack_into("<IQI", a, 92, 16, _addr(li), len(line_info) // 16)
        return a, 140

    fd, text = _with_log(Cmd.PROG_LOAD, fill, f"prog {name}", log_level)
    return Fd(fd, "prog", name), text


# --- test run ----------------------------------------------------------------


@dataclass(frozen=True)
class TestRun:
    retval: int
    #: nanoseconds, as the kernel measured (0 for raw_tp: no timing there)
    duration: int
    data_out: bytes = b""
    ctx_out: bytes = b""

    __test__ = False  # not a pytest class


def prog_test_run(
    fd: Fd | int,
    *,
    data: bytes = b"",
    ctx: bytes = b"",
    repeat: int = 0,
    data_out_size: int = 0,
    ctx_out_size: int = 0,
) -> TestRun:
    """``BPF_PROG_TEST_RUN``. raw_tp programs take ``ctx`` only (at most 96
    bytes, ``repeat`` must be 0); skb programs (sched_cls) need ``data`` of at
    least ``ETH_HLEN`` bytes."""
    din, cin = _buf(data), _buf(ctx)
    dout = ctypes.create_string_buffer(data_out_size) if data_out_size else None
    cout = ctypes.create_string_buffer(ctx_out_size) if ctx_out_size else None
    a = _attr(80)
    struct.pack_into(
        "<IIIIQQII", a, 0, int(fd), 0, len(data), data_out_size,
        _addr(din) if data else 0, _addr(dout), repeat, 0,
    )  # fmt: skip
    struct.pack_into("<IIQQ", a, 40, len(ctx), ctx_out_size, _addr(cin) if ctx else 0, _addr(cout))
    _call(Cmd.PROG_TEST_RUN, a, f"test run {fd!r}")
    _, retval, _, dsize = struct.unpack_from("<IIII", a, 0)
    (duration,) = struct.unpack_from("<I", a, 36)
    (csize,) = struct.unpack_from("<I", a, 44)
    return TestRun(
        retval,
        duration,
        dout.raw[: min(dsize, data_out_size)] if dout is not None else b"",
        cout.raw[: min(csize, ctx_out_size)] if cout is not None else b"",
    )


# --- object info -------------------------------------------------------------


@dataclass(frozen=True)
class ProgInfo:
    """What ``BPF_OBJ_GET_INFO_BY_FD`` says about a loaded program; every
    field is plain data (picklable)."""

    type: int
    id: int
    name: str
    tag: bytes
    #: all function images concatenated in function order ([0] is main)
    jited: bytes
    xlated: bytes
    map_ids: tuple[int, ...]
    jited_ksyms: tuple[int, ...]
    jited_func_lens: tuple[int, ...]
    btf_id: int
    #: (insn_off, type_id) per function, insn_off in xlated numbering
    func_info: tuple[tuple[int, int], ...]
    #: (insn_off, file_name_off, line_off, line_col), insn_off in xlated numbering
    line_info: tuple[tuple[int, int, int, int], ...]
    #: host address of each line_info record's instruction
    jited_line_info: tuple[int, ...]
    verified_insns: int

    def func_images(self) -> list[tuple[int, bytes]]:
        """(address, code) of each function, split by ``jited_func_lens``."""
        out, pos = [], 0
        for addr, n in zip(self.jited_ksyms, self.jited_func_lens, strict=True):
            out.append((addr, self.jited[pos : pos + n]))
            pos += n
        return out


def _info(fd: Fd | int, buf: ctypes.Array) -> None:
    a = _attr(16)
    struct.pack_into("<IIQ", a, 0, int(fd), ctypes.sizeof(buf), ctypes.addressof(buf))
    _call(Cmd.OBJ_GET_INFO_BY_FD, a, f"info {fd!r}")


def prog_info(fd: Fd | int) -> ProgInfo:
    """Two calls: the first returns the counts, the second fills buffers sized
    from them."""
    first = ctypes.create_string_buffer(PROG_INFO_SIZE)
    _info(fd, first)
    u32 = lambda off: struct.unpack_from("<I", first, off)[0]  # noqa: E731
    jlen, xlen, nmaps = u32(16), u32(20), u32(52)
    nksyms, nlens = u32(104), u32(108)
    fi_rec, nfi, nli = u32(132), u32(144), u32(148)
    njli, li_rec, jli_rec = u32(168), u32(172), u32(176)

    jited = ctypes.create_string_buffer(max(jlen, 1))
    xlated = ctypes.create_string_buffer(max(xlen, 1))
    maps = (ctypes.c_uint32 * max(nmaps, 1))()
    ksyms = (ctypes.c_uint64 * max(nksyms, 1))()
    lens = (ctypes.c_uint32 * max(nlens, 1))()
    fi = ctypes.create_string_buffer(max(nfi * fi_rec, 1))
    li = ctypes.create_string_buffer(max(nli * li_rec, 1))
    jli = ctypes.create_string_buffer(max(njli * jli_rec, 1))

    second = ctypes.create_string_buffer(PROG_INFO_SIZE)
    struct.pack_into("<IIQQ", second, 16, jlen, xlen, _addr(jited), _addr(xlated))
    struct.pack_into("<IQ", second, 52, nmaps, _addr(maps))
    struct.pack_into("<IIQQ", second, 104, nksyms, nlens, _addr(ksyms), _addr(lens))
    struct.pack_into("<IQIIQQIII", second, 132, fi_rec, _addr(fi), nfi, nli, _addr(li),
                     _addr(jli), njli, li_rec, jli_rec)  # fmt: skip
    _info(fd, second)

    return parse_prog_info(
        second.raw,
        jited.raw[:jlen],
        xlated.raw[:xlen],
        bytes(maps)[: 4 * nmaps],
        bytes(ksyms)[: 8 * nksyms],
        bytes(lens)[: 4 * nlens],
        fi.raw[: nfi * fi_rec],
        li.raw[: nli * li_rec],
        jli.raw[: njli * jli_rec],
    )


def parse_prog_info(
    info: bytes,
    jited: bytes,
    xlated: bytes,
    map_ids: bytes,
    ksyms: bytes,
    lens: bytes,
    func_info: bytes,
    line_info: bytes,
    jited_line_info: bytes,
) -> ProgInfo:
    """A ``ProgInfo`` from the filled ``struct bpf_prog_info`` and the arrays
    it pointed at, as raw little-endian bytes (a guest's agent sends them so)."""

    def u32(off):
        return struct.unpack_from("<I", info, off)[0]

    fi_rec, li_rec, jli_rec = u32(132) or 8, u32(172) or 16, u32(176) or 8
    typ, pid = struct.unpack_from("<II", info, 0)
    name = info[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(
        type=typ,
        id=pid,
        name=name,
        tag=info[8:16],
        jited=jited,
        xlated=xlated,
        map_ids=struct.unpack(f"<{len(map_ids) // 4}I", map_ids),
        jited_ksyms=struct.unpack(f"<{len(ksyms) // 8}Q", ksyms),
        jited_func_lens=struct.unpack(f"<{len(lens) // 4}I", lens),
        btf_id=u32(128),
        func_info=tuple(
            struct.unpack_from("<II", func_info, o) for o in range(0, len(func_info), fi_rec)
        ),
        line_info=tuple(
            struct.unpack_from("<IIII", line_info, o) for o in range(0, len(line_info), li_rec)
        ),
        jited_line_info=tuple(
            struct.unpack_from("<Q", jited_line_info, o)[0]
            for o in range(0, len(jited_line_info), jli_rec)
        ),
        verified_insns=u32(216) if len(info) >= 220 else 0,
    )


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: Fd | int) -> MapInfo:
    buf = ctypes.create_string_buffer(MAP_INFO_SIZE)
    _info(fd, buf)
    fields = struct.unpack_from("<IIIIII", buf, 0)
    name = buf.raw[24:40].split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(*fields, name=name)


def _by_id(cmd: Cmd, obj_id: int, kind: str) -> Fd:
    a = _attr(16)
    struct.pack_into("<I", a, 0, obj_id)
    return Fd(_call(cmd, a, f"{kind} id {obj_id}"), kind, f"id {obj_id}")


def prog_fd_by_id(prog_id: int) -> Fd:
    return _by_id(Cmd.PROG_GET_FD_BY_ID, prog_id, "prog")


def map_fd_by_id(map_id: int) -> Fd:
    return _by_id(Cmd.MAP_GET_FD_BY_ID, map_id, "map")


# --- can jitdiff use this kernel? --------------------------------------------

BTF_PATH = "/sys/kernel/btf/vmlinux"
KALLSYMS_PATH = "/proc/kallsyms"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(4096)
    except OSError:
        return None


def available() -> str | None:
    """Why the kernel engine cannot run here, or None when it can. Only reads
    (sysctls are never written) and creates one throw-away map."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if os.uname().machine != "x86_64":
        return f"not x86-64 ({os.uname().machine}): the syscall number and JIT notes are x86-64"
    if os.geteuid() != 0:
        return "not root: loading JIT programs and dumping their images needs CAP_SYS_ADMIN"
    try:
        with map_create(MapType.ARRAY, 4, 4, 1, "jitdiff_probe"):
            pass
    except BpfError as e:
        if e.errno in (_errno.EPERM, _errno.EACCES):
            return f"bpf() not permitted here ({e})"
        return f"bpf() unusable: {e}"
    if not os.access(BTF_PATH, os.R_OK):
        return f"no kernel BTF at {BTF_PATH}"
    jit = _read("/proc/sys/net/core/bpf_jit_enable")
    if jit is None or jit.strip() != "1":
        return f"net.core.bpf_jit_enable is {jit.strip() if jit else 'unreadable'}, not 1"
    harden = _read("/proc/sys/net/core/bpf_jit_harden")
    if harden is not None and harden.strip() == "2":
        return "net.core.bpf_jit_harden is 2: constant blinding rewrites every image"
    head = _read(KALLSYMS_PATH)
    if not head:
        return f"{KALLSYMS_PATH} unreadable"
    addrs = [ln.split(" ", 1)[0] for ln in head.splitlines()[:-1] if ln]
    if not addrs or all(int(a, 16) == 0 for a in addrs):
        return f"{KALLSYMS_PATH} addresses are zeroed (kernel.kptr_restrict)"
    return None
