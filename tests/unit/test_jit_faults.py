"""The x86-64 model's fault catalog and its 2020 (linux-5.10) tail-call design.

Every fault test compiles a small program that uses the faulty feature and
checks the exact bytes against the default model's (transcribed in
test_jit_x86_64.py from the real 6.18 JIT), derived by hand from the x86
encoding; a program that does not use the feature must compile byte-identically
with and without the fault.

The linux-5.10 bytes are transcribed from ``emit_prologue``,
``emit_bpf_tail_call_indirect``, ``emit_bpf_tail_call_direct`` and the
``BPF_JMP | BPF_CALL`` case of ``do_jit`` in ``arch/x86/net/bpf_jit_comp.c``
(v5.10). Their statements are quoted next to the bytes. Two parts of the
host configuration stay as they are for 6.18: the indirect jump is
``jmp __x86_indirect_thunk_rcx`` (5.10 inlined ``RETPOLINE_RCX_BPF_JIT()``)
and ``ret`` goes through the return thunk. 5.10 computed its jump offsets
by hand (``off1 = 42``, ``off2 = 31``, ``off3 = 9``, direct ``off1 = 20``,
plus the pop bytes and the 7 bytes of ``add rsp``, plus
``RETPOLINE_RCX_BPF_JIT_SIZE``). With the 5-byte thunk jump in place of
the inline retpoline, those offsets equal the ones the model gets from its
``out`` labels, and the tests below check that they do.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpf_builder import (
    alu,
    alur,
    call,
    exit_,
    expect_code,
    jmp,
    kfunc,
    ld_map,
    ldx,
    mov,
    movr,
    pcall,
    prog,
    stx,
)

from harness.campaign.runner import Runner, expectation_failures
from harness.formats import casefile, isa
from harness.jit.x86_64 import (
    DESIGNS,
    FAULT_SYMPTOMS,
    FAULTS,
    Variant,
    apply_patches,
    compile_system,
    poke_transition,
)
from harness.native.image import NativeSystem
from harness.system import Case, MapDef, Program
from oracles import Verdict


def ret(name, value):
    return prog(name, mov(0, value), exit_())


JT = MapDef("jt", "prog_array", 4)

# ---- expected-bytes matcher: hex, with {rel:SYM[+-N]} / {abs:SYM} relocations ---------


def compiled(case: Case, *faults: str, design: str | None = None) -> NativeSystem:
    v = Variant(design=design) if design else Variant()
    return compile_system(case, variant=v.with_faults(*faults) if faults else v)


def all_code(system: NativeSystem) -> dict[tuple[str, int], bytes]:
    return {(p, k): f.code for p, x in system.progs.items() for k, f in enumerate(x.funcs)}


def same_without_feature(case: Case, fault: str) -> None:
    assert all_code(compiled(case, fault)) == all_code(compiled(case))


# ---- the programs --------------------------------------------------------------------

PROLOGUE_MAIN_TC = "0f1f440000 4831c0 55 4889e5"  # nop5; xor rax,rax; push rbp; mov rbp,rsp
TCC_MAIN = "4883f821 7706 50 4889e0 eb01 50 50"  # cmp rax,33; ja; push; mov rax,rsp; jmp; push
RET = "c9 e9{rel:return_thunk}"  # leave; jmp return_thunk
NOP5 = bytes.fromhex("0f1f440000")


def plain_case():
    """ALU, memory, a helper: no tail call, subprog, throw or private stack."""
    p = prog("p", movr(6, 1), stx(isa.W, 10, 6, -12), call(5), alur(isa.ADD, 0, 6), exit_())
    return Case({"p": p})


def indirect_case():
    p = prog("p", ldx(isa.DW, 6, 1, 8), ld_map(2, 0), movr(3, 6), call(12), mov(0, 77), exit_())
    return Case({"p": p}, {"jt": JT})


# head, index check, counter check, load + NULL check, increment, leave, jump, fall-through
I_HEAD = f"{PROLOGUE_MAIN_TC} {TCC_MAIN} 53 488b5f08 48be{{abs:map:jt}} 4889da"
I_BOUND = "89d2 39564c 762e"  # mov edx,edx; cmp dword [rsi+0x4c],edx; jbe out
I_COUNT = "488b85f0ffffff 48833821 7321"  # mov rax,[rbp-16]; cmp qword [rax],33; jae out
I_LOAD = "488b8cd638010000 4885c9 7414"  # mov rcx,[rsi+rdx*8+0x138]; test rcx,rcx; je out
I_INC = "48830001"  # add qword [rax], 1
I_LEAVE = "5b 58 58"  # pop rbx; pop rax; pop rax
I_JUMP = "488b4948 4883c10c e9{rel:thunk:rcx}"  # mov rcx,[rcx+0x48]; add rcx,12; jmp thunk
I_TAIL = f"b84d000000 5b {RET}"
INDIRECT = f"{I_HEAD} {I_BOUND} {I_COUNT} {I_LOAD} {I_INC} {I_LEAVE} {I_JUMP} {I_TAIL}"


def direct_case(slot_init=None):
    p1 = prog("p1", ld_map(2, 0), mov(3, 1), call(12), mov(0, 100), exit_())
    jt = MapDef("jt", "prog_array", 4, init={1: slot_init} if slot_init else {})
    return Case({"p1": p1, "p2": ret("p2", 2), "p3": ret("p3", 3)}, {"jt": jt})


D_HEAD = f"{PROLOGUE_MAIN_TC} {TCC_MAIN} 48be{{abs:map:jt}} ba01000000"
D_COUNT = "488b85f0ffffff 48833821 7310"
D_TAIL = f"b864000000 {RET}"
DIRECT_EMPTY = f"{D_HEAD} {D_COUNT} e90b000000 48830001 58 58 0f1f440000 {D_TAIL}"
DIRECT_P2 = f"{D_HEAD} {D_COUNT} 0f1f440000 48830001 58 58 e9{{rel:entry:p2}} {D_TAIL}"


def subprog_case(sub_stack_off=-8):
    """main calls ``sub``; sub has a stack and an indirect tail call."""
    main = [*movr(6, 1), *pcall(2), *alu(isa.ADD, 0, 1000), *exit_()]
    sub = [
        *stx(isa.DW, 10, 1, sub_stack_off),
        *ldx(isa.DW, 7, 1, 8),
        *ld_map(2, 0),
        *movr(3, 7),
        *call(12),
        *mov(0, 55),
        *exit_(),
    ]
    p = Program("p", "sched_cls", main + sub, {0: "main", 4: "sub"})
    return Case({"p": p}, {"jt": JT})


SUB_MAIN = (
    f"{PROLOGUE_MAIN_TC} {TCC_MAIN} 53 4889fb"
    f" 488b85f0ffffff e8{{rel:func:p:1}} 4805e8030000 5b {RET}"  # mov rax, [rbp-16]; call sub
)
SUB_HEAD = "0f1f440000 0f1f00 55 4889e5 4881ec08000000"  # ...; sub rsp, 8
SUB_BODY = "4155 48897df8 4c8b6f08 48be{abs:map:jt} 4c89ea"  # push r13; ...
SUB_SEQ = (
    "89d2 39564c 7636 488b85e8ffffff 48833821 7329 488b8cd638010000 4885c9 741c"
    " 48830001 415d 58 58 4881c408000000 488b4948 4883c10c e9{rel:thunk:rcx}"
)
SUB_TAIL = f"b837000000 415d {RET}"
SUB_SUB = f"{SUB_HEAD} 50 50 {SUB_BODY} {SUB_SEQ} {SUB_TAIL}"


def odd_stack_case():
    """main has a 12-byte stack (a u32 at r10-12: round_up = 16) and calls a
    subprog that tail-calls: the bpf2bpf call reloads the counter pointer."""
    main = [*movr(6, 1), *stx(isa.W, 10, 6, -12), *pcall(2), *mov(0, 0), *exit_()]
    sub = [*ld_map(2, 0), *mov(3, 0), *call(12), *mov(0, 1), *exit_()]
    p = Program("p", "sched_cls", main + sub, {0: "main", 5: "sub"})
    return Case({"p": p}, {"jt": JT})


def two_indirect_case():
    """Two indirect tail calls in one function."""
    p = prog(
        "p",
        movr(6, 1),
        ld_map(2, 0),
        ldx(isa.DW, 3, 6, 8),
        call(12),
        ld_map(2, 0),
        ldx(isa.DW, 3, 6, 16),
        call(12),
        mov(0, 7),
        exit_(),
    )
    return Case({"p": p}, {"jt": JT})


def exc_case():
    main = [*movr(6, 1), *ldx(isa.W, 7, 1, 0x70), *movr(1, 7), *pcall(2), *mov(0, 1), *exit_()]
    sub = [
        *jmp(isa.JLE, 1, 60, 3),
        *alu(isa.MUL, 1, 100),
        *alu(isa.ADD, 1, 7),
        *kfunc(1),
        *mov(0, 0),
        *exit_(),
    ]
    cb = [*movr(0, 1), *alu(isa.AND, 0, 0xFFFF), *exit_()]
    p = Program("p", "sched_cls", main + sub + cb, {0: "main", 6: "throwing", 12: "cb"}, "cb")
    return Case({"p": p})


def priv_calls_case():
    """raw_tp, main and its subprog each with a 64-byte stack: two private areas."""
    main = [*stx(isa.DW, 10, 1, -64), *pcall(2), *ldx(isa.DW, 0, 10, -64), *exit_()]
    sub = [*stx(isa.DW, 10, 1, -64), *mov(0, 0), *exit_()]
    p = Program("p", "raw_tp", main + sub, {0: "main", 4: "sub"})
    return Case({"p": p})


def test_base_programs_match_the_default_listings():
    """The cases above are the 6.18 listings the faults are compared with."""
    expect_code(compiled(indirect_case()), "p", 0, INDIRECT)
    expect_code(compiled(direct_case()), "p1", 0, DIRECT_EMPTY)
    expect_code(compiled(direct_case("p2")), "p1", 0, DIRECT_P2)
    s = compiled(subprog_case())
    expect_code(s, "p", 0, SUB_MAIN)
    expect_code(s, "p", 1, SUB_SUB)


# ---- the catalog ----------------------------------------------------------------------


def test_every_fault_is_described_with_its_class_and_symptom():
    assert set(FAULT_SYMPTOMS) == set(FAULTS)
    classes = {d.split(":")[0] for d in FAULTS.values()}
    assert classes >= {
        "limit arithmetic",
        "empty slot budget",
        "u32 index",
        "counter by value",
        "counter reset on another entry path",
        "wrong counter slot",
        "hard-coded tail-call entry offset",
        "prologue skipped, epilogue run",
        "register clobbered on the tail-call path",
        "private stack frame pointer",
        "out label offsets",
        "exceptions",
        "direct tail-call poking",
        "stack accounting",
    }


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_no_fault_touches_a_program_without_its_feature(fault):
    same_without_feature(plain_case(), fault)


# ---- limit arithmetic -----------------------------------------------------------------


def test_tcc_limit_32_compares_against_32():
    expect_code(
        compiled(indirect_case(), "tcc-limit-32"),
        "p",
        0,
        INDIRECT.replace("48833821 7321", "48833820 7321"),  # cmp qword [rax], 32
    )
    s = compiled(direct_case("p2"), "tcc-limit-32")
    expect_code(s, "p1", 0, DIRECT_P2.replace("48833821 7310", "48833820 7310"))
    # the prologue's count/pointer test (cmp rax, 33) is not the limit: unchanged
    assert bytes.fromhex("4883f821") in s.progs["p1"].funcs[0].code


def test_tcc_limit_off_by_one_turns_jae_into_ja():
    s = compiled(indirect_case(), "tcc-limit-off-by-one")
    expect_code(s, "p", 0, INDIRECT.replace("48833821 7321", "48833821 7721"))


# ---- empty slot budget ----------------------------------------------------------------


def test_tcc_inc_before_null_check_indirect():
    # the add moves ahead of the ptrs[] load; je out then skips 4 bytes less (0x14 -> 0x10)
    want = (
        f"{I_HEAD} {I_BOUND} {I_COUNT} {I_INC} 488b8cd638010000 4885c9 7410 "
        f"{I_LEAVE} {I_JUMP} {I_TAIL}"
    )
    expect_code(compiled(indirect_case(), "tcc-inc-before-null-check"), "p", 0, want)


def test_tcc_inc_before_null_check_direct_counts_before_the_bypass():
    # empty slot: the bypass jmp out now skips pop, pop, nop5 only (7 bytes)
    s = compiled(direct_case(), "tcc-inc-before-null-check")
    expect_code(s, "p1", 0, f"{D_HEAD} {D_COUNT} 48830001 e907000000 58 58 0f1f440000 {D_TAIL}")
    base = s.progs["p1"].funcs[0].address
    (site,) = s.pokes
    assert (site.bypass - base, site.target - base, site.out - base) == (0x3A, 0x41, 0x46)
    s = compiled(direct_case("p2"), "tcc-inc-before-null-check")
    expect_code(
        s, "p1", 0, f"{D_HEAD} {D_COUNT} 48830001 0f1f440000 58 58 e9{{rel:entry:p2}} {D_TAIL}"
    )


# ---- u32 index ------------------------------------------------------------------------


def test_index_64bit_drops_the_truncation_and_compares_qwords():
    # mov edx,edx (89 d2) gone; cmp qword [rsi+0x4c], rdx = REX.W 39 /r
    want = INDIRECT.replace("89d2 39564c 762e", "4839564c 762e")
    expect_code(compiled(indirect_case(), "index-64bit"), "p", 0, want)
    same_without_feature(direct_case("p2"), "index-64bit")  # constant keys: no bound check


# ---- counter by value / reset / wrong slot --------------------------------------------


def test_tcc_by_value_passes_the_count_not_the_pointer():
    s = compiled(subprog_case(), "tcc-by-value")
    expect_code(s, "p", 0, SUB_MAIN.replace("488b85f0ffffff", "488b85f0ffffff 488b00"))
    # subprog: push rax (the value); mov rax, rsp; push rax (a pointer to the copy)
    expect_code(s, "p", 1, SUB_SUB.replace(f"{SUB_HEAD} 50 50", f"{SUB_HEAD} 50 4889e0 50"))
    same_without_feature(indirect_case(), "tcc-by-value")


def test_tcc_reset_in_subprog_runs_the_entry_setup():
    s = compiled(subprog_case(), "tcc-reset-in-subprog")
    expect_code(s, "p", 0, SUB_MAIN)
    head = "0f1f440000 4831c0 55 4889e5 4881ec08000000"  # xor rax,rax in place of nop3
    expect_code(s, "p", 1, SUB_SUB.replace(f"{SUB_HEAD} 50 50", f"{head} {TCC_MAIN}"))
    same_without_feature(indirect_case(), "tcc-reset-in-subprog")


def test_tcc_slot_unrounded_reloads_from_the_raw_depth():
    s = compiled(odd_stack_case())
    main = s.progs["p"].funcs[0]
    assert main.stack_depth == 16
    # rs = 16: the pointer is at rbp - 32 (e0 ff ff ff); the fault reads rbp - 12 - 16
    good = bytes.fromhex("488b85e0ffffff e8")
    bad = bytes.fromhex("488b85e4ffffff e8")
    assert good in main.code
    faulty = compiled(odd_stack_case(), "tcc-slot-unrounded").progs["p"].funcs[0].code
    assert faulty == main.code.replace(good, bad)
    # depth a multiple of 8: nothing to round, nothing changes
    same_without_feature(subprog_case(), "tcc-slot-unrounded")


# ---- entry offset, frame mismatch, missing pop ----------------------------------------


def test_tail_entry_offset_enters_at_push_rbp():
    want = INDIRECT.replace("4883c10c", "4883c108")  # add rcx, 8
    expect_code(compiled(indirect_case(), "tail-entry-offset"), "p", 0, want)
    s = compiled(direct_case("p2"), "tail-entry-offset")
    expect_code(s, "p1", 0, DIRECT_P2.replace("{rel:entry:p2}", "{rel:entry:p2-4}"))
    target = s.progs["p2"]
    assert target.funcs[0].code[8:9] == b"\x55"  # entry - 4 is push rbp
    assert target.tail_call_entry == target.funcs[0].address + 12  # the prologue is unchanged
    (site,) = s.pokes
    v = Variant().with_faults("tail-entry-offset")
    p = poke_transition(s, site, "p2", "p3", v)
    assert p == [
        (
            site.target,
            b"\xe9"
            + (s.progs["p3"].tail_call_entry - 4 - site.target - 5).to_bytes(
                4, "little", signed=True
            ),
        )
    ]
    same_without_feature(direct_case(), "tail-entry-offset")  # empty slot: no jump emitted


def test_tail_call_frame_mismatch_keeps_the_bpf_stack():
    # no add rsp, 8: the three jumps to out are 7 bytes shorter
    seq = (
        SUB_SEQ.replace(" 4881c408000000", "")
        .replace("7636", "762f")
        .replace("7329", "7322")
        .replace("741c", "7415")
    )
    s = compiled(subprog_case(), "tail-call-frame-mismatch")
    expect_code(s, "p", 1, f"{SUB_HEAD} 50 50 {SUB_BODY} {seq} {SUB_TAIL}")
    same_without_feature(indirect_case(), "tail-call-frame-mismatch")  # no stack: no add


def test_missing_pop_drops_the_first_pop_of_the_tail_call_path():
    want = INDIRECT.replace("762e", "762d").replace("7321", "7320").replace("7414", "7413")
    want = want.replace(f"{I_INC} {I_LEAVE}", f"{I_INC} 58 58")
    expect_code(compiled(indirect_case(), "missing-pop"), "p", 0, want)
    same_without_feature(direct_case("p2"), "missing-pop")  # no callee-saved regs used


# ---- register clobbered ---------------------------------------------------------------


def test_tail_call_clobbers_ctx_moves_r0_into_r1():
    want = INDIRECT.replace(I_BOUND, f"4889c7 {I_BOUND}")  # mov rdi, rax
    expect_code(compiled(indirect_case(), "tail-call-clobbers-ctx"), "p", 0, want)
    s = compiled(direct_case(), "tail-call-clobbers-ctx")
    expect_code(s, "p1", 0, DIRECT_EMPTY.replace(D_COUNT, f"4889c7 {D_COUNT}"))
    base = s.progs["p1"].funcs[0].address
    (site,) = s.pokes
    assert (site.bypass - base, site.target - base, site.out - base) == (0x39, 0x44, 0x49)


def test_tcc_ptr_not_reloaded_before_bpf2bpf_calls():
    s = compiled(subprog_case(), "tcc-ptr-not-reloaded")
    expect_code(s, "p", 0, SUB_MAIN.replace("488b85f0ffffff ", ""))
    expect_code(s, "p", 1, SUB_SUB)
    same_without_feature(indirect_case(), "tcc-ptr-not-reloaded")


# ---- private stack --------------------------------------------------------------------


def test_priv_stack_shared_gives_the_subprog_the_callers_area():
    good = compiled(priv_calls_case())
    bad = compiled(priv_calls_case(), "priv-stack-shared")
    assert len(good.percpu_regions) == 2 and len(bad.percpu_regions) == 1
    (region, size), _ = good.percpu_regions
    assert bad.percpu_regions == [(region, size)]
    fp0 = region + 8 + 64
    fp1 = good.percpu_regions[1][0] + 8 + 64
    movabs = bytes.fromhex("49b9")
    g, b = (s.progs["p"].funcs[1].code for s in (good, bad))
    assert g.replace(movabs + fp1.to_bytes(8, "little"), movabs + fp0.to_bytes(8, "little")) == b
    assert good.progs["p"].funcs[0].code == bad.progs["p"].funcs[0].code
    same_without_feature(indirect_case(), "priv-stack-shared")


# ---- out labels -----------------------------------------------------------------------


def test_stale_out_label_jumps_to_the_other_sequences_out():
    good = compiled(two_indirect_case()).progs["p"].funcs[0].code
    bad = compiled(two_indirect_case(), "stale-out-label").progs["p"].funcs[0].code
    # each sequence is 53 bytes; the second starts 53 + 10 (ld_imm64) + 4 (ldx) = 67
    # bytes after the first, and so does its out label. The first sequence's jumps
    # go to the second's out (+67), the second's to the first's (-67).
    seq = bytes.fromhex("89d239564c762e")
    first, second = good.index(seq), good.rindex(seq)
    assert second - first == 67
    # displacement bytes of jbe, jae, je inside a sequence: +6, +19, +32
    moves = {first + 6: 0x2E, first + 19: 0x21, first + 32: 0x14}
    moves |= {k - first + second: v for k, v in moves.items()}
    assert all(good[k] == v for k, v in moves.items())
    want = bytearray(good)
    for k, v in moves.items():
        want[k] = (v + (67 if k < second else -67)) & 0xFF
    assert bytes(want) == bad
    assert [bad[first + 6], bad[second + 6]] == [0x71, 0xEB]  # jbe +113, jbe -21
    same_without_feature(indirect_case(), "stale-out-label")  # one sequence: its own out


# ---- exceptions -----------------------------------------------------------------------


def test_boundary_missing_r12():
    s = compiled(exc_case(), "boundary-missing-r12")
    good = compiled(exc_case())
    expect_code(
        s,
        "p",
        0,
        "0f1f440000 0f1f00 55 4889e5 53 4155 4156 4157"  # no push r12 (41 54)
        f" 4889fb 448b6f70 4c89ef e8{{rel:func:p:1}} b801000000 415f 415e 415d 5b {RET}",
    )
    # the callback still pops r15, r14, r13, rbx and r12
    assert s.progs["p"].funcs[2].code == good.progs["p"].funcs[2].code
    assert bytes.fromhex("415f415e415d5b415c") in s.progs["p"].funcs[2].code
    same_without_feature(subprog_case(), "boundary-missing-r12")


# ---- poking ---------------------------------------------------------------------------


def test_poke_bypass_not_restored_on_delete():
    s = compile_system(direct_case("p2"))
    (site,) = s.pokes
    v = Variant().with_faults("poke-bypass-not-restored")
    p = poke_transition(s, site, "p2", None, v)
    assert p == [(site.target, NOP5)]  # the bypass stays nop5
    apply_patches(s, p)
    expect_code(s, "p1", 0, f"{D_HEAD} {D_COUNT} 0f1f440000 48830001 58 58 0f1f440000 {D_TAIL}")
    # the other transitions are those of the default
    for old, new in ((None, "p2"), ("p2", "p3"), (None, None)):
        assert poke_transition(s, site, old, new, v) == poke_transition(s, site, old, new)
    assert all_code(compiled(direct_case("p2"), "poke-bypass-not-restored")) == all_code(
        compiled(direct_case("p2"))
    )


def test_stale_poke_leaves_the_target_on_jmp_to_jmp():
    s = compile_system(direct_case("p2"))
    (site,) = s.pokes
    v = Variant().with_faults("stale-poke")
    assert poke_transition(s, site, "p2", "p3", v) == []
    assert poke_transition(s, site, "p2", None, v) == poke_transition(s, site, "p2", None)


# ---- instruction-set faults ------------------------------------------------------------
#
# One corpus case per fault (corpus/isa/, corpus/private_stack/deepest_slot.case):
# each states the right result, worked out by hand in its comment, and
# tests/test_corpus.py checks it on the interpreter, the model and the host
# kernel (its JIT images and natively). Here: the faulted function differs from
# the right one in exactly the hand-encoded bytes of the faulty emission point,
# the right model agrees with the reference on the case, the faulted one does not.

CORPUS = Path(__file__).resolve().parents[2] / "corpus"

#: fault -> (case, right bytes, faulted bytes) of the instruction the fault touches
ISA_FAULTS = {
    # mov edi, 0xffffffff -> mov rdi, imm32 (sign-extending)
    "mov32-imm-sign-extended": ("isa/mov32_imm_zero_extends", "bfffffffff", "48c7c7ffffffff"),
    # mov edi, 0x80000000 -> mov rdi, imm32
    "ld-imm64-sign-extends": ("isa/ld_imm64_u32", "bf00000080", "48c7c700000080"),
    # movsx rax, dil -> movsx eax, dil
    "movsx64-no-rexw": ("isa/movsx64_byte", "480fbec7", "400fbec7"),
    # movsx rax, byte [rbp-8] -> movzx rax, byte [rbp-8]
    "ldsx-movzx": ("isa/ldsx_byte", "480fbe45f8", "480fb645f8"),
    # cqo; idiv rsi -> xor edx, edx; idiv rsi
    "sdiv-zero-extends-dividend": ("isa/sdiv_negative_dividend", "4899 48f7fe", "31d2 48f7fe"),
    # (the zero-divisor guard's ja over the division, 3 bytes shorter)
    # push rax; push rdx; mov r11, rdx; mov rax, rdi; xor edx, edx; div r11
    #   -> push rax; push rdx; mov rax, rdi; xor edx, edx; div rdx
    "div-src-rdx-not-saved": (
        "isa/div_by_r3",
        "eb12 50 52 4989d3 4889f8 31d2 49f7f3",
        "eb0f 50 52 4889f8 31d2 48f7f2",
    ),
    # shlx edi, edi, esi (VEX.W=0) -> shlx rdi, rdi, rsi (VEX.W=1)
    "shift32-by-reg-as-64": ("isa/shift32_by_reg", "c4e249f7ff", "c4e2c9f7ff"),
    # ror di, 8; movzx edi, di -> ror di, 8
    "bswap16-no-movzx": ("isa/be16_truncates", "66c1cf08 0fb7ff", "66c1cf08"),
    # lock add dword [rbp-8], edi -> lock add qword [rbp-8], rdi
    "atomic32-as-64": ("isa/atomic32_add_wraps", "f0017df8", "f048017df8"),
    # mov byte [rbp-8], dil -> mov byte [rbp-8], bh
    "stx-byte-no-rex": ("isa/byte_store_from_r1", "40887df8", "887df8"),
    # cmp edi, 1; jle +5 -> cmp edi, 1; jbe +5
    "jmp32-jsle-unsigned": ("isa/jmp32_jsle_signed", "83ff01 7e05", "83ff01 7605"),
    # test edi, edi; jne +5 -> test rdi, rdi; jne +5
    "jmp32-jset-64bit": ("isa/jmp32_jset_low_half", "85ff 7505", "4885ff 7505"),
    # mov edi, edi; mov rax, rdi -> mov rax, rdi
    "mov32-self-elided": ("isa/mov32_self_zero_extends", "89ff 4889f8", "4889f8"),
    # je +2; jmp +5; mov eax, 2 -> je +0; mov eax, 2
    "gotol-uses-off": ("isa/gotol_skips", "7402 eb05 b802000000", "7400 b802000000"),
    # shl edi, 0; mov rax, rdi -> mov rax, rdi
    "shift32-by-0-elided": ("isa/shift32_by_0", "c1e700 4889f8", "4889f8"),
    # mov edi, 1; neg edi -> mov edi, 1; neg rdi
    "neg32-as-64": ("isa/neg32", "bf01000000 f7df", "bf01000000 48f7df"),
    # cmp rdi, rsi; ja +5 -> cmp rsi, rdi; ja +5
    "jmp-reg-operands-swapped": ("isa/jmp_reg_compare", "4839f7 7705", "4839fe 7705"),
    # movabs r9, area + 8 + 64 -> movabs r9, area + 64
    "priv-stack-8-low": (
        "private_stack/deepest_slot",
        "49b9" + (0xFFFF888120000000 + 72).to_bytes(8, "little").hex(),
        "49b9" + (0xFFFF888120000000 + 64).to_bytes(8, "little").hex(),
    ),
}


def isa_case(fault: str) -> Case:
    return casefile.load(CORPUS / f"{ISA_FAULTS[fault][0]}.case")


def only_the_emission_point_differs(fault: str, good: bytes, bad: bytes) -> None:
    """``bad`` is ``good`` with the fault's bytes swapped in, up to the last
    4 bytes: the rel32 of the jmp to the return thunk, which moves with the
    function's length."""
    _, old, new = ISA_FAULTS[fault]
    old, new = bytes.fromhex(old.replace(" ", "")), bytes.fromhex(new.replace(" ", ""))
    assert good.count(old) == 1, good.hex()
    assert good[-5] == bad[-5] == 0xE9
    assert good.replace(old, new)[:-4] == bad[:-4], bad.hex()


