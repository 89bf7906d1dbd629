"""Run native images of a system under Unicorn and report what happened in the
interpreter's vocabulary.

``Executor.run_case`` plays a case's script against a ``NativeSystem`` (from
the x86-64 model JIT or from the kernel's real JIT) and returns one
``RunOutcome`` per ``run`` step, with the same events the reference
interpreter records, so both are judged by the same oracles.

How it works, and why:

* Memory is laid out like the kernel's. Unicorn will not fetch at kernel
  addresses, so the executor runs with a virtual TLB that maps a canonical
  virtual address to ``vaddr & (2**48 - 1)``; everything is mapped and
  accessed at the masked address. A non-canonical address (the garbage the
  helper stubs leave in caller-saved registers, say) is refused, as real
  hardware would (#GP).
* Only what the kernel would have is mapped: code (read+exec), the helper
  and thunk stubs, a 16 KiB host stack between two unmapped guard pages, the
  ctx (read-only), every map's ``struct bpf_array``, fake ``struct bpf_prog``
  objects, the per-cpu areas and one page for ``gs:``. Anything else faults.
* No Python runs per instruction in normal runs. Code hooks sit only on the
  addresses that matter (function entries, tail-call entries, return sites,
  call / tail-call / helper instructions, stubs), and the budget uses
  Unicorn's own instruction ``count``.
* Events carry values through ``symbolize`` so pointers compare across
  engines: a map value is ``("value", map, offset)``, a stack slot
  ``("fp", offset)``, and so on. The interpreter uses the same function.

One ``Executor`` keeps one Unicorn instance. Mappings and hooks are rebuilt
only when the system (or case) changes; code, map contents and prog-array
slots are rewritten per case, the stack and registers per run.
"""

from __future__ import annotations

import ctypes
import operator
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import unicorn.unicorn_const as ucc
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc, UcError
from unicorn import x86_const as x86
from unicorn.unicorn_py3 import unicorn as _ucpy

from harness.errors import JitdiffError
from harness.formats import isa
from harness.native.image import (
    PRIV_STACK_GUARD_SZ,
    PRIV_STACK_GUARD_VAL,
    NativeFunc,
    NativeSystem,
)
from harness.outcome import Event, RunOutcome, Status, Violation, Where
from harness.reference.helpers import BPF_THROW, HELPERS, TAIL_CALL, MapState, call_helper
from harness.reference.profile import LINUX, Profile
from harness.system import Case

__all__ = [
    "Executor",
    "AddressSpace",
    "MapSpan",
    "symbolize",
    "elem_stride",
    "benchmark",
    "LayoutError",
    "HARNESS_AREA",
    "CTX_ADDR",
    "STACK_TOP",
    "CALLEE_SAVED_SENTINELS",
]

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
VA_MASK = (1 << 48) - 1
PAGE = 0x1000

R, W, X = ucc.UC_PROT_READ, ucc.UC_PROT_WRITE, ucc.UC_PROT_EXEC

# ---------------------------------------------------------------------------
# Harness-owned addresses: kernel-like (vmalloc area), away from the model
# JIT's code (0xffffffffc...) and data (0xffff888...).

#: start of the executor's own area; a system that maps anything here is refused
HARNESS_AREA = 0xFFFF_C900_0000_0000
HARNESS_AREA_END = HARNESS_AREA + 0x10_0000
#: the x86-64 kernel's task stack (THREAD_SIZE without KASAN): BPF programs
#: run on it, so a deeper native stack is a kernel stack overflow
STACK_SIZE = 0x4000
#: the host stack: [STACK_BASE, STACK_TOP), guard pages unmapped on both sides
STACK_BASE = HARNESS_AREA + 0x1_0000
STACK_TOP = STACK_BASE + STACK_SIZE
#: ctx lives here (read-only)
CTX_ADDR = HARNESS_AREA + 0x2_0000
#: gs: page; gs:[this_cpu_off] reads GS_SLOT, which holds 0 (per-cpu offset)
GS_PAGE = HARNESS_AREA + 0x3_0000
GS_SLOT = GS_PAGE + 0x800
#: the fake return address of the entry program: reaching it ends the run
SENTINEL = HARNESS_AREA + 0x4_0000

# Values the executor plants so that misuse is visible: host callee-saved
# registers at entry (compared at exit), and the garbage a helper leaves in
# caller-saved registers. All are non-canonical, so dereferencing one faults.
CALLEE_SAVED = ("rbx", "rbp", "r12", "r13", "r14", "r15")
CALLEE_SAVED_SENTINELS = {
    "rbx": 0xC5C5_0000_0000_0B00,
    "rbp": 0xC5C5_0000_0000_0BB0,
    "r12": 0xC5C5_0000_0000_0120,
    "r13": 0xC5C5_0000_0000_0130,
    "r14": 0xC5C5_0000_0000_0140,
    "r15": 0xC5C5_0000_0000_0150,
}
_ENTRY_GARBAGE = 0xBAD0_0000_0000_0000
_CLOBBER_GARBAGE = 0xDEAD_BEEF_0000_0000

# Registers read in one batch by every hook, in this order.
_REG_NAMES = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)  # fmt: skip
_REG_IDS = {n: getattr(x86, f"UC_X86_REG_{n.upper()}") for n in _REG_NAMES}
(RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP, R8, R9, R10, R11, R12, R13, R14, R15, RIP) = range(17)
_CSR_IDX = (RBX, RBP, R12, R13, R14, R15)
_CSR_GET = operator.itemgetter(*_CSR_IDX)
#: caller-saved registers a C helper may leave garbage in
_CLOBBERED = ("rdi", "rsi", "rdx", "rcx", "r8", "r9", "r10", "r11")

_THUNK_REGS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi")
_UC_ERR_NAMES = {
    getattr(ucc, n): n for n in dir(ucc) if n.startswith("UC_ERR_") and n != "UC_ERR_OK"
}


def elem_stride(value_size: int) -> int:
    """Array values sit round_up(value_size, 8) apart, as in the kernel."""
    return (value_size + 7) & ~7


def _canonical(addr: int) -> bool:
    top = addr >> 47
    return top == 0 or top == 0x1FFFF


class LayoutError(JitdiffError):
    """A native system the executor cannot lay out (overlaps its own area)."""


# ---------------------------------------------------------------------------
# Symbolisation: the engine-independent name of a value.


@dataclass(frozen=True, slots=True)
class MapSpan:
    """Where one map lives in an engine's address space."""

    name: str
    #: address of the map object (what ld_imm64 of the map loads)
    obj: int
    #: address of the first value (array maps), 0 for prog arrays
    values: int = 0
    #: bytes of the value area: elem_stride(value_size) * max_entries (0 for prog arrays)
    values_size: int = 0


@dataclass(frozen=True, slots=True)
class AddressSpace:
    """The static part of an engine's address space, for ``symbolize``."""

    ctx: int
    ctx_size: int
    maps: tuple[MapSpan, ...] = ()
    #: bytes of BPF stack per frame (profile.stack_size)
    frame_size: int = 512


#: stacks, ctx and maps are kernel-like, at or above this address; per-cpu
#: areas may be lower (a per-cpu pointer before gs: is added is an offset)
_LOWEST_POINTER = 0xFFFF_8000_0000_0000


def symbolize(value: int | None, space: AddressSpace, fps: Sequence[int | None]):
    """Name ``value`` the same way in every engine.

    ``fps`` are the BPF frame pointers of the active frames, entry program's
    main first and the current frame last (``None`` for a frame whose frame
    pointer is not known yet). Checked in this order:

    * inside a frame's stack ``[fp - frame_size, fp]``: ``("fp", off)`` for the
      current frame, ``("fp", depth, off)`` for another (depth 0 = entry main);
      frames are searched innermost first, so on a native host stack, where a
      caller's 512-byte window covers its callees, the callee wins;
    * inside ctx ``[ctx, ctx + size]``: ``("ctx", off)``;
    * equal to a map object: ``("map", name)``;
    * inside a map's value area (end inclusive): ``("value", name, off)``;
    * anything else: the plain int (``None`` stays ``None``).
    """
    if value is None:
        return None
    last = len(fps) - 1
    size = space.frame_size
    for depth in range(last, -1, -1):
        fp = fps[depth]
        if fp is not None and fp - size <= value <= fp:
            return ("fp", value - fp) if depth == last else ("fp", depth, value - fp)
    if space.ctx <= value <= space.ctx + space.ctx_size:
        return ("ctx", value - space.ctx)
    for m in space.maps:
        if value == m.obj:
            return ("map", m.name)
        if m.values_size and m.values <= value <= m.values + m.values_size:
            return ("value", m.name, value - m.values)
    return value


