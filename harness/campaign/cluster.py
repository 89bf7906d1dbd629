"""Campaigns on a Ray cluster: seed shards as Ray tasks, one driver, one corpus.

Ray does the scheduling, the routing and the retries; jitdiff keeps to what
only it can do. The driver submits one task per shard
(``harness.campaign.shards.run_shard``); a task returns its findings as case
text plus statistics, as plain data; the driver alone writes the corpus (one
file per signature, the finding earliest in the seed's order, atomic, as a
local campaign does), prints the same reports, progress line and summary, and
appends each finished shard to a ledger (JSON lines next to the corpus) only
once its findings are saved. An interrupted campaign run again skips the
shards in its ledger; a task whose worker process or machine died is re-run
by Ray (``max_retries``), and a shard that still failed is not in the ledger,
so the next run does it.

Engines that need more than Python (the host kernel's bpf(), a qemu guest
image) run only on nodes that advertise a Ray custom resource named after the
engine (``engine:kernel``, ``engine:guest:arm64``): each node says how many
shards of that engine it can run at once (``ray start --resources``).

This is the only module that imports ``ray``, and only when a cluster
campaign starts (``pip install 'jitdiff[cluster]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from harness import engines
from harness.campaign.fuzz import (
    Campaign,
    Summary,
    _reporter,
    check_corpus,
    keep_earliest,
    progress_line,
)
from harness.campaign.shards import SHARD_SIZE, ShardResult, run_shard, version
from harness.errors import JitdiffError

__all__ = ["PORTABLE", "Ledger", "connect", "ledger_path", "resources_for", "run_cluster"]

#: engines that are pure Python plus the package's own wheels (Unicorn): any
#: node with jitdiff installed runs them; every other engine is routed
PORTABLE = frozenset({"interp", "x86_64"})

#: Ray re-runs a task whose worker process or node died this many times
RETRIES = 3


def resources_for(names: tuple[str, ...]) -> dict[str, float]:
    """The custom resources a shard of these engines needs: one unit of
    ``engine:<base name>`` per engine that is not ``PORTABLE``."""
    return {f"engine:{b}": 1.0 for b in sorted({engines.base_name(n) for n in names} - PORTABLE)}


def _ray():
    try:
        import ray
    except ImportError:
        raise JitdiffError(
            "--cluster needs Ray: pip install 'jitdiff[cluster]' (the same version on every node)"
        ) from None
    return ray


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``ray://HOST:PORT``, ``HOST:PORT`` or
    ``auto``); None keeps a connection the caller already made."""
    ray = _ray()
    if address is None and ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JitdiffError(f"cannot join the Ray cluster at {address}: {first}") from None


def _shard_task(camp: Campaign, shard: int, size: int) -> dict:
    """What a Ray worker runs (by reference to this module: no Ray import)."""
    return run_shard(camp, shard, size).to_json()


def _campaign_key(camp: Campaign, size: int) -> str:
    """What makes two campaigns the same set of shards: a ledger belongs to one."""
    ident = {
        "version": version(),
        "seed": camp.seed,
        "size": size,
        "engines": sorted(camp.engines),
        "profile": camp.profile.name if camp.profile else None,
        "config": repr(camp.config),
        "shrink": camp.shrink,
        "shrink_tries": camp.shrink_tries,
        "report_known": camp.report_known,
        "options": sorted(camp.options.items()),
    }
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]


def ledger_path(camp: Campaign, size: int) -> Path:
    """``<corpus>.shards-seed<S>-<key>.jsonl`` beside the corpus directory."""
    assert camp.corpus is not None
    corpus = Path(camp.corpus).resolve()
    return corpus.parent / f"{corpus.name}.shards-seed{camp.seed}-{_campaign_key(camp, size)}.jsonl"