def test_jitdiff_mutants_measures_every_fault():
    from harness.campaign.mutants import MUTANTS

    assert {f"x86_64+{f}" for f in FAULTS} <= set(MUTANTS)


def test_every_isa_fault_has_a_case_that_names_it():
    assert set(ISA_FAULTS) <= set(FAULTS)
    for fault in ISA_FAULTS:
        text = (CORPUS / f"{ISA_FAULTS[fault][0]}.case").read_text()
        assert f"x86_64+{fault}" in text


@pytest.mark.parametrize("fault", sorted(ISA_FAULTS))
def test_isa_fault_changes_exactly_its_emission_point(fault):
    case = isa_case(fault)
    good = compiled(case).progs["p"].funcs[0].code
    bad = compiled(case, fault).progs["p"].funcs[0].code
    only_the_emission_point_differs(fault, good, bad)
    same_without_feature(indirect_case(), fault)


@pytest.mark.parametrize("fault", sorted(ISA_FAULTS))
def test_isa_fault_is_found_by_its_case_and_the_right_model_is_not(fault):
    case = isa_case(fault)
    result = Runner(["x86_64", f"x86_64+{fault}"]).check(case)
    assert not expectation_failures(case, result.reference.runs)
    verdict, divergence, _ = result.candidates["x86_64"]
    assert verdict is Verdict.AGREE, str(divergence)
    verdict, divergence, _ = result.candidates[f"x86_64+{fault}"]
    assert verdict is Verdict.DIVERGE
    assert divergence.oracle in FAULT_SYMPTOMS[fault], str(divergence)


