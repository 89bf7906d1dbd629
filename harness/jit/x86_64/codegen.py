"""``do_jit`` and its helpers, ported from ``arch/x86/net/bpf_jit_comp.c`` (v6.18).

One ``FuncJit`` is one ``bpf_int_jit_compile`` of one function: it keeps the
``addrs[]`` array and the ``jit_context`` across passes exactly like the kernel
(branch displacements are computed from the previous pass, labels of the
tail-call sequences from the previous emission), so jump sizes converge the
same way, including the 6.13+ imm8 cap of 123 and the nop padding of late
passes.

Host configuration modelled (the project's 6.18 AMD host): no IBT/CFI (so
``X86_TAIL_CALL_OFFSET`` = 12 and no ENDBR), retpolines (indirect tail calls
``jmp __x86_indirect_thunk_rcx``), return thunks (``ret`` is ``jmp
<return thunk>``), no call-depth tracking, BMI2 (register shifts use
``shlx/shrx/sarx`` unless the count is already in rcx; ``Variant.bmi2``), SMP
(per-cpu addresses through ``gs:[this_cpu_off]``), no arena.

Two tail-call designs (``JitOptions.design``):

* ``linux-6.18`` (default): the counter lives in the entry program's frame and
  every frame holds a *pointer* to it at ``[rbp - rs - 16]`` (rs =
  ``round_up(stack_depth, 8)``), reloaded into rax before each bpf2bpf call;
  ``X86_TAIL_CALL_OFFSET`` = 12.
* ``linux-5.10``: the 2020 design of seeds 000/001 (``emit_prologue`` with
  ``tail_call_reachable``/``is_subprog``, v5.10 to v6.9). The count travels
  *by value* in rax: the prologue is ``nop5; xor eax, eax`` (or ``nop2`` in
  subprogs and programs without tail calls) ``; push rbp; mov rbp, rsp``
  (``X86_TAIL_CALL_OFFSET`` = 11), then ``sub rsp, rs`` and one ``push rax``.
  The count is the dword at ``[rbp - rs - 4]`` (the upper half of the pushed
  rax; the tail-call path's ``pop rax`` hands it on in rax's upper half), the
  checks are ``cmp eax, MAX_TAIL_CALL_CNT(32); ja out`` and the increment
  comes *before* the empty-slot check (a failed call to an empty slot costs
  budget). Before every call (helpers too) the caller loads ``mov rax,
  [rbp - stack_depth - 8]`` with the verifier's *unrounded* depth (rounded
  only by the 2022 fix "bpf, x86: Fix tail call count offset calculation on
  bpf2bpf call"), so a subprog works on a copy: tail calls counted inside it
  are lost on return (the "tailcall hierarchy" bug, fixed in 2024 by the
  pointer scheme). Host configuration is kept as above: the indirect jump is
  ``jmp __x86_indirect_thunk_rcx`` and returns go through the return thunk
  (5.10 inlined ``RETPOLINE_RCX_BPF_JIT`` and ``ret``; its hard-coded
  ``off1/off2/off3`` jump offsets land on the same ``out`` label as the
  label arithmetic used here).

Faults (``JitOptions.faults``, described in ``FAULTS``) change single emission
points and are checked where the kernel emits the affected bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.errors import JitdiffError, Unsupported
from harness.formats import isa

from .encoder import (
    AUX_REG,
    NOP5,
    SIMPLE_ALU,
    X86_JA,
    X86_JAE,
    X86_JB,
    X86_JBE,
    X86_JE,
    X86_JG,
    X86_JGE,
    X86_JL,
    X86_JLE,
    X86_JNE,
    X86_PATCH_SIZE,
    X86_REG_R9,
    Emitter,
    add_1mod,
    add_1reg,
    add_2reg,
    is_ereg,
    is_imm8,
    is_imm8_jmp_offset,
    is_simm32,
)
from .fixups import BPF_TAIL_CALL, XFunc, round_up

__all__ = [
    "FuncJit",
    "JitOptions",
    "PokeRecord",
    "X86_TAIL_CALL_OFFSET",
    "TAIL_CALL_OFFSETS",
    "ENTRY_SHORTFALL",
    "LINUX_6_18",
    "LINUX_5_10",
    "LINUX_6_1",
    "BY_VALUE",
    "JitError",
]

#: 12 + ENDBR_INSN_SIZE, and the host has no IBT.
X86_TAIL_CALL_OFFSET = 12
LINUX_6_18 = "linux-6.18"
LINUX_5_10 = "linux-5.10"
#: 5.10's design after the 2022 fix of the counter's reload offset (the LTS
#: kernels 6.1-6.9 that shipped the tailcall hierarchy bug until 2024)
LINUX_6_1 = "linux-6.1"
#: the designs that pass the count by value in rax
BY_VALUE = (LINUX_5_10, LINUX_6_1)
#: bytes of prologue a tail call skips, per design (5.10: nop5, xor eax,eax,
#: push rbp, mov rbp,rsp = 5 + 2 + 1 + 3)
TAIL_CALL_OFFSETS = {LINUX_6_18: X86_TAIL_CALL_OFFSET, LINUX_5_10: 11, LINUX_6_1: 11}
#: fault "tail-entry-offset": tail calls jump this many bytes short of the entry
ENTRY_SHORTFALL = 4
MAX_PASSES = 20
PADDING_PASSES = MAX_PASSES - 5
ALL_CALLEE_REGS = (True, True, True, True)
#: instruction classes whose x86 bytes depend only on the instruction (after
#: the private-stack register swap) and the JIT options (BMI2, faults and
#: design: the key holds all of them): never on an address or a pass. The pass loop re-emits a
#: function many times and generated programs repeat instructions, so their
#: bytes are memoised; they are what the full emitter below produced for the
#: same key.
_PURE_CLASSES = frozenset((isa.ALU, isa.ALU64, isa.LDX, isa.ST, isa.STX))
_PURE: dict[tuple, bytes] = {}
_PURE_MAX = 1 << 16
_OPTIONS: dict[JitOptions, int] = {}


def clear_memo() -> None:
    """Forget the memoised bytes (``jitdiff bench`` starts every round cold)."""
    _PURE.clear()


class JitError(JitdiffError):
    """The modelled JIT failed where the kernel's would (falls back / rejects)."""