class Ledger:
    """Finished shards, one JSON line each, appended and fsynced after the
    shard's findings are saved. A line torn by a crash is ignored (that shard
    simply runs again)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[int, dict] = {}
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                rec = json.loads(line)
                self.done[int(rec["shard"])] = rec
            except (ValueError, KeyError, TypeError):
                continue

    def add(self, result: ShardResult) -> None:
        rec = result.to_json()
        for f in rec["findings"]:
            del f["text"]  # the corpus holds it
        line = json.dumps(rec, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():  # after a line torn by a crash, start a new one
                fh.seek(fh.tell() - 1)
                if fh.read(1) != "\n":
                    line = "\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.done[result.shard] = rec

    def restore(self, summary: Summary) -> None:
        """Put the finished shards' statistics and findings into ``summary``."""
        for rec in self.done.values():
            r = ShardResult.from_json(
                {**rec, "findings": [{**f, "text": ""} for f in rec["findings"]]}
            )
            r.add_to(summary)
            for f in r.findings:  # saved already: kept, not saved again
                keep_earliest(summary.findings, f)


def run_cluster(
    camp: Campaign,
    shards: range,
    *,
    address: str | None,
    size: int = SHARD_SIZE,
    ledger: Path | None = None,
    stream=None,
    out=None,
) -> tuple[Summary, list[str]]:
    """Run ``shards`` of ``camp`` on the Ray cluster at ``address`` (None: the
    connection already made). Progress goes to ``stream`` (default stderr),
    each finding's report to ``out`` (default ``stream``), as in a local
    campaign. Returns the summary (finished shards of earlier runs included,
    as the ledger has them; ``interrupted`` after Ctrl-C) and one line per
    shard that failed."""
    stream = stream or sys.stderr
    out = out or stream
    ray = _ray()
    if camp.corpus is not None:
        check_corpus(camp.corpus)
    connect(address)
    summary = Summary()
    book = Ledger(ledger) if ledger is not None else None
    todo = [k for k in shards if book is None or k not in book.done]
    if book is not None:
        book.restore(summary)
        if len(todo) < len(shards):
            print(
                f"resuming from {book.path}: {len(shards) - len(todo)} of {len(shards)} "
                "shards already done",
                file=stream,
            )
    task = ray.remote(_shard_task)
    opts = dict(
        num_cpus=1,
        resources=resources_for(camp.engines),
        max_retries=RETRIES,
        retry_exceptions=False,  # a shard that raises is a bug, not bad luck
    )
    # run_shard makes it a one-process campaign without a corpus
    pending = {
        task.options(name=f"jitdiff-shard-{k}", **opts).remote(camp, k, size): k for k in todo
    }
    failed: list[str] = []
    ours = version()
    start = time.monotonic()
    tty = camp.progress and stream.isatty()
    finished = len(shards) - len(todo)

    record = _reporter(summary, camp.corpus, stream, out, tty)

    def merge(k: int, result: ShardResult) -> None:
        result.add_to(summary)
        unsaved = False
        for f in result.findings:
            kept = record(f)
            if kept is not None and kept.unsaved:
                unsaved = True
        if unsaved:  # a finding only printed: the shard is not done
            failed.append(f"shard {k}: a finding could not be saved")
        elif book is not None:
            book.add(result)

    def interrupt(signum, frame) -> None:
        # a flag, not a KeyboardInterrupt: one in the middle of a save or a
        # ledger line would lose what the shard found
        summary.interrupted = True

    try:
        old_handler = signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        old_handler = None
    try:
        while pending and not summary.interrupted:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    result = ShardResult.from_json(ray.get(ref))
                except ray.exceptions.RayError as e:
                    failed.append(f"shard {k}: {_first_line(e)}")
                    continue
                if result.version != ours:
                    failed.append(f"shard {k}: ran jitdiff {result.version}, the driver is {ours}")
                    continue
                merge(k, result)
                finished += 1
            if tty:
                stream.write(progress_line(summary, time.monotonic() - start))
                stream.write(f" shards {finished}/{len(shards)} ")
                stream.flush()
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    for ref in pending:  # interrupted: the shards still out are not ours any more
        ray.cancel(ref, force=True)
    if tty:
        stream.write("\n")
    summary.seconds = time.monotonic() - start
    return summary, failed


def _first_line(e: Exception) -> str:
    """A Ray error's cause in one line (its text is the remote traceback)."""
    cause = getattr(e, "cause", None)
    if cause is not None and not isinstance(cause, type(e)):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