@pytest.mark.parametrize("fault", sorted(ISA_FAULTS))
def test_isa_faults_apply_to_the_510_design(fault):
    case = isa_case(fault)
    good = compile_system(case, variant=V510).progs["p"].funcs[0].code
    bad = compile_system(case, variant=V510.with_faults(fault)).progs["p"].funcs[0].code
    only_the_emission_point_differs(fault, good, bad)


def test_cmpxchg32_is_followed_by_the_verifiers_zero_extension():
    # opt_subreg_zext_lo32_rnd_hi32() adds mov32 r0, r0 after every 32-bit
    # cmpxchg; the host kernel's image has lock cmpxchg [rbp-8], edi; mov eax, eax
    p = prog(
        "p",
        stx(isa.DW, 10, 1, -8),
        [isa.Insn(isa.STX | isa.ATOMIC | isa.W, 10, 1, -8, isa.CMPXCHG)],
        exit_(),
    )
    code = compiled(Case({"p": p})).progs["p"].funcs[0].code
    assert bytes.fromhex("f00fb17df8 89c0 c9") in code
    assert (
        bytes.fromhex("89c0")
        not in compiled(Case({"p": p}), "mov32-self-elided").progs["p"].funcs[0].code
    )


# ---- the linux-5.10 design -------------------------------------------------------------

