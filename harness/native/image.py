"""Native images of a loaded system, in one shape for every native engine.

The x86-64 model JIT produces a ``NativeSystem``; the kernel engine builds the
same thing from the real JIT's images (``BPF_OBJ_GET_INFO_BY_FD``). The
executor (``harness.native.emu``) runs either one under Unicorn and reports events in
the interpreter's vocabulary, so both are judged by the same oracles.

Addresses are kernel-like (code near 0xffffffffc0000000, data near
0xffff888100000000); the executor maps them through Unicorn's virtual TLB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "NativeFunc",
    "PokeSite",
    "NativeProg",
    "NativeSystem",
    "Layout",
    "KERNEL_LAYOUT",
    "PRIV_STACK_GUARD_SZ",
    "PRIV_STACK_GUARD_VAL",
]

#: arch/x86/net/bpf_jit_comp.c: the guards around every private stack
PRIV_STACK_GUARD_SZ = 8
PRIV_STACK_GUARD_VAL = 0xEB9F12345678EB9F


@dataclass(frozen=True)
class Layout:
    """Struct offsets the native code depends on (read from BTF for the kernel)."""

    array_max_entries: int = 0x4C  #: bpf_array.map.max_entries
    array_ptrs: int = 0x138  #: bpf_array.ptrs[] (and .value[] for array maps)
    map_type: int = 0x40  #: bpf_map.map_type
    prog_bpf_func: int = 0x48  #: bpf_prog.bpf_func
    tail_call_offset: int = 12  #: bytes of prologue a tail call skips (X86_TAIL_CALL_OFFSET)
    #: where a frame keeps the tail-call counter, relative to
    #: rbp - round_up(stack_depth, 8): 6.18 keeps a POINTER to the one shared
    #: counter at -16; the 2020 design (5.10) the count itself, a dword at -4
    counter_slot: int = -16
    counter_is_pointer: bool = True


KERNEL_LAYOUT = Layout()


@dataclass
class NativeFunc:
    #: function label (``main`` for the first)
    name: str
    #: BPF pc of the function's first instruction in its program
    start_pc: int
    #: host address of the function's first byte
    address: int
    code: bytes
    #: host address at which each BPF slot of the function begins, indexed by
    #: ``pc - start_pc``; the second slot of ld_imm64 repeats the first's.
    insn_addrs: list[int] = field(default_factory=list)
    #: BPF stack depth as the JIT rounded it (bytes below the frame pointer)
    stack_depth: int = 0
    #: the frame pointer (BPF r10) lives in r9 in a private per-cpu area
    private_stack: bool = False
    #: host address of the epilogue's first instruction (all exits jump there)
    epilogue: int | None = None


@dataclass
class PokeSite:
    """A direct tail call: a 5-byte bypass site and a 5-byte target site."""

    prog: str
    pc: int
    map: str
    key: int
    bypass: int  #: address of the bypass jmp/nop5
    target: int  #: address of the target jmp/nop5
    out: int  #: where the bypass jmp goes (the fall-through of the tail call)


@dataclass
class NativeProg:
    name: str
    #: functions in order, [0] is main
    funcs: list[NativeFunc]
    #: address tail calls jump to (main + layout.tail_call_offset)
    tail_call_entry: int
    #: address of the fake ``struct bpf_prog`` whose bpf_func is funcs[0].address
    prog_object: int = 0
    #: index into funcs of the exception callback, if any
    exception_callback: int | None = None
    #: the program is an exception boundary (its main saves all callee-saved regs)
    exception_boundary: bool = False

    @property
    def entry(self) -> int:
        return self.funcs[0].address


@dataclass
class NativeSystem:
    arch: str
    progs: dict[str, NativeProg]
    #: map name -> address of its ``struct bpf_array``
    maps: dict[str, int]
    #: external address -> what lives there: "helper:<id>", "kfunc:<n>",
    #: "return_thunk", "thunk:<reg>" (retpoline for that register)
    symbols: dict[int, str]
    pokes: list[PokeSite] = field(default_factory=list)
    layout: Layout = KERNEL_LAYOUT
    #: per-cpu: the address of ``this_cpu_off`` (gs-relative loads read it)
    #: and the per-cpu base to store there; 0 when the code uses no gs:.
    this_cpu_off: int = 0
    #: private-stack areas: (address, size) regions the code may use via r9
    percpu_regions: list[tuple[int, int]] = field(default_factory=list)
    #: private stacks as the kernel allocates them, (priv_stack_ptr, size):
    #: ``round_up(depth, 8)`` bytes of frame between two 8-byte guards, the
    #: overflow guard first (``priv_stack_init_guard``); the executor plants
    #: and checks them. Empty where the extents are unknown (the kernel
    #: engine: an image does not tell a private stack's depth).
    private_stacks: list[tuple[int, int]] = field(default_factory=list)
    #: the code calls every helper through its stub (the model JIT): the
    #: executor then needs no hooks around helper calls to notice an inlined
    #: one (the real JIT inlines array lookups and smp_processor_id)
    helpers_never_inlined: bool = False
