"""Fuzzing campaigns: parallel workers, shrinking, de-duplicated corpus writes.

Each worker process owns its engines (one emulator, one kernel worker) and
walks its share of the case indices: case ``i`` of a campaign with seed ``S``
is ``generators.generate(S * 2**32 + i)``, so a campaign is deterministic for
its seed whatever the number of workers. A divergence is shrunk in the worker
(``harness.campaign.shrink``) and sent to the parent, which alone writes the corpus:
one file per divergence signature, written atomically, never overwriting.

Lifecycle: the corpus is checked writable before any worker starts; a finding
is printed before it is saved (a failed save loses nothing); the workers die
with the parent (``harness.process.die_with_parent``) and leave Ctrl-C to it,
which stops them and returns the summary so far (``Summary.interrupted``).

Budgets: ``examples`` counts systems from case index ``start`` (a seed shard,
``harness.campaign.shards``, is such a slice) and makes the campaign, its
reproducers included, byte-for-byte repeatable: shrinking is bounded by
attempts, not time. ``seconds`` is a wall-clock limit that shrinking honours
too: past it, a shrink in progress stops with the smallest reproducer found so
far (the report says so), so a campaign overshoots its time by at most the
case in flight and the rendering of that one finding.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from generators import coverage as shape_coverage
from generators.config import Config
from generators.coverage import report as coverage_report
from generators.draw import ChoiceDraw, RandomDraw
from generators.systems import build_system
from harness import engines, report
from harness.campaign.known import known
from harness.campaign.reduce import reduce_case
from harness.campaign.runner import Runner
from harness.campaign.shrink import shrink_choices
from harness.errors import JitdiffError
from harness.formats import casefile
from harness.process import die_with_parent, ignore_interrupts, parent_alive
from harness.reference.profile import LINUX, Profile
from harness.system import Case
from oracles import Verdict
from oracles.base import verdict

__all__ = [
    "Campaign",
    "Finding",
    "Summary",
    "run_campaign",
    "case_for",
    "check_one",
    "shrink",
    "signature",
    "check_corpus",
]


@dataclass(frozen=True)
class Campaign:
    engines: tuple[str, ...]
    seed: int = 0
    examples: int | None = None
    #: first case index (a shard's start; ``examples`` counts from here)
    start: int = 0
    seconds: float | None = None
    workers: int = 1
    profile: Profile | None = None
    config: Config = field(default_factory=Config)
    corpus: Path | None = None
    shrink: bool = True
    #: attempts for each phase of shrinking (choices, then case reduction);
    #: None: the phases' defaults. Work, not time, so reproducers repeat
    shrink_tries: int | None = None
    stop_on_first: bool = False
    progress: bool = False
    #: report divergences listed in harness.campaign.known like new ones
    report_known: bool = False
    #: engine options (e.g. allow_known_crashes for the kernel engines)
    options: dict = field(default_factory=dict)


@dataclass
class Finding:
    engine: str
    signature: str
    oracle: str
    index: int
    seconds: float
    text: str
    insns: int
    programs: int
    path: str | None = None
    #: why the reproducer could not be saved (it was printed all the same)
    unsaved: str = ""
    #: shrinking was cut short by the campaign's time limit
    cut_short: bool = False
    #: how long shrinking took (every attempt runs on the engine: a guest's
    #: attempts cost a request each, a crashing one a reboot)
    shrink_seconds: float = 0.0


@dataclass
class Summary:
    cases: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    duplicates: int = 0
    #: documented kernel behaviour seen again (harness.campaign.known), by signature
    known: Counter = field(default_factory=Counter)
    poisoned: Counter = field(default_factory=Counter)
    coverage: Counter = field(default_factory=Counter)
    #: harness events (a kernel worker killed from outside), counted, not findings
    incidents: Counter = field(default_factory=Counter)
    #: stopped by Ctrl-C: the counts are those so far
    interrupted: bool = False

    def render(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        lines = [
            ("interrupted: " if self.interrupted else "")
            + f"{self.cases} cases in {self.seconds:.1f}s ({rate:.0f}/s), "
            f"{len(self.findings)} divergences ({self.duplicates} duplicates), "
            f"{sum(self.poisoned.values())} poisoned"
        ]
        for what, n in self.incidents.most_common():
            lines.append(f"  harness {n:7d}  {what} (retried)")
        for sig, n in self.known.most_common():
            lines.append(f"  known  {n:8d}  {sig} (see {known(sig)})")
        for why, n in self.poisoned.most_common(6):
            lines.append(f"  poisoned {n:6d}  {why}")
        if self.coverage:
            lines.append("coverage (cases reaching each shape):")
            lines += coverage_report(self.coverage, self.cases)
        for f in self.findings:
            where = f" -> {f.path}" if f.path else ""
            if f.unsaved:
                where = f" (not saved: {f.unsaved})"
            lines.append(
                f"DIVERGENCE {f.engine} [{f.oracle}] case #{f.index} after "
                f"{f.seconds:.1f}s, shrunk in {f.shrink_seconds:.1f}s to {f.programs} programs / {f.insns} "
                f"insns{' (shrinking cut short by --time)' if f.cut_short else ''}{where}"
            )
        return "\n".join(lines)


def case_for(seed: int, index: int, config: Config) -> tuple[Case, list[int]]:
    draw = RandomDraw(seed * 2**32 + index)
    case = build_system(draw, config)
    return case, draw.choices


def check_one(runner: Runner, case: Case):
    """(divergences [(engine, Divergence)], poisoned reasons, reference runs)."""
    res = runner.check(case)
    poisoned = []
    for name, (v, _, out) in res.candidates.items():
        if v is Verdict.POISONED:
            ref = res.reference_for(name).runs
            reasons = {verdict(a, b)[1] for a, b in zip(ref, out.runs)} - {""}
            why = sorted(reasons)[0] if reasons else "poisoned"
            # group by kind: "unsupported: known kernel crash NAME", not its details
            poisoned.append(f"{name}: {': '.join(why.split(': ')[:2])}")
    return res, poisoned


def signature(engine: str, d) -> str:
    return f"{engine}|{d.signature()}"


def _size(case: Case) -> tuple[int, int]:
    return sum(len(p.insns) for p in case.programs.values()), len(case.programs)


def shrink(
    runner: Runner,
    engine: str,
    sig: str,
    choices: list[int],
    config: Config,
    *,
    stop: Callable[[], bool] | None = None,
    tries: int | None = None,
) -> Case:
    """Choice shrinking (local, generator-aware), then case reduction (removes
    the scaffolding the generator always emits). Both keep only edits that
    preserve ``sig`` (engine, oracle and kind of first differing event): an
    edit that merely moves the symptom elsewhere (a harness-only difference, a
    pointer the reference places differently) has left the bug behind.
    Deterministic for its inputs unless ``stop`` cuts it short."""

    def case_fails(case: Case) -> bool:
        res, _ = check_one(runner, case)
        return any(signature(n, d) == sig for n, d in res.divergences if n == engine)

    budget = {} if tries is None else {"max_tries": tries}
    best = shrink_choices(
        choices, lambda c: case_fails(build_system(ChoiceDraw(c), config)), stop=stop, **budget
    )
    return reduce_case(build_system(ChoiceDraw(best), config), case_fails, stop=stop, **budget)


class _Deadline:
    """``stop`` for shrinking: true once the campaign is out of time, and
    remembers it was (the report says the reproducer is not fully shrunk)."""

    def __init__(self, at: float | None):
        self.at, self.hit = at, False

    def __call__(self) -> bool:
        self.hit = self.hit or (self.at is not None and time.monotonic() > self.at)
        return self.hit


def _worker(w: int, camp: Campaign, out: mp.Queue, stop, parent: int) -> None:
    die_with_parent(parent)
    ignore_interrupts()
    walk(w, camp, out, stop, lambda: parent_alive(parent))


def walk(w: int, camp: Campaign, out, stop, alive: Callable[[], bool] = lambda: True) -> None:
    """Worker ``w``'s share of the campaign's case indices, in this process:
    messages to ``out`` (anything with ``put``), until ``stop.is_set()``, the
    budget, or ``alive()`` turns false. A seed shard runs it directly."""
    runner = Runner(camp.engines, camp.profile or LINUX, **camp.options)
    start = time.monotonic()
    deadline = None if camp.seconds is None else start + camp.seconds
    i = camp.start + w
    seen: set[str] = set()
    n = 0
    cov: Counter = Counter()
    poisoned: Counter = Counter()
    last = time.monotonic()
    try:
        while not stop.is_set() and alive():
            if camp.examples is not None and i >= camp.start + camp.examples:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            case, choices = case_for(camp.seed, i, camp.config)
            res, why = check_one(runner, case)
            n += 1
            poisoned.update(why)
            cov.update(shape_coverage(case, res.reference.runs))
            for engine, d in res.divergences:
                sig = signature(engine, d)
                if not camp.report_known and known(d.signature()):
                    out.put(("known", d.signature()))
                    continue
                if sig in seen:
                    out.put(("dup", w))
                    continue
                seen.add(sig)
                found_at = time.monotonic() - start
                shrink_start = time.monotonic()
                cut = _Deadline(deadline)
                small = (
                    shrink(
                        runner, engine, sig, choices, camp.config, stop=cut, tries=camp.shrink_tries
                    )
                    if camp.shrink
                    else case
                )
                shrink_seconds = time.monotonic() - shrink_start
                sres, _ = check_one(runner, small)
                # shrinking kept the signature (``sig``), so this is the same
                # divergence; the report's text comes from it
                dd = next((x for e, x in sres.divergences if signature(e, x) == sig), d)
                eng = next(e for e in runner.engines if e.name == engine)
                try:
                    listing = eng.listing(small)
                except Exception:  # a listing is a courtesy; never lose a finding to it
                    listing = ""
                try:
                    step = runner.pinpoint(small, engine, dd.run)
                except Exception:  # lockstep is a courtesy too
                    step = None
                text = report.render_divergence(
                    small, engine, dd, sres.reference_for(engine).runs, cand_listing=listing, step=step
                )
                insns, progs = _size(small)
                out.put(
                    (
                        "finding",
                        Finding(
                            engine,
                            sig,
                            dd.oracle,
                            i,
                            found_at,
                            text,
                            insns,
                            progs,
                            cut_short=cut.hit,
                            shrink_seconds=shrink_seconds,
                        ),
                    )
                )
                if camp.stop_on_first:
                    # not the next case too before the parent's stop arrives
                    stop.set()
                    break
            if time.monotonic() - last > 0.5:
                out.put(("progress", w, n, cov, poisoned))
                n, cov, poisoned, last = 0, Counter(), Counter(), time.monotonic()
            i += camp.workers
    finally:
        out.put(("progress", w, n, cov, poisoned))
        out.put(("incidents", runner.incidents()))
        out.put(("done", w))
        runner.close()


def _save(corpus: Path, f: Finding) -> str | None:
    """Atomic, de-duplicated by signature, never overwriting."""
    name = f.engine.replace("+", "_").replace("@", "_") + "-" + f.oracle
    digest = hashlib.sha1(f.signature.encode()).hexdigest()[:10]
    path = corpus / "found" / f"{name}-{digest}.case"
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    casefile.save(casefile.parse(f.text, file=str(path)), path)
    return str(path)


def check_corpus(corpus: Path) -> None:
    """Raise ``JitdiffError`` with the reason unless reproducers can be saved
    under ``corpus`` (before the campaign, not at its first finding)."""
    found = corpus / "found"
    try:
        found.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=found, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise JitdiffError(
            f"--corpus {corpus}: cannot save reproducers in {found}: {e.strerror}"
        ) from None


def _save_or_say(corpus: Path, f: Finding, path: str | None = None) -> None:
    """Save ``f`` (over ``path``, a file this campaign wrote, when given);
    a failure is noted on the finding, never raised: it was printed."""
    try:
        if path is None:
            f.path = _save(corpus, f)
        else:
            casefile.save(casefile.parse(f.text, file=path), Path(path))
            f.path = path
    except (OSError, JitdiffError) as e:
        f.path, f.unsaved = None, getattr(e, "strerror", None) or str(e)


def _record(
    summary: Summary, f: Finding, corpus: Path | None, show: Callable | None = None
) -> Finding | None:
    """Keep one finding per signature: the one earliest in the seed's order,
    whichever worker's arrived first (a worker still shrinking an earlier
    case reports it late), so a seed's report does not depend on timing.
    A kept finding is shown (``show``) before it is saved, so a corpus that
    fails loses nothing. Returns the finding, if it is kept."""
    kept, old = keep_earliest(summary.findings, f)
    if old is not None:
        summary.duplicates += 1
    if not kept:
        return None
    if show is not None:
        show(f)
    if old is None:
        if corpus is not None:
            _save_or_say(corpus, f)
    elif old.path is not None:  # written by this campaign: replace it (atomically)
        _save_or_say(corpus or Path(old.path).parent, f, old.path)
    return f


def keep_earliest(findings: list[Finding], f: Finding) -> tuple[bool, Finding | None]:
    """Put ``f`` in ``findings`` unless the one of its signature there is
    earlier in the seed's order: (whether ``f`` is kept, the finding of its
    signature that was there)."""
    old = next((g for g in findings if g.signature == f.signature), None)
    if old is None:
        findings.append(f)
    elif f.index < old.index:
        findings[findings.index(old)] = f
    else:
        return False, old
    return True, old


def _reporter(
    summary: Summary, corpus: Path | None, stream, out, tty: bool
) -> Callable[[Finding], Finding | None]:
    """``_record`` with a campaign's output: a kept finding's report to ``out``
    (on a line of its own, not after the progress line on ``stream``), then
    where it was saved or why it was not. Returns the kept finding, if any."""

    def show(f: Finding) -> None:
        if tty:  # the report starts on a line of its own, not after the progress
            stream.write("\r\x1b[K")
            stream.flush()
        print(f.text, file=out, flush=True)

    def record(f: Finding) -> Finding | None:
        kept = _record(summary, f, corpus, show)
        if kept is not None and kept.path:
            print(f"saved {kept.path}", file=out, flush=True)
        elif kept is not None and kept.unsaved:
            print(f"not saved ({kept.unsaved})", file=out, flush=True)
        return kept

    return record


def tally(stats: Summary, msg: tuple) -> None:
    """Count a worker's message other than a finding into ``stats`` (a
    ``Summary``, or anything with its counters: a seed shard's result)."""
    kind = msg[0]
    if kind == "progress":
        _, _, n, cov, poisoned = msg
        stats.cases += n
        stats.coverage.update(cov)
        stats.poisoned.update(poisoned)
    elif kind == "dup":
        stats.duplicates += 1
    elif kind == "known":
        stats.known[msg[1]] += 1
    elif kind == "incidents":
        stats.incidents.update(msg[1])