# emit_prologue(), v5.10:
#   memcpy(prog, ideal_nops[NOP_ATOMIC5], X86_PATCH_SIZE);          0f1f440000
#   if (tail_call_reachable && !is_subprog) EMIT2(0x31, 0xC0);      31c0  xor eax, eax
#   else EMIT2(0x66, 0x90);                                         6690  nop2
#   EMIT1(0x55); EMIT3(0x48, 0x89, 0xE5);                           55 4889e5
#   /* X86_TAIL_CALL_OFFSET (11) is here */
#   if (stack_depth) EMIT3_off32(0x48, 0x81, 0xEC, round_up(stack_depth, 8));
#   if (tail_call_reachable) EMIT1(0x50);                           50  push rax
P510_MAIN_TC = "0f1f440000 31c0 55 4889e5"
P510_OTHER = "0f1f440000 6690 55 4889e5"

# emit_bpf_tail_call_indirect(), v5.10, tcc_off = -4 - round_up(stack_depth, 8):
#   EMIT2(0x89, 0xD2);                                  mov edx, edx
#   EMIT3(0x39, 0x56, offsetof(.., map.max_entries));   cmp dword [rsi + 0x4c], edx
#   EMIT2(X86_JBE, OFFSET1);                            jbe out (off1 = 42 + pops + ...)
#   EMIT2_off32(0x8B, 0x85, tcc_off);                   mov eax, dword [rbp + tcc_off]
#   EMIT3(0x83, 0xF8, MAX_TAIL_CALL_CNT);               cmp eax, 32
#   EMIT2(X86_JA, OFFSET2);                             ja out (off2 = 31 + ...)
#   EMIT3(0x83, 0xC0, 0x01);                            add eax, 1
#   EMIT2_off32(0x89, 0x85, tcc_off);                   mov dword [rbp + tcc_off], eax
#   EMIT4_off32(0x48, 0x8B, 0x8C, 0xD6, ptrs);          mov rcx, [rsi + rdx*8 + 0x138]
#   EMIT3(0x48, 0x85, 0xC9); EMIT2(X86_JE, OFFSET3);    test rcx, rcx; je out (off3 = 9 + ...)
#   pop_callee_regs(); EMIT1(0x58);                     pop ...; pop rax
#   if (stack_depth) EMIT3_off32(0x48, 0x81, 0xC4, round_up(stack_depth, 8));
#   EMIT4(0x48, 0x8B, 0x49, offsetof(bpf_func));        mov rcx, [rcx + 0x48]
#   EMIT4(0x48, 0x83, 0xC1, X86_TAIL_CALL_OFFSET);      add rcx, 11
#   RETPOLINE_RCX_BPF_JIT();                            (here: jmp __x86_indirect_thunk_rcx)
# With one pop (rbx, 1 byte) and a 5-byte jump: off1 = 42 + 1 + 5 = 0x30,
# off2 = 31 + 1 + 5 = 0x25, off3 = 9 + 1 + 5 = 0x0f.
INDIRECT_510 = (
    f"{P510_MAIN_TC} 50 53 488b5f08 48be{{abs:map:jt}} 4889da"
    " 89d2 39564c 7630 8b85fcffffff 83f820 7725 83c001 8985fcffffff"
    " 488b8cd638010000 4885c9 740f 5b 58 488b4948 4883c10b e9{rel:thunk:rcx}"
    f" {I_TAIL}"
)