# ---------------------------------------------------------------------------
# Raw access to libunicorn. The Python binding's reg_read costs ~3.5 us and a
# batch of nine ~30 us; these calls (no argtypes, preallocated buffers) cost
# ~0.5 us and ~1.2 us for all seventeen registers.


class _Fault(Exception):
    """Internal: a helper model touched memory that is not mapped."""


class _Raw:
    def __init__(self, uc: Uc):
        lib = ctypes.CDLL(_ucpy.uclib._name)
        self.h = uc._uch
        self._batch_read = lib.uc_reg_read_batch
        self._batch_write = lib.uc_reg_write_batch
        self._mem_read = lib.uc_mem_read
        self._mem_write = lib.uc_mem_write
        self._reg_write = lib.uc_reg_write
        self.emu_start = lib.uc_emu_start
        self.emu_stop = lib.uc_emu_stop
        n = len(_REG_NAMES)
        self._n = n
        self._ids = (ctypes.c_int * n)(*(_REG_IDS[r] for r in _REG_NAMES))
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
        self._one = ctypes.c_uint64()
        self._one_ref = ctypes.byref(self._one)
        self._write_bufs: dict[tuple[str, ...], tuple] = {}

    def hook(self, kind: int, callback, begin: int = 1, end: int = 0, user_data=None) -> int:
        """uc_hook_add with a ctypes callback made once by the caller (the
        binding's hook_add makes a new one per call); begin > end: everywhere."""
        hh = _ucpy.uc_hook_h()
        err = _ucpy.uclib.uc_hook_add(
            self.h, ctypes.byref(hh), kind, ctypes.cast(callback, ctypes.c_void_p), user_data,
            ctypes.c_uint64(begin), ctypes.c_uint64(end),
        )  # fmt: skip
        if err:
            raise UcError(err)
        return hh.value

    def unhook(self, hooks: list[int]) -> None:
        for h in hooks:
            _ucpy.uclib.uc_hook_del(self.h, _ucpy.uc_hook_h(h))
        hooks.clear()

    def regs(self) -> list[int]:
        """All of _REG_NAMES, in order."""
        self._batch_read(self.h, self._ids, self._ptrs, self._n)
        return self._vals[:]

    def set_regs(self, values: dict[str, int]) -> None:
        # the buffers for a set of registers are made once (a helper call
        # writes the same eight every time)
        names = tuple(values)
        bufs = self._write_bufs.get(names)
        if bufs is None:
            n = len(names)
            ids = (ctypes.c_int * n)(*(_REG_IDS[r] for r in names))
            vals = (ctypes.c_uint64 * n)()
            base = ctypes.addressof(vals)
            ptrs = (ctypes.c_void_p * n)(*(base + 8 * i for i in range(n)))
            bufs = self._write_bufs[names] = (ids, vals, ptrs, n)
        ids, vals, ptrs, n = bufs
        vals[:] = [v & U64 for v in values.values()]
        self._batch_write(self.h, ids, ptrs, n)

    def set_reg(self, reg_id: int, value: int) -> None:
        self._one.value = value & U64
        self._reg_write(self.h, reg_id, self._one_ref)

    def read(self, addr: int, size: int) -> bytes:
        if not _canonical(addr) or not _canonical(addr + size - 1):
            raise _Fault(f"non-canonical address {addr:#x}")
        buf = ctypes.create_string_buffer(size)
        if self._mem_read(self.h, ctypes.c_uint64(addr & VA_MASK), buf, ctypes.c_size_t(size)):
            raise _Fault(f"read of {size} bytes at unmapped {addr:#x}")
        return buf.raw

    stack: memoryview | None = None

    def u64(self, addr: int) -> int:
        off = addr - STACK_BASE
        if 0 <= off <= STACK_SIZE - 8 and self.stack is not None:
            return int.from_bytes(self.stack[off : off + 8], "little")
        if not _canonical(addr):
            raise _Fault(f"non-canonical address {addr:#x}")
        if self._mem_read(
            self.h, ctypes.c_uint64(addr & VA_MASK), self._one_ref, ctypes.c_size_t(8)
        ):
            raise _Fault(f"read of 8 bytes at unmapped {addr:#x}")
        return self._one.value

    def write(self, addr: int, data: bytes) -> None:
        if not data:
            return
        if not _canonical(addr):
            raise _Fault(f"non-canonical address {addr:#x}")
        data = bytes(data)
        if self._mem_write(
            self.h, ctypes.c_uint64(addr & VA_MASK), data, ctypes.c_size_t(len(data))
        ):
            raise _Fault(f"write of {len(data)} bytes at unmapped {addr:#x}")


_HOOK_CODE_CFUNC = _ucpy.HOOK_CODE_CFUNC


# ---------------------------------------------------------------------------
# Per-system / per-case static tables.


@dataclass(slots=True)
class _FuncInfo:
    prog: str
    index: int
    func: NativeFunc
    end: int
    label: str = ""
    #: bytes the prologue pushes and allocates from the function's first byte
    #: (``drop``) and from its tail-call entry (``tc_drop``) to its first BPF
    #: instruction; None where rsp is not relative (an exception callback)
    drop: int | None = None
    tc_drop: int | None = None


# Actions at a hooked address, run in this order when several share one.
(
    A_ENTRY, A_TC_ENTRY, A_RET_SITE, A_TC_FALL, A_HELPER_END, A_FP,
    A_STEP, A_CALL, A_TAIL, A_HELPER, A_STUB,
) = range(11)  # fmt: skip


@dataclass(slots=True)
class _CallRec:
    """How a frame was entered: where to return and what must hold there."""

    where: Where | None  #: the call insn in the caller (None for the entry program)
    ret_site: int
    #: rsp at the call insn; must be the same at the return site (None: the
    #: call insn starts at its function's first byte, before the prologue, so
    #: rsp and the saved registers are taken at the callee's entry instead)
    rsp: int | None
    saved: tuple[int, ...] | None  #: rbx, rbp, r12-r15 at the call
    caller_private: bool = False
    #: caller's rsp at the native `call` (entry rsp + 8): a throw's unwind point
    call_sp: int | None = None


@dataclass(slots=True)
class _Frame:
    prog: str
    fi: _FuncInfo
    call: _CallRec
    rbp: int  #: host frame base
    fp: int | None  #: BPF frame pointer (None until known for private stacks)


@dataclass(slots=True)
class _TailAttempt:
    where: Where
    index: int
    counter: int | None
    fall: int
    rdi: int
    fi: _FuncInfo


@dataclass(slots=True)
class _HelperAttempt:
    where: Where
    helper_id: int
    args: tuple[int, ...]
    end: int


@dataclass
class _Run:
    entry: str
    events: list[Event] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    frames: list[_Frame] = field(default_factory=list)
    tail_calls: int = 0
    pending_call: _CallRec | None = None
    pending_tail: _TailAttempt | None = None
    pending_helper: _HelperAttempt | None = None
    expect_cb: int | None = None
    stop: tuple[Status, Where | None, str] | None = None
    mem_violations: int = 0
    #: private-stack guards a write hook already reported
    guards_hit: set[str] = field(default_factory=set)
    blocks_insns: int = 0
    #: lowest rsp seen at a function entry (the deepest native call chain)
    low_rsp: int = 1 << 64
    #: lowest rsp a function body ran at (entry rsp less the prologue's drop)
    low_body: int = 1 << 64


_MAX_MEM_VIOLATIONS = 16
#: bytes a function body writes below its rsp: push r9 and a return address
#: around a call, or push rax and push rdx around a division
_STACK_SLACK = 16
_GUARD = PRIV_STACK_GUARD_VAL.to_bytes(PRIV_STACK_GUARD_SZ, "little")


