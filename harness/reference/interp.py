"""The reference interpreter: Linux semantics for a whole system of programs.

This is the spec every other engine is judged against, so it is written to be
read. ``Interpreter.run_case`` plays a case's script; each ``run`` step
invokes the entry program with ctx in r1 and returns a ``RunOutcome``.

Semantics follow ``kernel/bpf/core.c`` (``___bpf_prog_run``) for instructions
and the 6.18 x86-64 JIT for control transfer (which is what runs in
production); where the two differ the choice is a ``Profile`` knob:

* bpf-to-bpf calls get a fresh 512-byte frame; r1-r5 are arguments, r0 the
  result, r6-r9 are the caller's again after the call; r1-r5 are unreadable
  after any call (the verifier's rule), so a program cannot observe them.
* tail calls: u32 index; ``index >= max_entries`` falls through; at most
  ``profile.max_tail_calls`` taken per run, on ONE counter shared by the whole
  call hierarchy (a copy per frame with ``profile.tail_call_counter_per_frame``,
  as 6.1's JITs did); an empty slot falls through without consuming budget unless
  ``profile.empty_slot_consumes_budget``; a taken tail call replaces the
  current frame (a subprogram's too: the target's exit returns to the
  subprogram's caller); the target starts with only r1 (and r10) set.
* ``bpf_throw(cookie)`` unwinds to the innermost frame running some program's
  ``main`` (kernel ``bpf_stack_walker``), runs that program's exception
  callback with r1 = cookie (or returns the cookie when it has none) and the
  callback's r0 is what that frame returns.

Programs are assumed verifier-clean; where they are not (an uninitialised
read, an out-of-bounds access, an unknown helper) the run ends ``INVALID``
naming the program, function and instruction, because no JIT has a defined
behaviour to compare there.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from harness.formats import isa
from harness.formats.isa import Insn
from harness.outcome import Event, RunOutcome, Status, Where
from harness.reference.helpers import (
    BPF_THROW,
    HELPER_IDS,
    HELPERS,
    KFUNCS,
    TAIL_CALL,
    MapState,
    call_helper,
)
from harness.reference.profile import LINUX, Profile
from harness.system import Case, Program

__all__ = ["Interpreter", "run_case", "Layout", "elem_stride", "is_pointer"]

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def s64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def s32(v: int) -> int:
    v &= U32
    return v - (1 << 32) if v >> 31 else v


def sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return (v - (1 << bits) if v >> (bits - 1) else v) & U64


def elem_stride(value_size: int) -> int:
    """Array values are laid out round_up(value_size, 8) apart, as in the kernel."""
    return (value_size + 7) & ~7


class Layout:
    """The interpreter's own address space. Native engines use kernel-like
    addresses instead; events are compared after symbolisation, never raw."""

    # Irregular bases: a scalar the program computes (a shifted constant, say)
    # must not land on one of these by chance and be taken for a pointer; round
    # bases like 0x1000_0000_0000 were hit by the fuzzer within minutes.
    CTX = 0x0000_5A3C_91E7_4D00
    STACK = 0x0000_6B2D_C3A5_0000  # frame d's fp = STACK + (d + 1) * FRAME_SPAN
    FRAME_SPAN = 0x1_0000
    MAPS = 0x0000_7C4E_B5D3_0000  # map i object at MAPS + i * MAP_SPAN
    MAP_SPAN = 0x100_0000
    VALUES = 0x1000  # values start this far past the map object
    FUNCS = 0x0000_4E1F_A7C9_0000  # pseudo-func addresses (opaque)
    #: every address symbolize can name lies in [LOWEST, HIGHEST]
    LOWEST = CTX
    HIGHEST = MAPS + 256 * MAP_SPAN


_STACK, _SPAN = Layout.STACK, Layout.FRAME_SPAN
_LOWEST, _HIGHEST = Layout.LOWEST, Layout.HIGHEST

#: How far from its object a pointer can be and still be one: the verifier
#: keeps every pointer offset within BPF_MAX_VAR_OFF (1 << 29) of its object,
#: so ctx + 64 with an 8-byte ctx, which ``symbolize`` cannot name, is still
#: known for a pointer here. A scalar lands in these windows only by being
#: computed from a pointer.
_SLACK = 1 << 30
_POINTER_WINDOWS = (
    (Layout.FUNCS - _SLACK, Layout.FUNCS + _SLACK),
    (Layout.CTX - _SLACK, Layout.CTX + _SLACK),
    (Layout.STACK - _SLACK, Layout.STACK + 512 * Layout.FRAME_SPAN + _SLACK),
    (Layout.MAPS - _SLACK, Layout.HIGHEST + _SLACK),
)
_PTR_LO, _PTR_HI = _POINTER_WINDOWS[0][0], _POINTER_WINDOWS[-1][1]


def is_pointer(v: int | None) -> bool:
    """Whether a register value is one of the interpreter's pointers (or a
    pointer moved by arithmetic the verifier allows)."""
    if v is None or not _PTR_LO <= v <= _PTR_HI:
        return False
    return any(lo <= v <= hi for lo, hi in _POINTER_WINDOWS)


#: init-mask bytes for a write of n bytes (helpers write up to a stack frame)
_ONES = [b"\1" * n for n in range(513)]


def frame_pointer(depth: int) -> int:
    """BPF r10 of the frame at ``depth`` (frames[i] always has depth i: a tail
    call or a throw replaces a frame in place)."""
    return Layout.STACK + (depth + 1) * Layout.FRAME_SPAN


class Invalid(Exception):
    """Internal: the program did something the verifier would have rejected."""


class Runaway(Exception):
    """Internal: the instruction budget ran out."""


@dataclass
class Frame:
    prog: Program
    func_start: int
    pc: int
    regs: list[int | None]
    stack: bytearray
    init: bytearray  # 1 per initialised stack byte
    depth: int
    #: pc of the pseudo call in the caller that created this frame
    call_pc: int | None = None
    #: this frame's copy of the tail-call counter
    #: (``profile.tail_call_counter_per_frame``; else ``_Run.counter``)
    counter: int = 0

    @property
    def fp(self) -> int:
        return frame_pointer(self.depth)

    @property
    def func(self) -> str:
        return self.prog.function_name(self.func_start)

    def where(self, pc: int | None = None) -> Where:
        return Where(self.prog.name, self.func, self.pc if pc is None else pc)


@dataclass
class _Run:
    frames: list[Frame]
    events: list[Event] = field(default_factory=list)
    #: tail calls taken
    tail_calls: int = 0
    #: the tail-call counter (differs from tail_calls only when a failed call
    #: consumes budget, ``profile.empty_slot_consumes_budget``)
    counter: int = 0
    steps: int = 0
    #: what the run did that the profile leaves to the JIT (RunOutcome.undefined)
    undefined: str = ""
    ticks: int = 0


class Interpreter:
    """Reference semantics. One instance per case run; helper models see it as
    their ``Machine``."""

    name = "interp"

    def __init__(
        self, case: Case, profile: Profile = LINUX, *, budget: int = 200_000, lockstep: bool = False
    ):
        self.case, self.profile, self.budget, self.lockstep = case, profile, budget, lockstep
        self.maps: list[MapState] = []
        for m in case.maps.values():
            st = MapState(m.name, m.kind, m.max_entries, m.value_size)
            if m.kind == "array":
                st.data = bytearray(elem_stride(m.value_size) * m.max_entries)
                for key, val in m.init.items():
                    self._store_value(st, key, bytes(val))
            else:
                st.slots = {k: v for k, v in m.init.items() if isinstance(v, str)}
            self.maps.append(st)
        self.ticks = 0
        self._run: _Run | None = None
        #: check_structure's verdict on the case's programs: None until run
        self._structure: tuple[Where, str] | bool | None = None
        #: (program, function start) -> whether it is compiled with a call
        self._calls: dict[tuple[str, int], bool] = {}

    # ---- the script ------------------------------------------------------

    def run_case(self) -> list[RunOutcome]:
        outcomes = []
        for step in self.case.script():
            if step.kind == "run":
                outcomes.append(self.run(step.program))
            else:
                m = self.maps[self.case.map_index(step.map)]
                if m.kind == "prog_array":
                    if step.kind == "delete":
                        m.slots.pop(step.key, None)
                    else:
                        m.slots[step.key] = step.value
                elif step.kind == "update":
                    self._store_value(m, step.key, bytes(step.value))
        return outcomes

    def _store_value(self, m: MapState, key: int, val: bytes) -> None:
        stride = elem_stride(m.value_size)
        m.data[key * stride : key * stride + m.value_size] = val.ljust(m.value_size, b"\0")

    def map_contents(self) -> dict[str, bytes]:
        out = {}
        for m in self.maps:
            if m.kind == "array":
                stride = elem_stride(m.value_size)
                out[m.name] = b"".join(
                    bytes(m.data[k * stride : k * stride + m.value_size])
                    for k in range(m.max_entries)
                )
        return out

    def run(self, entry: str) -> RunOutcome:
        prog = self.case.programs[entry]
        self.ticks = 0
        if self._structure is None:  # the programs do not change between runs
            self._structure = next(
                (bad for p in self.case.programs.values() if (bad := check_structure(p))), False
            )
        if self._structure:
            bad = self._structure
            return RunOutcome(Status.INVALID, where=bad[0], detail=bad[1])
        top = self._new_frame(prog, 0, depth=0)
        top.regs[1] = Layout.CTX
        self.ctx = bytearray(self.case.ctx)
        self.ctx_writable = prog.type == "test"
        if prog.type == "test":
            top.regs[2] = len(self.ctx)
        run = self._run = _Run([top])
        try:
            retval = self._loop(run)
        except Invalid as e:
            f = run.frames[-1]
            return self._outcome(run, Status.INVALID, where=f.where(), detail=str(e))
        except Runaway:
            f = run.frames[-1]
            return self._outcome(
                run, Status.BUDGET, where=f.where(), detail=f"more than {self.budget} instructions"
            )
        run.events.append(Event("exit", Where(prog.name, "main", 0), (retval,)))
        return self._outcome(run, Status.OK, retval=retval)

    def _outcome(self, run: _Run, status: Status, **kw) -> RunOutcome:
        return RunOutcome(
            status,
            tail_calls=run.tail_calls,
            maps=self.map_contents(),
            events=run.events,
            steps=run.steps,
            undefined=run.undefined,
            **kw,
        )

    def _new_frame(self, prog: Program, start: int, *, depth: int, call_pc=None) -> Frame:
        size = self.profile.stack_size
        regs: list[int | None] = [None] * 11
        f = Frame(prog, start, start, regs, bytearray(size), bytearray(size), depth, call_pc)
        regs[10] = f.fp
        return f

    # ---- memory: the Machine protocol for helper models -------------------

    def _region(self, addr: int, size: int) -> tuple[bytearray, int, bytearray | None, str]:
        """(buffer, offset, init-mask or None, kind) for an in-bounds access."""
        # stacks first, found arithmetically (``_frame_at`` inline: this is
        # every load and store)
        run = self._run
        if run is not None and addr >= _STACK:
            d = (addr - _STACK) // _SPAN
            if d < len(run.frames):
                f = run.frames[d]
                fp = _STACK + (d + 1) * _SPAN
                lo = fp - len(f.stack)
                if lo <= addr and addr + size <= fp:
                    return f.stack, addr - lo, f.init, "stack"
        if Layout.CTX <= addr and addr + size <= Layout.CTX + len(self.case.ctx):
            return self.ctx, addr - Layout.CTX, None, "ctx"
        for i, m in enumerate(self.maps):
            base = Layout.MAPS + i * Layout.MAP_SPAN + Layout.VALUES
            if m.kind == "array" and base <= addr < base + len(m.data):
                off = addr - base
                stride = elem_stride(m.value_size)
                if off % stride + size > m.value_size:
                    raise Invalid(
                        f"access {off % stride}+{size} past a {m.value_size}-byte "
                        f"value of map {m.name}"
                    )
                return m.data, off, None, "value"
        raise Invalid(f"invalid memory access at {addr:#x} size {size}")

    def read(self, addr: int, size: int) -> bytes:
        buf, off, init, _ = self._region(addr, size)
        if init is not None and not all(init[off : off + size]):
            raise Invalid(f"read of uninitialised stack at fp{addr - self._fp_of(addr):+d}")
        return bytes(buf[off : off + size])

    def write(self, addr: int, data: bytes) -> None:
        n = len(data)
        buf, off, init, kind = self._region(addr, n)
        if kind == "ctx" and not self.ctx_writable:
            raise Invalid("write to ctx")
        buf[off : off + n] = data
        if init is not None:
            init[off : off + n] = _ONES[n] if n < len(_ONES) else b"\1" * n

    def _fp_of(self, addr: int) -> int:
        f = self._frame_at(addr)
        return frame_pointer(f.depth) if f else 0

    def _frame_at(self, addr: int, *, inclusive: bool = False) -> Frame | None:
        """The live frame whose stack holds ``addr`` (or whose fp is ``addr``
        when ``inclusive``), found arithmetically: frames sit FRAME_SPAN apart."""
        run = self._run
        if run is None or addr < Layout.STACK:
            return None
        d = (addr - Layout.STACK) // Layout.FRAME_SPAN
        if inclusive and addr == frame_pointer(d - 1):
            d -= 1
        if 0 <= d < len(run.frames):
            f = run.frames[d]
            if frame_pointer(d) - len(f.stack) <= addr:
                return f
        return None

    def map_at(self, addr: int) -> MapState | None:
        for i, m in enumerate(self.maps):
            if addr == Layout.MAPS + i * Layout.MAP_SPAN:
                return m
        return None

    def value_addr(self, m: MapState, key: int) -> int:
        i = self.maps.index(m)
        return Layout.MAPS + i * Layout.MAP_SPAN + Layout.VALUES + key * elem_stride(m.value_size)

    def _syms(self, values) -> tuple:
        """``symbolize`` of each value, as a tuple (most are scalars)."""
        for v in values:
            if v is not None and _LOWEST <= v <= _HIGHEST:
                return tuple(self.symbolize(v) for v in values)
        return tuple(values)

    def symbolize(self, value: int | None):
        """The engine-independent name of a pointer (see ``harness.native.emu``)."""
        if value is None or not Layout.LOWEST <= value <= Layout.HIGHEST:
            return value  # most values: scalars far from every region
        f = self._frame_at(value, inclusive=True)
        if f is not None:
            fp = frame_pointer(f.depth)
            if f is self._run.frames[-1]:
                return ("fp", value - fp)
            return ("fp", f.depth, value - fp)
        if Layout.CTX <= value <= Layout.CTX + len(self.case.ctx):
            return ("ctx", value - Layout.CTX)
        for i, m in enumerate(self.maps):
            base = Layout.MAPS + i * Layout.MAP_SPAN
            if value == base:
                return ("map", m.name)
            if m.kind == "array" and base + Layout.VALUES <= value <= base + Layout.VALUES + len(
                m.data
            ):
                return ("value", m.name, value - base - Layout.VALUES)
        return value

    # ---- the loop --------------------------------------------------------

    def _loop(self, run: _Run) -> int:
        """Run until the entry program returns. The inner loop keeps one
        frame's pc, registers and step count in locals and leaves for
        calls and exits (and writes them back before anything can raise:
        errors are reported at the frame's pc); readability lives in the
        helpers it dispatches to."""
        budget, lockstep, frames = self.budget, self.lockstep, run.frames
        alu, store, read = self._alu, self._store, self.read
        ALU, ALU64, LDX, ST, STX = isa.ALU, isa.ALU64, isa.LDX, isa.ST, isa.STX
        JMP, JMP32, CALL, EXIT = isa.JMP, isa.JMP32, isa.CALL, isa.EXIT
        MOV, X, LD_IMM64, MEMSX = isa.MOV, isa.X, isa.LD_IMM64, isa.MEMSX
        SIZE_BYTES = isa.SIZE_BYTES
        while True:
            f = frames[-1]
            insns = f.prog.insns
            n = len(insns)
            regs = f.regs
            pc = f.pc
            steps = run.steps
            try:
                while True:
                    if not 0 <= pc < n:
                        raise Invalid(f"fell off the program at pc {pc}")
                    steps += 1
                    if steps > budget:
                        raise Runaway()
                    insn = insns[pc]
                    if lockstep:
                        f.pc = pc
                        run.events.append(
                            Event("step", f.where(), tuple(self.symbolize(r) for r in regs))
                        )
                    code = insn.opcode
                    c = code & 0x07
                    if c == ALU64 or c == ALU:
                        if code & 0xF0 == MOV and not insn.off:
                            # mov, the commonest instruction, inline
                            if code & X:
                                v = regs[insn.src]
                                if v is None:
                                    raise _uninit(insn.src)
                                if c == ALU and _PTR_LO <= v <= _PTR_HI and is_pointer(v):
                                    raise _layout_dependent(insn.src, "partial copy of pointer")
                            else:
                                v = insn.imm
                            regs[insn.dst] = v & (U64 if c == ALU64 else U32)
                        else:
                            alu(f, insn)
                        pc += 1
                    elif c == LDX:
                        mode, size = code & 0xE0, SIZE_BYTES[code & 0x18]
                        if mode != isa.MEM and mode != MEMSX:
                            raise Invalid(f"unsupported load mode {code:#x}")
                        a = regs[insn.src]
                        if a is None:
                            raise _uninit(insn.src)
                        v = int.from_bytes(read((a + insn.off) & U64, size), "little")
                        regs[insn.dst] = sext(v, size * 8) if mode == MEMSX else v
                        pc += 1
                    elif c == ST or c == STX:
                        store(f, insn)
                        pc += 1
                    elif c == JMP or c == JMP32:
                        op = code & 0xF0
                        if op == CALL or op == EXIT:
                            break
                        pc = isa.jump_target(pc, insn) if self._taken(f, insn) else pc + 1
                    elif code == LD_IMM64:
                        f.pc = pc  # a pseudo-func address is pc-relative
                        self._ld_imm64(f, insn, insns[pc + 1])
                        pc += 2
                    else:
                        raise Invalid(f"legacy packet access {code:#x} is not supported")
            finally:
                f.pc, run.steps = pc, steps
            if op == CALL:
                done = self._call(run, f, insn)
            else:
                r0 = self._reg(f, 0)
                if is_pointer(r0):
                    # a privileged load may return an address (from main or
                    # a static subprogram), but each engine has its own: no
                    # value to compare (the reducer made such cases from
                    # real findings by deleting the set-up before a call)
                    raise Invalid("R0 leaks addr as return value")
                done = self._return(run, r0)
            if done is not None:
                return done

    def _reg(self, f: Frame, r: int) -> int:
        v = f.regs[r]
        if v is None:
            raise _uninit(r)
        return v

    # ---- ALU -------------------------------------------------------------

    def _alu(self, f: Frame, insn: Insn) -> None:
        code = insn.opcode
        is64 = code & 0x07 == isa.ALU64
        op, use_x = code & 0xF0, code & isa.X
        bits = 64 if is64 else 32
        mask = U64 if is64 else U32
        if op == isa.END:
            dst = self._reg(f, insn.dst)
            if is_pointer(dst):
                raise _layout_dependent(insn.dst, "byte swap of a pointer")
            width = insn.imm
            v = dst & ((1 << width) - 1)
            if is64 or use_x:  # bswap, or to big endian on a little-endian host
                v = int.from_bytes(v.to_bytes(width // 8, "little"), "big")
            f.regs[insn.dst] = v
            return
        if op == isa.MOV:
            if use_x:
                v = self._reg(f, insn.src)
                if (insn.off or not is64) and is_pointer(v):
                    raise _layout_dependent(insn.src, "partial copy of pointer")
                if insn.off:  # movsx
                    v = sext(v, insn.off)
            else:
                v = insn.imm & U64  # imm sign-extends to 64 bits, then truncates
            f.regs[insn.dst] = v & mask
            return
        dst = self._reg(f, insn.dst)
        src = self._reg(f, insn.src) if use_x else insn.imm & U64
        if _PTR_LO <= dst <= _PTR_HI or (use_x and _PTR_LO <= src <= _PTR_HI):
            self._pointer_alu(f, insn, dst, src)
        dst &= mask
        if op == isa.NEG:
            f.regs[insn.dst] = (-dst) & mask
            return
        src &= mask
        signed = insn.off == 1
        sx = s64 if is64 else s32
        if use_x and op in _SHIFTS and src >= bits and not self.profile.shift_amount_masked:
            self._run.undefined = "register shift amount past the width"
        if op == isa.ADD:
            v = dst + src
        elif op == isa.SUB:
            v = dst - src
        elif op == isa.MUL:
            v = dst * src
        elif op == isa.DIV:
            if src == 0:
                v = 0
            elif signed:
                a, b = sx(dst), sx(src)
                q = abs(a) // abs(b)
                v = q if (a < 0) == (b < 0) else -q
            else:
                v = dst // src
        elif op == isa.MOD:
            if src == 0:
                v = dst
            elif signed:
                a, b = sx(dst), sx(src)
                r = abs(a) % abs(b)
                v = -r if a < 0 else r
            else:
                v = dst % src
        elif op == isa.OR:
            v = dst | src
        elif op == isa.AND:
            v = dst & src
        elif op == isa.XOR:
            v = dst ^ src
        elif op == isa.LSH:
            v = dst << (src & (bits - 1))
        elif op == isa.RSH:
            v = dst >> (src & (bits - 1))
        elif op == isa.ARSH:
            v = sx(dst) >> (src & (bits - 1))
        else:
            raise Invalid(f"unknown ALU op {insn.opcode:#x}")
        f.regs[insn.dst] = v & mask

    def _pointer_alu(self, f: Frame, insn: Insn, dst: int, src: int) -> None:
        """The verifier's rules for ALU on pointers (check_alu_op,
        adjust_reg_min_max_vals, adjust_ptr_min_max_vals), for a privileged
        loader: what it rejects is INVALID with its message; what it accepts
        but turns into a scalar made of an address is INVALID too, since each
        engine lays memory out differently and has no value to compare."""
        op = insn.opcode & 0xF0
        name = _ALU_OPS.get(op, f"{op:#x}")
        dptr = is_pointer(dst)
        sptr = bool(insn.opcode & isa.X) and is_pointer(src)
        if not (dptr or sptr):
            return
        if op == isa.NEG:
            raise _layout_dependent(insn.dst, "negated pointer")
        if dptr and sptr:
            if op != isa.SUB:
                raise Invalid(f"R{insn.dst} pointer {name} pointer prohibited")
            if insn.opcode & 0x07 == isa.ALU:
                raise _layout_dependent(insn.dst, "32-bit pointer arithmetic")
            a, b = self.symbolize(dst), self.symbolize(src)
            if not (isinstance(a, tuple) and isinstance(b, tuple) and a[:-1] == b[:-1]):
                raise _layout_dependent(insn.dst, "pointer -= pointer of another object")
            return  # two pointers into one object: their distance is the same everywhere
        reg = insn.dst if dptr else insn.src
        if insn.opcode & 0x07 == isa.ALU:
            if op == isa.SUB:
                raise _layout_dependent(reg, "32-bit pointer arithmetic")
            raise Invalid(f"R{insn.dst} 32-bit pointer arithmetic prohibited")
        if op == isa.SUB and sptr:
            raise Invalid(f"R{insn.dst} tried to subtract pointer from scalar")
        if op in (isa.AND, isa.OR, isa.XOR):
            raise Invalid(f"R{insn.dst} bitwise operator {name} on pointer prohibited")
        if op not in (isa.ADD, isa.SUB):
            raise Invalid(f"R{insn.dst} pointer arithmetic with {name} operator prohibited")
        ptr, off = (dst, src) if dptr else (src, dst)
        sym = self.symbolize(ptr)
        if isinstance(sym, tuple) and sym[0] == "map" and not (op == isa.ADD and off == 0):
            raise Invalid(f"R{insn.dst} pointer arithmetic on map_ptr prohibited")
        if op == isa.SUB and self._frame_at(ptr, inclusive=True) is not None:
            raise Invalid(f"R{insn.dst} subtraction from stack pointer prohibited")

    # ---- jumps -----------------------------------------------------------

    def _pointer_compare(self, insn: Insn, a: int, b: int, is32: bool) -> None:
        """A privileged verifier lets pointers be compared; whether the jump
        is taken is the same on every engine only for a 64-bit comparison of
        two pointers into one object (their offsets decide) or of a pointer
        with NULL by == or != (never taken, always taken). Anything else (a
        32-bit comparison, two objects, a pointer against a number) depends
        on where each engine put its memory."""
        pa, pb = is_pointer(a), is_pointer(b)
        if not (pa or pb):
            return
        op = insn.opcode & 0xF0
        if not is32:
            sa, sb = self.symbolize(a), self.symbolize(b)
            if pa and pb and isinstance(sa, tuple) and isinstance(sb, tuple) and sa[:-1] == sb[:-1]:
                if op != isa.JSET:
                    return
            elif op in (isa.JEQ, isa.JNE) and (a == 0 or b == 0):
                return
        reg = insn.dst if pa else insn.src
        raise _layout_dependent(reg, f"pointer comparison ({'32' if is32 else '64'}-bit)")

    def _taken(self, f: Frame, insn: Insn) -> bool:
        op = insn.opcode & 0xF0
        if op == isa.JA:
            return True
        is32 = insn.opcode & 0x07 == isa.JMP32
        mask = U32 if is32 else U64
        a = self._reg(f, insn.dst)
        b = self._reg(f, insn.src) if insn.opcode & isa.X else insn.imm & U64
        if _PTR_LO <= a <= _PTR_HI or _PTR_LO <= b <= _PTR_HI:
            self._pointer_compare(insn, a, b, is32)
        a &= mask
        b &= mask
        if op in _SIGNED_JUMPS:
            sx = s32 if is32 else s64
            a, b = sx(a), sx(b)
        return _JUMP_TESTS[op](a, b)

    # ---- memory instructions ---------------------------------------------

    def _ld_imm64(self, f: Frame, insn: Insn, hi: Insn) -> None:
        if insn.src == 0:
            f.regs[insn.dst] = ((hi.imm & U32) << 32) | (insn.imm & U32)
        elif insn.src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE):
            if not 0 <= insn.imm < len(self.maps):
                raise Invalid(f"ld_imm64 of unknown map #{insn.imm}")
            base = Layout.MAPS + insn.imm * Layout.MAP_SPAN
            if insn.src == isa.PSEUDO_MAP_VALUE:
                base += Layout.VALUES + (hi.imm & U32)
            f.regs[insn.dst] = base
        elif insn.src == isa.PSEUDO_FUNC:
            f.regs[insn.dst] = Layout.FUNCS + f.pc + 1 + insn.imm
        else:
            raise Invalid(f"ld_imm64 pseudo source {insn.src} is not supported")

    def _store(self, f: Frame, insn: Insn) -> None:
        size = isa.SIZE_BYTES[insn.opcode & 0x18]
        addr = (self._reg(f, insn.dst) + insn.off) & U64
        mask = (1 << (8 * size)) - 1
        if insn.cls == isa.ST:
            self.write(addr, (insn.imm & mask).to_bytes(size, "little"))
            return
        if insn.opcode & 0xE0 == isa.MEM:
            self.write(addr, (self._reg(f, insn.src) & mask).to_bytes(size, "little"))
            return
        # atomics: read-modify-write; fetch variants return the old value
        old = int.from_bytes(self.read(addr, size), "little")
        src = self._reg(f, insn.src) & mask
        op = insn.imm
        base = op & ~isa.FETCH
        if op == isa.CMPXCHG:
            r0 = self._reg(f, 0) & mask
            if r0 == old:
                self.write(addr, src.to_bytes(size, "little"))
            f.regs[0] = old
            return
        if op == isa.XCHG:
            new = src
        elif base == isa.ADD:
            new = (old + src) & mask
        elif base == isa.OR:
            new = old | src
        elif base == isa.AND:
            new = old & src
        elif base == isa.XOR:
            new = old ^ src
        else:
            raise Invalid(f"unknown atomic op {op:#x}")
        self.write(addr, new.to_bytes(size, "little"))
        if op & isa.FETCH:
            f.regs[insn.src] = old

    # ---- calls, tail calls, exits, throws --------------------------------

    def _args(self, f: Frame) -> tuple:
        return self._syms(f.regs[1:6])

    def _clobber_args(self, f: Frame) -> None:
        for r in range(1, 6):
            f.regs[r] = None

    def _call(self, run: _Run, f: Frame, insn: Insn) -> int | None:
        if insn.src == isa.PSEUDO_CALL:
            target = f.pc + 1 + insn.imm
            # the verifier bounds each program's static call depth (8 frames);
            # at run time tail calls made from subprograms stack those chains
            # up to (33 + 1) times, which is exactly what the JITs must survive
            if len(run.frames) >= 8 * (self.profile.max_tail_calls + 1):
                raise Invalid("call stack deeper than the verifier allows")
            run.events.append(
                Event("call", f.where(), (f.prog.function_name(target), self._args(f)))
            )
            callee = self._new_frame(f.prog, target, depth=len(run.frames), call_pc=f.pc)
            callee.counter = f.counter
            callee.regs[1:6] = f.regs[1:6]
            run.frames.append(callee)
            return None
        if insn.src == isa.PSEUDO_KFUNC_CALL:
            if insn.imm != BPF_THROW:
                raise Invalid(f"call to unknown kfunc {KFUNCS.get(insn.imm, insn.imm)}")
            return self._throw(run, f, self._reg(f, 1))
        if insn.imm == TAIL_CALL:
            return self._tail_call(run, f)
        helper = HELPERS.get(insn.imm)
        if helper is None:
            raise Invalid(f"call to unknown helper {insn.imm}")
        args = tuple(self._reg(f, r) for r in range(1, 1 + helper.nargs))
        args += (0,) * (5 - len(args))
        r0, read = call_helper(self, insn.imm, args)
        if self.profile.map_op_errors_32bit and insn.imm in _INT_MAP_OPS:
            r0 &= U32
        run.events.append(
            Event(
                "helper",
                f.where(),
                (
                    insn.imm,
                    self._syms(args[: helper.nargs]),
                    self.symbolize(r0),
                    read,
                ),
            )
        )
        self._clobber_args(f)
        f.regs[0] = r0
        f.pc += 1
        return None

    def _tail_call(self, run: _Run, f: Frame) -> int | None:
        """bpf_tail_call(ctx, prog_array, index), checks in the x86-64 JIT's order."""
        m = self.map_at(self._reg(f, 2))
        if m is None or m.kind != "prog_array":
            raise Invalid("bpf_tail_call on something that is not a prog array")
        index = self._reg(f, 3) & U32
        per_frame = self.profile.tail_call_counter_per_frame
        counter = f.counter if per_frame else run.counter
        target = None
        if index < m.max_entries and counter < self.profile.max_tail_calls:
            target = m.slots.get(index)
            if target is not None or self._empty_slot_costs(f):
                run.counter += 1
                f.counter = counter + 1
        run.events.append(Event("tail_call", f.where(), (index, counter, target)))
        if target is None:
            self._clobber_args(f)
            f.regs[0] = None
            f.pc += 1
            return None
        run.tail_calls += 1
        ctx = f.regs[1]
        new = self._new_frame(self.case.programs[target], 0, depth=f.depth, call_pc=f.call_pc)
        new.counter = f.counter
        new.regs[1] = ctx
        run.frames[-1] = new
        return None

    def _empty_slot_costs(self, f: Frame) -> bool:
        p = self.profile
        if not p.empty_slot_consumes_budget:
            return False
        return not (p.empty_slot_free_in_calling_functions and self._makes_calls(f))

    def _makes_calls(self, f: Frame) -> bool:
        """Whether the JIT compiles ``f``'s function with a call instruction:
        a bpf-to-bpf or kfunc call, or a helper call it does not inline."""
        key = (f.prog.name, f.func_start)
        made = self._calls.get(key)
        if made is None:
            starts = f.prog.function_starts()
            end = next((s for s in starts if s > f.func_start), len(f.prog.insns))
            inlined = self.profile.inlined_helpers | {TAIL_CALL}
            made = any(
                i.opcode == isa.JMP | isa.CALL and (i.src != 0 or i.imm not in inlined)
                for i in f.prog.insns[f.func_start : end]
            )
            self._calls[key] = made
        return made

    def _return(self, run: _Run, r0: int) -> int | None:
        run.frames.pop()
        if not run.frames:
            return r0
        caller = run.frames[-1]
        caller.regs[0] = r0
        self._clobber_args(caller)
        caller.pc += 1
        preserved = self._syms(caller.regs[6:10])
        run.events.append(Event("ret", caller.where(caller.pc - 1), (r0, preserved)))
        return None

    def _throw(self, run: _Run, f: Frame, cookie: int) -> int | None:
        if is_pointer(cookie):
            # the kfunc's argument is a scalar (the verifier rejects a pointer),
            # and an address returned as the cookie differs between engines
            raise Invalid("bpf_throw: R1 must be a scalar cookie")
        run.events.append(Event("throw", f.where(), (cookie,)))
        # the boundary: the innermost frame running some program's main
        while run.frames[-1].func_start != 0:
            run.frames.pop()
        boundary = run.frames[-1]
        prog = boundary.prog
        cb = prog.exception_callback_pc()
        if cb is None:
            return self._return(run, cookie)
        # the callback runs in the boundary's place and returns for it
        frame = self._new_frame(prog, cb, depth=boundary.depth, call_pc=boundary.call_pc)
        frame.regs[1] = cookie
        run.frames[-1] = frame
        return None