# emit_bpf_tail_call_direct(), v5.10 (off1 = 20 + pops, + 7 with a stack):
#   EMIT2_off32(0x8B, 0x85, tcc_off); EMIT3(0x83, 0xF8, MAX_TAIL_CALL_CNT);
#   EMIT2(X86_JA, off1); EMIT3(0x83, 0xC0, 0x01); EMIT2_off32(0x89, 0x85, tcc_off);
#   emit_jump(&prog, tailcall_target + X86_PATCH_SIZE, tailcall_bypass);   bypass: jmp out
#   pop_callee_regs(); EMIT1(0x58); [add rsp, sd];
#   memcpy(prog, ideal_nops[NOP_ATOMIC5], X86_PATCH_SIZE);                  target: nop5
D510_HEAD = f"{P510_MAIN_TC} 50 48be{{abs:map:jt}} ba01000000"
D510_COUNT = "8b85fcffffff 83f820 7714 83c001 8985fcffffff"
DIRECT_510_EMPTY = f"{D510_HEAD} {D510_COUNT} e906000000 58 0f1f440000 {D_TAIL}"
DIRECT_510_P2 = f"{D510_HEAD} {D510_COUNT} 0f1f440000 58 e9{{rel:entry:p2}} {D_TAIL}"

V510 = Variant(name="linux-5.10")