class Executor:
    """Runs native systems under one reusable Unicorn instance.

    ``exact_steps=True`` adds a block hook so ``RunOutcome.steps`` is the exact
    number of native instructions (about 0.7 us per basic block); otherwise
    ``steps`` is the budget when it ran out and 0 when the run ended earlier
    (Unicorn does not expose its instruction counter).
    """

    name = "emu"

    def __init__(self, *, exact_steps: bool = False):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tlb_mode(ucc.UC_TLB_VIRTUAL)
        self.uc = uc
        self.raw = _Raw(uc)
        self.exact_steps = exact_steps
        self.ticks = 0  # Machine protocol: the helpers' clock
        self._bad_vaddr: int | None = None
        # a raw callback: a system's first touch of each page comes through
        # here (about 30 a case), and the binding's wrapper costs ~4x this
        self._tlb_cb = _ucpy.HOOK_TLB_FILL_CFUNC(self._on_tlb_fill)
        self.raw.hook(ucc.UC_HOOK_TLB_FILL, self._tlb_cb)
        uc.hook_add(ucc.UC_HOOK_INTR, self._on_intr)
        self._code_cb = _HOOK_CODE_CFUNC(self._on_code_raw)
        self._block_cb = _HOOK_CODE_CFUNC(self._on_block_raw)
        self._mem_cb = _ucpy.HOOK_MEM_ACCESS_CFUNC(self._on_protected_write_raw)
        self._mem_what: list[str] = []
        self._code_hooks: list[int] = []
        self._mem_hooks: list[int] = []
        self._block_hook: int | None = None
        self._block_sizes: dict[tuple[int, int], int] = {}
        self._exc: BaseException | None = None
        # harness-owned memory, mapped once
        # the host stack is backed by our own buffer: hooks read the tail-call
        # counter and return addresses from it without a call into Unicorn
        self._stack_buf = (ctypes.c_char * STACK_SIZE)()
        self._stack = memoryview(self._stack_buf).cast("B")
        uc.mem_map_ptr(STACK_BASE & VA_MASK, STACK_SIZE, R | W, ctypes.addressof(self._stack_buf))
        self.raw.stack = self._stack
        for base, size, perms in (
            # writable only for "test" programs (the conformance convention);
            # for real program types a write hook reports it as a violation
            (CTX_ADDR, PAGE, R | W),
            (GS_PAGE, PAGE, R),
            (SENTINEL, PAGE, R | X),
        ):
            uc.mem_map(base & VA_MASK, size, perms)
        self.raw.write(SENTINEL, b"\xcc" * PAGE)
        self._regions: dict[int, tuple[int, int]] = {}  # masked base -> (size, perms)
        self._lowest = _LOWEST_POINTER
        self._highest = _LOWEST_POINTER
        self._frame_ranges: list[tuple[int, int]] = []
        #: private-stack guards, (address, side, what), planted before every run
        self._guards: list[tuple[int, str, str]] = []
        self._native: NativeSystem | None = None
        self._case: Case | None = None
        self._lockstep = False
        self._code_dirty = True
        self._run: _Run | None = None

    # ---- public API --------------------------------------------------------

    def run_case(
        self,
        case: Case,
        native: NativeSystem,
        *,
        profile: Profile = LINUX,
        budget: int = 1_000_000,
        repatch: Callable[[str, int, str | None, str | None], list[tuple[int, bytes]]]
        | None = None,
        lockstep: bool = False,
    ) -> list[RunOutcome]:
        """Play the case's script; one ``RunOutcome`` per ``run`` step.

        ``native`` and ``case`` are treated as immutable once passed: memory
        and hooks are rebuilt only when a different object comes in."""
        new_memory = native is not self._native or case is not self._case
        new_hooks = new_memory or lockstep != self._lockstep
        self._native, self._case, self._lockstep, self.profile = native, case, lockstep, profile
        if new_memory:
            self._setup_memory(case, native)
            self._code_dirty = True
        if new_hooks:
            self._setup_hooks(case, native, lockstep)
            self._code_dirty = True
        self._reset_case(case, native, repatch)
        outcomes = []
        for step in case.script():
            if step.kind == "run":
                outcomes.append(self._run_prog(step.program, budget))
            elif step.kind in ("update", "delete"):
                self._update(step.kind, step.map, step.key, step.value, repatch)
            else:
                raise JitdiffError(f"unknown script step {step.kind!r}")
        return outcomes

    # ---- Machine protocol (for harness.reference.helpers models) ---------------------

    def read(self, addr: int, size: int) -> bytes:
        return self.raw.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self.raw.write(addr, data)

    def map_at(self, addr: int) -> MapState | None:
        return self._map_by_obj.get(addr)

    def value_addr(self, m: MapState, key: int) -> int:
        return self._map_addr[m.name] + self._layout.array_ptrs + key * elem_stride(m.value_size)

    # ---- setup: memory -------------------------------------------------------

    def _setup_memory(self, case: Case, native: NativeSystem) -> None:
        """Map exactly what the system needs (the value areas' extents come
        from the case's map definitions), write what never changes (stubs,
        prog objects) and install the write watch on protected ranges."""
        lay = self._layout = native.layout
        self._block_sizes.clear()  # same addresses, possibly different code
        want: dict[int, int] = {}  # masked page -> perms
        protected: list[tuple[int, int, str]] = []

        def need(addr: int, size: int, perms: int, what: str) -> None:
            lo, hi = addr & ~(PAGE - 1), (addr + max(size, 1) + PAGE - 1) & ~(PAGE - 1)
            if not (hi <= HARNESS_AREA or lo >= HARNESS_AREA_END):
                raise LayoutError(f"{what} at {addr:#x} overlaps the executor's own area")
            if not _canonical(lo) or not _canonical(hi - 1):
                raise LayoutError(f"{what} at {addr:#x} is not a canonical address")
            for p in range(lo, hi, PAGE):
                want[p & VA_MASK] = want.get(p & VA_MASK, 0) | perms

        funcs: list[_FuncInfo] = []
        for pname, prog in native.progs.items():
            for i, f in enumerate(prog.funcs):
                what = f"code of {pname}:{f.name}"
                need(f.address, len(f.code), R | X, what)
                protected.append((f.address, f.address + len(f.code), what))
                funcs.append(_FuncInfo(pname, i, f, f.address + len(f.code), f.name))
            if prog.prog_object:
                size = lay.prog_bpf_func + 8
                need(prog.prog_object, size, R, f"prog object of {pname}")
                protected.append((prog.prog_object, prog.prog_object + size, f"prog {pname}"))
        for addr, sym in native.symbols.items():
            need(addr, len(_stub_code(sym)), R | X, f"stub {sym}")
            protected.append((addr, addr + len(_stub_code(sym)), f"stub {sym}"))
        for name, addr in native.maps.items():
            mdef = case.maps.get(name)
            if mdef is None:
                need(addr, lay.array_ptrs, R | W, f"map {name}")
                continue
            if mdef.kind == "array":
                size = elem_stride(mdef.value_size) * mdef.max_entries
                protected.append((addr, addr + lay.array_ptrs, f"map {name} header"))
            else:
                size = 8 * mdef.max_entries
                protected.append((addr, addr + lay.array_ptrs + size, f"prog array {name}"))
            need(addr, lay.array_ptrs + size, R | W, f"map {name}")
        for addr, size in native.percpu_regions:
            need(addr, size, R | W, "per-cpu area")
        self._guards = []
        for k, (addr, size) in enumerate(native.private_stacks):
            top = addr + size - PRIV_STACK_GUARD_SZ
            for side, g in (("overflow", addr), ("underflow", top)):
                what = f"the {side} guard of private stack {k} ({g:#x})"
                self._guards.append((g, side, what))
                protected.append((g, g + PRIV_STACK_GUARD_SZ, what))
            # the rest of the area's last page belongs to no BPF frame: a
            # frame placed too low by more than a guard writes there
            end, page_end = addr + size, (addr + size + PAGE - 1) & ~(PAGE - 1)
            if page_end > end and not any(
                a < page_end and end < a + n for a, n in native.percpu_regions
            ):
                what = f"per-cpu memory after private stack {k}, which no BPF frame owns"
                protected.append((end, page_end, what))
        self._lowest = min([_LOWEST_POINTER] + [a for a, _ in native.percpu_regions])
        #: where BPF frames can live: the host stack and the private stacks
        self._frame_ranges = [(STACK_BASE, STACK_TOP)] + [
            (a, a + n) for a, n in native.percpu_regions
        ]
        if not any(p.type == "test" for p in case.programs.values()):
            protected.append((CTX_ADDR, CTX_ADDR + max(len(case.ctx), 1), "ctx"))
        self._apply_mapping(want)
        funcs.sort(key=lambda fi: fi.func.address)
        self._funcs = funcs
        self._func_starts = [fi.func.address for fi in funcs]
        self._fi_of = {(fi.prog, fi.index): fi for fi in funcs}
        for addr, sym in native.symbols.items():
            self.raw.write(addr, _stub_code(sym))
        for prog in native.progs.values():
            if prog.prog_object:
                self.raw.write(
                    prog.prog_object + lay.prog_bpf_func, prog.entry.to_bytes(8, "little")
                )
        self._set_mem_hooks(protected)

    def _apply_mapping(self, want: dict[int, int]) -> None:
        """Map exactly the pages in ``want`` (masked page -> perms), reusing
        regions that stay, and fill them: int3 for code, zeros for data."""
        regions: dict[int, tuple[int, int]] = {}
        last = None
        for p in sorted(want):
            perms = want[p]
            if last is not None:
                size, lperms = regions[last]
                if last + size == p and lperms == perms:
                    regions[last] = (size + PAGE, perms)
                    continue
            regions[p] = (PAGE, perms)
            last = p
        for base, (size, perms) in list(self._regions.items()):
            if regions.get(base) != (size, perms):
                self.uc.mem_unmap(base, size)
                del self._regions[base]
        for base, (size, perms) in regions.items():
            if base not in self._regions:
                self.uc.mem_map(base, size, perms)
                self._regions[base] = (size, perms)
            fill = b"\xcc" if perms & X else b"\0"
            self.uc.mem_write(base, fill * size)

    def _set_mem_hooks(self, ranges: list[tuple[int, int, str]]) -> None:
        # one ctypes callback for all of them; user_data indexes the name
        self.raw.unhook(self._mem_hooks)
        self._mem_what = [what for _, _, what in ranges]
        for k, (lo, hi, _) in enumerate(ranges):
            # memory hooks see the masked (physical) address
            self._mem_hooks.append(
                self.raw.hook(
                    ucc.UC_HOOK_MEM_WRITE,
                    self._mem_cb,
                    lo & VA_MASK,
                    (hi - 1) & VA_MASK,
                    ctypes.c_void_p(k),
                )  # fmt: skip
            )

    # ---- setup: hooks --------------------------------------------------------

    def _setup_hooks(self, case: Case, native: NativeSystem, lockstep: bool) -> None:
        self.raw.unhook(self._code_hooks)
        actions: dict[int, list[tuple]] = {}

        def add(addr: int, kind: int, *payload) -> None:
            actions.setdefault(addr, []).append((kind, *payload))

        calls = {  # per program, the pcs of its call instructions
            name: [pc for pc, i in enumerate(p.insns) if i.opcode == isa.JMP | isa.CALL]
            for name, p in case.programs.items()
        }
        for fi in self._funcs:
            prog = case.programs.get(fi.prog)
            f = fi.func
            fi.label = prog.function_name(f.start_pc) if prog else f.name
            if f.insn_addrs:
                fi.drop = _prologue_drop(f, f.address)
                if fi.index == 0:
                    fi.tc_drop = _prologue_drop(f, native.progs[fi.prog].tail_call_entry)
            add(f.address, A_ENTRY, fi)
            if f.private_stack and f.insn_addrs and f.insn_addrs[0] != f.address:
                add(f.insn_addrs[0], A_FP, fi)
            if prog is None:
                continue
            ia = f.insn_addrs
            start = f.start_pc
            n = min(len(ia), len(prog.insns) - start)
            if lockstep:
                for k in range(n):
                    if k == 0 or ia[k] != ia[k - 1]:
                        add(ia[k], A_STEP, fi, start + k)
            pcs = calls[fi.prog]
            for pc in pcs[bisect_left(pcs, start) : bisect_left(pcs, start + n)]:
                k = pc - start
                if k + 1 >= len(ia):
                    continue
                insn = prog.insns[pc]
                nxt = ia[k + 1]
                if insn.src == isa.PSEUDO_CALL:
                    add(ia[k], A_CALL, fi, pc, pc + 1 + insn.imm, nxt)
                    add(nxt, A_RET_SITE)
                elif insn.src == 0 and insn.imm == TAIL_CALL:
                    add(ia[k], A_TAIL, fi, pc, nxt)
                    add(nxt, A_TC_FALL)
                elif insn.src == 0 and not native.helpers_never_inlined:
                    add(ia[k], A_HELPER, fi, pc, insn.imm, nxt)
                    add(nxt, A_HELPER_END)
        for name, p in native.progs.items():
            add(p.tail_call_entry, A_TC_ENTRY, name)
        for addr, sym in native.symbols.items():
            if not _stub_is_plain(sym):
                add(addr, A_STUB, sym)
        handlers = {
            A_ENTRY: self._on_entry, A_TC_ENTRY: self._on_tc_entry,
            A_RET_SITE: self._on_ret_site, A_TC_FALL: self._on_tc_fall,
            A_HELPER_END: self._on_helper_end, A_FP: self._on_fp, A_STEP: self._on_step,
            A_CALL: self._on_call, A_TAIL: self._on_tail, A_HELPER: self._on_helper_start,
            A_STUB: self._on_stub,
        }  # fmt: skip
        self._actions = {
            a: tuple((handlers[t[0]], t[1:]) for t in sorted(acts, key=lambda t: t[0]))
            for a, acts in actions.items()
        }
        self._tail_landings = {
            a for a, acts in actions.items() if any(t[0] in (A_ENTRY, A_TC_ENTRY) for t in acts)
        }
        for addr in self._actions:
            self._code_hooks.append(self.raw.hook(ucc.UC_HOOK_CODE, self._code_cb, addr, addr))
        if self.exact_steps and self._block_hook is None:
            self._block_hook = self.raw.hook(ucc.UC_HOOK_BLOCK, self._block_cb)

    # ---- per case: contents --------------------------------------------------

    def _reset_case(self, case: Case, native: NativeSystem, repatch) -> None:
        """Code as imaged, maps as initialised, ctx; flush translations."""
        lay = native.layout
        self._maps: dict[str, MapState] = {}
        self._map_addr: dict[str, int] = {}
        self._map_by_obj: dict[int, MapState] = {}
        self._slots: dict[str, dict[int, str]] = {}
        spans = []
        if self._code_dirty:
            for fi in self._funcs:
                self.raw.write(fi.func.address, fi.func.code)
        for name, mdef in case.maps.items():
            addr = native.maps.get(name)
            if addr is None:
                continue
            st = MapState(name, mdef.kind, mdef.max_entries, mdef.value_size)
            self._maps[name], self._map_addr[name], self._map_by_obj[addr] = st, addr, st
            hdr = bytearray(lay.array_ptrs)
            kind = 3 if mdef.kind == "prog_array" else 2  # BPF_MAP_TYPE_PROG_ARRAY / ARRAY
            hdr[lay.map_type : lay.map_type + 4] = kind.to_bytes(4, "little")
            hdr[lay.array_max_entries : lay.array_max_entries + 4] = mdef.max_entries.to_bytes(
                4, "little"
            )
            self.raw.write(addr, bytes(hdr))
            if mdef.kind == "array":
                stride = elem_stride(mdef.value_size)
                data = bytearray(stride * mdef.max_entries)
                for key, val in mdef.init.items():
                    if 0 <= key < mdef.max_entries:
                        v = bytes(val)[: mdef.value_size]
                        data[key * stride : key * stride + len(v)] = v
                self.raw.write(addr + lay.array_ptrs, bytes(data))
                spans.append(MapSpan(name, addr, addr + lay.array_ptrs, len(data)))
            else:
                self._slots[name] = {}
                self.raw.write(addr + lay.array_ptrs, bytes(8 * mdef.max_entries))
                for key, prog in mdef.init.items():
                    if isinstance(prog, str):
                        self._set_slot(name, key, prog, repatch, initial=True)
                spans.append(MapSpan(name, addr))
        self.space = AddressSpace(CTX_ADDR, len(case.ctx), tuple(spans), self.profile.stack_size)
        self._highest = max(
            [STACK_TOP, CTX_ADDR + len(case.ctx)]
            + [max(m.obj, m.values + m.values_size) for m in spans]
            + [a + n for a, n in native.percpu_regions]
        )
        self.raw.write(CTX_ADDR, bytes(case.ctx)[:PAGE].ljust(PAGE, b"\0"))
        if self._code_dirty:
            # new code, patched code or new hooks: translations are stale
            self.uc.ctl_flush_tb()
            self._code_dirty = False

    def _set_slot(self, mname: str, key: int, prog: str | None, repatch, *, initial=False) -> None:
        mdef = self._case.maps[mname]
        if not 0 <= key < mdef.max_entries:
            return  # the kernel refuses (E2BIG); nothing changes
        native = self._native
        slots = self._slots[mname]
        old = slots.get(key)
        obj = 0
        if prog is not None:
            p = native.progs.get(prog)
            obj = p.prog_object if p else 0
            slots[key] = prog
        else:
            slots.pop(key, None)
        self.raw.write(
            self._map_addr[mname] + self._layout.array_ptrs + 8 * key, obj.to_bytes(8, "little")
        )
        if repatch is not None:
            # Images reflect the maps' initial contents (the kernel dumps the live
            # text after loading); re-applying the initial patches is a no-op then
            # and makes a fresh image right otherwise.
            for addr, data in repatch(mname, key, None if initial else old, prog):
                if self.raw.read(addr, len(data)) != bytes(data):
                    self.raw.write(addr, data)
                    self._code_dirty = True

    def _update(self, kind: str, mname: str, key: int, value, repatch) -> None:
        mdef = self._case.maps[mname]
        addr = self._map_addr.get(mname)
        if addr is None:
            return
        if mdef.kind == "prog_array":
            self._set_slot(mname, key, value if kind == "update" else None, repatch)
            if self._code_dirty:
                self.uc.ctl_flush_tb()
        elif kind == "update" and 0 <= key < mdef.max_entries:
            v = bytes(value)[: mdef.value_size].ljust(mdef.value_size, b"\0")
            self.raw.write(addr + self._layout.array_ptrs + key * elem_stride(mdef.value_size), v)

    def map_contents(self) -> dict[str, bytes]:
        out = {}
        for name, st in self._maps.items():
            if st.kind != "array":
                continue
            stride = elem_stride(st.value_size)
            raw = self.raw.read(
                self._map_addr[name] + self._layout.array_ptrs, stride * st.max_entries
            )
            out[name] = b"".join(
                raw[k * stride : k * stride + st.value_size] for k in range(st.max_entries)
            )
        return out

    # ---- one run -------------------------------------------------------------

    def _run_prog(self, entry: str, budget: int) -> RunOutcome:
        native = self._native
        prog = native.progs.get(entry)
        if prog is None:
            return RunOutcome(Status.UNSUPPORTED, detail=f"no native image for program {entry}")
        self.ticks = 0
        self._bad_vaddr = None
        self._exc = None
        raw = self.raw
        ctypes.memset(self._stack_buf, 0, STACK_SIZE - 8)
        self._stack[STACK_SIZE - 8 :] = SENTINEL.to_bytes(8, "little")
        for addr, size in native.percpu_regions:
            raw.write(addr, bytes(size))
        for addr, _, _ in self._guards:  # priv_stack_init_guard()
            raw.write(addr, _GUARD)
        raw.write(GS_SLOT, bytes(8))
        regs = {r: _ENTRY_GARBAGE | (i << 8) for i, r in enumerate(_REG_NAMES[:-1])}
        regs.update(CALLEE_SAVED_SENTINELS)
        regs["rdi"] = CTX_ADDR
        if self._case.programs[entry].type == "test":
            # bpf_conformance: r1 = a fresh copy of the memory, r2 = its length
            raw.write(CTX_ADDR, bytes(self._case.ctx))
            regs["rsi"] = len(self._case.ctx)
        regs["rsp"] = STACK_TOP - 8
        raw.set_regs(regs)
        # gs:[this_cpu_off] must read GS_SLOT: base + this_cpu_off == GS_SLOT
        self.uc.reg_write(x86.UC_X86_REG_GS_BASE, (GS_SLOT - native.this_cpu_off) & U64)
        saved = tuple(CALLEE_SAVED_SENTINELS[r] for r in CALLEE_SAVED)
        run = self._run = _Run(entry)
        run.pending_call = _CallRec(None, SENTINEL, STACK_TOP, saved)
        err = raw.emu_start(
            raw.h,
            ctypes.c_uint64(prog.entry),
            ctypes.c_uint64(SENTINEL),
            ctypes.c_uint64(0),
            ctypes.c_size_t(max(budget, 1)),
        )
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc
        regs_now = raw.regs()
        rip = regs_now[RIP]
        out = RunOutcome(Status.OK, tail_calls=run.tail_calls, events=run.events)
        out.native_stack = max(0, STACK_TOP - run.low_rsp) if run.low_rsp < STACK_TOP else 0
        out.violations = run.violations
        if run.stop is not None:
            out.status, out.where, out.detail = run.stop
        elif err:
            out.status = Status.TRAPPED
            out.where = self._where_of_fault(rip, regs_now)
            name = _UC_ERR_NAMES.get(err, str(err))
            out.detail = f"{name}: {UcError(err)} at {rip:#x}"
            if regs_now[RSP] < STACK_BASE + 256:
                # the guard page below the stack: the kernel's THREAD_SIZE
                # stack would have overflowed too (a guard-page oops)
                out.detail = (
                    f"kernel stack overflow: more than {STACK_SIZE} bytes of stack "
                    f"({name} at {rip:#x}, rsp {regs_now[RSP]:#x})"
                )
            if self._bad_vaddr is not None:
                out.detail += f" (non-canonical address {self._bad_vaddr:#x})"
        elif rip == SENTINEL:
            self._exit(run, regs_now, out)
        else:
            out.status = Status.BUDGET
            out.where = self._locate(rip, exact=True)
            out.detail = f"more than {budget} native instructions"
            out.steps = budget
        if out.status is not Status.OK and run.pending_tail is not None:
            t = run.pending_tail
            out.detail += f" (during a tail call attempt at {t.where}: index {t.index})"
        if self.exact_steps:
            out.steps = run.blocks_insns
        self._check_guards(run)
        if out.status is Status.OK:
            self._check_below_frames(run)
        try:
            out.maps = self.map_contents()
        except _Fault:  # pragma: no cover - maps are always mapped
            out.maps = {}
        self._run = None
        return out

    def _exit(self, run: _Run, regs: list[int], out: RunOutcome) -> None:
        where = Where(run.entry, "main", 0)
        rax = regs[RAX]
        if len(run.frames) > 1:
            out.violations.append(
                Violation(
                    "host_state",
                    where,
                    f"returned to the caller of {run.entry} with {len(run.frames)} BPF frames "
                    f"active (innermost {run.frames[-1].prog}:{run.frames[-1].fi.label})",
                )
            )
        self._check_host(run, where, regs, STACK_TOP, tuple(CALLEE_SAVED_SENTINELS.values()))
        run.events.append(Event("exit", where, (rax,)))
        out.retval = rax

    def _check_guards(self, run: _Run) -> None:
        """priv_stack_check_guard() after every run; a guard a write hook
        already reported (with the writing instruction) is not repeated, so
        this catches what bypasses the hooks (helper models writing memory)."""
        for addr, side, what in self._guards:
            got = self.raw.read(addr, PRIV_STACK_GUARD_SZ)
            if got != _GUARD and what not in run.guards_hit:
                run.violations.append(
                    Violation(
                        "stack",
                        Where(run.entry, "main", 0),
                        f"private stack {side} guard clobbered: {what} is "
                        f"{int.from_bytes(got, 'little'):#x} after the run, "
                        f"not {PRIV_STACK_GUARD_VAL:#x}",
                    )
                )

    def _check_below_frames(self, run: _Run) -> None:
        """No write below the deepest frame, into host stack no frame owns.

        Below the lowest rsp a function body ran at, only two more slots are
        ever written: r9 pushed and a return address around a call, or rax
        and rdx pushed around a division (``_STACK_SLACK``). The stack is
        zeroed before the run, so anything non-zero deeper was written by
        something else: a frame placed too low, a write below rsp. A write of
        zeros there stays unseen (a write hook over the stack would see it,
        but runs Python for every push: it doubled the emulation time)."""
        if not STACK_BASE < run.low_body < STACK_TOP:
            return  # no frame, or one of unknown extent (low_body -1)
        floor = run.low_body - _STACK_SLACK - STACK_BASE
        if floor <= 0:
            return  # at the guard page: the overflow is reported as such
        dirty = len(bytes(self._stack[:floor]).rstrip(b"\0"))
        if dirty:
            at = STACK_BASE + dirty - 1
            run.violations.append(
                Violation(
                    "stack",
                    Where(run.entry, "main", 0),
                    f"write below every frame: host stack byte {at:#x} is set, "
                    f"{run.low_body - at} bytes below the lowest rsp of a function body "
                    f"({run.low_body:#x})",
                )
            )

    def _check_host(self, run: _Run, where, regs, rsp: int, saved: tuple[int, ...]) -> None:
        if regs[RSP] == rsp and _CSR_GET(regs) == saved:
            return  # the common case, in one comparison
        if regs[RSP] != rsp:
            run.violations.append(
                Violation(
                    "host_state",
                    where,
                    f"rsp is {regs[RSP]:#x}, expected {rsp:#x} ({regs[RSP] - rsp:+d})",
                )
            )
        for name, idx, want in zip(CALLEE_SAVED, _CSR_IDX, saved, strict=True):
            if regs[idx] != want:
                run.violations.append(
                    Violation(
                        "host_state",
                        where,
                        f"callee-saved {name} is {regs[idx]:#x}, expected {want:#x}",
                    )
                )

    # ---- locating addresses ------------------------------------------------

    def _func_at(self, addr: int) -> _FuncInfo | None:
        i = bisect_right(self._func_starts, addr) - 1
        if i < 0:
            return None
        fi = self._funcs[i]
        return fi if addr < fi.end else None

    def _locate(self, addr: int, *, exact: bool = False) -> Where | None:
        """Where(prog, func, BPF pc) of a host address inside some function;
        ``exact`` keeps the address in the Where (for traps and violations)."""
        fi = self._func_at(addr)
        if fi is None:
            return None
        ia = fi.func.insn_addrs
        k = max(bisect_right(ia, addr) - 1, 0)
        # ld_imm64's second slot repeats the first's address: the first is
        # meant. A slot the JIT emits nothing for (le64, mov r1, r1) also
        # shares its successor's address, and there the successor is meant
        if k and ia[k - 1] == ia[k]:
            pc = fi.func.start_pc + k - 1
            if self._case.programs[fi.prog].insns[pc].opcode == isa.LD_IMM64:
                k -= 1
        return Where(fi.prog, fi.label, fi.func.start_pc + k, addr if exact else None)

    def _where_of_fault(self, rip: int, regs: list[int]) -> Where | None:
        w = self._locate(rip, exact=True)
        if w is not None:
            return w
        # rip outside the code (a bad jump or call): blame the current frame,
        # at the call insn when the top of stack is a return address into it
        run = self._run
        frame = run.frames[-1] if run and run.frames else None
        try:
            ret = self.raw.u64(regs[RSP])
        except _Fault:
            ret = None
        if ret is not None:
            w = self._locate(ret - 1)
            if w is not None and (frame is None or frame.fi is self._func_at(ret - 1)):
                return Where(w.prog, w.func, w.pc, rip)
        if frame is not None:
            return Where(frame.prog, frame.fi.label, frame.fi.func.start_pc, rip)
        return None

    # ---- hooks -------------------------------------------------------------

    def _on_tlb_fill(self, handle, vaddr, access, entry, user_data) -> bool:
        if not _canonical(vaddr):
            self._bad_vaddr = vaddr
            return False
        e = entry.contents
        e.paddr = vaddr & VA_MASK
        e.perms = ucc.UC_PROT_ALL  # the mapping's own perms still apply
        return True

    def _on_intr(self, uc, intno, user_data) -> None:
        run = self._run
        if run is not None and run.stop is None:
            regs = self.raw.regs()
            rip = regs[RIP]
            what = "int3: executed a filler byte (outside any code)" if intno == 3 else ""
            run.stop = (
                Status.TRAPPED,
                self._where_of_fault(rip - 1 if intno == 3 else rip, regs),
                f"UC_ERR_EXCEPTION: interrupt {intno} at {rip:#x} {what}".rstrip(),
            )
        uc.emu_stop()

    def _defer(self, e: BaseException) -> None:
        """An exception in a callback cannot cross Unicorn: stop, and let
        _run_prog raise it once emu_start returns."""
        if self._exc is None:
            self._exc = e
        self.raw.emu_stop(self.raw.h)

    def _on_protected_write_raw(self, handle, access, address, size, value, user_data) -> None:
        try:
            self._on_protected_write(address, size, self._mem_what[user_data or 0])
        except BaseException as e:
            self._defer(e)

    def _on_protected_write(self, address: int, size: int, what: str) -> None:
        run = self._run
        if run is None or run.mem_violations >= _MAX_MEM_VIOLATIONS:
            return
        run.mem_violations += 1
        rip = self.raw.regs()[RIP]
        where = self._locate(rip, exact=True)
        detail = f"write of {size} bytes to {what} at {address:#x} (physical) by {rip:#x}"
        for _, side, guard in self._guards:
            if guard == what:  # the kind first: it is the divergence's signature
                run.guards_hit.add(what)
                detail = f"private stack {side} guard clobbered: {detail}"
                run.violations.append(Violation("stack", where, detail))
                return
        run.violations.append(Violation("memory", where, detail))

    def _on_block_raw(self, handle, address, size, user_data) -> None:
        run = self._run
        if run is None:
            return
        key = (address, size)
        n = self._block_sizes.get(key)
        if n is None:
            n = self._block_sizes[key] = _count_insns(self.raw.read(address, size), address)
        run.blocks_insns += n

    def _on_code_raw(self, handle, address, size, user_data) -> None:
        try:
            self._on_code(address)
        except BaseException as e:
            self._defer(e)

    def _stop(self, status: Status, where: Where | None, detail: str) -> None:
        run = self._run
        if run.stop is None:
            run.stop = (status, where, detail)
        self.raw.emu_stop(self.raw.h)

    def _on_code(self, address: int) -> None:
        run = self._run
        acts = self._actions.get(address)
        if run is None or acts is None or run.stop is not None:
            return
        regs = self.raw.regs()
        if run.pending_tail is not None and address not in self._tail_landings:
            if address != run.pending_tail.fall:
                self._tail_landed_elsewhere(run, regs, address)
        for fn, args in acts:
            fn(run, regs, address, *args)
            if run.stop is not None:
                return

    def _on_tc_fall(self, run: _Run, regs, address: int) -> None:
        t = run.pending_tail
        if t is not None and t.fall == address:
            run.pending_tail = None
            run.events.append(Event("tail_call", t.where, (t.index, t.counter, None)))

    def _on_helper_start(self, run: _Run, regs, address: int, fi, pc, hid, end) -> None:
        args = (regs[RDI], regs[RSI], regs[RDX], regs[RCX], regs[R8])
        run.pending_helper = _HelperAttempt(Where(fi.prog, fi.label, pc), hid, args, end)

    # ---- frames ------------------------------------------------------------

    def _fps(self, run: _Run) -> list[int | None]:
        return [f.fp for f in run.frames]

    def _syms(self, run: _Run, values: tuple[int, ...]) -> tuple:
        """``_sym`` of each value; the tuple itself when all are scalars."""
        lo, hi = self._lowest, self._highest
        for v in values:
            if lo <= v <= hi:
                return tuple(self._sym(run, v) for v in values)
        return values

    def _sym(self, run: _Run, value: int):
        if value < self._lowest or value > self._highest:
            # scalars, the common case (negative ones included): outside
            # every region a value can be named by
            return value
        # only a value inside a stack can name a frame: skip the frame walk
        # (deep after tail calls from subprograms) for map and ctx pointers
        in_stack = any(lo <= value <= hi for lo, hi in self._frame_ranges)
        return symbolize(value, self.space, self._fps(run) if in_stack else ())

    def _refresh_fp(self, run: _Run, regs: list[int], address: int | None = None) -> None:
        """Private-stack frames keep BPF r10 in r9; it is valid at every hook
        inside the body (it is pushed, not clobbered, around calls), but not
        at the function's first byte, before the prologue."""
        if run.frames:
            top = run.frames[-1]
            if top.fi.func.private_stack and address != top.fi.func.address:
                top.fp = regs[R9]

    def _on_fp(self, run: _Run, regs, address: int, fi: _FuncInfo) -> None:
        self._refresh_fp(run, regs, address)

    def _on_entry(self, run: _Run, regs: list[int], address: int, fi: _FuncInfo) -> None:
        rsp = regs[RSP]
        run.low_rsp = min(run.low_rsp, rsp)
        if fi.drop is not None:
            run.low_body = min(run.low_body, rsp - fi.drop)
        else:
            # a frame of unknown extent: no floor this run. An exception
            # callback is one: it sets rsp from the unwound frame and then
            # allocates its own stack below it (by `sub rsp` before or after
            # its first instruction's line-info address, model and kernel differ)
            run.low_body = -1
        if run.pending_call is not None:
            rec, run.pending_call = run.pending_call, None
            rec.call_sp = rsp + 8
            if rec.rsp is None:
                # private-stack callers push r9 around the call
                rec.rsp = rsp + 8 + (8 if rec.caller_private else 0)
                rec.saved = _CSR_GET(regs)
            fp = None if fi.func.private_stack else rsp - 8
            run.frames.append(_Frame(fi.prog, fi, rec, rsp - 8, fp))
            return
        if run.expect_cb == fi.func.address:
            run.expect_cb = None
            return
        if run.pending_tail is not None and fi.index == 0:
            # a tail call that skipped no prologue at all (entry offset 0)
            self._tail_taken(run, regs, fi.prog, rsp - 8, fi.func.address)
            return
        where = Where(fi.prog, fi.label, fi.func.start_pc, fi.func.address)
        run.violations.append(
            Violation("control_flow", where, f"{fi.prog}:{fi.label} entered without a call")
        )
        if run.frames:
            top = run.frames[-1]
            run.frames[-1] = _Frame(fi.prog, fi, top.call, rsp - 8, rsp - 8)

    def _on_tc_entry(self, run: _Run, regs: list[int], address: int, prog: str) -> None:
        if run.pending_tail is None and run.frames and run.frames[-1].fi is self._fi_of[(prog, 0)]:
            return  # the normal path: the prologue falls through the tail-call entry
        # tail calls enter after `push rbp; mov rbp, rsp`: rbp is the caller's
        # frame base, which the target keeps (rsp == rbp here)
        fi = self._fi_of[(prog, 0)]
        if fi.tc_drop is not None:
            run.low_body = min(run.low_body, regs[RSP] - fi.tc_drop)
        else:
            run.low_body = -1
        self._tail_taken(run, regs, prog, regs[RBP], None)

    def _tail_taken(
        self, run, regs, prog: str, rbp: int, odd_entry: int | None, fi: _FuncInfo | None = None
    ) -> None:
        t, run.pending_tail = run.pending_tail, None
        if t is None:
            where = Where(prog, "main", 0, self._native.progs[prog].tail_call_entry)
            run.violations.append(
                Violation(
                    "control_flow",
                    where,
                    f"{prog} entered at its tail-call entry without a tail call",
                )
            )
        else:
            run.tail_calls += 1
            run.events.append(Event("tail_call", t.where, (t.index, t.counter, prog)))
            if regs[RDI] != t.rdi:
                run.violations.append(
                    Violation(
                        "registers",
                        t.where,
                        f"r1 at the entry of {prog} is {regs[RDI]:#x}, "
                        f"the caller passed {t.rdi:#x}",
                    )
                )
            if odd_entry is not None:
                run.violations.append(
                    Violation(
                        "control_flow",
                        t.where,
                        f"tail call entered {prog} at {odd_entry:#x}, not at its tail-call entry "
                        f"{self._native.progs[prog].tail_call_entry:#x}",
                    )
                )
        fi = fi or self._fi_of[(prog, 0)]
        if run.frames:
            call = run.frames[-1].call
            run.frames[-1] = _Frame(prog, fi, call, rbp, None if fi.func.private_stack else rbp)

    def _tail_landed_elsewhere(self, run: _Run, regs: list[int], address: int) -> None:
        """A tail call reached neither a tail-call entry nor its fall-through:
        it entered its target at a wrong offset (or went astray)."""
        fi = self._func_at(address)
        if fi is None:  # a stub: judge by the return address
            try:
                fi = self._func_at(self.raw.u64(regs[RSP]) - 1)
            except _Fault:
                fi = None
        if fi is None or fi is run.pending_tail.fi:
            return
        self._tail_taken(run, regs, fi.prog, regs[RBP], address, fi)

    def _on_call(self, run: _Run, regs, address, fi: _FuncInfo, pc, callee, ret_site) -> None:
        self._refresh_fp(run, regs, address)
        where = Where(fi.prog, fi.label, pc)
        prog = self._case.programs[fi.prog]
        args = self._syms(run, (regs[RDI], regs[RSI], regs[RDX], regs[RCX], regs[R8]))
        run.events.append(Event("call", where, (prog.function_name(callee), args)))
        if address == fi.func.address:  # kernel line info: insn 0 is the function start
            rec = _CallRec(where, ret_site, None, None, fi.func.private_stack)
        else:
            rec = _CallRec(where, ret_site, regs[RSP], _CSR_GET(regs))
        run.pending_call = rec

    def _on_ret_site(self, run: _Run, regs, address: int) -> None:
        if len(run.frames) < 2:
            return
        top, caller = run.frames[-1], run.frames[-2]
        rec = top.call
        if rec.ret_site != address:
            return
        rsp = regs[RSP]
        if rsp < rec.rsp and top.fi is caller.fi:
            # the same code running one frame deeper (a subprogram tail-called
            # its caller's program), not a return
            return
        run.frames.pop()
        self._refresh_fp(run, regs, address)
        self._check_host(run, rec.where, regs, rec.rsp, rec.saved)
        r0 = self._sym(run, regs[RAX])
        preserved = self._syms(run, (regs[RBX], regs[R13], regs[R14], regs[R15]))
        run.events.append(Event("ret", rec.where, (r0, preserved)))

    def _on_tail(self, run: _Run, regs, address: int, fi: _FuncInfo, pc: int, fall: int) -> None:
        if run.pending_tail is not None:
            # the previous attempt reached neither an entry nor its fall-through
            # before this one: it went into this program at a wrong offset
            self._tail_taken(run, regs, fi.prog, regs[RBP], address, fi)
        where = Where(fi.prog, fi.label, pc)
        # 6.18: [rbp - round_up(depth, 8) - 16] holds a pointer to the one
        # counter the whole call hierarchy shares; 5.10 kept a dword count
        lay = self._native.layout
        slot = regs[RBP] - elem_stride(fi.func.stack_depth) + lay.counter_slot
        try:
            if lay.counter_is_pointer:
                counter = self.raw.u64(self.raw.u64(slot))
            else:
                counter = self.raw.u64(slot) & U32
        except _Fault:
            counter = None
        limit = self.profile.max_tail_calls
        if counter is not None and counter > limit:
            run.violations.append(
                Violation("tail_calls", where, f"tail-call counter is {counter}, above {limit}")
            )
        run.pending_tail = _TailAttempt(where, regs[RDX] & U32, counter, fall, regs[RDI], fi)

    def _on_helper_end(self, run: _Run, regs, address: int) -> None:
        h = run.pending_helper
        if h is None or h.end != address:
            return
        # reached the next insn without calling a stub: the JIT inlined the
        # helper (array lookups, smp_processor_id); report it like a call
        run.pending_helper = None
        helper = HELPERS.get(h.helper_id)
        if helper is None or helper.model is None:
            return
        nargs = helper.nargs
        args = h.args[:nargs] + (0,) * (5 - nargs)
        try:
            _, read = call_helper(_ReadOnly(self), h.helper_id, args)
        except _Fault:
            read = b""
        self._refresh_fp(run, regs, address)
        sargs = self._syms(run, args[:nargs])
        run.events.append(
            Event("helper", h.where, (h.helper_id, sargs, self._sym(run, regs[RAX]), read))
        )

    def _on_step(self, run: _Run, regs, address: int, fi: _FuncInfo, pc: int) -> None:
        self._refresh_fp(run, regs, address)
        fp = run.frames[-1].fp if run.frames else None
        vals = (
            regs[RAX], regs[RDI], regs[RSI], regs[RDX], regs[RCX], regs[R8],
            regs[RBX], regs[R13], regs[R14], regs[R15],
        )  # fmt: skip
        fps = self._fps(run)
        out = tuple(symbolize(v, self.space, fps) for v in vals) + (symbolize(fp, self.space, fps),)
        run.events.append(Event("step", Where(fi.prog, fi.label, pc), out))

    # ---- stubs -------------------------------------------------------------

    def _stub_where(self, regs) -> Where | None:
        try:
            return self._locate(self.raw.u64(regs[RSP]) - 1)
        except _Fault:
            return None

    def _on_stub(self, run: _Run, regs, address: int, sym: str) -> None:
        kind, _, arg = sym.partition(":")
        where = self._stub_where(regs)
        if kind == "helper" and arg.isdigit():
            self._on_helper_stub(run, regs, int(arg), where, address)
        elif kind == "kfunc" and arg == str(BPF_THROW):
            self._on_throw(run, regs, where)
        else:
            self._stop(Status.TRAPPED, where, f"unmodelled call to {sym} at {address:#x}")

    def _on_helper_stub(self, run: _Run, regs, hid: int, where, address: int) -> None:
        helper = HELPERS.get(hid)
        if helper is None or helper.model is None:
            self._stop(Status.TRAPPED, where, f"unmodelled call to helper:{hid} at {address:#x}")
            return
        run.pending_helper = None
        self._refresh_fp(run, regs, address)
        nargs = helper.nargs
        args = (regs[RDI], regs[RSI], regs[RDX], regs[RCX], regs[R8])[:nargs]
        args += (0,) * (5 - nargs)
        try:
            r0, read = call_helper(self, hid, args)
        except _Fault as e:
            self._stop(Status.TRAPPED, where, f"helper {helper.name} faulted: {e}")
            return
        sargs = self._syms(run, args[:nargs])
        if where is None:
            where = Where(run.frames[-1].prog, run.frames[-1].fi.label, -1) if run.frames else None
        run.events.append(Event("helper", where, (hid, sargs, self._sym(run, r0), read)))
        new = {
            r: _CLOBBER_GARBAGE | (i << 8) | (self.ticks & 0xFF) for i, r in enumerate(_CLOBBERED)
        }
        new["rax"] = r0
        self.raw.set_regs(new)

    def _on_throw(self, run: _Run, regs, where) -> None:
        cookie = regs[RDI]
        run.events.append(Event("throw", where, (cookie,)))
        # the boundary: the innermost frame running some program's main
        b = len(run.frames) - 1
        while b >= 0 and run.frames[b].fi.index != 0:
            b -= 1
        if b < 0:
            self._stop(Status.TRAPPED, where, "bpf_throw with no program main on the stack")
            return
        boundary = run.frames[b]
        prog = self._native.progs[boundary.prog]
        if prog.exception_callback is None:
            self._stop(
                Status.TRAPPED,
                where,
                f"bpf_throw in {boundary.prog}, whose image has no exception callback "
                "(the kernel always adds one)",
            )
            return
        # the boundary's rsp at its call site: this stub's caller's, or the
        # one recorded when the next frame was entered
        sp = regs[RSP] + 8 if b == len(run.frames) - 1 else run.frames[b + 1].call.call_sp
        cb = self._fi_of[(boundary.prog, prog.exception_callback)]
        del run.frames[b + 1 :]
        run.frames[b] = _Frame(boundary.prog, cb, boundary.call, boundary.rbp, boundary.fp)
        run.pending_call = run.pending_tail = run.pending_helper = None
        run.expect_cb = cb.func.address
        new = {r: _CLOBBER_GARBAGE | (i << 8) for i, r in enumerate(_CLOBBERED)}
        new.update(rdi=cookie, rsi=sp, rdx=boundary.rbp, rax=_CLOBBER_GARBAGE)
        self.raw.set_regs(new)
        # only a plain write of rip makes Unicorn leave the block and go there
        self.raw.set_reg(x86.UC_X86_REG_RIP, cb.func.address)


