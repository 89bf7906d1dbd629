"""The command line: bad input is one line on stderr and exit 2, never a
traceback; results give 0 (clean) or 1 (divergence, failed expectation)."""

from __future__ import annotations

from pathlib import Path

from harness.cli import main

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
SELF_LOOP = str(CORPUS / "tail_calls" / "self_loop_33.case")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jitdiff: "), err
    assert "Traceback" not in err
    return lines[0]


def test_malformed_case_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.case"
    bad.write_text("program p sched_cls\nmain:\n    r0 = 1\n    r0 +== 2\n    exit\n")
    code, _, err = run(capsys, "run", str(bad))
    assert code == 2
    assert f"{bad}:4:" in one_line_error(err)


def test_unknown_opcode_in_assembly(tmp_path, capsys):
    bad = tmp_path / "op.case"
    bad.write_text("program p sched_cls\nmain:\n    r0 = frob r1\n    exit\n")
    code, _, err = run(capsys, "run", str(bad))
    assert code == 2 and f"{bad}:3:" in one_line_error(err)


def test_unknown_engine_profile_fault_and_missing_file(capsys):
    code, _, err = run(capsys, "run", SELF_LOOP, "--engine", "arm64")
    assert code == 2 and "unknown engine 'arm64'" in one_line_error(err)
    code, _, err = run(capsys, "run", SELF_LOOP, "--engine", "x86_64+no-such-fault")
    assert code == 2 and "no-such-fault" in one_line_error(err)
    code, _, err = run(capsys, "run", SELF_LOOP, "--profile", "linux-2.6")
    assert code == 2 and "unknown profile" in one_line_error(err)
    code, _, err = run(capsys, "run", "/nonexistent/x.case")
    assert code == 2 and "/nonexistent/x.case" in one_line_error(err)


def test_run_passes_and_a_fault_is_a_divergence(capsys):
    code, out, _ = run(capsys, "run", SELF_LOOP, "--engine", "x86_64")
    assert code == 0 and "retval=1 tail_calls=33" in out
    code, out, _ = run(capsys, "run", SELF_LOOP, "--engine", "x86_64+tcc-limit-32")
    assert code == 1
    # the divergence prints as a case file: it parses back as one
    text = out[out.index("# DIVERGENCE") :]
    from harness.formats import casefile

    case = casefile.parse(text)
    assert case.steps[0].expect.tail_calls == 33


def test_failed_expectation_exits_1(tmp_path, capsys):
    case = tmp_path / "wrong.case"
    case.write_text(
        "program p sched_cls\nmain:\n    r0 = 1\n    exit\n\nrun p\n    expect retval 2\n"
    )
    code, out, _ = run(capsys, "run", str(case))
    assert code == 1 and "retval 0x1, expected 0x2" in out


def test_conformance_directory_missing(capsys):
    code, _, err = run(capsys, "conformance", "/nonexistent")
    assert code == 2 and "no such directory" in one_line_error(err)


def test_unavailable_engine_is_refused_with_its_reason(capsys, monkeypatch):
    from harness import engines

    monkeypatch.setattr(engines, "available", lambda name: "no bpf() here (test)")
    code, _, err = run(capsys, "bench", "--engine", "kernel")
    assert code == 2 and "no bpf() here (test)" in one_line_error(err)


def test_fuzz_skips_an_unusable_engine_and_runs_the_others(capsys, monkeypatch):
    from harness import engines

    real = engines.available
    monkeypatch.setattr(
        engines,
        "available",
        lambda name: "no bpf() here (test)" if name == "kernel" else real(name),
    )
    code, out, err = run(
        capsys,
        "fuzz",
        "--engine",
        "kernel",
        "--engine",
        "x86_64",
        "--examples",
        "4",
        "--workers",
        "1",
        "--no-save",
    )
    assert code == 0
    assert "skipping engine kernel: no bpf() here (test)" in err
    assert "4 cases" in out
    code, _, err = run(capsys, "fuzz", "--engine", "kernel", "--examples", "1", "--no-save")
    assert code == 2 and "no usable engine" in err


def test_counts_and_durations_must_be_above_zero(capsys):
    # zero workers or rounds used to print an empty scoreboard or divide by zero
    for argv in (
        ("bench", "--cases", "0"),
        ("bench", "--rounds", "0"),
        ("mutants", "--workers", "0"),
        ("fuzz", "--time", "-1"),
    ):
        try:
            main(list(argv))
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
        err = capsys.readouterr().err
        assert "must be above zero" in err.strip().splitlines()[-1] and "Traceback" not in err