#: conditional jumps: the test on (dst, src), signed ones on sign-extended values
_JUMP_TESTS = {
    isa.JEQ: operator.eq,
    isa.JNE: operator.ne,
    isa.JSET: lambda a, b: bool(a & b),
    isa.JGT: operator.gt,
    isa.JGE: operator.ge,
    isa.JLT: operator.lt,
    isa.JLE: operator.le,
    isa.JSGT: operator.gt,
    isa.JSGE: operator.ge,
    isa.JSLT: operator.lt,
    isa.JSLE: operator.le,
}
#: helpers the verifier turns into direct calls of the map's own ops
#: (``profile.map_op_errors_32bit``)
_INT_MAP_OPS = frozenset((HELPER_IDS["bpf_map_update_elem"], HELPER_IDS["bpf_map_delete_elem"]))
_SHIFTS = frozenset((isa.LSH, isa.RSH, isa.ARSH))
_SIGNED_JUMPS = frozenset((isa.JSGT, isa.JSGE, isa.JSLT, isa.JSLE))


def _uninit(r: int) -> Invalid:
    return Invalid(f"R{r} !read_ok (read of an uninitialised register)")


def _layout_dependent(r: int, what: str) -> Invalid:
    return Invalid(f"R{r} {what}: the value depends on each engine's memory layout")