class _ReadOnly:
    """A Machine for replaying an inlined helper's model just to learn what
    it reads: reads go to memory, writes are refused."""

    def __init__(self, ex: Executor):
        self._ex = ex
        self.ticks = ex.ticks

    def read(self, addr: int, size: int) -> bytes:
        return self._ex.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        raise _Fault("an inlined helper's model tried to write")

    def map_at(self, addr: int):
        return self._ex.map_at(addr)

    def value_addr(self, m, key):
        return self._ex.value_addr(m, key)


# ---------------------------------------------------------------------------
# Stubs


def _prologue_drop(f: NativeFunc, start: int) -> int | None:
    """How far rsp moves down from ``start`` to the function's first BPF
    instruction, following the prologue's jumps (the tail-call counter set-up
    branches); None if the prologue sets rsp outright (an exception callback)
    or holds an instruction no 6.x x86-64 prologue has. Memoised by bytes."""
    body = f.insn_addrs[0] - f.address
    if body <= 0:
        return None  # no prologue told apart from the body: extent unknown
    key = (bytes(f.code[:body]), start - f.address)
    drop = _DROPS.get(key, -1)
    if drop == -1:
        if len(_DROPS) >= 4096:  # kernel images: per-cpu addresses differ per load
            _DROPS.clear()
        drop = _DROPS[key] = _walk_prologue(*key)
    return drop