@dataclass(frozen=True)
class JitOptions:
    max_tail_calls: int = 33
    bmi2: bool = True
    faults: frozenset[str] = frozenset()
    #: tail-call design (module doc)
    design: str = LINUX_6_18

    def has(self, fault: str) -> bool:
        return fault in self.faults

    @property
    def by_value(self) -> bool:
        """The 2020 design: the count travels by value in rax."""
        return self.design in BY_VALUE

    @property
    def tail_call_offset(self) -> int:
        return TAIL_CALL_OFFSETS[self.design]

    @property
    def tail_jump_offset(self) -> int:
        """What the tail-call path adds to ``bpf_func`` (the entry, unless faulty)."""
        short = ENTRY_SHORTFALL if self.has("tail-entry-offset") else 0
        return self.tail_call_offset - short


@dataclass
class PokeRecord:
    """Offsets (from the function start) of one direct tail call's sites."""

    poke: int  #: index into XProg.pokes
    bypass: int
    target: int
    out: int


@dataclass
class _Ctx:
    """struct jit_context"""

    cleanup_addr: int = 0
    tail_call_direct_label: int = 0
    tail_call_indirect_label: int = 0


def _detect_reg_usage(f: XFunc) -> list[bool]:
    used = [False] * 4
    for x in f.insns:
        for r in (x.insn.dst, x.insn.src):
            if 6 <= r <= 9:
                used[r - 6] = True
    return used


def _push_callee_regs(e: Emitter, used) -> None:
    if used[0]:
        e.emit1(0x53)  # push rbx
    if used[1]:
        e.emit2(0x41, 0x55)  # push r13
    if used[2]:
        e.emit2(0x41, 0x56)  # push r14
    if used[3]:
        e.emit2(0x41, 0x57)  # push r15


_POPS = ((3, bytes([0x41, 0x5F])), (2, bytes([0x41, 0x5E])), (1, bytes([0x41, 0x5D])), (0, b"\x5b"))


def _pop_callee_regs(e: Emitter, used, *, drop_one: bool = False) -> None:
    for k, code in _POPS:
        if used[k]:
            if drop_one:  # fault "missing-pop": the first pop is not emitted
                drop_one = False
                continue
            e.raw(code)


def _push_r9(e: Emitter) -> None:
    e.emit2(0x41, 0x51)


def _pop_r9(e: Emitter) -> None:
    e.emit2(0x41, 0x59)


def _push_r12(e: Emitter) -> None:
    e.emit2(0x41, 0x54)


def _pop_r12(e: Emitter) -> None:
    e.emit2(0x41, 0x5C)


