"""A disposable worker process that owns every ``bpf()`` call.

Random programs can oops the kernel, and an oops kills the process that made
the system call. So the parent (an engine) never loads anything itself: it
sends a ``Job`` (a case and what to do with it) to a child started with
``python -m harness.kernel.worker``, which loads the case with
``load_case``, plays the script (test runs, map updates), snapshots the JIT
images, closes everything and answers with plain data (an ``Answer``). The
protocol is pickle over the child's stdin/stdout, one job at a time; one child
serves many cases, so the start-up is paid once.

The parent watches the kernel log (``/dev/kmsg``, read non-blockingly from
where it stood when the worker started; never written or cleared) after
every job: a new oops, ``BUG:``, ``WARNING:`` or ``verifier bug:`` report
(``harness.kernel.crashes.kernel_report``) from the child is a kernel finding,
whether the child died or answered. The answer is then ``crashed``: the case
is saved as a reproducer under ``<crash_dir>/<signature>.case`` (the
campaign's ``--corpus``/crashes; atomically, never over an existing file)
with the log excerpt, the kernel's taint flags are recorded, the crash is
kept in ``Worker.crashes``, and the next job gets a fresh child (or
``KernelCrash`` is raised when the worker was asked to stop on a crash).

A child that dies or hangs with nothing in the kernel log (and no new ``D``
or ``W`` taint) was killed from outside (``kill -9``, the OOM killer): that is
a harness event, counted in ``Worker.incidents``, and the job is retried in a
fresh child. The child never outlives its parent (``PR_SET_PDEATHSIG``, and
EOF on its stdin ends it between jobs), runs in its own session (a
Ctrl-C at the terminal is the parent's to handle) and ignores SIGINT.

A verifier log is kept whole in a file (``save_log``); outcomes carry its
last lines and the file's path, so a 2-million-line log is never printed.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.errors import JitdiffError
from harness.kernel.crashes import kernel_report, known_crash, signature
from harness.outcome import RunOutcome, Status
from harness.process import die_with_parent, ignore_interrupts
from harness.system import Case

__all__ = [
    "Job",
    "NativeRun",
    "Snapshot",
    "Answer",
    "Crash",
    "Worker",
    "KernelCrash",
    "DEFAULT_CRASH_DIR",
    "failed_runs",
    "tainted",
    "save_log",
    "log_tail",
    "LOG_DIR",
    "LOG_TAIL",
    "save_reproducer",
]

#: where crash reproducers go unless the engine is told (``crash_dir``; the
#: command line passes ``--corpus``/crashes): relative to the working
#: directory, like ``--corpus``'s default
DEFAULT_CRASH_DIR = Path("corpus") / "crashes"
KMSG = "/dev/kmsg"
TAINTED = "/proc/sys/kernel/tainted"
#: taint bits that mean the kernel hit a bug: D (died, an oops) and W (warned)
_BUG_TAINTS = 1 << 7 | 1 << 9
#: full verifier logs are kept here, one file per distinct log
LOG_DIR = Path(tempfile.gettempdir()) / "jitdiff-logs"
#: lines of a verifier log an outcome carries (the rejection reason is at the end)
LOG_TAIL = 12

# /proc/sys/kernel/tainted bits, as `Documentation/admin-guide/tainted-kernels.rst`
# letters them (the ones a BPF crash can set are D and W).
_TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"


class KernelCrash(JitdiffError):
    """The kernel crashed while running a case and the worker was asked to stop."""

    def __init__(self, crash: Crash):
        super().__init__(str(crash))
        self.crash = crash


# --- the protocol (plain, picklable data) -------------------------------------


@dataclass(frozen=True)
class Job:
    case: Case
    #: play the script natively (BPF_PROG_TEST_RUN for every run step)
    native: bool = True
    #: snapshot the JIT images after loading and after every prog-array step
    images: bool = False
    cpu: int | None = 0
    allow_known_crashes: bool = False
    #: seconds to sleep after loading: lets a test kill the child mid-case
    hold: float = 0.0


@dataclass(frozen=True)
class NativeRun:
    retval: int | None
    #: array map name -> contents (every value, key order)
    maps: dict[str, bytes] = field(default_factory=dict)
    #: the test run itself failed (errno text); retval is None then
    error: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The live code after script step ``step`` (a prog-array update/delete)."""

    step: int
    #: (program, function index) -> code bytes
    code: dict[tuple[str, int], bytes]
    #: the kernel refused the update (e.g. E2BIG): text unchanged
    error: str = ""