#: the instructions of emit_prologue / emit_priv_frame_ptr: leading bytes ->
#: (length, how far rsp moves down); "jmp" for jmp rel8, "imm32" for sub rsp
_PROLOGUE_INSNS: dict[bytes, tuple[int, int | str]] = {
    **{
        nop: (len(nop), 0)
        for nop in (
            b"\x90",
            b"\x66\x90",
            b"\x0f\x1f\x00",
            b"\x0f\x1f\x40\x00",
            b"\x0f\x1f\x44\x00\x00",
            b"\x66\x0f\x1f\x44\x00\x00",
            b"\x0f\x1f\x80\x00\x00\x00\x00",
            b"\x0f\x1f\x84\x00\x00\x00\x00\x00",
            b"\xf3\x0f\x1e\xfa",  # endbr64
        )
    },
    b"\x48\x31\xc0": (3, 0),
    b"\x31\xc0": (2, 0),  # xor rax, rax / eax, eax
    b"\x55": (1, 8),
    b"\x50": (1, 8),
    b"\x53": (1, 8),  # push rbp / rax / rbx
    b"\x41\x54": (2, 8),
    b"\x41\x55": (2, 8),
    b"\x41\x56": (2, 8),
    b"\x41\x57": (2, 8),
    b"\x48\x89\xe5": (3, 0),
    b"\x48\x89\xe0": (3, 0),  # mov rbp, rsp / rax, rsp
    b"\x48\x81\xec": (7, "imm32"),  # sub rsp, imm32
    b"\x48\x83\xf8": (4, 0),  # cmp rax, imm8
    b"\x77": (2, 0),  # ja rel8: both ways meet again
    b"\xeb": (2, "jmp"),
    b"\x49\xb9": (10, 0),  # movabs r9, imm64
    b"\x65\x4c\x03\x0c\x25": (9, 0),  # add r9, gs:[disp32]
}
_PROLOGUE_LEADS = sorted({len(k) for k in _PROLOGUE_INSNS}, reverse=True)