def test_design_is_selected_by_name_or_knob():
    assert set(DESIGNS) == {"linux-6.18", "linux-5.10", "linux-6.1"}
    assert V510.design == "linux-5.10" and V510.tail_call_offset == 11
    assert Variant().design == "linux-6.18" and Variant().tail_call_offset == 12
    assert Variant(design="linux-5.10").tail_call_offset == 11
    v = Variant.from_names(["linux-5.10", "missing-pop"])
    assert (v.design, v.faults, v.name) == ("linux-5.10", {"missing-pop"}, "linux-5.10+missing-pop")
    assert V510.with_faults("stale-poke").design == "linux-5.10"
    with pytest.raises(ValueError):
        Variant(design="linux-4.19")
    with pytest.raises(ValueError):  # 6.18-scheme faults do not apply to the 5.10 sequences
        V510.with_faults("tcc-by-value")


def test_510_indirect_tail_call():
    s = compile_system(indirect_case(), variant=V510)
    expect_code(s, "p", 0, INDIRECT_510)
    f = s.progs["p"].funcs[0]
    assert s.progs["p"].tail_call_entry == f.address + 11
    assert s.layout.tail_call_offset == 11


def test_510_direct_tail_call_and_pokes():
    s = compile_system(direct_case(), variant=V510)
    expect_code(s, "p1", 0, DIRECT_510_EMPTY)
    expect_code(s, "p2", 0, f"{P510_OTHER} b802000000 {RET}")  # no tail call: nop2, no push
    (site,) = s.pokes
    base = s.progs["p1"].funcs[0].address
    assert (site.bypass - base, site.target - base, site.out - base) == (0x2F, 0x35, 0x3A)
    apply_patches(s, poke_transition(s, site, None, "p2", V510))
    expect_code(s, "p1", 0, DIRECT_510_P2)  # jmp p2 + 11 (poke->adj_off)
    expect_code(compile_system(direct_case("p2"), variant=V510), "p1", 0, DIRECT_510_P2)
    apply_patches(s, poke_transition(s, site, "p2", None, V510))
    expect_code(s, "p1", 0, DIRECT_510_EMPTY)


