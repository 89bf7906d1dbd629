"""Fuzzing campaigns: parallel workers, shrinking, de-duplicated corpus writes.

Each worker process owns its engines (one emulator, one kernel worker) and
walks its share of the case indices: case ``i`` of a campaign with seed ``S``
is ``generators.generate(S * 2**32 + i)``, so a campaign is deterministic for
its seed whatever the number of workers. A divergence is shrunk in the worker
(``harness.campaign.shrink``) and sent to the parent, which alone writes the corpus:
one file per divergence signature, written atomically, never overwriting.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from generators import coverage as shape_coverage
from generators.config import Config
from generators.draw import ChoiceDraw, RandomDraw
from generators.systems import build_system
from harness import report
from harness.campaign.known import known
from harness.campaign.reduce import reduce_case
from harness.campaign.runner import Runner
from harness.campaign.shrink import shrink_choices
from harness.formats import casefile
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
]


@dataclass(frozen=True)
class Campaign:
    engines: tuple[str, ...]
    seed: int = 0
    examples: int | None = None
    seconds: float | None = None
    workers: int = 1
    profile: Profile | None = None
    config: Config = field(default_factory=Config)
    corpus: Path | None = None
    shrink: bool = True
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

    def render(self) -> str:
        rate = self.cases / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.cases} cases in {self.seconds:.1f}s ({rate:.0f}/s), "
            f"{len(self.findings)} divergences ({self.duplicates} duplicates), "
            f"{sum(self.poisoned.values())} poisoned"
        ]
        for sig, n in self.known.most_common():
            lines.append(f"  known  {n:8d}  {sig} (see {known(sig)})")
        for why, n in self.poisoned.most_common(6):
            lines.append(f"  poisoned {n:6d}  {why}")
        if self.coverage:
            lines.append("coverage (cases reaching each shape):")
            for shape, n in sorted(self.coverage.items()):
                lines.append(f"  {shape:40s} {n:7d}  {100.0 * n / max(self.cases, 1):5.1f}%")
        for f in self.findings:
            where = f" -> {f.path}" if f.path else ""
            lines.append(
                f"DIVERGENCE {f.engine} [{f.oracle}] case #{f.index} after "
                f"{f.seconds:.1f}s, shrunk to {f.programs} programs / {f.insns} "
                f"insns{where}"
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
            reasons = {verdict(a, b)[1] for a, b in zip(res.reference.runs, out.runs)} - {""}
            why = sorted(reasons)[0] if reasons else "poisoned"
            # group by kind: "unsupported: known kernel crash NAME", not its details
            poisoned.append(f"{name}: {': '.join(why.split(': ')[:2])}")
    return res, poisoned


def signature(engine: str, d) -> str:
    return f"{engine}|{d.signature()}"


def _size(case: Case) -> tuple[int, int]:
    return sum(len(p.insns) for p in case.programs.values()), len(case.programs)


def shrink(runner: Runner, engine: str, sig: str, choices: list[int], config: Config) -> Case:
    """Choice shrinking (local, generator-aware), then case reduction (removes
    the scaffolding the generator always emits)."""

    def case_fails(case: Case) -> bool:
        res, _ = check_one(runner, case)
        return any(signature(n, d) == sig for n, d in res.divergences if n == engine)

    def still_diverges(case: Case) -> bool:
        # removing scaffolding often moves the symptom to another oracle (a
        # retval that no longer differs, a tail-call count that still does):
        # the same engine diverging at all is what reduction preserves
        res, _ = check_one(runner, case)
        return any(n == engine for n, _ in res.divergences)

    best = shrink_choices(choices, lambda c: case_fails(build_system(ChoiceDraw(c), config)))
    return reduce_case(build_system(ChoiceDraw(best), config), still_diverges)


def _worker(w: int, camp: Campaign, out: mp.Queue, stop) -> None:
    runner = Runner(camp.engines, camp.profile or LINUX, **camp.options)
    start = time.monotonic()
    i = w
    seen: set[str] = set()
    n = 0
    cov: Counter = Counter()
    poisoned: Counter = Counter()
    last = time.monotonic()
    try:
        while not stop.is_set():
            if camp.examples is not None and i >= camp.examples:
                break
            if camp.seconds is not None and time.monotonic() - start >= camp.seconds:
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
                small = shrink(runner, engine, sig, choices, camp.config) if camp.shrink else case
                sres, _ = check_one(runner, small)
                dd = next((x for e, x in sres.divergences if e == engine), d)
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
                    small, engine, dd, sres.reference.runs, cand_listing=listing, step=step
                )
                insns, progs = _size(small)
                out.put(
                    ("finding", Finding(engine, sig, dd.oracle, i, found_at, text, insns, progs))
                )
            if time.monotonic() - last > 0.5:
                out.put(("progress", w, n, cov, poisoned))
                n, cov, poisoned, last = 0, Counter(), Counter(), time.monotonic()
            i += camp.workers
    finally:
        out.put(("progress", w, n, cov, poisoned))
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


def _record(summary: Summary, f: Finding, corpus: Path | None) -> Finding | None:
    """Keep one finding per signature: the one earliest in the seed's order,
    whichever worker's arrived first (a worker still shrinking an earlier
    case reports it late), so a seed's report does not depend on timing.
    Returns the finding to print, if it is kept."""
    old = next((g for g in summary.findings if g.signature == f.signature), None)
    if old is None:
        if corpus is not None:
            f.path = _save(corpus, f)
        summary.findings.append(f)
        return f
    summary.duplicates += 1
    if f.index >= old.index:
        return None
    if old.path is not None:  # written by this campaign: replace it (atomically)
        casefile.save(casefile.parse(f.text, file=old.path), Path(old.path))
        f.path = old.path
    summary.findings[summary.findings.index(old)] = f
    return f


def run_campaign(camp: Campaign, *, stream=None) -> Summary:
    stream = stream or sys.stderr  # looked up now: tests swap sys.stderr
    summary = Summary()
    start = time.monotonic()
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(w, camp, out, stop), daemon=True)
        for w in range(camp.workers)
    ]
    for p in procs:
        p.start()
    done = 0
    tty = camp.progress and stream.isatty()
    last_draw = 0.0
    while done < len(procs):
        try:
            msg = out.get(timeout=0.5)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                break
            continue
        kind = msg[0]
        if kind == "progress":
            _, _, n, cov, poisoned = msg
            summary.cases += n
            summary.coverage.update(cov)
            summary.poisoned.update(poisoned)
        elif kind == "dup":
            summary.duplicates += 1
        elif kind == "known":
            summary.known[msg[1]] += 1
        elif kind == "finding":
            f = _record(summary, msg[1], camp.corpus)
            if f is not None:
                print(f.text, file=stream)
                if camp.stop_on_first:
                    stop.set()
        elif kind == "done":
            done += 1
        now = time.monotonic()
        if tty and now - last_draw > 0.25:
            last_draw = now
            el = now - start
            stream.write(
                f"\r{summary.cases} cases  {summary.cases / max(el, 1e-9):.0f}/s  "
                f"{len(summary.findings)} divergences  "
                f"{sum(summary.poisoned.values())} poisoned  "
                f"{len(summary.coverage)} shapes  {el:.0f}s "
            )
            stream.flush()
    stop.set()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    if tty:
        stream.write("\n")
    summary.seconds = time.monotonic() - start
    return summary


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
