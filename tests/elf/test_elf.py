"""BPF ELF objects in (``harness.formats.elf``), kernel selftests out
(``harness.report.selftest``).

The C programs in ``progs/`` are compiled with clang as a developer would
(``-target bpf -O2 -g``) and read back the way libbpf links them; each must
reach the values the equivalent hand-written corpus case asserts (or values
computed by hand, in the program's comment) on every engine. Every corpus case
must survive the other direction: exported as a selftest, its program part
compiled and read back, it runs to the same outcome. Without clang or the
libbpf headers these tests skip with the reason.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import engines
from harness.campaign.runner import Runner
from harness.cli import main
from harness.errors import CaseError
from harness.formats import casefile, elf
from harness.kernel.crashes import known_crash
from harness.report import selftest

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "corpus"
TOOLCHAIN = selftest.toolchain()
needs_clang = pytest.mark.skipif(TOOLCHAIN is not None, reason=f"no BPF toolchain: {TOOLCHAIN}")
ENGINES = ["interp", "x86_64", "kernel", "kernel-native"]


def _compile(src: Path | str, out: Path, *extra: str) -> Path:
    inc = selftest._multiarch_include()
    cmd = ["clang", "-target", "bpf", "-O2", "-g", "-mcpu=v3", f"-I{inc}", *extra]
    subprocess.run([*cmd, "-c", str(src), "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    if TOOLCHAIN is not None:
        pytest.skip(f"no BPF toolchain: {TOOLCHAIN}")
    out = tmp_path_factory.mktemp("objects")
    return {c.stem: _compile(c, out / f"{c.stem}.bpf.o") for c in sorted(HERE.glob("progs/*.c"))}


_runners: dict[str, Runner] = {}


def _outcome(engine: str, case):
    why = engines.available(engine)
    if why:
        pytest.skip(f"engine {engine}: {why}")
    if engine not in _runners:
        _runners[engine] = Runner([engine])
    res = _runners[engine].check(case)
    out = res.reference if engine == "interp" else res.candidates[engine][2]
    unsupported = [r.detail for r in out.runs if r.status.value == "unsupported"]
    if unsupported:
        pytest.skip(f"engine {engine}: {unsupported[0]}")
    return out.runs


def _corpus_expect(rel: str, run: int = 0):
    return casefile.load(CORPUS / rel).script()[run].expect


# --------------------------------------------------------------- objects in


@pytest.mark.parametrize("engine", ENGINES)
def test_tail_calls_through_a_prog_array_declared_in_c(objects, engine):
    case = elf.load(objects["tailcall_self_loop"])
    # __array(values, ...) = { [0] = &entry } is the initial slot
    assert case.maps["jmp_table"].kind == "prog_array"
    assert case.maps["jmp_table"].init == {0: "entry"}
    assert case.maps["bss"].value_size == 8 and case.maps["bss"].max_entries == 1
    (run,) = _outcome(engine, case)
    want = _corpus_expect("tail_calls/self_loop_33.case")  # retval 1, 33 tail calls, 34 runs
    assert run.retval == want.retval
    if engine != "kernel-native":  # the test run cannot count tail calls
        assert run.tail_calls == want.tail_calls
    assert run.maps["bss"] == want.maps[("counts", 0)]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_subprogram_that_tail_calls(objects, engine):
    case = elf.load(objects["subprog_tail_call"])
    # programs in section order (classifier before tc here), sub appended to entry
    assert list(case.programs) == ["target", "entry"]
    entry = case.programs["entry"]
    assert entry.labels == {0: "main", 3: "sub"}
    assert case.maps["jmp_table"].init == {0: "target"}
    _, run = _outcome(engine, case)  # the default script runs each program once
    want = _corpus_expect("subprogs/tail_call_from_subprog_returns.case")  # 1005, 1
    assert run.retval == want.retval
    if engine != "kernel-native":
        assert run.tail_calls == want.tail_calls


@pytest.mark.parametrize("engine", ENGINES)
def test_global_data_and_a_btf_array(objects, engine):
    case = elf.load(objects["global_data"])
    assert list(case.maps) == ["out", "rodata", "data", "bss"]  # .maps first, then sections
    assert case.programs["entry"].type == "raw_tp"
    (run,) = _outcome(engine, case)
    total = 7 * 6 + 100  # by hand, see progs/global_data.c
    assert run.retval == total + 1
    assert run.maps["out"] == bytes(8) + total.to_bytes(8, "little")
    assert run.maps["bss"] == total.to_bytes(8, "little")
    assert run.maps["data"] == (100 + 1).to_bytes(8, "little")
    assert run.maps["rodata"] == (7).to_bytes(8, "little")


@pytest.mark.parametrize("engine", ENGINES)
def test_bpf_throw_with_an_exception_callback(objects, engine):
    case = elf.load(objects["throw_callback"])
    prog = case.programs["entry"]
    # libbpf appends subprograms depth first, the exception callback last
    assert [prog.labels[s] for s in prog.function_starts()] == ["main", "f1", "f2", "cb"]
    assert prog.exception_callback == "cb"
    (run,) = _outcome(engine, case)  # the kernel engines refuse this layout (crashes.py)
    assert run.retval == _corpus_expect("exceptions/nested_throw_callback.case").retval  # 42


@pytest.mark.parametrize("engine", ENGINES)
def test_bpf_throw_from_the_program_on_every_engine(objects, engine):
    case = elf.load(objects["throw_direct"])
    prog = case.programs["entry"]
    assert prog.exception_callback == "cb" and prog.function_starts()[1] == prog.label_pc("cb")
    (run,) = _outcome(engine, case)
    assert run.retval == 21 * 2


@needs_clang
def test_a_sidecar_gives_ctx_script_and_expectations(objects, tmp_path, capsys):
    obj = tmp_path / "loop.bpf.o"
    obj.write_bytes(objects["tailcall_self_loop"].read_bytes())
    (tmp_path / "loop.bpf.case").write_text(
        "# the self loop, twice: the .bss counter keeps counting\n"
        "ctx 01 02\n"
        "run entry\n    expect retval 1\n    expect tail_calls 33\n"
        "run entry\n    expect map bss 0 = 44 00 00 00 00 00 00 00\n"
    )
    case = elf.load(obj)
    assert case.ctx == b"\x01\x02" and len(case.steps) == 2
    assert main(["run", str(obj)]) == 0
    assert main(["replay", str(tmp_path), "--engine", "x86_64"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out  # the sidecar is no case of its own
    (tmp_path / "loop.bpf.case").write_text("run entry\n    expect retval 2\n")
    assert main(["run", str(obj)]) == 1


def test_a_sidecar_cannot_declare_maps_or_programs():
    case = casefile.parse("program p raw_tp\n    r0 = 0\n    exit\n")
    with pytest.raises(CaseError, match="side.case:1: a sidecar gives ctx and the script"):
        casefile.apply_script(case, "map m array max_entries=1\n", file="side.case")
    with pytest.raises(CaseError, match="side.case:1: run: unknown program q"):
        casefile.apply_script(case, "run q\n", file="side.case")


BAD = {
    "unknown_map_type": (
        "struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1);"
        ' __type(key, __u32); __type(value, __u64); } h SEC(".maps");'
        ' SEC("tc") int p(void *c) { return 0; }',
        "section .maps, map h: map type hash is not modelled",
    ),
    "unknown_helper": (
        'SEC("tc") int p(void *c) { return bpf_get_current_pid_tgid(); }',
        "section tc, insn 0 (p+0): helper #14 is not modelled",
    ),
    "core_relocation": (
        "struct k { int a; int b; } __attribute__((preserve_access_index));"
        ' SEC("raw_tp") int p(struct k *c) { return c->b; }',
        "section raw_tp, insn 0 (p+0): CO-RE relocation",
    ),
    "program_type": (
        'SEC("xdp") int p(void *c) { return 0; }',
        "section xdp: program type xdp is not modelled",
    ),
}


@needs_clang
@pytest.mark.parametrize("name", sorted(BAD))
def test_objects_jitdiff_cannot_model_are_refused_in_one_line(name, tmp_path, capsys):
    body, message = BAD[name]
    src = tmp_path / f"{name}.c"
    src.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        f'{body}\nchar _license[] SEC("license") = "GPL";\n'
    )
    obj = _compile(src, tmp_path / f"{name}.o")
    assert main(["run", str(obj)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{obj}: {message}" in err, err


@needs_clang
def test_broken_and_foreign_objects_are_refused_in_one_line(objects, tmp_path, capsys):
    cut = tmp_path / "truncated.o"
    cut.write_bytes(objects["throw_direct"].read_bytes()[:200])
    host = tmp_path / "host.o"
    (tmp_path / "host.c").write_text("int f(void) { return 0; }\n")
    subprocess.run(["clang", "-c", str(tmp_path / "host.c"), "-o", str(host)], check=True)
    for path, message in ((cut, "not a readable ELF object"), (host, "not BPF")):
        assert main(["run", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}: " in err and message in err, err


# --------------------------------------------------------------- selftests out

CASES = sorted(CORPUS.rglob("*.case"))


@needs_clang
@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(CORPUS)) for p in CASES])
def test_every_corpus_case_round_trips_through_a_selftest(path):
    case = casefile.load(path)
    name = selftest.default_name(path)
    test = selftest.export(case, name, source=str(path))
    assert '#include "bpf_misc.h"' in test.prog_c and "__naked" in test.prog_c
    assert f"void test_{name}(void)" in test.test_c
    # compiled, read back through the ELF input, run on interp and x86_64
    assert selftest.check(test, case, ("x86_64",)) == []


def test_export_asserts_the_reference_values():
    case = casefile.load(CORPUS / "tail_calls/self_loop_33.case")
    test = selftest.export(case, "self_loop_33")
    # retval 1 and the counter at 34 runs (0x22): the reference's, the case's too
    assert 'ASSERT_EQ(tc_opts.retval, 0x1, "run 0 retval");' in test.test_c
    assert "(__u8[]){ 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00 }, 8)" in test.test_c
    assert "skel->maps.data_counts" in test.test_c  # map_value[counts] became .data.counts
    assert "[0] = (void *)&entry," in test.prog_c  # the prog array's initial slot


def test_export_writes_files_and_never_overwrites(tmp_path, capsys):
    src = CORPUS / "subprogs/tail_call_after_subprog_call.case"
    out = tmp_path / "bpf"
    args = ["export", str(src), "--selftest", str(out), "--no-check"]
    assert main(args) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    stem = "tail_call_after_subprog_call"
    assert written == [f"prog_tests/{stem}.c", f"progs/{stem}.bpf.case", f"progs/{stem}.c"]
    (out / f"progs/{stem}.c").write_text("mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists (use --force" in err
    assert (out / f"progs/{stem}.c").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert "__naked" in (out / f"progs/{stem}.c").read_text()


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "program p test\n    r0 = 0\n    exit\n",
            "program p: type test has no kernel program type",
        ),
        (
            "map a array max_entries=2\nprogram p raw_tp\n    r1 = map_value[a] ll\n"
            "    r0 = 0\n    exit\n",
            "map_value[a]: C gets a map value's address only from global data",
        ),
    ],
)
def test_export_refuses_what_a_selftest_cannot_express(tmp_path, capsys, text, message):
    src = tmp_path / "c.case"
    src.write_text(text)
    assert main(["export", str(src), "--selftest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_object_paths_are_told_apart_by_content(tmp_path):
    (tmp_path / "x.o").write_text("program p raw_tp\n    r0 = 0\n    exit\n")
    assert not elf.is_object(tmp_path / "x.o")
    assert elf.sidecar_of("a/prog.bpf.o") == Path("a/prog.bpf.case")


@needs_clang
def test_a_divergence_report_names_the_export_and_exports(tmp_path, capsys):
    # the tail-call limit off by one: the report is a case file that says how to
    # send it upstream, and following it gives a selftest asserting 33 tail calls
    src = str(CORPUS / "tail_calls/self_loop_33.case")
    assert main(["run", src, "--engine", "x86_64+tcc-limit-32"]) == 1
    out = capsys.readouterr().out
    report = tmp_path / "found.case"
    report.write_text(out[out.index("# DIVERGENCE") :])
    assert "# as a kernel selftest: jitdiff export THIS_FILE --selftest" in report.read_text()
    assert main(["export", str(report), "--selftest", str(tmp_path / "bpf")]) == 0
    assert "runs as the case on interp, x86_64" in capsys.readouterr().out
    test_c = (tmp_path / "bpf/prog_tests/found.c").read_text()
    assert "/* 33 tail calls: counted in counts */" in test_c


@needs_clang
@pytest.mark.parametrize("seed", range(6))
def test_generated_systems_round_trip_through_a_selftest(seed):
    """Random systems use what the corpus does not (jset, modulo, atomics,
    throws, private stacks, scripts): each form must compile and read back."""
    from generators.systems import generate

    case = generate(seed)
    test = selftest.export(case, f"gen{seed}")
    assert selftest.check(test, case, ("x86_64",)) == []


def _libbpf_version() -> tuple[int, int]:
    text = Path("/usr/include/bpf/libbpf_version.h").read_text()
    major = int(re.search(r"LIBBPF_MAJOR_VERSION (\d+)", text).group(1))
    minor = int(re.search(r"LIBBPF_MINOR_VERSION (\d+)", text).group(1))
    return major, minor


NATIVE = [p for p in CASES if "kernel-findings" not in p.parts]


@needs_clang
@pytest.mark.parametrize("path", NATIVE, ids=[str(p.relative_to(CORPUS)) for p in NATIVE])
def test_exported_prog_tests_pass_on_this_kernel(path, tmp_path):
    """The prog_tests half as the kernel tree would build it: a bpftool
    skeleton, -Wall -Werror, libbpf, run natively on this kernel."""
    for tool in ("bpftool", "cc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt install {tool})")
    why = engines.available("kernel-native")
    if why:
        pytest.skip(f"no native test runs: {why}")
    case = casefile.load(path)
    if known_crash(case) or known_crash(case, when="run"):
        pytest.skip(f"never on this kernel: {known_crash(case) or known_crash(case, when='run')}")
    if any(p.exception_callback for p in case.programs.values()) and _libbpf_version() < (1, 3):
        pytest.skip(f"libbpf {_libbpf_version()} does not append exception callbacks (1.3 does)")
    name = selftest.default_name(path)
    test = selftest.export(case, name)
    obj = selftest.compile_program(test.prog_c, tmp_path, name)
    skel = subprocess.run(
        ["bpftool", "gen", "skeleton", str(obj), "name", name], capture_output=True, check=True
    )
    (tmp_path / f"{name}.skel.h").write_bytes(skel.stdout)
    (tmp_path / "prog_test.c").write_text(test.test_c)
    (tmp_path / "main.c").write_text(
        f'#include "prog_test.c"\nint main(void) {{ test_{name}(); return failures != 0; }}\n'
    )
    cc = ["cc", "-Wall", "-Werror", "-O0", f"-I{tmp_path}", f"-I{HERE / 'native'}"]
    subprocess.run([*cc, "-o", str(tmp_path / "t"), str(tmp_path / "main.c"), "-lbpf"], check=True)
    res = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "open_and_load" in res.stderr and "FAIL" not in res.stderr
