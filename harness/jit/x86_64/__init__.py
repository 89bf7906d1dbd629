"""A model of the Linux 6.18 x86-64 BPF JIT, byte for byte.

``Variant`` selects what is emitted: the tail-call design (``DESIGNS``: the
6.18 counter-pointer scheme, or the 2020 by-value scheme of ``linux-5.10``,
see ``codegen``) and injected bugs (``FAULTS``, one or more per bug class of
``bug-classes.md`` and per instruction family; each changes bytes only in
programs that use its feature).

``compile_system`` runs a model of the verifier's rewrites (``fixups``), then a
port of ``bpf_int_jit_compile``/``do_jit`` (``codegen``) for every function of
every program, places the images kernel-like and applies the initial state of
the direct tail-call poke sites (``bpf_tail_call_direct_fixup``).

Address space of a compiled system (all distinct, nothing overlaps):

* code: function images from ``0xffffffffc0001000``, each page aligned, the
  next one starting on the first page boundary after the previous image's end
  plus one byte (so two images never touch);
* ``struct bpf_array`` of map ``i``: ``0xffff888100000000 + i * 0x10000``
  (array values at ``+ layout.array_ptrs``, prog-array slots likewise);
* ``struct bpf_prog`` of program ``i``: ``0xffff888110000000 + i * 0x1000``;
* external code: one 16-byte slot each from ``0xffffffff81000000``
  (``return_thunk`` slot 0, ``thunk:rcx`` slot 1, ``helper:<id>`` slot
  ``0x100 + id``, ``kfunc:<n>`` slot ``0x200 + n``), listed in ``symbols``;
* ``this_cpu_off`` lives at ``0xffffffff82000000`` (data, not a symbol). The
  model's per-cpu base is **0**: the executor stores 0 at
  ``GS_BASE + this_cpu_off`` and a per-cpu pointer is then the address itself;
* private stacks: one region per function, ``0xffff888120000000 + k * 0x1000``,
  ``round_up(depth, 8) + 16`` bytes (two 8-byte guards), frame pointer at
  ``region + 8 + round_up(depth, 8)``; listed in ``percpu_regions``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from harness.errors import CaseError, Unsupported
from harness.native.image import (
    KERNEL_LAYOUT,
    PRIV_STACK_GUARD_SZ,
    NativeFunc,
    NativeProg,
    NativeSystem,
    PokeSite,
)
from harness.reference.profile import LINUX, Profile
from harness.system import Case

from .codegen import (
    BY_VALUE,
    ENTRY_SHORTFALL,
    LINUX_5_10,
    LINUX_6_1,
    LINUX_6_18,
    TAIL_CALL_OFFSETS,
    X86_TAIL_CALL_OFFSET,
    FuncJit,
    JitError,
    JitOptions,
)
from .encoder import NOP5
from .fixups import XProg, round_up, translate

__all__ = [
    "Variant",
    "FAULTS",
    "FAULT_SYMPTOMS",
    "DESIGNS",
    "compile_system",
    "poke_transition",
    "apply_patches",
    "listing",
    "JitError",
    "X86_TAIL_CALL_OFFSET",
    "CODE_BASE",
    "MAP_BASE",
    "PROG_BASE",
    "SYMBOL_BASE",
    "THIS_CPU_OFF",
    "PERCPU_BASE",
    "symbol_address",
]

CODE_BASE = 0xFFFFFFFFC0001000
MAP_BASE = 0xFFFF888100000000
MAP_STRIDE = 0x10000
PROG_BASE = 0xFFFF888110000000
PROG_STRIDE = 0x1000
SYMBOL_BASE = 0xFFFFFFFF81000000
THIS_CPU_OFF = 0xFFFFFFFF82000000
PERCPU_BASE = 0xFFFF888120000000
PAGE = 0x1000

#: Tail-call designs ``Variant.design`` can select (codegen module doc).
DESIGNS: dict[str, str] = {
    LINUX_6_18: "counter in the entry frame, a pointer to it in every frame (6.10+); "
    "tail calls enter at +12",
    LINUX_5_10: "2020 design (v5.10-v6.9): count by value in rax, pushed below the BPF "
    "stack; subprogs get a copy (tailcall hierarchy bug); tail calls enter at +11; the "
    "count reloaded from the unrounded stack depth (fixed 2022)",
    LINUX_6_1: "the 2020 design with the 2022 reload-offset fix (6.1-6.9 LTS): carries "
    "only the tailcall hierarchy bug",
}

#: Injectable bugs: "bug class: what the emitted code does wrong (kernel history)".
FAULTS: dict[str, str] = {
    "tcc-limit-off-by-one": "limit arithmetic: the counter check is ja instead of jae, "
    "34 tail calls (the >/>= slip every JIT re-derived)",
    "tcc-limit-32": "limit arithmetic: counter compared against 32 with jae, 32 tail calls "
    "(the pre-2022 32/33 split, ebf7f6f0a6cd)",
    "tcc-inc-before-null-check": "empty slot budget: the counter is bumped before the "
    "empty-slot check (indirect) / before the bypass site (direct); a failed call costs "
    "budget (what 5.10 and the interpreter do)",
    "index-64bit": "u32 index: no mov edx, edx and the bound check is cmp qword "
    "[rsi+0x4c], rdx; ptrs[] indexed by all of rdx",
    "tcc-by-value": "counter by value: subprogs get *tcc_ptr (mov rax, [rax]) and point "
    "at a private copy; tail calls counted inside a subprog are lost on return "
    "(the tailcall hierarchy bug, 2020-2024)",
    "tcc-reset-in-subprog": "counter reset on another entry path: subprog prologues "
    "run the entry program's xor rax, rax + counter setup instead of using rax",
    "tcc-slot-unrounded": "wrong counter slot: the reload before a bpf2bpf call reads "
    "[rbp - stack_depth - 16] with the unrounded depth (5.10-6.0's "
    "-(stack_depth + 8), fixed in 2022)",
    "tail-entry-offset": "hard-coded tail-call entry offset: tail calls enter 4 bytes "
    "early, at push rbp (an ENDBR-sized mismatch of X86_TAIL_CALL_OFFSET)",
    "tail-call-frame-mismatch": "prologue skipped, epilogue run: the tail-call path "
    "omits add rsp, rs; the target builds its frame below the caller's stale stack",
    "missing-pop": "prologue skipped, epilogue run: the tail-call path omits the first "
    "callee-saved pop",
    "tail-call-clobbers-ctx": "register clobbered on the tail-call path: mov rdi, rax "
    "(R1 := R0) at the start of every tail-call sequence",
    "tcc-ptr-not-reloaded": "register clobbered: no mov rax, [rbp - rs - 16] before "
    "bpf2bpf calls; the subprog takes whatever R0 holds as the counter pointer "
    "(riscv a6 / x86 rax history)",
    "r9-not-saved": "private stack frame pointer: r9 not pushed/popped around helper "
    "and kfunc calls",
    "priv-stack-shared": "stack accounting: every function of a program gets the first "
    "function's private stack area, so caller and callee frames overlap",
    "stale-out-label": "out label offsets: the indirect out label is kept as a function "
    "offset; a failed call jumps to the previous sequence's out (forward for the first, "
    "backwards for the others)",
    "boundary-missing-r12": "exceptions: the boundary neither pushes nor pops r12 but "
    "the exception callback still pops five registers",
    "stale-poke": "direct tail-call poking: jmp->jmp leaves the target site unpatched",
    "poke-bypass-not-restored": "direct tail-call poking: on delete the target becomes "
    "nop5 but the bypass stays nop5; the failed call counts, pops the frame and falls "
    "through",
    "priv-stack-8-low": "private stack placement: the frame pointer is priv_stack_ptr + "
    "round_up(depth, 8), one guard short; the deepest slot lands on the overflow guard "
    "and nothing the program reads changes (bpf_int_jit_compile, emit_priv_frame_ptr)",
    "mov32-imm-sign-extended": "immediate loads: BPF_ALU | BPF_MOV | BPF_K calls "
    "emit_mov_imm32(sign_propagate=true), mov rdi, imm32 (48 c7) instead of mov edi, imm32; "
    "w1 = -1 sets all 64 bits",
    "ld-imm64-sign-extends": "immediate loads: emit_mov_imm64's is_uimm32 path calls "
    "emit_mov_imm32(sign_propagate=true); r1 = 0x80000000 ll becomes 0xffffffff80000000",
    "movsx64-no-rexw": "sign extension: emit_movsx_reg's 64-bit forms take the 32-bit "
    "prefix (add_2mod(0x40, ..) where 0x48 belongs); r = (s8/s16/s32)r leaves bits 32-63 zero",
    "ldsx-movzx": "sign extension: emit_ldsx loads bytes and half-words with emit_ldx's "
    "movzx (0f b6/0f b7) instead of movsx (0f be/0f bf)",
    "sdiv-zero-extends-dividend": "division: the signed (off=1) div/mod path sets rdx with "
    "the unsigned path's xor edx, edx instead of cdq/cqo; a negative dividend overflows "
    "idiv (#DE) or divides wrong",
    "div-src-rdx-not-saved": "division: a register divisor in rdx (BPF r3) is not moved "
    "to r11 before xor edx, edx; div/idiv divides by the zeroed rdx (#DE)",
    "shift32-by-reg-as-64": "shifts by register: ALU32 lsh/rsh/arsh by a register use the "
    "64-bit shlx/shrx/sarx (VEX.W=1; the D3 form without BMI2): no zero extension, count "
    "masked by 63",
    "bswap16-no-movzx": "byte swaps: be16/bswap16 emit ror ax, 8 without the movzwl "
    "eax, ax that clears bits 16-63",
    "atomic32-as-64": "atomics: emit_atomic puts REX.W on 32-bit atomics "
    "(maybe_emit_mod(.., true)); the op reads and writes 8 bytes, fetch returns 64 bits",
    "stx-byte-no-rex": "register encoding: emit_stx's byte store tests is_ereg(src) where "
    "is_ereg_8l belongs; r1/r2/r10 store bh/dh/ch instead of dil/sil/bpl (the 2020 "
    "BPF_STX byte-store fix)",
    "jmp32-jsle-unsigned": "jmp32 conditions: JMP32 JSLE takes X86_JBE (unsigned) "
    "instead of X86_JLE",
    "jmp32-jset-64bit": "jmp32 conditions: JMP32 JSET tests with REX.W, so bits 32-63 "
    "count (the x32 'JSET BPF_X checking upper bits' fix of 2020)",
    "mov32-self-elided": "32-bit zero extension: BPF_ALU | BPF_MOV | BPF_X with dst == src "
    "emits nothing, as EMIT_mov does for 64-bit; w = w (and the verifier's zext after "
    "cmpxchg32 and in mod32 patchlets) keeps bits 32-63",
    "gotol-uses-off": "jump offsets: BPF_JMP32 | BPF_JA (gotol) takes insn->off like "
    "BPF_JMP | BPF_JA instead of insn->imm; every gotol jumps to the next insn",
    "shift32-by-0-elided": "shifts by immediate: a shift by 0 emits nothing (it moves no "
    "bit), but the 32-bit shl/shr/sar by 0 is what zero-extends; w <<= 0 keeps bits 32-63",
    "neg32-as-64": "negation: BPF_ALU | BPF_NEG gets REX.W (maybe_emit_1mod(.., true)); "
    "w = -w negates all 64 bits",
    "jmp-reg-operands-swapped": "register comparisons: the BPF_X conditional jumps emit cmp "
    "src_reg, dst_reg (add_2reg's arguments swapped); every ordered comparison reads backwards",
}

#: Which oracle should fire first for each fault, and on what.
FAULT_SYMPTOMS: dict[str, str] = {
    "tcc-limit-off-by-one": "tail_calls (NTC 34, not 33); retval of a counting chain",
    "tcc-limit-32": "tail_calls (NTC 32, not 33); retval of a counting chain",
    "tcc-inc-before-null-check": "tail_calls (an empty-slot call costs one; a full "
    "chain after it is cut short)",
    "index-64bit": "retval / control flow: index (1 << 32) | k fails instead of reaching slot k",
    "tcc-by-value": "tail_calls / termination: a subprog tail-calling its caller "
    "multiplies the chain (~N^33)",
    "tcc-reset-in-subprog": "tail_calls / termination: each subprog entry restarts at 0",
    "tcc-slot-unrounded": "memory / trap: the subprog's counter pointer is half the "
    "real one; only with depth % 8 != 0",
    "tail-entry-offset": "termination (trap) / host_state: the first return after a "
    "taken tail call returns through the saved rbp",
    "tail-call-frame-mismatch": "tail_calls / memory / stack: the target reads its "
    "counter slot from stale stack; rs bytes leak per tail call",
    "missing-pop": "host_state (callee-saved not restored, rsp unbalanced) / trap",
    "tail-call-clobbers-ctx": "registers (r1 != ctx at the target entry); retval if "
    "the target reads ctx",
    "tcc-ptr-not-reloaded": "memory / trap / tail_calls, once R0 was written before the call",
    "r9-not-saved": "memory / retval: private stack accesses after a helper use r9 as clobbered",
    "priv-stack-shared": "memory / retval: the callee overwrites its caller's stack",
    "stale-out-label": "control flow / termination: two failing indirect tail calls "
    "in one function",
    "boundary-missing-r12": "host_state (r12 not restored) after bpf_throw",
    "stale-poke": "retval / control flow: the old target keeps running after a replace",
    "poke-bypass-not-restored": "host_state / registers / tail_calls after a delete",
    "priv-stack-8-low": "stack (private stack overflow guard clobbered) once a function "
    "writes its deepest slot",
    "mov32-imm-sign-extended": "retval / registers: a negative 32-bit immediate reaches bits 32-63",
    "ld-imm64-sign-extends": "retval / registers: a 64-bit constant in [2^31, 2^32)",
    "movsx64-no-rexw": "retval / registers: a negative byte, half or word sign-extended to 64",
    "ldsx-movzx": "retval / registers: a sign-extending load of a negative byte or half",
    "sdiv-zero-extends-dividend": "trap (#DE) / retval: signed div or mod of a negative value",
    "div-src-rdx-not-saved": "trap (#DE): a division by r3",
    "shift32-by-reg-as-64": "retval / registers: a 32-bit shift by register carrying "
    "into bit 32 or with a count >= 32",
    "bswap16-no-movzx": "retval / registers: be16/bswap16 of a value wider than 16 bits",
    "atomic32-as-64": "memory (the next 4 bytes) / retval / termination (the fetch loop "
    "never matches)",
    "stx-byte-no-rex": "memory / stack / retval: a byte store from r1, r2 or r10",
    "jmp32-jsle-unsigned": "control flow / retval: w s<= on operands of different sign",
    "jmp32-jset-64bit": "control flow / retval: w & mask where only bits 32-63 overlap",
    "mov32-self-elided": "retval / registers: w = w on a value with bits 32-63 set",
    "gotol-uses-off": "control flow / retval: the insns a gotol skips run",
    "shift32-by-0-elided": "retval / registers: w <<= 0 on a value with bits 32-63 set",
    "neg32-as-64": "retval / registers: w = -w of a non-zero value",
    "jmp-reg-operands-swapped": "control flow / retval: r1 > r2 (or <, s<, ...) on "
    "unequal operands",
}

#: Faults of the 6.18 counter-pointer sequences; they have no meaning in 5.10's.
_POINTER_SCHEME_FAULTS = frozenset(
    {
        "tcc-limit-off-by-one",
        "tcc-limit-32",
        "tcc-inc-before-null-check",
        "tcc-by-value",
        "tcc-reset-in-subprog",
        "tcc-slot-unrounded",
        "tcc-ptr-not-reloaded",
    }
)


@dataclass(frozen=True)
class Variant:
    """Named knobs of the model; the default is Linux 6.18 on the project's host.

    ``Variant(name="linux-5.10")`` (or ``design="linux-5.10"``) emits the 2020
    tail-call design; ``Variant.from_names(["linux-5.10", "missing-pop"])``
    builds one from command-line words."""

    name: str = LINUX_6_18
    #: injected bugs by name (keys of FAULTS)
    faults: frozenset[str] = frozenset()
    #: the CPU has BMI2 (register shifts become shlx/shrx/sarx), as the host does
    bmi2: bool = True
    #: tail-call design (keys of DESIGNS); None: ``name`` if it is a design,
    #: else linux-6.18
    design: str | None = None

    def __post_init__(self) -> None:
        if self.design is None:
            object.__setattr__(self, "design", self.name if self.name in DESIGNS else LINUX_6_18)
        if self.design not in DESIGNS:
            raise ValueError(f"unknown design {self.design!r} (known: {', '.join(DESIGNS)})")
        object.__setattr__(self, "faults", frozenset(self.faults))
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        if self.design in BY_VALUE and self.faults & _POINTER_SCHEME_FAULTS:
            bad = ", ".join(sorted(self.faults & _POINTER_SCHEME_FAULTS))
            raise ValueError(f"fault(s) {bad} modify the 6.18 counter-pointer scheme")

    def has(self, fault: str) -> bool:
        return fault in self.faults

    @property
    def tail_call_offset(self) -> int:
        """X86_TAIL_CALL_OFFSET of the design: where ``NativeProg.tail_call_entry`` is."""
        return TAIL_CALL_OFFSETS[self.design]

    def with_faults(self, *faults: str) -> Variant:
        return replace(
            self,
            name=f"{self.name}+{'+'.join(sorted(faults))}",
            faults=self.faults | frozenset(faults),
        )

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Variant:
        """``["linux-5.10", "missing-pop"]`` -> that design with that fault: a
        design name selects the design, every other word is a fault."""
        words = list(names)
        designs = [w for w in words if w in DESIGNS]
        if len(designs) > 1:
            raise ValueError(f"more than one design: {', '.join(designs)}")
        design = designs[0] if designs else LINUX_6_18
        faults = frozenset(w for w in words if w not in DESIGNS)
        name = "+".join([design, *sorted(faults)])
        return cls(name=name, faults=faults, design=design)


def symbol_address(name: str) -> int:
    """Fixed address of an external symbol (module doc)."""
    if name == "return_thunk":
        slot = 0
    elif name == "thunk:rcx":
        slot = 1
    elif name.startswith("helper:"):
        slot = 0x100 + int(name.split(":")[1])
    elif name.startswith("kfunc:"):
        slot = 0x200 + int(name.split(":")[1])
    else:
        raise KeyError(name)
    return SYMBOL_BASE + 16 * slot


def _jmp(at: int, dest: int) -> bytes:
    return b"\xe9" + (dest - (at + 5)).to_bytes(4, "little", signed=True)


def compile_system(
    case: Case, profile: Profile = LINUX, variant: Variant = Variant()
) -> NativeSystem:
    """JIT every program of ``case`` like Linux 6.18 x86-64 would."""
    layout = replace(KERNEL_LAYOUT, tail_call_offset=variant.tail_call_offset)
    if variant.design in BY_VALUE:
        layout = replace(layout, counter_slot=-4, counter_is_pointer=False)
    opts = JitOptions(profile.max_tail_calls, variant.bmi2, variant.faults, variant.design)
    map_addrs = {name: MAP_BASE + k * MAP_STRIDE for k, name in enumerate(case.maps)}
    for m in case.maps.values():
        if m.kind == "prog_array":
            for key, target in m.init.items():
                if target not in case.programs:
                    raise CaseError(f"map {m.name}[{key}] names unknown program {target!r}")
    used_symbols: set[str] = set()
    any_percpu = False
    regions: list[tuple[int, int]] = []

    # 1. verifier model + converged passes for every function
    xprogs: list[XProg] = []
    jits: list[list[FuncJit]] = []
    placed: dict[tuple[int, int], int] = {}

    for pidx, prog in enumerate(case.programs.values()):
        xp = translate(case, prog, private_stack_min=profile.private_stack_threshold)
        xprogs.append(xp)
        fj: list[FuncJit] = []
        multi = len(xp.funcs) > 1
        shared: tuple[int, int] | None = None  # fault "priv-stack-shared"
        for k, f in enumerate(xp.funcs):
            priv = None
            if f.private_stack:
                any_percpu = True
                depth = round_up(f.stack_depth, 8)
                if shared is not None:
                    # the program's first area, sized for the deepest user
                    region, size = shared
                    at = regions.index(shared)
                    shared = (region, max(size, depth + 2 * PRIV_STACK_GUARD_SZ))
                    regions[at] = shared
                else:
                    region = PERCPU_BASE + len(regions) * PAGE
                    regions.append((region, depth + 2 * PRIV_STACK_GUARD_SZ))
                    if variant.has("priv-stack-shared"):
                        shared = regions[-1]
                priv = region + PRIV_STACK_GUARD_SZ + depth
                if variant.has("priv-stack-8-low"):
                    priv -= PRIV_STACK_GUARD_SZ

            def resolve(sym: str, _p: int = pidx) -> int:
                if sym.startswith("func:"):
                    return placed.get((_p, int(sym[5:])), 0)
                used_symbols.add(sym)
                return symbol_address(sym)

            fj.append(
                FuncJit(
                    f,
                    opts,
                    is_subprog=multi and k != 0,
                    exception_boundary=k == 0 and xp.exception_boundary,
                    priv_frame_ptr=priv,
                    this_cpu_off=THIS_CPU_OFF,
                    resolve=resolve,
                    map_addr=map_addrs.__getitem__,
                    array_max_entries=layout.array_max_entries,
                    array_ptrs=layout.array_ptrs,
                    prog_bpf_func=layout.prog_bpf_func,
                )
            )
        for j in fj:
            j.converge()
        jits.append(fj)

    # 2. placement
    cursor = CODE_BASE
    for pidx, fj in enumerate(jits):
        for k, j in enumerate(fj):
            placed[(pidx, k)] = cursor
            cursor = round_up(cursor + j.addrs[-1] + 1, PAGE)

    # 3. image pass (+ jit_subprogs' extra pass) at the final addresses
    progs: dict[str, NativeProg] = {}
    names = list(case.programs)
    for pidx, (xp, fj) in enumerate(zip(xprogs, jits, strict=True)):
        funcs = []
        for k, j in enumerate(fj):
            addr = placed[(pidx, k)]
            code = j.finalize(addr, extra_pass=len(fj) > 1)
            f = j.f
            if f.orig_index:
                insn_addrs = [
                    addr + j.addrs[f.orig_index[f.start_pc + d]] for d in range(f.orig_len)
                ]
            else:
                insn_addrs = [addr + j.addrs[d] for d in range(len(f.insns))]
            funcs.append(
                NativeFunc(
                    name=f.name,
                    start_pc=f.start_pc,
                    address=addr,
                    code=code,
                    insn_addrs=insn_addrs,
                    stack_depth=round_up(f.stack_depth, 8),
                    private_stack=f.private_stack,
                    epilogue=addr + j.ctx.cleanup_addr,
                )
            )
        progs[xp.name] = NativeProg(
            name=xp.name,
            funcs=funcs,
            tail_call_entry=funcs[0].address + variant.tail_call_offset,
            prog_object=PROG_BASE + pidx * PROG_STRIDE,
            exception_callback=xp.exception_callback,
            exception_boundary=xp.exception_boundary,
        )

    system = NativeSystem(
        arch="x86_64",
        progs=progs,
        maps=map_addrs,
        symbols={symbol_address(s): s for s in sorted(used_symbols)},
        layout=layout,
        this_cpu_off=THIS_CPU_OFF if any_percpu else 0,
        percpu_regions=regions,
        private_stacks=list(regions),
        helpers_never_inlined=True,
    )

    # 4. poke sites in their initial state (bpf_tail_call_direct_fixup)
    for pidx, (xp, fj) in enumerate(zip(xprogs, jits, strict=True)):
        for k, j in enumerate(fj):
            addr = placed[(pidx, k)]
            for rec in j.pokes:
                desc = xp.pokes[rec.poke]
                site = PokeSite(
                    prog=names[pidx],
                    pc=desc.orig_pc,
                    map=desc.map,
                    key=desc.key,
                    bypass=addr + rec.bypass,
                    target=addr + rec.target,
                    out=addr + rec.out,
                )
                system.pokes.append(site)
                target = case.maps[desc.map].init.get(desc.key)
                if target is not None:
                    apply_patches(system, poke_transition(system, site, None, target, variant))
    return system


def poke_transition(
    system: NativeSystem,
    site: PokeSite,
    old_prog: str | None,
    new_prog: str | None,
    variant: Variant = Variant(),
) -> list[tuple[int, bytes]]:
    """The text pokes of ``bpf_arch_poke_desc_update`` for one slot change, in order.

    nop->jmp: target := jmp new, then bypass := nop5; jmp->nop: bypass := jmp out,
    (synchronize_rcu), then target := nop5; jmp->jmp: target only; nop->nop:
    nothing. A poke whose new bytes equal the old ones is skipped, as
    ``__bpf_arch_text_poke`` does. The same protocol in both designs (5.10
    introduced it); jumps go to ``bpf_func + poke->adj_off``."""
    short = ENTRY_SHORTFALL if variant.has("tail-entry-offset") else 0
    old = system.progs[old_prog].tail_call_entry - short if old_prog else None
    new = system.progs[new_prog].tail_call_entry - short if new_prog else None
    patches: list[tuple[int, bytes]] = []

    def poke(at: int, before: bytes, after: bytes) -> None:
        if before != after:
            patches.append((at, after))

    jmp_out = _jmp(site.bypass, site.out)
    if new is not None:
        if old is not None and variant.has("stale-poke"):
            return []
        poke(
            site.target, _jmp(site.target, old) if old is not None else NOP5, _jmp(site.target, new)
        )
        if old is None:
            poke(site.bypass, jmp_out, NOP5)
    else:
        if not (old is not None and variant.has("poke-bypass-not-restored")):
            poke(site.bypass, NOP5 if old is not None else jmp_out, jmp_out)
        poke(site.target, _jmp(site.target, old) if old is not None else NOP5, NOP5)
    return patches


def apply_patches(system: NativeSystem, patches: list[tuple[int, bytes]]) -> None:
    """Write text pokes into the functions' code (keeps listings live)."""
    for at, data in patches:
        for prog in system.progs.values():
            for f in prog.funcs:
                if f.address <= at and at + len(data) <= f.address + len(f.code):
                    o = at - f.address
                    f.code = f.code[:o] + data + f.code[o + len(data) :]
                    break
            else:
                continue
            break
        else:
            raise ValueError(f"patch at {at:#x} is outside every function")


