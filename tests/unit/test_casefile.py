"""harness.formats.casefile: parse/render round trips, error lines, atomic save."""

from __future__ import annotations

import os
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import CaseError
from harness.formats import casefile, isa
from harness.formats.isa import Insn
from harness.system import PROG_TYPES, Case, Expect, MapDef, Program, Step

EXAMPLE = """\
# Self tail-call loop: 33 tail calls, 34 runs (kernel selftest tailcall3 shape).
# Free comment lines at the top become Case.comment.

map jmp_table prog_array max_entries=1
    0 = entry
map counts array max_entries=1 value_size=8
    0 = 00 00 00 00 00 00 00 00

ctx 01 00 00 00 00 00 00 00

program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    r1 = r6
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 1
    exit

program cb_prog sched_cls exception_callback=cb
main:
    r1 = 5
    call bpf_throw
    r0 = 0
    exit
  cb:   # labels may be indented too
    r0 = r1
    exit

# comments and blank lines are fine here
run entry
    expect retval 1
    expect tail_calls 33
    expect map counts 0 = 22 00 00 00 00 00 00 00
update jmp_table 0 = cb_prog
delete jmp_table 0
run entry
    expect retval 0xffffffffffffffff
"""


def test_example_parses_to_the_model():
    c = casefile.parse(EXAMPLE, file="ex.case")
    assert c.comment.startswith("Self tail-call loop") and c.comment.count("\n") == 1
    assert list(c.maps) == ["jmp_table", "counts"]
    assert c.maps["jmp_table"] == MapDef("jmp_table", "prog_array", 1, 4, {0: "entry"})
    assert c.maps["counts"].init == {0: bytes(8)}
    assert c.ctx == b"\x01" + bytes(7)
    entry = c.programs["entry"]
    assert entry.insns[1] == Insn(isa.LD_IMM64, 1, isa.PSEUDO_MAP_VALUE, 0, 1)  # counts = 1
    assert entry.insns[7] == Insn(isa.LD_IMM64, 2, isa.PSEUDO_MAP_FD, 0, 0)
    cb = c.programs["cb_prog"]
    assert cb.exception_callback == "cb" and cb.exception_callback_pc() == 4
    assert [s.kind for s in c.steps] == ["run", "update", "delete", "run"]
    assert c.steps[0].expect == Expect(1, 33, {("counts", 0): b"\x22" + bytes(7)})
    assert c.steps[1] == Step("update", map="jmp_table", key=0, value="cb_prog")
    assert c.steps[3].expect.retval == (1 << 64) - 1


def test_example_round_trips_and_render_is_canonical():
    c = casefile.parse(EXAMPLE)
    text = casefile.render(c)
    assert casefile.parse(text) == c
    assert casefile.render(casefile.parse(text)) == text


def test_ctx_wraps_and_array_values_round_trip():
    c = Case(
        programs={"p": Program("p", "raw_tp", [Insn(0xB7), Insn(0x95)])},
        maps={"a": MapDef("a", "array", 4, 3, {3: b"\x01\x02\x03"})},
        ctx=bytes(range(40)),
        steps=[Step("update", map="a", key=1, value=b"\xff\x00\x01")],
    )
    text = casefile.render(c)
    assert "ctx 00 01" in text and "\n    10 11" in text
    assert casefile.parse(text) == c


# ------------------------------------------------------------ hypothesis

NAMES = st.sampled_from(["a", "b", "counts", "jt", "x_1"])