@dataclass(frozen=True)
class Crash:
    signature: str
    #: how it showed: "died (signal 9)", "hung", "kmsg"
    how: str
    #: the kernel log excerpt (empty when nothing was logged)
    log: str
    #: /proc/sys/kernel/tainted after the crash, and its letters
    tainted: int
    #: where the reproducer is (an existing one when this bug was seen before)
    reproducer: str | None

    def __str__(self) -> str:
        taint = f"kernel tainted {self.tainted:#x} ({taint_letters(self.tainted)})"
        rep = f"; reproducer {self.reproducer}" if self.reproducer else ""
        head = f"kernel crash {self.signature}: worker {self.how}; {taint}{rep}"
        return f"{head}\n{self.log}".rstrip()


@dataclass(frozen=True)
class Answer:
    #: "ok", "rejected", "unsupported", "error" or "crashed"
    status: str
    detail: str = ""
    #: the verifier log (rejected) or the kernel log excerpt (crashed)
    log: str = ""
    runs: tuple[NativeRun, ...] = ()
    #: ``SystemImage`` after loading (images jobs)
    image: object = None
    snapshots: tuple[Snapshot, ...] = ()
    crash: Crash | None = None
    seconds: float = 0.0


def save_log(log: str, kind: str = "verifier") -> str:
    """Keep a whole log in ``LOG_DIR`` and return its path: named by its
    content (the same log is one file), written atomically."""
    path = LOG_DIR / f"{kind}-{hashlib.sha1(log.encode()).hexdigest()[:12]}.log"
    try:
        if not path.exists():
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=LOG_DIR, prefix=f".{path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(log)
            os.replace(tmp, path)
    except OSError as e:
        return f"(not saved: {e.strerror})"
    return str(path)


def log_tail(log: str, lines: int = LOG_TAIL) -> str:
    """The end of a verifier log (where the reason is), and where the rest is
    when there is more."""
    all_lines = log.rstrip("\n").splitlines()
    if len(all_lines) <= lines:
        return "\n".join(all_lines)
    tail = all_lines[-lines:]
    return "\n".join(
        [f"... {len(all_lines) - lines} lines before these (full log: {save_log(log)})", *tail]
    )


def failed_runs(case: Case, answer: Answer) -> list[RunOutcome]:
    """One outcome per run step for a job that produced no runs: the first
    line of ``detail`` says what happened, the lines below it are the end of
    the verifier log or the kernel log excerpt."""
    status = {
        "rejected": Status.REJECTED,
        "unsupported": Status.UNSUPPORTED,
        "crashed": Status.CRASHED,
    }.get(answer.status, Status.UNSUPPORTED)
    detail = answer.detail
    if answer.log and answer.status == "rejected":
        detail = f"{detail}\n{log_tail(answer.log)}".strip()
    elif answer.log and answer.status == "crashed":
        detail = f"{detail}\n{answer.log}".strip()
    n = sum(1 for s in case.script() if s.kind == "run")
    return [RunOutcome(status, tail_calls=None, detail=detail) for _ in range(n)]


# --- the child ------------------------------------------------------------------


def _serve(job: Job) -> Answer:
    from harness.errors import CaseError, Unsupported
    from harness.kernel import bpf
    from harness.kernel.loader import KnownKernelBug, load_case

    t0 = time.perf_counter()
    try:
        sysm = load_case(job.case, cpu=job.cpu, allow_known_crashes=job.allow_known_crashes)
    except bpf.Rejected as r:
        return Answer(
            "rejected", f"{r.what or 'load'} rejected ({r.errno_name}): {r.reason}", r.log
        )
    except KnownKernelBug as e:
        return Answer("unsupported", str(e))
    except (Unsupported, CaseError, bpf.BpfError) as e:
        return Answer("unsupported" if isinstance(e, Unsupported) else "error", str(e))
    try:
        if job.hold:
            time.sleep(job.hold)
        arrays = [n for n, m in job.case.maps.items() if m.kind == "array"]
        image = sysm.images() if job.images else None
        runs: list[NativeRun] = []
        snaps: list[Snapshot] = []
        for i, step in enumerate(job.case.script()):
            if step.kind == "run":
                if not job.native:
                    continue
                try:
                    tr = sysm.test_run(step.program, job.case.ctx)
                    runs.append(NativeRun(tr.retval, {n: sysm.map_contents(n) for n in arrays}))
                except bpf.BpfError as e:
                    runs.append(NativeRun(None, error=str(e)))
                continue
            err = ""
            try:
                if step.kind == "update":
                    sysm.update(step.map, step.key, step.value)
                elif step.kind == "delete":
                    sysm.delete(step.map, step.key)
            except (bpf.BpfError, CaseError) as e:
                err = str(e)  # the kernel refused (E2BIG, ...): nothing changed
            if job.images and job.case.maps[step.map].kind == "prog_array":
                code = {}
                for name, p in sysm.progs.items():
                    for k, (_addr, c) in enumerate(bpf.prog_info(p.fd).func_images()):
                        code[(name, k)] = c
                snaps.append(Snapshot(i, code, err))
        return Answer(
            "ok",
            runs=tuple(runs),
            image=image,
            snapshots=tuple(snaps),
            seconds=time.perf_counter() - t0,
        )
    except (bpf.BpfError, CaseError) as e:
        return Answer("error", str(e))
    finally:
        sysm.close()