def _bpf_text(case: Case, prog_name: str, pc: int) -> str:
    prog = case.programs[prog_name]
    try:
        from harness.formats.asm import format_insn  # type: ignore[attr-defined]

        return format_insn(prog.insns, pc, labels=prog.labels, maps=list(case.maps))
    except (ImportError, TypeError, AttributeError, IndexError, KeyError, ValueError):
        from harness.formats import isa

        i = prog.insns[pc]
        return f"{isa.encode(i).hex()}  ({isa.OPCODES.get(i.opcode, 'unknown')})"


def listing(system: NativeSystem, case: Case) -> str:
    """Capstone disassembly with each BPF instruction printed before its code."""
    try:
        import capstone
    except ImportError as e:  # pragma: no cover - capstone is a dependency
        raise Unsupported("listing needs capstone") from e
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    names: dict[int, str] = dict(system.symbols)
    for p in system.progs.values():
        for f in p.funcs:
            names.setdefault(f.address, f"{p.name}:{f.name}")
        names.setdefault(p.tail_call_entry, f"{p.name} (tail-call entry)")
    pokes: dict[int, str] = {}
    for s in system.pokes:
        pokes[s.bypass] = f"poke bypass {s.map}[{s.key}]"
        pokes[s.target] = f"poke target {s.map}[{s.key}]"
    lines: list[str] = []
    for p in system.progs.values():
        from harness.formats import isa

        prog = case.programs.get(p.name)
        for fidx, f in enumerate(p.funcs):
            tag = " (exception callback)" if p.exception_callback == fidx else ""
            lines.append(
                f"{p.name} func {fidx} {f.name}{tag} @ {f.address:#x} ({len(f.code)} bytes)"
            )
            at: dict[int, list[int]] = {}
            if prog is not None and f.start_pc < len(prog.insns):
                for d, a in enumerate(f.insn_addrs):
                    pc = f.start_pc + d
                    if d and prog.insns[pc - 1].opcode == isa.LD_IMM64 and f.insn_addrs[d - 1] == a:
                        continue  # second slot of ld_imm64
                    at.setdefault(a, []).append(pc)
            for ins in md.disasm(f.code, f.address):
                for pc in at.pop(ins.address, []):
                    lines.append(f"  ; {pc}: {_bpf_text(case, p.name, pc)}")
                note = ""
                if ins.mnemonic in ("call", "jmp") and ins.op_str.startswith("0x"):
                    tgt = int(ins.op_str, 16)
                    if tgt in names:
                        note = f"  ; {names[tgt]}"
                if ins.address in pokes:
                    note += f"  ; {pokes[ins.address]}"
                lines.append(
                    f"  {ins.address:016x}: {ins.bytes.hex():<24} "
                    f"{ins.mnemonic} {ins.op_str}".rstrip()
                    + note
                )
            for a in sorted(at):
                for pc in at[a]:
                    lines.append(f"  ; {pc}: {_bpf_text(case, p.name, pc)}")
    return "\n".join(lines) + "\n"