@st.composite
def cases(draw, *, max_programs: int = 3, max_maps: int = 3):
    """Small valid cases: a few maps, programs that reference them, a script."""
    map_names = draw(st.lists(NAMES, unique=True, max_size=max_maps))
    prog_names = draw(st.lists(st.sampled_from(["entry", "p1", "p2", "sub"]), unique=True,
                               min_size=1, max_size=max_programs))  # fmt: skip
    maps: dict[str, MapDef] = {}
    for name in map_names:
        if draw(st.booleans()):
            n = draw(st.integers(1, 4))
            init = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(prog_names)))
            maps[name] = MapDef(name, "prog_array", n, 4, init)
        else:
            n, vs = draw(st.integers(1, 4)), draw(st.integers(1, 16))
            init = draw(st.dictionaries(st.integers(0, n - 1), st.binary(min_size=vs, max_size=vs)))
            maps[name] = MapDef(name, "array", n, vs, init)
    programs = {}
    for name in prog_names:
        body: list[Insn] = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(["mov", "map", "call", "jmp"]))
            if kind == "mov":
                body.append(
                    Insn(0xB7, draw(st.integers(0, 9)), imm=draw(st.integers(-(2**31), 2**31 - 1)))
                )
            elif kind == "map" and maps:
                src = draw(st.sampled_from([isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE]))
                hi = draw(st.integers(0, 64)) if src == isa.PSEUDO_MAP_VALUE else 0
                idx = draw(st.integers(0, len(maps) - 1))
                body += [Insn(isa.LD_IMM64, 2, src, 0, idx), Insn(0, imm=hi)]
            elif kind == "call":
                body.append(Insn(0x85, imm=draw(st.sampled_from([1, 2, 12]))))
            else:
                body.append(Insn(0x05, off=0))
        insns = body + [Insn(0x95)]
        starts = [0] + [
            i + 1 for i, x in enumerate(insns[:-1])
            if x.opcode != isa.LD_IMM64 and (i == 0 or insns[i - 1].opcode != isa.LD_IMM64)
        ]  # fmt: skip
        label_pcs = draw(st.lists(st.sampled_from(starts), unique=True, max_size=3))
        labels = {pc: f"l{pc}" for pc in label_pcs}
        # an exception callback starts a function: no jump may cross into it
        cbs = [name for pc, name in labels.items() if insns[pc - 1].opcode != 0x05]
        cb = draw(st.sampled_from([None, *cbs]))
        programs[name] = Program(name, draw(st.sampled_from(PROG_TYPES)), insns, labels, cb)
    steps = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["run", "update", "delete"]))
        if kind == "run" or not maps:
            e = Expect(
                draw(st.none() | st.integers(0, 2**64 - 1)),
                draw(st.none() | st.integers(0, 40)),
                retval32=draw(st.none() | st.integers(0, 2**32 - 1)),
            )
            arrays = [m for m in maps.values() if m.kind == "array"]
            for m in draw(st.lists(st.sampled_from(arrays), max_size=2)) if arrays else []:
                key = draw(st.integers(0, m.max_entries - 1))
                e.maps[(m.name, key)] = draw(
                    st.binary(min_size=m.value_size, max_size=m.value_size)
                )
            steps.append(Step("run", program=draw(st.sampled_from(prog_names)), expect=e))
            continue
        m = draw(st.sampled_from(list(maps.values())))
        key = draw(st.integers(0, m.max_entries - 1))
        if kind == "delete":
            steps.append(Step("delete", map=m.name, key=key))
        elif m.kind == "prog_array":
            steps.append(
                Step("update", map=m.name, key=key, value=draw(st.sampled_from(prog_names)))
            )
        else:
            value = draw(st.binary(min_size=m.value_size, max_size=m.value_size))
            steps.append(Step("update", map=m.name, key=key, value=value))
    # \n is the only line break a comment may hold (see casefile.render)
    breaks = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    chars = st.characters(codec="utf-8", exclude_characters=breaks, exclude_categories=("Cs",))
    comment = draw(st.text(chars, max_size=40))
    return Case(programs, maps, draw(st.binary(max_size=40)), steps, comment)


@settings(max_examples=200)
@given(cases())
def test_render_then_parse_is_identity(case):
    text = casefile.render(case)
    assert casefile.parse(text) == case


# ------------------------------------------------------------ errors

BASE = """\
map jt prog_array max_entries=2
map arr array max_entries=1 value_size=4
program p sched_cls
    r0 = 0
    exit
"""  # lines 1-5


@pytest.mark.parametrize(
    ("extra", "line", "needle"),
    [
        ("run nope\n", 6, "unknown program"),
        ("update jt 0 = nope\n", 6, "unknown program"),
        ("update jt 5 = p\n", 6, "out of range"),
        ("update nomap 0 = p\n", 6, "unknown map"),
        ("update arr 0 = 01 02\n", 6, "value_size is 4"),
        ("delete arr zero\n", 6, "not a number"),
        ("run p\n    expect retval -1\n", 7, "out of range"),
        ("run p\n    expect retval 0x1g\n", 7, "not a number"),
        ("run p\n    expect flags 1\n", 7, "expected 'expect"),
        ("run p\n    expect retval 1\n    expect retval 2\n", 8, "twice"),
        # a test run's u32: 2^32 and up cannot be its value
        ("run p\n    expect retval32 0x100000000\n", 7, "out of range 0..4294967295"),
        ("run p\n    expect retval32 1\n    expect retval32 1\n", 8, "twice"),
        ("run p\n\n    expect map arr 0 = 00\n", 8, "value_size 4"),
        ("run p\n    expect map jt 0 = 00 00 00 00\n", 7, "unknown array map"),
        ("delete jt 0\n    expect retval 1\n", 7, "only run"),
        ("program p raw_tp\n    exit\n", 6, "already defined"),
        ("program q xdp\n    exit\n", 6, "program type"),
        ("program q raw_tp exception_callback=cb\n    exit\n", 6, "no such label"),
        ("program q raw_tp\n    r0 = 0\n    r1 = map[nope] ll\n    exit\n", 8, "unknown map"),
        ("program q raw_tp\n    r0 = 0\n\n    goto nowhere\n    exit\n", 9, "unknown label"),
        ("program q raw_tp\n    r0 = 0\n    r10 = 1\n    exit\n", 8, "read-only"),
        ("map jt array max_entries=1\n", 6, "already defined"),
        ("map m array max_entries=x\n", 6, "not a number"),
        ("map m hash max_entries=1\n", 6, "map kind"),
        ("map m array max_entries=2 value_size=4\n    1 = 00\n", 7, "value_size is 4"),
        ("map m array max_entries=2\n    2 = 00 00 00 00 00 00 00 00\n", 7, "out of range"),
        ("map m prog_array max_entries=2\n    0 = p\n    0 = p\n", 8, "twice"),
        ("map m prog_array max_entries=1 value_size=8\n", 6, "value_size is 4"),
        ("ctx 00 zz\n", 6, "hex bytes"),
        ("ctx 00\n    01 0\n", 7, "hex bytes"),
        # after a program, any column-0 line that is not a keyword is assembly
        ("bogus line\n", 6, "cannot parse instruction"),
    ],
)
def test_errors_name_file_and_line(extra, line, needle):
    with pytest.raises(CaseError) as e:
        casefile.parse(BASE + extra, file="bad.case")
    assert (e.value.file, e.value.line) == ("bad.case", line), str(e.value)
    assert needle in e.value.message
    assert str(e.value).startswith(f"bad.case:{line}: ")


