"""Every corpus case on every set-up guest agrees with the reference, as on
the host's kernel-native (tests/test_corpus.py), and what ran was the JIT."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import engines
from harness.campaign.runner import Runner, expectation_failures
from harness.formats import casefile
from harness.reference.interp import run_case
from harness.reference.profile import LINUX
from tests.guest.conftest import guest_specs

ROOT = Path(__file__).resolve().parents[2] / "corpus"
# the kernel findings too: on a guest each either agrees or does what its
# section of docs/kernel-findings.md says (KERNEL_BEHAVIOUR)
CASES = casefile.corpus_cases(ROOT) + sorted((ROOT / "kernel-findings").glob("*.case"))
SPECS = guest_specs() or ["guest:arm64"]  # none set up: one skipped row per case

_runners: dict[str, Runner] = {}


def _runner(spec: str) -> Runner:
    if spec not in _runners:
        _runners[spec] = Runner([spec])
    return _runners[spec]


def _usable(spec: str) -> None:
    why = engines.available(spec)
    if why:
        pytest.skip(f"engine {spec}: {why}")


#: what a kernel line does with a corpus case instead of agreeing, documented
#: in docs/kernel-findings.md section 6: (case, kernel release prefix, arches)
#: -> (first run's status, text in its detail); status "diverges": the run
#: completes with another value than the reference's (the named oracle fires)
KERNEL_BEHAVIOUR = {
    # 7.2's verifier loses the zero-extension of a 32-bit op read on a pruned
    # path; the JITs that need it leave the upper half set
    ("kernel-findings/zext_lost_at_a_join_7_2.case", "7.2.", ("riscv64", "ppc64el")): (
        "diverges",
        "retval",
    ),
    # the arm32 JIT enters a tail-called program past its `sub sp` (6.12)
    ("kernel-findings/arm32_tail_call_into_a_bigger_frame.case", "6.12.", ("armhf",)): (
        "diverges",
        "retval",
    ),
    # the "tailcall hierarchy" bug, fixed upstream in 6.10, still in Debian's 6.1
    ("subprogs/hierarchy_two_calls.case", "6.1.", ("amd64", "arm64")): ("crashed", "soft lockup"),
    # powerpc64 7.2: the tail call reads its info from the exception boundary's
    # save of r20 and writes the count through it
    ("kernel-findings/powerpc_tail_call_from_throwing_program.case", "7.2.", ("ppc64el",)): (
        "crashed",
        "data-access-on-write",
    ),
    # section 0: the chain of subprogram frames repeated by 33 tail calls
    ("kernel-findings/stack_overflow_tail_call_chain.case", "6.12.", ("amd64", "arm64")): (
        "crashed",
        "kernel stack overflow",
    ),
    ("kernel-findings/stack_overflow_tail_call_chain.case", "7.2.", ("amd64", "arm64")): (
        "crashed",
        "kernel stack overflow",
    ),
    # 6.1 rounds frames to 32: 256 + 3 x 32 below the tail call (6.12: 240 + 0)
    ("kernel-findings/stack_overflow_tail_call_chain.case", "6.1.", ("amd64", "arm64")): (
        "rejected",
        "call stack of previous frames is 352 bytes",
    ),
    # 6.1's verifier counts the 240-byte frame as 256 below a subprogram tail call
    ("subprogs/stack_240_tail_call_in_subprog.case", "6.1.", ("amd64", "arm64")): (
        "rejected",
        "call stack of previous frames is 256 bytes",
    ),
}


def _documented(path: Path, eng) -> tuple[str, str] | None:
    name = str(path.relative_to(ROOT))
    for (case, prefix, arches), outcome in KERNEL_BEHAVIOUR.items():
        if case == name and eng.release.startswith(prefix) and eng.arch in arches:
            return outcome
    return None


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(ROOT)) for p in CASES])
def test_corpus_case_on_guest(path: Path, spec: str, tmp_path: Path):
    _usable(spec)
    case = casefile.load(path)
    runner = _runner(spec)
    eng = runner.engines[0]
    eng.crash_dir = tmp_path  # a documented crash is not a new reproducer
    eng._ensure()
    documented = _documented(path, eng)
    result = runner.check(case)
    verdict, divergence, out = result.candidates[spec]
    if documented and documented[0] == "diverges":
        assert divergence is not None and divergence.oracle == documented[1], str(divergence)
        return
    if documented:
        status, text = documented
        out = eng.run(case, budget=0)  # a runaway the runner would not send
        assert out.runs[0].status.value == status and text in out.runs[0].detail
        return
    # what the guest's kernel cannot load (probed capabilities, a JIT that
    # gives up, a 32-bit JIT's ENOTSUPP) is skipped with the kernel's words
    refused = [r.detail for r in out.runs if r.status.value in ("unsupported", "rejected")]
    if refused:
        pytest.skip(f"engine {spec}: {refused[0].splitlines()[0]}")
    assert divergence is None, str(divergence)
    # what the guest's JIT does differently by design, found by its probes
    # (powerpc's shifts past the width): the reference has no value to compare
    undefined = [r.undefined for r in run_case(case, eng.reference_profile(LINUX)) if r.undefined]
    if undefined:
        assert verdict.value == "poisoned"
        pytest.skip(f"engine {spec}: implementation-defined: {undefined[0]}")
    assert verdict.value == "agree", [r.detail for r in out.runs]
    # retval (low 32 bits) and maps are what a test run shows: the case's
    # own expectations hold on them too, unless the guest's JIT was found to
    # count failed tail calls (riscv64): then it agrees with that reference
    eng = _runner(spec).engines[0]
    if eng.reference_profile(LINUX) == LINUX:
        assert not expectation_failures(case, out.runs)


@pytest.mark.parametrize("spec", SPECS)
def test_the_guest_runs_jited_code(spec: str):
    """Images come back non-empty: the JIT compiled every function (with the
    JIT off the kernel reports no image and the interpreter would run)."""
    _usable(spec)
    eng = _runner(spec).engines[0]
    case = casefile.load(ROOT / "poke" / "slot_transitions.case")
    ans, infos = eng.answer(case, images=True)
    assert ans.status == "ok", ans.detail
    assert set(infos) == set(case.programs)
    for info in infos.values():
        assert info.jited and len(info.jited_ksyms) == len(info.jited_func_lens) >= 1
        assert sum(info.jited_func_lens) == len(info.jited)
    # the listing decodes every function with capstone, BPF interleaved where
    # the JIT reports line addresses (the 32-bit JITs report none)
    text = eng.listing(case)
    assert "(bad)" not in text and all(f"== {name} (" in text for name in infos)
    if all(info.jited_line_info for info in infos.values()):
        assert "bpf_tail_call" in text


#: what each JIT does where the kernel leaves the semantics to it, read from
#: its source (docs/kernel-findings.md section 6); the probes must find the
#: same on every guest set up: (arch, release prefix) -> capability -> present
SEMANTICS = {
    ("amd64", "6.12."): {
        "empty_slot_keeps_budget": True,
        "tail_call_counter_shared": True,
        "stack_rounding_16": True,
        "register_shifts_masked": True,
        "map_op_errors_64bit": True,
    },
    ("arm64", "6.12."): {
        "empty_slot_keeps_budget": True,
        "tail_call_counter_shared": True,
        "stack_rounding_16": True,
        "register_shifts_masked": True,
        "map_op_errors_64bit": True,
    },
    # the counter is decremented before the slot is loaded; in a function with
    # calls the decrement lands in a6 and s6 is read again (lost)
    ("riscv64", "6.12."): {
        "empty_slot_keeps_budget": False,
        "empty_slot_keeps_budget_after_call": True,
        "empty_slot_keeps_budget_after_smp_id": False,  # inlined: no call
        "register_shifts_masked": True,
    },
    # slw/sld take 6/7 bits of the amount
    ("ppc64el", "6.12."): {"empty_slot_keeps_budget": True, "register_shifts_masked": False},
    # 7.2: powerpc64 loads exceptions and subprogram tail calls, and a tail
    # call out of a throwing program writes through a saved register
    ("ppc64el", "7.2."): {
        "tail_calls_with_subprograms": True,
        "bpf_throw": True,
        "tail_call_counter_shared": True,
        "register_shifts_masked": False,
        "tail_calls_in_throwing_programs": False,
    },
    ("riscv64", "7.2."): {
        "empty_slot_keeps_budget": False,
        "empty_slot_keeps_budget_after_call": True,
        "register_shifts_masked": True,
    },
    ("amd64", "7.2."): {"tail_call_counter_shared": True, "tail_calls_in_throwing_programs": True},
    ("arm64", "7.2."): {"tail_call_counter_shared": True, "tail_calls_in_throwing_programs": True},
    # the 32-bit JITs: the counter is bumped before the slot is loaded, and
    # shifts past the width are the instruction's (arm: lsl by 33 gives 0)
    ("armhf", "6."): {"empty_slot_keeps_budget": False, "register_shifts_masked": False},
    ("i386", "6.1."): {"empty_slot_keeps_budget": False, "register_shifts_masked": False},
    ("ppc64el", "6.1."): {
        "empty_slot_keeps_budget": True,
        "register_shifts_masked": False,
        "stack_rounding_16": False,
    },
    # before the tailcall hierarchy rework (6.10) both JITs counted before the
    # slot load and passed the counter to subprograms by value; before 6.9 the
    # verifier counted every frame as at least 32 bytes
    ("amd64", "6.1."): {
        "empty_slot_keeps_budget": False,
        "empty_slot_keeps_budget_after_call": False,
        "tail_call_counter_shared": False,
        "stack_rounding_16": False,
        "map_op_errors_64bit": False,
    },
    ("arm64", "6.1."): {
        "empty_slot_keeps_budget": False,
        "empty_slot_keeps_budget_after_call": False,
        "tail_call_counter_shared": False,
        "stack_rounding_16": False,
        "map_op_errors_64bit": False,
    },
}


@pytest.mark.parametrize("spec", SPECS)
def test_the_probes_find_each_jits_documented_semantics(spec: str):
    _usable(spec)
    eng = _runner(spec).engines[0]
    eng._ensure()
    expected = next(
        (v for (arch, prefix), v in SEMANTICS.items() if eng.arch == arch and eng.release.startswith(prefix)),
        None,
    )
    if expected is None:
        pytest.skip(f"engine {spec}: no documented semantics for {eng.arch} {eng.release}")
    caps = eng.capabilities()
    assert {name: not caps[name] for name in expected} == expected