def test_510_subprogs_get_the_count_by_value():
    s = compile_system(subprog_case(), variant=V510)
    # do_jit, BPF_JMP | BPF_CALL, v5.10:
    #   if (tail_call_reachable) EMIT3_off32(0x48, 0x8B, 0x85, -(bpf_prog->aux->stack_depth + 8));
    # mov rax, [rbp - 8]: the pushed count itself, not a pointer
    expect_code(
        s,
        "p",
        0,
        f"{P510_MAIN_TC} 50 53 4889fb 488b85f8ffffff e8{{rel:func:p:1}} 4805e8030000 5b {RET}",
    )
    # the subprog pushes the value it got; its count is the dword at rbp - 8 - 4.
    # Offsets: pops 2 (r13) + 7 (add rsp) + 5: off1 = 56, off2 = 45, off3 = 23
    expect_code(
        s,
        "p",
        1,
        f"{P510_OTHER} 4881ec08000000 50 {SUB_BODY}"
        " 89d2 39564c 7638 8b85f4ffffff 83f820 772d 83c001 8985f4ffffff"
        " 488b8cd638010000 4885c9 7417 415d 58 4881c408000000"
        f" 488b4948 4883c10b e9{{rel:thunk:rcx}} {SUB_TAIL}",
    )


def test_510_reloads_before_helper_calls_too_with_the_unrounded_depth():
    main = [*movr(6, 1), *stx(isa.W, 10, 6, -12), *call(5), *ld_map(2, 0), *mov(3, 0)]
    p = prog("p", main, call(12), mov(0, 0), exit_())
    code = compile_system(Case({"p": p}, {"jt": JT}), variant=V510).progs["p"].funcs[0].code
    # sub rsp, 16; push rax; ... mov rax, [rbp - (12 + 8)]; call helper
    assert code.startswith(bytes.fromhex(f"{P510_MAIN_TC.replace(' ', '')} 4881ec10000000 50 53"))
    assert bytes.fromhex("488b85ecffffff e8") in code
    # and the tail call's count slot uses the rounded depth: -4 - 16
    assert bytes.fromhex("8b85ecffffff 83f820") in code