def progress_line(summary: Summary, elapsed: float) -> str:
    """The live status line (redrawn in place on a terminal)."""
    return (
        f"\r{summary.cases} cases  {summary.cases / max(elapsed, 1e-9):.0f}/s  "
        f"{len(summary.findings)} divergences  "
        f"{sum(summary.poisoned.values())} poisoned  "
        f"{len(summary.coverage)} shapes  {elapsed:.0f}s "
    )


def run_campaign(camp: Campaign, *, stream=None, out=None) -> Summary:
    """Run ``camp``: progress goes to ``stream`` (default stderr), each
    finding's report to ``out`` (default ``stream``). Ctrl-C ends it early
    with the summary so far (``interrupted``); an unwritable corpus is a
    ``JitdiffError`` before any work."""
    stream = stream or sys.stderr  # looked up now: tests swap sys.stderr
    out = out or stream
    if camp.corpus is not None:
        check_corpus(camp.corpus)
        if "crash_dir" not in camp.options:
            # kernel crash reproducers go with the campaign's corpus
            camp = replace(camp, options={**camp.options, "crash_dir": camp.corpus / "crashes"})
    narrowed = engines.narrow(camp.engines, camp.config)
    if narrowed != camp.config:
        off = sorted(f for f in camp.config.enabled() - narrowed.enabled())
        print(f"generation narrowed to what the engines load: off {', '.join(off)}", file=stream)
        camp = replace(camp, config=narrowed)
    summary = Summary()
    start = time.monotonic()
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    inbox = ctx.Queue()
    stop = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(w, camp, inbox, stop, os.getpid()), daemon=True)
        for w in range(camp.workers)
    ]
    tty = camp.progress and stream.isatty()
    record = _reporter(summary, camp.corpus, stream, out, tty)

    def handle(msg) -> None:
        if msg[0] == "finding":
            if record(msg[1]) is not None and camp.stop_on_first:
                stop.set()
        else:
            tally(summary, msg)

    def interrupt(signum, frame) -> None:
        # Ctrl-C only sets a flag: a KeyboardInterrupt raised mid-save
        # would leave a printed finding unsaved
        summary.interrupted = True
        stop.set()

    try:
        old_handler = signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        old_handler = None
    done = 0
    last_draw = 0.0
    try:
        for p in procs:
            p.start()
        while done < len(procs) and not summary.interrupted:
            try:
                msg = inbox.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if msg[0] == "done":
                done += 1
            handle(msg)
            now = time.monotonic()
            if tty and now - last_draw > 0.25:
                last_draw = now
                el = now - start
                stream.write(progress_line(summary, el))
                stream.flush()
        stop.set()
        if summary.interrupted:
            _wind_down(procs, inbox, handle, done)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    for p in procs:
        if p.pid is None:  # Ctrl-C came before it started
            continue
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    if tty:
        stream.write("\n")
    summary.seconds = time.monotonic() - start
    return summary


#: after Ctrl-C, how long the workers get to finish the case in hand
WIND_DOWN = 2.0


def _wind_down(procs, inbox, handle, done: int) -> None:
    """After Ctrl-C: take what the workers still send for ``WIND_DOWN``
    seconds (their last counts, a finding already shrunk), then kill the
    rest (each kernel worker dies with its fuzz worker)."""
    deadline = time.monotonic() + WIND_DOWN
    while done < len([p for p in procs if p.pid is not None]):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            msg = inbox.get(timeout=min(left, 0.2))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        if msg[0] == "done":
            done += 1
        handle(msg)
    for p in procs:
        if p.is_alive():
            p.kill()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
