"""The reference refuses what the verifier refuses, naming the instruction,
and those refusals are poisoned runs, never divergences (the shapes and the
verifier's words come from tests/verifier_shapes.py, checked against the host
kernel in tests/kernel/test_verifier_shapes.py)."""

from __future__ import annotations

import pytest

from harness import engines
from harness.campaign.runner import Runner
from harness.formats import casefile
from harness.formats.isa import Insn
from harness.outcome import Status
from harness.reference.interp import run_case
from harness.system import Case, MapDef, Program
from oracles import Verdict
from tests.verifier_shapes import SHAPES, case_text


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_interpreter_refuses_with_the_verifiers_words(shape):
    (out,) = run_case(casefile.parse(case_text(shape)))
    assert out.status is Status.INVALID, out
    assert out.where.pc == shape.pc
    if shape.rejects:
        assert shape.rejects in out.detail
    else:
        assert "addr" in out.detail or "layout" in out.detail


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_refusals_are_poisoned_not_divergences(shape):
    runner = Runner(["x86_64"])
    res = runner.check(casefile.parse(case_text(shape)))
    runner.close()
    assert res.divergences == [] and res.poisoned


def test_same_object_pointer_distance_is_a_value():
    # fp-8 minus fp is -8 on every engine: the verifier accepts it and so does the reference
    text = (
        "program p raw_tp\n    r2 = r10\n    r2 += -8\n    r3 = r10\n    r2 -= r3\n"
        "    r0 = r2\n    exit\n"
    )
    (out,) = run_case(casefile.parse(text))
    assert out.status is Status.OK and out.retval == (1 << 64) - 8


def test_ctx_minus_imm_and_scalar_plus_ptr_are_allowed():
    text = (
        "program p raw_tp\n    r2 = r1\n    r2 -= 8\n    r3 = 8\n    r3 += r1\n"
        "    r0 = 0\n    exit\n"
    )
    (out,) = run_case(casefile.parse(text))
    assert out.status is Status.OK and out.retval == 0


# --------------------------------------------- a Case built in code, every engine


def _jump_into_callee() -> Case:
    # main: call f; goto +1 lands on f's first insn: the kernel's
    # "jump out of range" (check_subprogs), once a KeyError in the x86-64 model
    insns = [
        Insn(0x85, src=1, imm=3),  # call pc+3 -> 4
        Insn(0x05, off=2),  # goto 4: inside f
        Insn(0xB7, imm=0),
        Insn(0x95),
        Insn(0xB7, imm=1),
        Insn(0x95),
    ]
    return Case({"p": Program("p", "raw_tp", insns)})


def _huge_map() -> Case:
    prog = Program("p", "raw_tp", [Insn(0xB7), Insn(0x95)])
    return Case({"p": prog}, {"m": MapDef("m", "array", 0xFFFF_FFFF, 0xFFFF_FFFF)})


@pytest.mark.parametrize("make", [_jump_into_callee, _huge_map])
@pytest.mark.parametrize("engine", ["interp", "x86_64"])
def test_every_engine_refuses_an_invalid_case_built_in_code(make, engine):
    out = engines.get(engine).run(make(), budget=10_000)
    assert [r.status for r in out.runs] == [Status.INVALID]


def test_an_invalid_case_built_in_code_is_poisoned():
    runner = Runner(["x86_64"])
    res = runner.check(_jump_into_callee())
    runner.close()
    assert res.poisoned and not res.divergences
    assert res.candidates["x86_64"][0] is Verdict.POISONED
