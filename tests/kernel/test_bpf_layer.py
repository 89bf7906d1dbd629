"""The ctypes kernel layer against the running kernel: every expected value
here is the kernel's answer (test runs, map contents, JIT images), never a
value computed by jitdiff."""

from __future__ import annotations

import errno
import os
import pickle
import struct

import pytest

from harness.formats import isa
from harness.formats.isa import Insn, ld_imm64
from harness.kernel import KnownKernelBug, Rejected, available, load_case, open_fds
from harness.kernel import btf as kbtf
from harness.kernel.kallsyms import jmp_rel32_target, kallsyms
from harness.reference.helpers import BPF_THROW, TAIL_CALL
from harness.system import Case, MapDef, Program

REASON = available()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"kernel unusable: {REASON}")

NOP5 = bytes.fromhex("0f1f440000")
XOR_RAX = bytes.fromhex("4831c0")
PUSH_RBP_MOV = bytes.fromhex("554889e5")


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    before = _fd_count()
    yield
    assert open_fds() == []
    assert _fd_count() == before


# --- tiny programs (no assembler needed) --------------------------------------


def mov(dst: int, imm: int) -> Insn:
    return Insn(isa.ALU64 | isa.MOV | isa.K, dst, 0, 0, imm)


def movr(dst: int, src: int) -> Insn:
    return Insn(isa.ALU64 | isa.MOV | isa.X, dst, src)


def add(dst: int, imm: int) -> Insn:
    return Insn(isa.ALU64 | isa.ADD | isa.K, dst, 0, 0, imm)


def exit_() -> Insn:
    return Insn(isa.JMP | isa.EXIT)


def map_ld(dst: int, index: int, value_off: int | None = None) -> list[Insn]:
    """ld_imm64 of map ``index`` (src=1) or of its value at ``value_off`` (src=2)."""
    if value_off is None:
        return list(ld_imm64(dst, index, isa.PSEUDO_MAP_FD))
    first, _ = ld_imm64(dst, index, isa.PSEUDO_MAP_VALUE)
    return [first, Insn(0, 0, 0, 0, value_off)]


def self_loop(direct: bool) -> list[Insn]:
    """Count runs in ``cnt`` (map 1), then tail-call slot 0 of ``pa`` (map 0);
    ``direct`` uses a constant key, else skb->mark (unknown to the verifier)."""
    return [
        movr(6, 1),
        *map_ld(2, 1, value_off=0),
        Insn(isa.LDX | isa.MEM | isa.DW, 3, 2, 0),
        add(3, 1),
        Insn(isa.STX | isa.MEM | isa.DW, 2, 3, 0),
        movr(1, 6),
        *map_ld(2, 0),
        mov(3, 0) if direct else Insn(isa.LDX | isa.MEM | isa.W, 3, 6, 8),
        Insn(isa.JMP | isa.CALL, 0, 0, 0, TAIL_CALL),
        mov(0, 7),
        exit_(),
    ]


def loop_case(direct: bool) -> Case:
    return Case(
        programs={"loop": Program("loop", "sched_cls", self_loop(direct))},
        maps={
            "pa": MapDef("pa", "prog_array", 4, init={0: "loop"}),
            "cnt": MapDef("cnt", "array", 1, 8),
        },
    )


def counter(s) -> int:
    return struct.unpack("<Q", s.map_contents("cnt"))[0]


# --- tests ----------------------------------------------------------------


@needs_kernel
def test_raw_tp_returns_42():
    case = Case(programs={"p": Program("p", "raw_tp", [mov(0, 42), exit_()])})
    with load_case(case) as s:
        run = s.test_run("p")
        assert run.retval == 42
        assert s.prog_ids()["p"] > 0
        assert "processed 2 insns" in s.logs["p"]


@needs_kernel
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "indirect"])
def test_self_tail_call_loop_runs_34_times(direct):
    with load_case(loop_case(direct)) as s:
        assert s.slots("pa") == {0: "loop"}
        run = s.test_run("loop")
        assert run.retval == 7  # the 34th run's tail call fails and falls through
        assert counter(s) == 34  # 1 entry + 33 tail calls


@needs_kernel
def test_direct_tail_call_follows_map_updates():
    """The kernel pokes direct tail-call sites on update and delete."""
    with load_case(loop_case(direct=True)) as s:
        addr = s.images().progs["loop"].funcs[0].address
        assert s.delete("pa", 0)
        assert not s.delete("pa", 0)
        s.test_run("loop")
        assert counter(s) == 1
        code = s.images().progs["loop"].funcs[0].code
        assert not any(jmp_rel32_target(code, addr, i) == addr + 12 for i in range(len(code)))
        s.update("pa", 0, "loop")
        code = s.images().progs["loop"].funcs[0].code
        # the target site now jumps past the prologue: X86_TAIL_CALL_OFFSET = 12
        assert any(jmp_rel32_target(code, addr, i) == addr + 12 for i in range(len(code)))
        s.test_run("loop")
        assert counter(s) == 1 + 34