_ALU_OPS = {
    isa.ADD: "+=",
    isa.SUB: "-=",
    isa.MUL: "*=",
    isa.DIV: "/=",
    isa.OR: "|=",
    isa.AND: "&=",
    isa.LSH: "<<=",
    isa.RSH: ">>=",
    isa.MOD: "%=",
    isa.XOR: "^=",
    isa.ARSH: "s>>=",
}


def check_structure(prog: Program) -> tuple[Where, str] | None:
    """What the verifier rejects from the instructions alone: check_subprogs
    (every function ends in exit or goto, even one that ends in bpf_throw: the
    dead exit after it is still required) and check_alu_op's immediate checks
    (division by an immediate zero, a shift by an immediate outside the width)."""
    starts = prog.function_starts()
    for start, end in zip(starts, starts[1:] + [len(prog.insns)]):
        for pc in range(start, end):
            i = prog.insns[pc]
            if i.opcode in _IMM_CHECKED and (why := _alu_imm_problem(i)):
                return Where(prog.name, prog.function_name(start), pc), why
        last = prog.insns[end - 1] if end > start else None
        if last is None or last.opcode not in (
            isa.JMP | isa.EXIT,
            isa.JMP | isa.JA,
            isa.JMP32 | isa.JA,
        ):
            return (
                Where(prog.name, prog.function_name(start), end - 1),
                "last insn is not an exit or jmp",
            )
    return None


#: ALU opcodes with an immediate the verifier bounds (divisor, shift count)
_IMM_CHECKED = frozenset(
    c | isa.K | op
    for c in (isa.ALU, isa.ALU64)
    for op in (isa.DIV, isa.MOD, isa.LSH, isa.RSH, isa.ARSH)
)


def _alu_imm_problem(i: Insn) -> str | None:
    c = i.opcode & 0x07
    if c not in (isa.ALU, isa.ALU64) or i.opcode & isa.X:
        return None
    op = i.opcode & 0xF0
    if op in (isa.DIV, isa.MOD) and i.imm == 0:
        return "div by zero"
    if op in (isa.LSH, isa.RSH, isa.ARSH) and not 0 <= i.imm < (64 if c == isa.ALU64 else 32):
        return f"invalid shift {i.imm}"
    return None


def run_case(
    case: Case, profile: Profile = LINUX, *, budget: int = 200_000, lockstep: bool = False
) -> list[RunOutcome]:
    return Interpreter(case, profile, budget=budget, lockstep=lockstep).run_case()