WIDE = (
    "program p sched_cls\nmain:\n    r0 = 0x100000002 ll\n    exit\n\nrun p\n"
    "    expect retval32 {}\n"
)


def test_retval32_is_the_low_half_of_r0_on_every_engine(tmp_path, capsys):
    good, bad = tmp_path / "good.case", tmp_path / "bad.case"
    good.write_text(WIDE.format(2))
    bad.write_text(WIDE.format(3))
    code, out, _ = run(capsys, "run", str(good), "--engine", "x86_64")
    assert code == 0 and "FAIL" not in out and "retval=4294967298" in out
    code, out, _ = run(capsys, "run", str(bad), "--engine", "x86_64")
    assert code == 1
    fails = [ln for ln in out.splitlines() if " FAIL " in ln]
    assert fails == [
        f"{bad} [interp] FAIL run 0 (p): retval32 0x2, expected 0x3",
        f"{bad} [x86_64] FAIL run 0 (p): retval32 0x2, expected 0x3",
    ]


def run_json(capsys, *argv: str) -> tuple[int, dict]:
    import json

    code, out, err = run(capsys, "run", "--json", *argv)
    assert "Traceback" not in err
    return code, json.loads(out)  # stdout is the JSON document and nothing else


def test_run_json_carries_a_failed_expectation_and_exits_1(tmp_path, capsys):
    case = tmp_path / "wrong.case"
    case.write_text(
        "program p sched_cls\nmain:\n    r0 = 1\n    exit\n\nrun p\n    expect retval 2\n"
    )
    code, doc = run_json(capsys, str(case), "--engine", "x86_64")
    assert code == 1 and doc["status"] == 1 and doc["version"] == 1
    (entry,) = doc["cases"]
    assert entry["case"] == str(case)
    assert entry["verdicts"] == {"x86_64": "agree"}
    assert entry["divergences"] == []
    by_engine = {o["engine"]: o for o in entry["outcomes"]}
    assert set(by_engine) == {"interp", "x86_64"}
    for o in by_engine.values():
        assert o["failures"] == ["run 0 (p): retval 0x1, expected 0x2"]
        assert o["runs"][0]["status"] == "ok" and o["runs"][0]["retval"] == 1


def test_run_json_carries_every_divergence_and_exits_1(capsys):
    # tcc-limit-32 stops one tail call early: 32 taken where Linux takes 33
    code, doc = run_json(capsys, SELF_LOOP, "--engine", "x86_64", "--engine", "x86_64+tcc-limit-32")
    assert code == 1 and doc["status"] == 1
    (entry,) = doc["cases"]
    assert entry["verdicts"] == {"x86_64": "agree", "x86_64+tcc-limit-32": "diverge"}
    (d,) = entry["divergences"]
    assert d["engine"] == "x86_64+tcc-limit-32" and d["oracle"] == "tail_calls"
    assert d["run"] == 0
    assert (d["first_difference"]["expected"], d["first_difference"]["actual"]) == (33, 32)
    assert d["signature"] == "tail_calls:tail calls taken"
    assert d["lockstep"]["where"]  # the first differing BPF instruction
    fails = {o["engine"]: o["failures"] for o in entry["outcomes"]}
    assert fails["interp"] == [] and fails["x86_64"] == []
    assert "run 0 (entry): 32 tail calls, expected 33" in fails["x86_64+tcc-limit-32"]
    # a clean case: 0, in JSON as in text
    code, doc = run_json(capsys, SELF_LOOP, "--engine", "x86_64")
    assert code == 0 and doc["status"] == 0 and doc["cases"][0]["divergences"] == []


def test_a_guest_campaign_shrinks_with_fewer_attempts():
    """Each attempt on a guest is a request, and one that still crashes it a
    reboot: the default budget would take hours for one crash."""
    from types import SimpleNamespace

    from harness.cli import _shrink_tries

    assert _shrink_tries(SimpleNamespace(shrink_tries=None), ("guest:arm64",)) == 200
    assert _shrink_tries(SimpleNamespace(shrink_tries=None), ("x86_64", "guest:riscv64")) == 200
    assert _shrink_tries(SimpleNamespace(shrink_tries=None), ("x86_64",)) is None
    assert _shrink_tries(SimpleNamespace(shrink_tries=7), ("guest:arm64",)) == 7