def _walk_prologue(code: bytes, start: int) -> int | None:
    pc, drop = start, 0
    for _ in range(64):
        if pc == len(code):
            return drop
        for n in _PROLOGUE_LEADS:
            hit = _PROLOGUE_INSNS.get(code[pc : pc + n])
            if hit is not None:
                break
        else:
            return None
        size, down = hit
        if down == "imm32":
            drop += int.from_bytes(code[pc + 3 : pc + 7], "little", signed=True)
        elif down == "jmp":
            pc += int.from_bytes(code[pc + 1 : pc + 2], "little", signed=True)
        else:
            drop += down
        pc += size
    return None


_DROPS: dict[tuple[bytes, int], int | None] = {}


def _stub_is_plain(sym: str) -> bool:
    return sym == "return_thunk" or (sym.startswith("thunk:") and _thunk_code(sym[6:]) is not None)


def _thunk_code(reg: str) -> bytes | None:
    """`jmp reg` (the retpoline's architectural effect)."""
    if reg in _THUNK_REGS:
        return bytes((0xFF, 0xE0 | _THUNK_REGS.index(reg)))
    if reg.startswith("r") and reg[1:].isdigit() and 8 <= int(reg[1:]) <= 15:
        return bytes((0x41, 0xFF, 0xE0 | (int(reg[1:]) - 8)))
    return None


