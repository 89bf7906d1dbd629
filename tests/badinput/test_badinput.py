"""Every bad input in tests/badinput/table.py gets its exit status and exactly
one line on stderr naming the file:line or the reason, never a traceback, in
bounded time and memory.

The bulk runs in-process through ``harness.cli.main`` (a subprocess costs
most of a second of start-up each); a representative subset, the issue #13
reproducers among them, runs as real processes under RLIMIT_AS and a timeout,
which is what catches a hang or a 7.8 GB allocation for what it is."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from tests.badinput.table import TABLE, Bad

ROOT = Path(__file__).resolve().parents[2]
#: seconds one bad input may take, in-process or as a process
TIME_LIMIT = 60
#: address space of a child: Python, Unicorn's code buffer and the work;
#: far below what the audit's huge maps reached (7.8 GB)
MEMORY_LIMIT = 3 << 30

#: run as processes too: the #13 reproducers and one of each kind
SUBPROCESS = {
    "case-binary-elf",
    "case-binary",
    "case-latin1-line4",
    "case-map-entries-u32max",
    "case-map-both-u32max",
    "case-prog-array-u32max",
    "case-asm-jump-into-callee",
    "case-expect-map-size",
    "data-raw-0xzz",
    "data-binary",
    "data-directory",
    "data-symlink-loop",
    "cli-fuzz-engine-x86_64+nonexistent",
    "cli-fuzz-engine-x86_64@bogus",
    "cli-fuzz-time-nan",
    "cli-show-width-neg",
    "cli-fuzz-corpus-no-save",
    "cli-conformance-no-data",
    "cli-conformance-parent-of-tests",
}


def _setup(bad: Bad, d: Path) -> tuple[list[str], list[str]]:
    (d / "empty").mkdir()
    (d / "suite" / "tests").mkdir(parents=True)
    (d / "suite" / "tests" / "one.data").write_text("-- asm\nmov %r0, 1\nexit\n-- result\n0x1\n")
    for name, content in bad.files.items():
        p = d / name
        if content == {}:
            p.mkdir()
        elif isinstance(content, str) and content.startswith("->"):
            p.symlink_to(content[2:])
        elif isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    fill = lambda s: s.replace("{dir}", str(d))  # noqa: E731
    return [fill(a) for a in bad.argv], [fill(e) for e in bad.expect]


def _judge(bad: Bad, code: int, out: str, err: str, expect: list[str]) -> None:
    assert "Traceback" not in err + out, err
    assert code == bad.status, f"exit {code}, stderr: {err!r}, stdout tail: {out[-300:]!r}"
    if bad.stream == "stderr":
        lines = err.strip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("jitdiff"), err
        assert all(e in lines[0] for e in expect), (expect, lines[0])
    else:
        line = next((ln for ln in out.split("\n") if expect[0] in ln), out)
        assert all(e in line for e in expect), (expect, out)
        assert "1 passed" in out  # the good file next to the bad one still ran


class _Overtime(Exception):
    pass


def _alarm(signum, frame):
    raise _Overtime()


@pytest.mark.parametrize("bad", TABLE, ids=[b.id for b in TABLE])
def test_in_process(bad, tmp_path, capsys):
    argv, expect = _setup(bad, tmp_path)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    try:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    except _Overtime:
        pytest.fail(f"more than {TIME_LIMIT} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out, err = capsys.readouterr()
    _judge(bad, code, out, err, expect)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


SUBSET = [b for b in TABLE if b.id in SUBPROCESS]


def test_subset_names_exist():
    assert len(SUBSET) == len(SUBPROCESS), SUBPROCESS - {b.id for b in SUBSET}


@pytest.mark.parametrize("bad", SUBSET, ids=[b.id for b in SUBSET])
def test_as_a_process(bad, tmp_path):
    argv, expect = _setup(bad, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limits,
        env=env,
        cwd=tmp_path,
    )
    _judge(bad, p.returncode, p.stdout, p.stderr, expect)