def main() -> None:
    """The child: answer jobs from stdin on stdout until EOF (the parent closed
    the pipe, or died)."""
    ignore_interrupts()
    if len(sys.argv) > 1:
        die_with_parent(int(sys.argv[1]))
    out, inp = sys.stdout.buffer, sys.stdin.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    while True:
        try:
            job = pickle.load(inp)
        except EOFError:
            return
        try:
            ans = _serve(job)
        except Exception as e:  # noqa: BLE001 - anything else is reported, not fatal
            ans = Answer("error", f"{type(e).__name__}: {e}")
        pickle.dump(ans, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


# --- the parent -------------------------------------------------------------------


def tainted() -> int:
    try:
        with open(TAINTED) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def taint_letters(value: int) -> str:
    return "".join(c for b, c in enumerate(_TAINT_LETTERS) if value >> b & 1) or "-"


class _Kmsg:
    """Non-blocking reader of the kernel log from the position at creation."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.why = ""
        try:
            self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.fd, self.why = (
                None,
                (f"{KMSG} unreadable ({e.strerror}): only a new D or W taint shows a kernel bug"),
            )

    def read(self) -> list[str]:
        lines: list[str] = []
        while self.fd is not None:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == _errno.EPIPE:  # records overwritten before we read them
                    continue
                break
            if not rec:
                break
            text = rec.decode(errors="replace")
            _, _, msg = text.partition(";")
            # continuation lines (" KEY=value") are metadata, not the message
            lines.append(msg.split("\n", 1)[0])
        return lines

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def save_reproducer(crash_dir: Path, case: Case, sig: str, note: list[str]) -> str | None:
    """Save a crash reproducer ``<crash_dir>/<sig>.case`` atomically, ``note``
    (the crash report) in its comment; an existing file is never replaced (the
    first reproducer of a signature wins). Its path, or why it was not saved."""
    path = crash_dir / f"{sig}.case"
    if path.exists():
        return str(path)
    comment = "\n".join(([case.comment, ""] if case.comment else []) + note)
    try:
        crash_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=crash_dir, prefix=f".{sig}.", suffix=".tmp")
        os.close(fd)
        try:
            try:
                from harness.formats import casefile
            except ImportError:  # no text format: keep the case as a pickle
                path = path.with_suffix(".case.pickle")
                with open(tmp, "wb") as f:
                    pickle.dump(replace(case, comment=comment), f)
            else:
                casefile.save(replace(case, comment=comment), tmp)
            os.link(tmp, path)  # atomic, and fails rather than overwrite
        finally:
            os.unlink(tmp)
    except FileExistsError:
        pass
    except (OSError, JitdiffError) as e:
        return f"(not saved: {e})"
    return str(path)


class Worker:
    """The parent's handle on one child process (started on first use and
    restarted transparently after it dies)."""

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        crash_dir: str | os.PathLike[str] | None = None,
        stop_on_crash: bool = False,
        retries: int = 1,
        kmsg=None,
    ):
        self.timeout = timeout
        self.crash_dir = Path(crash_dir) if crash_dir is not None else DEFAULT_CRASH_DIR
        self.stop_on_crash = stop_on_crash
        #: times a job is tried again after the child died with nothing logged
        self.retries = retries
        self.crashes: list[Crash] = []
        #: harness events (a child killed from outside, hung with nothing
        #: logged), by what happened: counted, never findings
        self.incidents: Counter = Counter()
        self.jobs = 0
        self.starts = 0
        self._proc: subprocess.Popen | None = None
        #: a job was sent and its answer not read (the parent was interrupted)
        self._busy = False
        #: the kernel log reader (``read() -> [line]``, ``close()``); tests
        #: inject synthetic lines here instead of crashing the kernel
        self._kmsg = kmsg if kmsg is not None else _Kmsg()
        self.tainted_at_start = tainted()

    @classmethod
    def from_options(cls, options: dict) -> Worker:
        """A worker from an engine's options (``timeout``, ``crash_dir``,
        ``stop_on_crash``, ``kmsg``), the defaults where absent."""
        return cls(
            timeout=options.get("timeout", 120.0),
            crash_dir=options.get("crash_dir"),
            stop_on_crash=options.get("stop_on_crash", False),
            kmsg=options.get("kmsg"),
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "harness.kernel.worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[2]),
            # a Ctrl-C at the terminal is the parent's to handle (a session
            # of its own: process_group= needs Python 3.11)
            start_new_session=True,
        )
        self.starts += 1

    def submit(self, job: Job) -> Answer:
        """Run one job in the child; a kernel bug it set off comes back as
        ``status="crashed"``, a child that died with nothing in the kernel
        log is started again and the job retried."""
        if not job.allow_known_crashes:
            why = known_crash(job.case) or (job.native and known_crash(job.case, when="run"))
            if why:
                return Answer("unsupported", why)
        for _ in range(self.retries + 1):
            ans, how = self._attempt(job)
            if ans is not None:
                return ans
            self.incidents[f"kernel worker {how} with nothing in the kernel log"] += 1
        return Answer(
            "error", f"kernel worker {how} {self.retries + 1} times with nothing in the kernel log"
        )

    def _attempt(self, job: Job) -> tuple[Answer | None, str]:
        """(the answer, or None and how the child died or hung)."""
        self.start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        self._kmsg.read()  # anything logged between jobs is not this case's
        # without a kernel log to read, a new D or W taint is the evidence
        # (with one, another process's WARN taints the kernel too): only then
        # is the taint read, not on every job
        blind = getattr(self._kmsg, "fd", 0) is None
        taint = tainted() if blind else 0
        self.jobs += 1
        ans: Answer | None = None
        how = ""
        self._busy = True
        try:
            pickle.dump(job, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            if not ready:
                how = f"hung (no answer in {self.timeout:.0f} s)"
            else:
                ans = pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError, OSError):
            ans = None
        self._busy = False
        if ans is None:
            how = how or self._death()
            self._reap()
            time.sleep(0.2)  # the oops text may land just after the process dies
        log = kernel_report(self._kmsg.read(), pids={proc.pid}) or ""
        new_taint = blind and tainted() & ~taint & _BUG_TAINTS
        if not log and not new_taint:
            return ans, how
        if ans is not None:
            how = "logged a kernel bug report" if log else "tainted the kernel"
        return self._crashed(job, how, log), how

    def _death(self) -> str:
        proc = self._proc
        try:
            rc = proc.wait(timeout=2.0) if proc is not None else None
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if rc is not None and rc < 0:
            try:
                return f"died ({signal.Signals(-rc).name})"
            except ValueError:
                return f"died (signal {-rc})"
        return f"died (exit {rc})"

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - stuck in the kernel
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def _crashed(self, job: Job, how: str, log: str) -> Answer:
        self._reap()  # a child that saw the kernel misbehave is not reused
        sig = signature(log, fallback=f"worker-{how}")
        t = tainted()
        rep = self._save(job.case, sig, how, log, t)
        crash = Crash(sig, how, log, t, rep)
        self.crashes.append(crash)
        if self.stop_on_crash:
            raise KernelCrash(crash)
        return Answer(
            "crashed",
            f"kernel crash {sig}: worker {how}; kernel tainted {t:#x} "
            f"({taint_letters(t)}); reproducer {rep}",
            log,
            crash=crash,
        )

    def _save(self, case: Case, sig: str, how: str, log: str, taint: int) -> str | None:
        note = [
            f"kernel crash reproducer ({sig}): the worker {how} while loading/running this "
            f"case; kernel tainted {taint:#x} ({taint_letters(taint)})"
        ]
        note += [f"  {ln}" for ln in log.splitlines()] if log else ["  (nothing in /dev/kmsg)"]
        return save_reproducer(self.crash_dir, case, sig, note)

    def close(self) -> None:
        proc = self._proc
        # between jobs EOF ends the child; mid-job (the parent was interrupted)
        # nobody will read its answer: it is killed
        if proc is not None and not self._busy:
            try:
                proc.stdin.close()  # EOF: the child returns from main()
                proc.wait(timeout=5.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._reap()
        self._kmsg.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    # run the module's own copy so pickled classes are named harness.kernel.worker.*
    from harness.kernel.worker import main as _main

    _main()
