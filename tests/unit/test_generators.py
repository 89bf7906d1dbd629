"""The generators: every system they build is verifier-clean (the reference
interpreter never calls a run INVALID), deterministic per seed, within the
static limits the kernel checks, and reaches every bug-class shape."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings

from generators import (
    SHAPES,
    Config,
    coverage,
    generate,
    helper_calls,
    programs,
    record,
    subprograms,
    summary,
    systems,
    tail_call_graphs,
    throws,
)
from generators.coverage import program_facts
from harness.formats import isa
from harness.outcome import Status
from harness.reference.helpers import TAIL_CALL
from harness.reference.interp import run_case
from harness.system import Case

FAST_SEEDS = range(200)
COVERAGE_SEEDS = range(500)


def _show(case: Case) -> str:
    try:
        from harness.formats.casefile import render

        return render(case)
    except Exception:  # the renderer is optional debugging output
        from harness.formats.asm import disassemble

        maps = list(case.maps)
        return "\n".join(
            f"program {n} {p.type}\n" + disassemble(p.insns, labels=p.labels, maps=maps)
            for n, p in case.programs.items()
        )


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _round32(n: int) -> int:
    # 6.1's check_max_stack_depth: round_up(max_t(u32, stack_depth, 1), 32)
    return (max(n, 1) + 31) & ~31


def check_case(case: Case, frame=_round16) -> list:
    """Encoding, static limits and a clean reference run; returns the outcomes."""
    for prog in case.programs.values():
        isa.validate(prog.insns)
        facts = program_facts(prog)
        starts = prog.function_starts()
        for pc in starts:
            assert pc in prog.labels, f"function at {pc} has no label"
        if prog.exception_callback is not None:
            assert prog.type == "sched_cls"
            # laid out right after main (the 6.18 dead-subprogram oops)
            assert prog.labels[starts[1]] == prog.exception_callback
        reached = {"main"}
        todo = ["main"]
        while todo:
            for callee in facts[todo.pop()].calls:
                if callee not in reached:
                    reached.add(callee)
                    todo.append(callee)
        subs = {f for f in facts if f not in ("main", prog.exception_callback)}
        assert subs <= reached, f"unreachable subprograms {subs - reached}"
        for f in facts.values():
            assert f.stack <= 512
            if prog.type == "raw_tp":
                assert not f.throws, "bpf_throw in raw_tp"
            else:
                assert not f.ctx_read, "ctx read in sched_cls"

        def walk(name: str, frames: int, above: int, facts=facts) -> None:
            f = facts[name]
            assert frames <= 8, "call chain deeper than 8 frames"
            if name != "main" and f.tail_calls:
                assert above < 256, f"{above} bytes of caller stack above a tail call"
            total = above + frame(f.stack)
            assert total <= 512, f"combined stack {total}"
            for c in set(f.calls):
                walk(c, frames + 1, total)

        walk("main", 1, 0)
    types = {p.type for p in case.programs.values()}
    assert len(types) == 1, "programs sharing a prog array must share a type"
    if "progs" in case.maps:
        # every program but the entry can be entered: some slot holds it
        held = set(case.maps["progs"].init.values())
        assert set(case.programs) - {"p0"} <= held, f"no slot holds {set(case.programs) - held}"
    if "raw_tp" in types:
        assert 8 <= len(case.ctx) <= 96 and len(case.ctx) % 8 == 0
    outcomes = run_case(case)
    for out in outcomes:
        assert out.status in (Status.OK, Status.BUDGET), (
            f"{out.status.value} at {out.where}: {out.detail}\n{_show(case)}"
        )
    return outcomes


@settings(max_examples=60)
@given(systems())
def test_hypothesis_systems_are_verifier_clean(case):
    record(case, check_case(case))


@pytest.mark.parametrize(
    "strategy", [programs, subprograms, tail_call_graphs, helper_calls, throws]
)
def test_part_strategies(strategy):
    @settings(max_examples=10)
    @given(strategy())
    def inner(value):
        if isinstance(value, Case):
            check_case(value)
        else:
            assert value and value[-1].name == "main"

    inner()


def test_fast_path_is_verifier_clean():
    for seed in FAST_SEEDS:
        check_case(generate(seed))


def test_fast_path_is_deterministic():
    for seed in range(50):
        assert generate(seed) == generate(seed)
    assert generate(1) != generate(2)


def test_config_narrows_generation():
    no_throw = Config(throws=False)
    raw = Config(prog_types=("raw_tp",))
    solo = Config(tail_calls=False, subprograms=False)
    for seed in range(60):
        for prog in generate(seed, no_throw).programs.values():
            assert not any(
                i.src == isa.PSEUDO_KFUNC_CALL and i.opcode == isa.JMP | isa.CALL
                for i in prog.insns
            )
            assert prog.exception_callback is None
        assert {p.type for p in generate(seed, raw).programs.values()} == {"raw_tp"}
        case = generate(seed, solo)
        assert len(case.programs) == 1 and "progs" not in case.maps
        prog = case.programs["p0"]
        assert program_facts(prog).keys() - {prog.exception_callback} == {"main"}


def test_no_program_mixes_tail_calls_and_subprograms_when_forbidden():
    # what riscv64 and ppc64el 6.12 need: the verifier refuses a program with
    # a tail call and more than one function (an exception callback counts)
    cfg = Config(tail_calls_with_subprograms=False)
    tail = subs = both = 0
    for seed in FAST_SEEDS:
        case = generate(seed, cfg)
        check_case(case)
        kinds = set()
        for prog in case.programs.values():
            has_tail = any(
                i.opcode == isa.JMP | isa.CALL and i.src == 0 and i.imm == TAIL_CALL
                for i in prog.insns
            )
            has_subs = len(prog.function_starts()) > 1
            assert not (has_tail and has_subs), (seed, prog.name)
            kinds |= {"tail"} if has_tail else {"subs"} if has_subs else set()
        tail += "tail" in kinds
        subs += "subs" in kinds
        both += kinds == {"tail", "subs"}
    # both shapes stay reachable, in one system too
    assert tail > 20 and subs > 20 and both > 0, (tail, subs, both)


def _atomic(i) -> bool:
    return isa.cls(i.opcode) == isa.STX and i.opcode & 0xE0 == isa.ATOMIC


def _divmod64(i) -> bool:
    return isa.cls(i.opcode) == isa.ALU64 and i.opcode & 0xF0 in (isa.DIV, isa.MOD)


def _v4(i) -> bool:
    # the cpu v4 encodings (Documentation/bpf/standardization/instruction-set.rst):
    # sdiv/smod and movsx carry off != 0, bswap is ALU64 END, MEMSX loads, gotol
    c, op = isa.cls(i.opcode), i.opcode & 0xF0
    return (
        (c in (isa.ALU, isa.ALU64) and op in (isa.DIV, isa.MOD, isa.MOV) and i.off != 0)
        or (c == isa.ALU64 and op == isa.END)
        or (c == isa.LDX and i.opcode & 0xE0 == isa.MEMSX)
        or (c == isa.JMP32 and op == isa.JA)
    )


@pytest.mark.parametrize(
    "capability, switches, shape",
    [
        ("atomics", {"atomics", "jit_atomics"}, _atomic),
        ("alu64_divmod", {"jit_alu64_divmod"}, _divmod64),
        ("cpu_v4", {"cpu_v4"}, _v4),
    ],
)
def test_a_shape_a_kernel_refuses_is_never_drawn(capability, switches, shape):
    # the 32-bit JITs of 6.1 refuse every BPF_ATOMIC and 64-bit div/mod
    # (arch/arm/net/bpf_jit_32.c, arch/x86/net/bpf_jit_comp32.c: "goto
    # notyet"), 6.1's verifier every cpu v4 instruction; the guest probe's
    # failure turns these switches off
    from harness.guest.probes import narrow_switches

    off = narrow_switches({capability: "prog entry rejected (ENOTSUPP)"})
    assert off == dict.fromkeys(switches, False)
    drawn_before = sum(
        shape(i) for s in FAST_SEEDS for p in generate(s).programs.values() for i in p.insns
    )
    assert drawn_before > 20  # the default config does draw it
    counted = 0
    for seed in FAST_SEEDS:
        case = generate(seed, Config(**off))
        check_case(case)
        for prog in case.programs.values():
            assert not any(shape(i) for i in prog.insns), (seed, prog.name)
        counted += "counts" in case.maps
    assert counted > 50  # the run counter stays (bumped by load/add/store)


def test_coverage_reaches_every_shape():
    counts: Counter = Counter()
    for seed in COVERAGE_SEEDS:
        case = generate(seed)
        counts.update(coverage(case, run_case(case)))
    missing = [s for s in SHAPES if not counts[s]]
    assert not missing, f"never reached: {missing}\n{summary(counts, len(COVERAGE_SEEDS))}"


def test_6_1_stack_rounding_is_kept_when_the_probe_fails():
    """6.1 counts a frame as round_up(max(depth, 1), 32) along a call chain
    (the 6.9 verifier rounds JITed frames to 16): with the constraint off,
    every chain fits 512 bytes and every tail call's callers stay under 256
    by that count, and big frames and tail calls from subprograms remain."""
    from harness.guest.probes import narrow_switches

    off = narrow_switches({"stack_rounding_16": "prog entry rejected (EACCES)"})
    assert off == {"stack_rounding_16": False}
    big = deep = 0
    for seed in FAST_SEEDS:
        case = generate(seed, Config(**off))
        check_case(case, frame=_round32)
        facts = [f for p in case.programs.values() for f in program_facts(p).values()]
        big += any(f.stack >= 256 for f in facts)
        deep += any(f.tail_calls for p in case.programs.values() for n, f in program_facts(p).items() if n != "main")
    assert big > 20 and deep > 10


def test_no_program_throws_and_tail_calls_when_the_probe_crashed():
    """powerpc64 7.2 panics on a tail call out of a program that uses
    bpf_throw (docs/kernel-findings.md section 6): with the probe's crash as
    the answer, no program has both, and both still occur."""
    from harness.guest.probes import narrow_switches
    from harness.reference.helpers import BPF_THROW, TAIL_CALL

    off = narrow_switches({"tail_calls_in_throwing_programs": "crashed the guest: ..."})
    assert off == {"tail_calls_in_throwing_programs": False}

    def kinds(prog) -> set[str]:
        calls = [i for i in prog.insns if i.opcode == isa.JMP | isa.CALL]
        out = set()
        if any(i.src == isa.PSEUDO_KFUNC_CALL and i.imm == BPF_THROW for i in calls):
            out.add("throw")
        if any(i.src == 0 and i.imm == TAIL_CALL for i in calls):
            out.add("tail_call")
        return out

    mixed_before = sum(
        kinds(p) == {"throw", "tail_call"} for s in FAST_SEEDS for p in generate(s).programs.values()
    )
    assert mixed_before > 5
    seen: set[str] = set()
    for seed in FAST_SEEDS:
        case = generate(seed, Config(**off))
        check_case(case)
        for prog in case.programs.values():
            assert kinds(prog) != {"throw", "tail_call"}, (seed, prog.name)
            seen |= kinds(prog)
    assert seen == {"throw", "tail_call"}