@dataclass
class FuncJit:
    """bpf_int_jit_compile() state for one function."""

    f: XFunc
    opts: JitOptions
    is_subprog: bool
    exception_boundary: bool
    #: per-cpu frame pointer (priv_stack_ptr + guard + round_up(depth, 8)) or None
    priv_frame_ptr: int | None
    #: address of the this_cpu_off variable (gs:[] displacement)
    this_cpu_off: int
    #: symbol -> address ("helper:5", "kfunc:1", "return_thunk", "thunk:rcx", "func:<k>")
    resolve: Callable[[str], int]
    #: map name -> address of its struct bpf_array
    map_addr: Callable[[str], int]
    array_max_entries: int = 0x4C
    array_ptrs: int = 0x138
    prog_bpf_func: int = 0x48
    addrs: list[int] = field(default_factory=list)
    ctx: _Ctx = field(default_factory=_Ctx)
    code: bytes = b""
    pokes: list[PokeRecord] = field(default_factory=list)
    passes: int = 0
    _padding: bool = False
    _used: list[bool] | None = None
    _salt: int = 0
    #: per insn: (bytes, is ld_imm64) of a pure insn once emitted, else None
    _memo: list | None = None

    # ---- bpf_int_jit_compile() pass loop ------------------------------------

    def converge(self) -> int:
        """Passes without an image until the length stops changing."""
        n = len(self.f.insns)
        self.addrs = [64 * (k + 1) for k in range(n + 1)]
        self.ctx = _Ctx(cleanup_addr=64 * (n + 1))
        oldproglen = 0
        padding = False
        for p in range(MAX_PASSES):
            if not padding and p >= PADDING_PASSES:
                padding = True
            proglen = self._do_jit(None, padding, oldproglen)
            self.passes = p + 1
            if proglen == oldproglen:
                # the image pass is the next iteration of the kernel's loop
                self._padding = padding or p + 1 >= PADDING_PASSES
                return proglen
            oldproglen = proglen
        raise JitError(f"{self.f.name}: JIT did not converge in {MAX_PASSES} passes")

    def finalize(self, image: int, extra_pass: bool) -> bytes:
        """The image pass (and jit_subprogs' extra pass) at the final address."""
        oldproglen = self.addrs[-1] if self.addrs else 0
        # jit_subprogs() runs one more (padded) pass once every subprogram's
        # address is known. Here the image pass already sees the final
        # addresses, and a padded pass over sizes that did not change emits
        # no padding: the extra pass would reproduce these bytes exactly
        # (checked on generated systems with every fault), so it is not run.
        self._do_jit(image, self._padding or extra_pass, oldproglen, final=True)
        return self.code

    # ---- emit_prologue() ----------------------------------------------------

    def _emit_prologue(self, e: Emitter, stack_depth: int) -> None:
        tcr = self.f.tail_call_reachable
        e.nops(X86_PATCH_SIZE)
        # fault "tcc-reset-in-subprog": subprogs start a counter of their own
        fresh = not self.is_subprog or self.opts.has("tcc-reset-in-subprog")
        if self.opts.by_value:
            if tcr and not self.is_subprog:
                e.emit2(0x31, 0xC0)  # xor eax, eax
            else:
                e.emit2(0x66, 0x90)  # nop2
        elif tcr and fresh:
            e.emit3(0x48, 0x31, 0xC0)  # xor rax, rax
        else:
            e.nops(3)
        if self.f.exception_cb:
            e.emit3(0x48, 0x89, 0xF4)  # mov rsp, rsi
            e.emit3(0x48, 0x89, 0xD5)  # mov rbp, rdx
            _pop_callee_regs(e, ALL_CALLEE_REGS)
            _pop_r12(e)
            e.emit3(0x48, 0x89, 0xEC)  # mov rsp, rbp
        else:
            e.emit1(0x55)  # push rbp
            e.emit3(0x48, 0x89, 0xE5)  # mov rbp, rsp
        # X86_TAIL_CALL_OFFSET is here
        if stack_depth:
            e.emit3_off32(0x48, 0x81, 0xEC, round_up(stack_depth, 8))
        if tcr and self.opts.by_value:
            e.emit1(0x50)  # push rax: the count, by value
        elif tcr:
            self._emit_prologue_tail_call(e)

    def _emit_prologue_tail_call(self, e: Emitter) -> None:
        if not self.is_subprog or self.opts.has("tcc-reset-in-subprog"):
            e.emit4(0x48, 0x83, 0xF8, self.opts.max_tail_calls)  # cmp rax, MAX
            e.emit2(X86_JA, 6)  # ja 6
            e.emit1(0x50)  # push rax (the count)
            e.emit3(0x48, 0x89, 0xE0)  # mov rax, rsp
            e.emit2(0xEB, 1)  # jmp 1
            e.emit1(0x50)  # push rax (already a pointer)
            e.emit1(0x50)  # push rax: tail_call_cnt_ptr
        elif self.opts.has("tcc-by-value"):
            # 2020 design: the caller passed the count by value; the subprog
            # keeps a private copy and points its own slot at it.
            e.emit1(0x50)  # push rax (count value)
            e.emit3(0x48, 0x89, 0xE0)  # mov rax, rsp
            e.emit1(0x50)  # push rax
        else:
            e.emit1(0x50)
            e.emit1(0x50)

    # ---- calls and jumps ----------------------------------------------------

    def _emit_patch(self, e: Emitter, func: int, ip: int, opcode: int, final: bool) -> None:
        offset = func - (ip + X86_PATCH_SIZE)
        if final and not is_simm32(offset):
            raise JitError(f"Target call {func:#x} is out of range")
        e.emit1_off32(opcode, offset)

    @property
    def _boundary_r12(self) -> bool:
        # fault "boundary-missing-r12": the boundary neither pushes nor pops r12
        return self.exception_boundary and not self.opts.has("boundary-missing-r12")

    def _pop_for_tail_call(self, e: Emitter, used) -> None:
        drop = self.opts.has("missing-pop")
        if self.exception_boundary:
            _pop_callee_regs(e, ALL_CALLEE_REGS, drop_one=drop)
            if self._boundary_r12:
                _pop_r12(e)
        else:
            _pop_callee_regs(e, used, drop_one=drop)

    def _leave_frame_for_tail_call(self, e: Emitter, used, stack_depth: int) -> None:
        """Callee-saved pops, the counter slot(s), the BPF stack: the frame is gone."""
        self._pop_for_tail_call(e, used)
        e.emit1(0x58)  # pop rax (6.18: tail_call_cnt_ptr; 5.10: the count)
        if not self.opts.by_value:
            e.emit1(0x58)  # pop rax (count, or the caller's pointer in a subprog)
        # fault "tail-call-frame-mismatch": the BPF stack is left allocated
        if stack_depth and not self.opts.has("tail-call-frame-mismatch"):
            e.emit3_off32(0x48, 0x81, 0xC4, round_up(stack_depth, 8))  # add rsp, sd

    def _emit_counter_check(self, e: Emitter, stack_depth: int, out: Callable[[], int]) -> None:
        """``if (tail_call_cnt >= MAX) goto out``; 5.10 also counts here."""
        opts = self.opts
        if opts.by_value:
            # 5.10: tcc_off = -4 - round_up(stack_depth, 8), a dword
            tcc_off = -4 - round_up(stack_depth, 8)
            e.emit2_off32(0x8B, 0x85, tcc_off)  # mov eax, dword ptr [rbp - tcc_off]
            e.emit3(0x83, 0xF8, opts.max_tail_calls - 1)  # cmp eax, MAX_TAIL_CALL_CNT (32)
            e.emit2(X86_JA, out())  # ja out
            e.emit3(0x83, 0xC0, 0x01)  # add eax, 1
            e.emit2_off32(0x89, 0x85, tcc_off)  # mov dword ptr [rbp - tcc_off], eax
            return
        e.emit3_off32(0x48, 0x8B, 0x85, -16 - round_up(stack_depth, 8))  # mov rax, [rbp - ptr]
        # fault "tcc-limit-32": MAX - 1 with jae, 32 tail calls
        limit = opts.max_tail_calls - (1 if opts.has("tcc-limit-32") else 0)
        e.emit4(0x48, 0x83, 0x38, limit)  # cmp qword ptr [rax], MAX
        jcc = X86_JA if opts.has("tcc-limit-off-by-one") else X86_JAE
        e.emit2(jcc, out())  # jae out
        if opts.has("tcc-inc-before-null-check"):
            e.emit4(0x48, 0x83, 0x00, 0x01)  # add qword ptr [rax], 1

    def _emit_counter_increment(self, e: Emitter) -> None:
        """6.18: the increment, once the target is known to exist."""
        if not self.opts.by_value and not self.opts.has("tcc-inc-before-null-check"):
            e.emit4(0x48, 0x83, 0x00, 0x01)  # add qword ptr [rax], 1

    def _tail_call_indirect(
        self, e: Emitter, used, stack_depth: int, ip: int, final: bool, proglen: int
    ) -> None:
        ctx = self.ctx
        opts = self.opts
        # fault "stale-out-label": the out label is kept as a function offset,
        # so each sequence jumps to the out of the previous indirect tail call
        # emitted (this pass, or the last one of the previous pass)
        base = proglen if opts.has("stale-out-label") else 0

        def out() -> int:  # displacement of a 2-byte jcc emitted next
            return ctx.tail_call_indirect_label - (base + len(e) + 2)

        if opts.has("tail-call-clobbers-ctx"):
            e.emit3(0x48, 0x89, 0xC7)  # mov rdi, rax: R1 := R0
        if opts.has("index-64bit"):
            # no mov edx, edx; the bound check compares all 64 bits of rdx
            e.emit4(0x48, 0x39, 0x56, self.array_max_entries)  # cmp qword ptr [rsi+0x4c], rdx
        else:
            e.emit2(0x89, 0xD2)  # mov edx, edx
            e.emit3(0x39, 0x56, self.array_max_entries)  # cmp dword ptr [rsi + 0x4c], edx
        e.emit2(X86_JBE, out())  # jbe out
        self._emit_counter_check(e, stack_depth, out)
        e.emit4_off32(0x48, 0x8B, 0x8C, 0xD6, self.array_ptrs)  # mov rcx, [rsi+rdx*8+ptrs]
        e.emit3(0x48, 0x85, 0xC9)  # test rcx, rcx
        e.emit2(X86_JE, out())  # je out
        self._emit_counter_increment(e)
        self._leave_frame_for_tail_call(e, used, stack_depth)
        e.emit4(0x48, 0x8B, 0x49, self.prog_bpf_func)  # mov rcx, [rcx + bpf_func]
        e.emit4(0x48, 0x83, 0xC1, opts.tail_jump_offset)  # add rcx, X86_TAIL_CALL_OFFSET
        # emit_indirect_jump(): retpoline thunk
        self._emit_patch(e, self.resolve("thunk:rcx"), ip + len(e), 0xE9, final)
        ctx.tail_call_indirect_label = base + len(e)

    def _tail_call_direct(
        self, e: Emitter, poke: int, used, stack_depth: int, ip: int, final: bool
    ) -> None:
        ctx = self.ctx
        if self.opts.has("tail-call-clobbers-ctx"):
            e.emit3(0x48, 0x89, 0xC7)  # mov rdi, rax: R1 := R0
        self._emit_counter_check(
            e, stack_depth, lambda: ctx.tail_call_direct_label - (len(e) + 2)
        )  # jae out
        bypass = len(e)
        target = ctx.tail_call_direct_label - X86_PATCH_SIZE
        out = target + X86_PATCH_SIZE
        self._emit_patch(e, ip + out, ip + bypass, 0xE9, final)  # jmp out (bypass site)
        self._emit_counter_increment(e)
        self._leave_frame_for_tail_call(e, used, stack_depth)
        e.nops(X86_PATCH_SIZE)  # target site
        ctx.tail_call_direct_label = len(e)
        self._cur_poke = PokeRecord(poke, bypass, target, out)

    # ---- do_jit() -----------------------------------------------------------

    def _do_jit(
        self, image: int | None, padding: bool, oldproglen: int, final: bool = False
    ) -> int:
        f, opts, addrs, ctx = self.f, self.opts, self.addrs, self.ctx
        base = image or 0
        stack_depth = f.stack_depth
        priv = self.priv_frame_ptr
        if priv is not None:
            stack_depth = 0
        if self._used is None:
            self._used = _detect_reg_usage(f)
            # the options as a small int: a dataclass hashes its fields every time
            self._salt = _OPTIONS.setdefault(opts, len(_OPTIONS))
            self._memo = [None] * len(f.insns)
        memo, salt = self._memo, self._salt
        used = self._used
        out = bytearray()
        pokes: list[PokeRecord] = []

        e = Emitter()
        self._emit_prologue(e, stack_depth)
        if self.exception_boundary:
            if self._boundary_r12:
                _push_r12(e)
            _push_callee_regs(e, ALL_CALLEE_REGS)
        else:
            _push_callee_regs(e, used)
        if priv is not None:
            # emit_priv_frame_ptr(): movabs r9, ptr; add r9, gs:[this_cpu_off]
            e.mov_imm64(X86_REG_R9, priv >> 32, priv & 0xFFFFFFFF)
            e.emit2(0x65, 0x4C)
            e.emit3(0x03, 0x0C, 0x25)
            e.emit(self.this_cpu_off & 0xFFFFFFFF, 4)
        out += e.buf
        proglen = len(e)
        addrs[0] = proglen
        seen_exit = False
        insns = f.insns
        n = len(insns)
        i = 1
        while i <= n:
            orig_i = i
            hit = memo[i - 1]
            if hit is not None:  # a pure insn this function emitted in an earlier pass
                if hit[1]:
                    i += 1
                ilen = len(hit[0])
                if image is not None and proglen + ilen != addrs[i]:
                    raise JitError("bpf_jit: fatal error (image pass changed an insn size)")
                out += hit[0]
                proglen += ilen
                addrs[i] = proglen
                i += 1
                continue
            x = insns[i - 1]
            insn = x.insn
            imm32 = insn.imm
            dst, src = insn.dst, insn.src
            if priv is not None:
                if src == 10:
                    src = X86_REG_R9
                if dst == 10:
                    dst = X86_REG_R9
            code = insn.opcode
            c = code & 0x07
            key = None
            if c in _PURE_CLASSES:
                key = (code, dst, src, insn.off, imm32, salt)
            elif code == isa.LD_IMM64:
                if x.map_ref is not None:
                    value = self.map_addr(x.map_ref[0]) + x.map_ref[1]
                else:
                    value = (insns[i].insn.imm << 32) | (imm32 & 0xFFFFFFFF)
                key = (code, dst, value & ((1 << 64) - 1), salt)
            if key is not None:
                hit = _PURE.get(key)
                if hit is not None:  # emitted before: the memo path above takes it
                    memo[i - 1] = (hit, code == isa.LD_IMM64)
                    continue
            op = code & 0xF0
            is64 = c == isa.ALU64
            e = Emitter()
            jmp_offset: int | None = None  # set -> emit_jmp

            if (
                c in (isa.ALU, isa.ALU64)
                and op in (isa.ADD, isa.SUB, isa.AND, isa.OR, isa.XOR)
                and code & isa.X
            ):
                e.maybe_emit_mod(dst, src, is64)
                e.emit2(SIMPLE_ALU[op], add_2reg(0xC0, dst, src))
            elif c in (isa.ALU, isa.ALU64) and op == isa.MOV and code & isa.X:
                if insn.off == 0:
                    # fault "mov32-self-elided": w = w skipped like EMIT_mov's r = r
                    if not (dst == src and opts.has("mov32-self-elided")):
                        e.mov_reg(is64, dst, src)
                else:
                    e.movsx_reg(insn.off, is64, dst, src, rex_w=not opts.has("movsx64-no-rexw"))
            elif c in (isa.ALU, isa.ALU64) and op == isa.NEG:
                # fault "neg32-as-64": REX.W on the 32-bit neg too
                e.maybe_emit_1mod(dst, is64 or opts.has("neg32-as-64"))
                e.emit2(0xF7, add_1reg(0xD8, dst))
            elif c in (isa.ALU, isa.ALU64) and op in (isa.ADD, isa.SUB, isa.AND, isa.OR, isa.XOR):
                e.maybe_emit_1mod(dst, is64)
                b3, b2 = {
                    isa.ADD: (0xC0, 0x05),
                    isa.SUB: (0xE8, 0x2D),
                    isa.AND: (0xE0, 0x25),
                    isa.OR: (0xC8, 0x0D),
                    isa.XOR: (0xF0, 0x35),
                }[op]
                if is_imm8(imm32):
                    e.emit3(0x83, add_1reg(b3, dst), imm32)
                elif dst == 0:
                    e.emit1_off32(b2, imm32)
                else:
                    e.emit2_off32(0x81, add_1reg(b3, dst), imm32)
            elif c in (isa.ALU, isa.ALU64) and op == isa.MOV:
                # fault "mov32-imm-sign-extended": sign_propagate for ALU too
                e.mov_imm32(is64 or opts.has("mov32-imm-sign-extended"), dst, imm32)
            elif code == isa.LD_IMM64:
                lo, hi = insn.imm & 0xFFFFFFFF, insns[i].insn.imm & 0xFFFFFFFF
                if x.map_ref is not None:
                    value = (self.map_addr(x.map_ref[0]) + x.map_ref[1]) & ((1 << 64) - 1)
                    lo, hi = value & 0xFFFFFFFF, value >> 32
                e.mov_imm64(dst, hi, lo, zext=not opts.has("ld-imm64-sign-extends"))
                i += 1
            elif c in (isa.ALU, isa.ALU64) and op in (isa.DIV, isa.MOD):
                self._emit_divmod(e, insn, dst, src, is64)
            elif c in (isa.ALU, isa.ALU64) and op == isa.MUL and not code & isa.X:
                e.maybe_emit_mod(dst, dst, is64)
                if is_imm8(imm32):
                    e.emit3(0x6B, add_2reg(0xC0, dst, dst), imm32)
                else:
                    e.emit2_off32(0x69, add_2reg(0xC0, dst, dst), imm32)
            elif c in (isa.ALU, isa.ALU64) and op == isa.MUL:
                e.maybe_emit_mod(src, dst, is64)
                e.emit3(0x0F, 0xAF, add_2reg(0xC0, src, dst))
            elif (
                c in (isa.ALU, isa.ALU64)
                and op in (isa.LSH, isa.RSH, isa.ARSH)
                and not code & isa.X
            ):
                if imm32 == 0 and opts.has("shift32-by-0-elided"):
                    pass  # "a shift by 0 changes nothing": but shl edi, 0 zero-extends
                else:
                    e.maybe_emit_1mod(dst, is64)
                    b3 = SIMPLE_ALU[op]
                    if imm32 == 1:
                        e.emit2(0xD1, add_1reg(b3, dst))
                    else:
                        e.emit3(0xC1, add_1reg(b3, dst), imm32)
            elif c in (isa.ALU, isa.ALU64) and op in (isa.LSH, isa.RSH, isa.ARSH):
                self._emit_shift_x(e, insn, dst, src, is64)
            elif c in (isa.ALU, isa.ALU64) and op == isa.END:
                self._emit_end(e, code, dst, imm32, movzx=not opts.has("bswap16-no-movzx"))
            elif c == isa.ST and code & 0xE0 == isa.MEM:
                size = code & 0x18
                if size == isa.B:
                    e.emit2(0x41, 0xC6) if is_ereg(dst) else e.emit1(0xC6)
                elif size == isa.H:
                    e.emit3(0x66, 0x41, 0xC7) if is_ereg(dst) else e.emit2(0x66, 0xC7)
                elif size == isa.W:
                    e.emit2(0x41, 0xC7) if is_ereg(dst) else e.emit1(0xC7)
                else:
                    e.emit2(add_1mod(0x48, dst), 0xC7)
                if is_imm8(insn.off):
                    e.emit2(add_1reg(0x40, dst), insn.off)
                else:
                    e.emit1_off32(add_1reg(0x80, dst), insn.off)
                e.emit(imm32, {isa.B: 1, isa.H: 2, isa.W: 4, isa.DW: 4}[size])
            elif c == isa.STX and code & 0xE0 == isa.MEM:
                e.stx(code & 0x18, dst, src, insn.off, rex_8l=not opts.has("stx-byte-no-rex"))
            elif c == isa.LDX and code & 0xE0 in (isa.MEM, isa.MEMSX):
                if code & 0xE0 == isa.MEMSX:
                    e.ldsx(code & 0x18, dst, src, insn.off, movzx=opts.has("ldsx-movzx"))
                else:
                    e.ldx(code & 0x18, dst, src, insn.off)
            elif c == isa.STX and code & 0xE0 == isa.ATOMIC:
                self._emit_atomic_insn(e, insn, dst, src)
            elif code == isa.JMP | isa.CALL:
                ip = base + addrs[i - 1]
                if x.call is None:
                    raise JitError("call without a resolved target")
                func = self.resolve(x.call)
                pseudo = insn.src == isa.PSEUDO_CALL
                if opts.by_value:
                    if f.tail_call_reachable:
                        # 5.10, before every call: mov rax, qword ptr
                        # [rbp - (aux->stack_depth + 8)], the depth unrounded;
                        # 6.1 has the fix: round_up(stack_depth, 8)
                        raw = (
                            f.raw_stack_depth
                            if opts.design == LINUX_5_10
                            else round_up(stack_depth, 8)
                        )
                        e.emit3_off32(0x48, 0x8B, 0x85, -(raw + 8))
                elif pseudo and f.tail_call_reachable and not opts.has("tcc-ptr-not-reloaded"):
                    # LOAD_TAIL_CALL_CNT_PTR(stack_depth); fault
                    # "tcc-slot-unrounded" addresses it with the raw depth
                    depth = round_up(stack_depth, 8)
                    if opts.has("tcc-slot-unrounded"):
                        depth = f.raw_stack_depth
                    e.emit3_off32(0x48, 0x8B, 0x85, -16 - depth)
                    if opts.has("tcc-by-value"):
                        e.emit3(0x48, 0x8B, 0x00)  # mov rax, [rax]: pass the value
                save_r9 = priv is not None and (pseudo or not opts.has("r9-not-saved"))
                if save_r9:
                    _push_r9(e)
                self._emit_patch(e, func, ip + len(e), 0xE8, final)
                if save_r9:
                    _pop_r9(e)
            elif code == BPF_TAIL_CALL:
                ip = base + addrs[i - 1]
                if imm32:
                    self._tail_call_direct(e, imm32 - 1, used, stack_depth, ip, final)
                    rec = self._cur_poke
                    pokes.append(
                        PokeRecord(
                            rec.poke,
                            proglen + rec.bypass,
                            proglen + rec.target,
                            proglen + rec.out,
                        )
                    )
                else:
                    self._tail_call_indirect(e, used, stack_depth, ip, final, proglen)
            elif c in (isa.JMP, isa.JMP32) and op not in (isa.JA, isa.CALL, isa.EXIT):
                jmp_cond = self._emit_cmp(e, insn, dst, src, c == isa.JMP)
                off = addrs[i + insn.off] - addrs[i]
                if is_imm8_jmp_offset(off):
                    if padding:
                        nops = (addrs[i] - addrs[i - 1]) - len(e) - 2
                        if nops not in (0, 4):
                            raise JitError(f"unexpected jmp_cond padding: {nops} bytes")
                        e.nops(nops)
                    e.emit2(jmp_cond, off)
                elif is_simm32(off):
                    e.emit2_off32(0x0F, jmp_cond + 0x10, off)
                else:
                    raise JitError(f"cond_jmp gen bug {off:x}")
            elif code in (isa.JMP | isa.JA, isa.JMP32 | isa.JA):
                # fault "gotol-uses-off": the pre-6.6 code, off for both classes
                rel = insn.off if c == isa.JMP or opts.has("gotol-uses-off") else insn.imm
                off = -2 if rel == -1 else addrs[i + rel] - addrs[i]
                if off == 0:
                    if padding:
                        nops = (addrs[i] - addrs[i - 1]) - len(e)
                        if nops not in (0, 2, 5):
                            raise JitError(f"unexpected nop jump padding: {nops} bytes")
                        e.nops(nops)
                else:
                    jmp_offset = off
            elif code == isa.JMP | isa.EXIT:
                if seen_exit:
                    jmp_offset = ctx.cleanup_addr - addrs[i]
                else:
                    seen_exit = True
                    ctx.cleanup_addr = proglen
                    if self.exception_boundary:
                        _pop_callee_regs(e, ALL_CALLEE_REGS)
                        if self._boundary_r12:
                            _pop_r12(e)
                    else:
                        _pop_callee_regs(e, used)
                    e.emit1(0xC9)  # leave
                    # emit_return(): jmp x86_return_thunk
                    ip = base + addrs[i - 1] + len(e)
                    self._emit_patch(e, self.resolve("return_thunk"), ip, 0xE9, final)
            else:
                raise Unsupported(f"bpf_jit: unknown opcode {code:02x}")

            if jmp_offset is not None:  # emit_jmp:
                if is_imm8_jmp_offset(jmp_offset):
                    if padding:
                        nops = (addrs[i] - addrs[i - 1]) - len(e) - 2
                        if nops not in (0, 3):
                            raise JitError(f"unexpected jump padding: {nops} bytes")
                        e.nops(nops)
                    e.emit2(0xEB, jmp_offset)
                elif is_simm32(jmp_offset):
                    e.emit1_off32(0xE9, jmp_offset)
                else:
                    raise JitError(f"jmp gen bug {jmp_offset:x}")

            ilen = len(e)
            if ilen > 128:
                raise JitError("bpf_jit: fatal insn size error")
            if image is not None and (proglen + ilen > oldproglen or proglen + ilen != addrs[i]):
                raise JitError("bpf_jit: fatal error (image pass changed an insn size)")
            if key is not None:
                if len(_PURE) >= _PURE_MAX:
                    _PURE.clear()
                hit = _PURE[key] = bytes(e.buf)
                memo[orig_i - 1] = (hit, code == isa.LD_IMM64)
            out += e.buf
            proglen += ilen
            addrs[i] = proglen
            i += 1

        if image is not None:
            self.code = bytes(out)
            self.pokes = pokes
        return proglen

    # ---- instruction groups -------------------------------------------------

    def _emit_divmod(self, e: Emitter, insn: isa.Insn, dst: int, src: int, is64: bool) -> None:
        code = insn.opcode
        if dst != 0:
            e.emit1(0x50)  # push rax
        if dst != 3:
            e.emit1(0x52)  # push rdx
        # fault "div-src-rdx-not-saved": only rax is moved out of the way
        clobbered = (0,) if self.opts.has("div-src-rdx-not-saved") else (0, 3)
        if code & isa.X:
            if src in clobbered:
                e.mov(AUX_REG, src)  # mov r11, src_reg
                src = AUX_REG
        else:
            e.emit3_off32(0x49, 0xC7, 0xC3, insn.imm)  # mov r11, imm32
            src = AUX_REG
        if dst != 0:
            e.mov_reg(is64, 0, dst)  # mov rax, dst_reg
        if insn.off == 0:
            e.emit2(0x31, 0xD2)  # xor edx, edx
            e.maybe_emit_1mod(src, is64)
            e.emit2(0xF7, add_1reg(0xF0, src))  # div src_reg
        else:
            if self.opts.has("sdiv-zero-extends-dividend"):
                e.emit2(0x31, 0xD2)  # xor edx, edx: the unsigned path's set-up
            elif not is64:
                e.emit1(0x99)  # cdq
            else:
                e.emit2(0x48, 0x99)  # cqo
            e.maybe_emit_1mod(src, is64)
            e.emit2(0xF7, add_1reg(0xF8, src))  # idiv src_reg
        op = code & 0xF0
        if op == isa.MOD and dst != 3:
            e.mov_reg(is64, dst, 3)  # mov dst_reg, rdx
        elif op == isa.DIV and dst != 0:
            e.mov_reg(is64, dst, 0)  # mov dst_reg, rax
        if dst != 3:
            e.emit1(0x5A)  # pop rdx
        if dst != 0:
            e.emit1(0x58)  # pop rax

    def _emit_shift_x(self, e: Emitter, insn: isa.Insn, dst: int, src: int, is64: bool) -> None:
        op = insn.opcode & 0xF0
        # fault "shift32-by-reg-as-64": the 64-bit form for ALU32 too
        is64 = is64 or self.opts.has("shift32-by-reg-as-64")
        if self.opts.bmi2 and src != 4:
            pp = {isa.LSH: 1, isa.RSH: 3, isa.ARSH: 2}[op]
            e.shiftx(dst, src, is64, pp)
            return
        orig_dst = insn.dst
        if src != 4:
            if dst == 4:
                e.mov(AUX_REG, dst)  # mov r11, dst_reg
                dst = AUX_REG
            else:
                e.emit1(0x51)  # push rcx
            e.mov(4, src)  # mov rcx, src_reg
        e.maybe_emit_1mod(dst, is64)
        e.emit2(0xD3, add_1reg(SIMPLE_ALU[op], dst))
        if src != 4:
            if orig_dst == 4:
                e.mov(orig_dst, AUX_REG)
            else:
                e.emit1(0x59)  # pop rcx

    def _emit_end(self, e: Emitter, code: int, dst: int, imm32: int, movzx: bool = True) -> None:
        """``movzx=False`` is fault "bswap16-no-movzx" (the swap leaves bits 16-63)."""
        if code in (isa.ALU | isa.END | isa.TO_BE, isa.ALU64 | isa.END | isa.TO_LE):
            if imm32 == 16:
                e.emit1(0x66)  # ror ax, 8
                if is_ereg(dst):
                    e.emit1(0x41)
                e.emit3(0xC1, add_1reg(0xC8, dst), 8)
                if not movzx:
                    return
                if is_ereg(dst):  # movzwl eax, ax
                    e.emit3(0x45, 0x0F, 0xB7)
                else:
                    e.emit2(0x0F, 0xB7)
                e.emit1(add_2reg(0xC0, dst, dst))
            elif imm32 == 32:
                if is_ereg(dst):  # bswap eax
                    e.emit2(0x41, 0x0F)
                else:
                    e.emit1(0x0F)
                e.emit1(add_1reg(0xC8, dst))
            elif imm32 == 64:
                e.emit3(add_1mod(0x48, dst), 0x0F, add_1reg(0xC8, dst))  # bswap rax
        else:  # BPF_ALU | BPF_END | BPF_FROM_LE
            if imm32 == 16:
                if is_ereg(dst):
                    e.emit3(0x45, 0x0F, 0xB7)
                else:
                    e.emit2(0x0F, 0xB7)
                e.emit1(add_2reg(0xC0, dst, dst))
            elif imm32 == 32:
                if is_ereg(dst):
                    e.emit1(0x45)
                e.emit2(0x89, add_2reg(0xC0, dst, dst))

    def _emit_atomic_insn(self, e: Emitter, insn: isa.Insn, dst: int, src: int) -> None:
        size = insn.opcode & 0x18
        imm = insn.imm
        rex_w = self.opts.has("atomic32-as-64")
        if imm in (isa.AND | isa.FETCH, isa.OR | isa.FETCH, isa.XOR | isa.FETCH):
            from .encoder import BPF_REG_AX

            is64 = size == isa.DW
            real_src, real_dst = src, dst
            e.mov_reg(True, BPF_REG_AX, 0)  # save R0
            if src == 0:
                real_src = BPF_REG_AX
            if dst == 0:
                real_dst = BPF_REG_AX
            branch_target = len(e)
            e.ldx(size, 0, real_dst, insn.off)  # load old value
            e.mov_reg(is64, AUX_REG, 0)
            e.maybe_emit_mod(AUX_REG, real_src, is64)
            e.emit2(SIMPLE_ALU[imm & 0xF0], add_2reg(0xC0, AUX_REG, real_src))
            e.atomic(isa.CMPXCHG, real_dst, AUX_REG, insn.off, size, rex_w=rex_w)
            e.emit2(X86_JNE, -(len(e) - branch_target) - 2)
            e.mov_reg(is64, real_src, 0)
            e.mov_reg(True, 0, BPF_REG_AX)
            return
        e.atomic(imm, dst, src, insn.off, size, rex_w=rex_w)

    def _emit_cmp(self, e: Emitter, insn: isa.Insn, dst: int, src: int, is64: bool) -> int:
        code, op = insn.opcode, insn.opcode & 0xF0
        imm32 = insn.imm
        if op == isa.JSET and self.opts.has("jmp32-jset-64bit"):
            is64 = True  # REX.W on the test: bits 32-63 count
        if code & isa.X:
            if op != isa.JSET and self.opts.has("jmp-reg-operands-swapped"):
                dst, src = src, dst  # cmp src_reg, dst_reg: the condition reads backwards
            e.maybe_emit_mod(dst, src, is64)
            e.emit2(0x85 if op == isa.JSET else 0x39, add_2reg(0xC0, dst, src))
        elif op == isa.JSET:
            e.maybe_emit_1mod(dst, is64)
            e.emit2_off32(0xF7, add_1reg(0xC0, dst), imm32)  # test dst, imm32
        elif imm32 == 0:
            e.maybe_emit_mod(dst, dst, is64)
            e.emit2(0x85, add_2reg(0xC0, dst, dst))  # test dst, dst
        else:
            e.maybe_emit_1mod(dst, is64)
            if is_imm8(imm32):
                e.emit3(0x83, add_1reg(0xF8, dst), imm32)
            else:
                e.emit2_off32(0x81, add_1reg(0xF8, dst), imm32)
        return {
            isa.JEQ: X86_JE,
            isa.JSET: X86_JNE,
            isa.JNE: X86_JNE,
            isa.JGT: X86_JA,
            isa.JLT: X86_JB,
            isa.JGE: X86_JAE,
            isa.JLE: X86_JBE,
            isa.JSGT: X86_JG,
            isa.JSLT: X86_JL,
            isa.JSGE: X86_JGE,
            # fault "jmp32-jsle-unsigned": JMP32's s<= takes the unsigned jbe
            isa.JSLE: X86_JBE
            if code & 0x07 == isa.JMP32 and self.opts.has("jmp32-jsle-unsigned")
            else X86_JLE,
        }[op]


__all__ += ["NOP5"]
