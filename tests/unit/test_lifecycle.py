"""A campaign's lifecycle, end to end in subprocesses: an unusable corpus is
refused before any work, workers die with their parent, Ctrl-C prints the
summary so far (with the saved files) and exits 130 without a traceback,
and a finding is printed even when it cannot be saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.campaign.fuzz import Finding, Summary, _record
from harness.formats import casefile
from harness.kernel import available as kernel_unavailable

ROOT = Path(__file__).resolve().parents[2]
CASE = "program p sched_cls\nmain:\n    r0 = 1\n    exit\n\nrun p\n    expect retval 1\n"


def jitdiff(*argv: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        # SIGINT as a terminal would deliver it (a shell's background job ignores it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        # a process group of its own, which interrupt() can signal as a terminal does
        start_new_session=True,
        **kw,
    )


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parent[int(d)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interrupt(p: subprocess.Popen, to: str = "group") -> None:
    """Ctrl-C at a terminal (SIGINT to the whole foreground process group:
    jitdiff and every worker), or ``kill -INT`` of jitdiff alone."""
    if to == "group":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGINT)


def wait_for(pred, limit: float = 60.0) -> None:
    """Poll until ``pred()`` (not a timed assertion: the limit only bounds a
    broken run)."""
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            pytest.fail("the campaign never got there")
        time.sleep(0.1)


def test_an_unwritable_corpus_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = jitdiff("fuzz", "--time", "30", "--corpus", str(blocker / "corpus"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err.strip() == (
        f"jitdiff: --corpus {blocker}/corpus: cannot save reproducers in "
        f"{blocker}/corpus/found: Not a directory"
    )
    assert out == ""  # no case ran, no summary


def test_a_finding_is_printed_before_it_is_saved_and_a_failed_save_loses_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    shown = []
    f = Finding("x86_64", "x86_64|retval:return value", "retval", 0, 0.0, CASE, 2, 1)
    kept = _record(Summary(), f, blocker / "corpus", shown.append)
    assert shown == [f] and kept is f
    assert kept.path is None and kept.unsaved == "Not a directory"
    assert "(not saved: Not a directory)" in Summary(findings=[kept]).render()


def test_case_files_are_written_0644_under_the_umask(tmp_path):
    case = casefile.parse(CASE)
    old = os.umask(0o022)
    try:
        casefile.save(case, tmp_path / "a.case")
        os.umask(0o077)
        casefile.save(case, tmp_path / "b.case")
    finally:
        os.umask(old)
    assert (tmp_path / "a.case").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.case").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "engines",
    [
        ["x86_64"],
        pytest.param(
            ["x86_64", "kernel-native"],
            marks=pytest.mark.skipif(
                kernel_unavailable() is not None, reason=f"kernel: {kernel_unavailable()}"
            ),
        ),
    ],
)
def test_workers_die_with_a_killed_parent(engines):
    args = [a for e in engines for a in ("--engine", e)]
    p = jitdiff("fuzz", *args, "--time", "60", "--workers", "2", "--no-save")
    kids: set[int] = set()
    try:
        # both fuzz workers, and with a kernel engine their kernel workers
        want = 2 * len(engines)
        wait_for(lambda: len(descendants(p.pid)) >= want)
        kids = descendants(p.pid)
        p.kill()
        p.wait()
        time.sleep(2.0)  # the bound: no orphan 2 s after the parent died
        orphans = [k for k in kids if alive(k)]
        assert orphans == []
    finally:
        p.kill()
        p.communicate()
        for k in kids:  # a failed run leaves no orphan behind either
            if alive(k):
                os.kill(k, signal.SIGKILL)


@pytest.mark.parametrize("to", ["group", "pid"])
def test_ctrl_c_prints_the_summary_with_the_saved_files_and_exits_130(tmp_path, to):
    corpus = tmp_path / "corpus"
    p = jitdiff(
        "fuzz",
        "--engine",
        "x86_64+tcc-limit-32",
        "--time",
        "120",
        "--workers",
        "2",
        "--no-shrink",
        "--corpus",
        str(corpus),
    )
    try:
        wait_for(lambda: any((corpus / "found").glob("*.case")))
        interrupt(p, to)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    summary = out[out.index("interrupted: ") :]
    saved = sorted(str(f) for f in (corpus / "found").glob("*.case"))
    listed = sorted(
        line.rsplit(" -> ", 1)[1] for line in summary.splitlines() if line.startswith("DIVERGENCE")
    )
    assert saved and listed == saved
    assert descendants(p.pid) == set()


#: a bounded loop the reference takes a while over: Ctrl-C lands mid-list
SLOW = (
    "program p sched_cls\nmain:\n    r0 = 0\n    r1 = 0\nloop:\n    r1 += 1\n"
    "    if r1 < 90000 goto loop\n    exit\n\nrun p\n    expect retval 0\n"
)


@pytest.mark.parametrize(
    "verb",
    [
        ["replay", "--engine", "x86_64"],
        ["run", "--engine", "x86_64"],
        ["run", "--json", "--engine", "x86_64"],
        pytest.param(
            ["replay", "--engine", "kernel-native"],
            marks=pytest.mark.skipif(
                kernel_unavailable() is not None, reason=f"kernel: {kernel_unavailable()}"
            ),
        ),
    ],
)
def test_ctrl_c_prints_the_counts_so_far_and_exits_130(verb, tmp_path):
    files = []
    for i in range(40):
        files.append(tmp_path / f"slow{i:02d}.case")
        files[-1].write_text(SLOW)
    p = jitdiff(*verb, *map(str, files))
    try:
        if "--json" in verb:  # nothing on stdout before the end: wait for work done
            wait_for(lambda: cpu_seconds(p.pid) > 1.0)
        else:
            first = p.stdout.readline()  # one case done: the engines are up
            assert str(files[0]) in first, first
        interrupt(p)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "jitdiff: interrupted"
    if "--json" in verb:  # stdout is still one JSON document, with the cases done
        doc = json.loads(out)
        assert doc["status"] == 130 and 1 <= len(doc["cases"]) < len(files)
        return
    assert "interrupted after" in out.splitlines()[-1]
    assert f"of {len(files)}" in out.splitlines()[-1]


class Terminal:
    """A stream that says it is a terminal, recording what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_a_report_never_starts_on_the_progress_line():
    from harness.campaign.fuzz import Campaign, run_campaign

    term = Terminal()
    camp = Campaign(
        engines=("x86_64+tcc-limit-32",),
        seed=0,
        examples=12,
        workers=1,
        shrink=False,
        progress=True,
    )
    summary = run_campaign(camp, stream=term)
    assert summary.findings
    # on a terminal, each report follows a cleared line (carriage return, erase line)
    parts = term.text.split("# DIVERGENCE")
    assert len(parts) == len(summary.findings) + 1
    assert all(p.endswith("\r\x1b[K") for p in parts[:-1])