def test_stray_top_level_line_names_its_line():
    with pytest.raises(CaseError) as e:
        casefile.parse("# c\n\nmap m array max_entries=1\nbogus\n" + BASE, file="f")
    assert e.value.line == 4 and "expected one of" in e.value.message


def test_prog_array_slot_naming_unknown_program_names_the_map_line():
    text = "# c\n\nmap jt prog_array max_entries=1\n    0 = ghost\nprogram p raw_tp\n    exit\n"
    with pytest.raises(CaseError) as e:
        casefile.parse(text, file="f")
    assert e.value.line == 3 and "ghost" in e.value.message


def test_a_case_needs_a_program():
    with pytest.raises(CaseError, match="at least one program"):
        casefile.parse("# only a comment\n")


def test_load_names_the_path(tmp_path):
    p = tmp_path / "bad.case"
    p.write_text("program p raw_tp\n    r0 = 1\n    r0 ?= 2\n    exit\n")
    with pytest.raises(CaseError) as e:
        casefile.load(p)
    assert (e.value.file, e.value.line) == (str(p), 3)


# ------------------------------------------------------------ saving


def test_save_then_load(tmp_path):
    c = casefile.parse(EXAMPLE)
    p = tmp_path / "tail.case"
    casefile.save(c, p)
    assert casefile.load(p) == c
    assert os.listdir(tmp_path) == ["tail.case"]  # no temp file left behind


def test_save_keeps_the_original_when_render_fails(tmp_path):
    p = tmp_path / "keep.case"
    p.write_text(EXAMPLE)
    bad = casefile.parse(EXAMPLE)
    bad.programs["entry"].labels[2] = "inside_ld_imm64"  # pc 2 is a second slot
    with pytest.raises(CaseError):
        casefile.save(bad, p)
    assert p.read_text() == EXAMPLE
    assert os.listdir(tmp_path) == ["keep.case"]


def test_save_keeps_the_original_when_writing_fails(tmp_path, monkeypatch):
    p = tmp_path / "keep.case"
    p.write_text(EXAMPLE)

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        casefile.save(casefile.parse(EXAMPLE), p)
    assert p.read_text() == EXAMPLE
    assert os.listdir(tmp_path) == ["keep.case"]


def test_render_refuses_what_it_cannot_write_back():
    prog = Program("p", "raw_tp", [Insn(0xB7), Insn(0x95)], {0: "r1"})  # a register name
    with pytest.raises(CaseError):
        casefile.render(Case({"p": prog}))
    prog = Program("p", "raw_tp", [Insn(0xFF)])  # not a valid program
    with pytest.raises(CaseError):
        casefile.render(Case({"p": prog}))


def test_docs_example_parses():
    doc = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "case-format.md")
    text = open(doc, encoding="utf-8").read()
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    c = casefile.parse(textwrap.dedent(block), file="case-format.md")
    assert casefile.parse(casefile.render(c)) == c


def test_retval32_parses_and_renders():
    c = casefile.parse(BASE + "run p\n    expect retval32 0xfffffffe\n    expect tail_calls 0\n")
    assert c.steps[0].expect == Expect(tail_calls=0, retval32=0xFFFF_FFFE)
    assert "    expect retval32 0xfffffffe\n" in casefile.render(c)
    assert casefile.parse(casefile.render(c)) == c