def _stub_code(sym: str) -> bytes:
    if sym == "return_thunk":
        return b"\xc3"
    if sym.startswith("thunk:"):
        code = _thunk_code(sym[6:])
        if code is not None:
            return code
    if sym.startswith(("helper:", "kfunc:")):
        return b"\xc3"  # the hook does the work; a trap never executes it
    return b"\xcc"  # unknown: the hook stops the run first


def _count_insns(code: bytes, address: int) -> int:
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    cs = _count_insns.__dict__.setdefault("cs", Cs(CS_ARCH_X86, CS_MODE_64))
    return sum(1 for _ in cs.disasm_lite(code, address))


# ---------------------------------------------------------------------------
# Timing, for the lead (never asserted in tests)


def benchmark(
    case: Case,
    native: NativeSystem,
    *,
    runs: int = 200,
    budget: int = 1_000_000,
    profile: Profile = LINUX,
    executor: Executor | None = None,
) -> dict[str, float]:
    """Time ``run_case`` on one system: the first call (mapping, hooks,
    translation) and the steady state (same system again, a flushed
    translation cache each time as for a fresh case), in microseconds."""
    ex = executor or Executor()
    t0 = time.perf_counter()
    ex.run_case(case, native, profile=profile, budget=budget)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(runs):
        ex.run_case(case, native, profile=profile, budget=budget)
    steady = (time.perf_counter() - t0) / runs
    nruns = sum(1 for s in case.script() if s.kind == "run")
    return {
        "first_case_us": first * 1e6,
        "case_us": steady * 1e6,
        "per_run_us": steady * 1e6 / max(nruns, 1),
    }