@needs_kernel
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "indirect"])
def test_images(direct):
    case = loop_case(direct)
    insns = case.programs["loop"].insns
    with load_case(case) as s:
        im = s.images()
    im = pickle.loads(pickle.dumps(im))  # plain data: can cross a process boundary
    (main,) = im.progs["loop"].funcs
    assert main.name == "main" and main.start_pc == 0
    assert main.address >> 32 == 0xFFFFFFFF  # module text

    # The notes' prologue for a main program that can tail-call.
    assert main.code.startswith(NOP5 + XOR_RAX + PUSH_RBP_MOV)
    # Every image ends in `jmp <return thunk>`, named by address from kallsyms.
    thunk = jmp_rel32_target(main.code, main.address)
    assert thunk == im.return_thunk
    assert kallsyms().describe(thunk).endswith("return_thunk")
    assert im.symbols[thunk] == kallsyms().describe(thunk)

    # One address per BPF slot, the first being the function start.
    assert len(main.insn_addrs) == len(insns)
    assert None not in main.insn_addrs
    assert main.insn_addrs[0] == main.address
    assert list(main.insn_addrs) == sorted(main.insn_addrs)
    assert main.insn_addrs[-1] < main.address + len(main.code)
    assert main.insn_addrs[1] == main.insn_addrs[2]  # the ld_imm64's second slot

    # Map pointers found in the code: each movabs sits at its insn's address,
    # the value pointer is the array's address + bpf_array.value (from BTF).
    layout = kbtf.kernel_layout()
    refs = {r.map: r for r in im.progs["loop"].map_refs}
    assert refs["pa"].kind == "map" and refs["cnt"].kind == "value"
    for r in refs.values():
        assert r.insn_address == main.insn_addrs[r.pc]
    assert im.maps["cnt"] == refs["cnt"].value - layout.array_ptrs
    assert im.maps["pa"] == refs["pa"].value
    assert set(im.map_ids) == {"pa", "cnt"}
    assert im.progs["loop"].map_ids and set(im.progs["loop"].map_ids) <= set(im.map_ids.values())

    # The xlated dump shows the map loads with map ids.
    xl = [i for i in im.progs["loop"].xlated if i.opcode == isa.LD_IMM64]
    assert {i.imm for i in xl} == set(im.map_ids.values())

    if not direct:
        # The BTF offsets are the ones the code uses:
        # `cmp [rsi+max_entries], edx` and `mov rcx, [rcx+bpf_func]`.
        assert bytes([0x39, 0x56, layout.array_max_entries]) in main.code
        assert bytes([0x48, 0x8B, 0x49, layout.prog_bpf_func]) in main.code
        assert any(v.endswith("indirect_thunk_rcx") for v in im.symbols.values())


@needs_kernel
def test_exception_callback_value():
    # main: throw(5); callback (laid out right after main): return cookie + 100
    insns = [
        mov(1, 5),
        Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_KFUNC_CALL, 0, BPF_THROW),
        mov(0, 1),
        exit_(),
        movr(0, 1),
        add(0, 100),
        exit_(),
    ]
    prog = Program("t", "sched_cls", insns, labels={0: "main", 4: "cb"}, exception_callback="cb")
    with load_case(Case(programs={"t": prog})) as s:
        assert s.test_run("t").retval == 105
        sysimg = s.images()
    im = sysimg.progs["t"]
    assert [f.name for f in im.funcs] == ["main", "cb"]
    assert im.exception_callback == 1
    # the verifier removes the code after an unconditional throw
    assert im.funcs[0].insn_addrs[2:] == (None, None)
    # the kfunc call is resolved by address
    assert kallsyms().address("bpf_throw") in sysimg.symbols
    assert sysimg.symbols[kallsyms().address("bpf_throw")] == "bpf_throw"

    # Without a callback the program returns the cookie.
    bare = Program("b", "sched_cls", insns[:4])
    with load_case(Case(programs={"b": bare})) as s:
        assert s.test_run("b").retval == 5


@needs_kernel
def test_rejection_is_structured():
    bad = Program("bad", "raw_tp", [movr(0, 2), exit_()])  # r2 is uninitialised
    with pytest.raises(Rejected) as exc:
        load_case(Case(programs={"bad": bad}))
    r = exc.value
    assert r.errno == errno.EACCES
    assert r.what == "prog bad"
    assert "R2 !read_ok" in r.log
    assert pickle.loads(pickle.dumps(r)).log == r.log


def test_known_crash_shape_is_refused_before_loading():
    # callback after a static subprogram: may oops 6.18.44; never loaded
    insns = [
        Insn(isa.JMP | isa.CALL, 0, isa.PSEUDO_CALL, 0, 1),
        exit_(),
        mov(0, 0),
        exit_(),
        movr(0, 1),
        exit_(),
    ]
    prog = Program("x", "sched_cls", insns, labels={2: "sub", 4: "cb"}, exception_callback="cb")
    with pytest.raises(KnownKernelBug):
        load_case(Case(programs={"x": prog}))


def test_program_btf_round_trip():
    b = kbtf.ProgramBtf()
    main = b.func("main", 1, kbtf.LINKAGE_GLOBAL)
    cb = b.func("cb", 1, kbtf.LINKAGE_GLOBAL)
    sub = b.func("sub", 5)
    b.decl_tag("exception_callback:cb", main)
    parsed = kbtf.Btf(b.blob())
    assert parsed.type(main).kind is kbtf.Kind.FUNC and parsed.type(main).vlen == 1
    assert parsed.type(cb).name == "cb"
    assert parsed.type(parsed.type(sub).size_or_type).vlen == 5
    tag = parsed.find("exception_callback:cb", kbtf.Kind.DECL_TAG)
    assert tag.size_or_type == main
    assert struct.unpack("<IIII", b.line_info([0, 1, 3])[32:48])[3] >> 10 == 4


@needs_kernel
def test_vmlinux_btf_lookups():
    layout = kbtf.kernel_layout()
    assert kbtf.struct_member_offset("bpf_array", "value") == layout.array_ptrs
    assert kbtf.struct_member_offset("bpf_array", "map") == 0
    assert layout.array_max_entries == kbtf.struct_member_offset("bpf_map", "max_entries")
    assert kbtf.vmlinux().type(kbtf.func_id("bpf_throw")).name == "bpf_throw"
    assert kallsyms().address("bpf_throw") > 0