def test_61_reloads_the_count_from_the_rounded_depth():
    # the 2022 fix: round_up(12, 8) = 16, so mov rax, [rbp - (16 + 8)]
    main = [*movr(6, 1), *stx(isa.W, 10, 6, -12), *call(5), *ld_map(2, 0), *mov(3, 0)]
    p = prog("p", main, call(12), mov(0, 0), exit_())
    v61 = Variant(name="linux-6.1")
    code = compile_system(Case({"p": p}, {"jt": JT}), variant=v61).progs["p"].funcs[0].code
    assert bytes.fromhex("488b85e8ffffff e8") in code
    assert bytes.fromhex("488b85ecffffff e8") not in code
    old = compile_system(Case({"p": p}, {"jt": JT}), variant=V510).progs["p"].funcs[0].code
    assert code == old.replace(bytes.fromhex("488b85ecffffff"), bytes.fromhex("488b85e8ffffff"))


def test_510_and_the_tcc_by_value_fault_are_different_code():
    a = all_code(compile_system(subprog_case(), variant=V510))
    b = all_code(compiled(subprog_case(), "tcc-by-value"))
    assert a[("p", 0)][:12] != b[("p", 0)][:12] and a[("p", 1)] != b[("p", 1)]


def test_510_keeps_everything_else():
    # ALU, memory, helpers: the same bytes after the 2-byte nop
    body = f"55 4889e5 4881ec10000000 53 4889fb 895df4 e8{{rel:helper:5}} 4801d8 5b {RET}"
    expect_code(compile_system(plain_case()), "p", 0, f"0f1f440000 0f1f00 {body}")
    expect_code(compile_system(plain_case(), variant=V510), "p", 0, f"0f1f440000 6690 {body}")


@pytest.mark.parametrize(
    "fault",
    sorted(
        f
        for f in FAULTS
        if not f.startswith("tcc-")
        and f not in ("stale-poke", "poke-bypass-not-restored")
        and f not in ISA_FAULTS
    ),
)
def test_shared_faults_apply_to_the_510_design(fault):
    cases = [indirect_case(), direct_case("p2"), subprog_case(), exc_case(), priv_calls_case()]
    cases.append(Case({"p": prog("p", stx(isa.DW, 10, 1, -64), call(5), exit_(), type="raw_tp")}))
    changed = 0
    for case in cases:
        good = all_code(compile_system(case, variant=V510))
        bad = all_code(compile_system(case, variant=V510.with_faults(fault)))
        changed += good != bad
    assert changed or fault == "stale-out-label"
    same = all_code(compile_system(plain_case(), variant=V510.with_faults(fault)))
    assert same == all_code(compile_system(plain_case(), variant=V510))
