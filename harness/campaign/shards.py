"""Seed shards: a campaign cut into slices that any batch system can run.

Case ``i`` of seed ``S`` is one fixed system (``fuzz.case_for``), so a campaign
is a range of case indices. Shard ``k`` is the ``size`` indices from
``k * size``: the same systems whoever runs it, wherever, and however many
shards the whole campaign has (``K/N`` says which shard of how many; N only
bounds K). A shard's budget is its count of systems and shrinking is bounded
by attempts, so re-running a shard gives byte-identical findings and any
finding is reproducible from (jitdiff version, seed, shard size, case index).

``run_shard`` runs one shard in the calling process (what a Ray task or a Slurm
array job runs) and returns a ``ShardResult``: the findings as case text and
the statistics, as plain JSON-able data, so a driver elsewhere can merge them
(``harness.campaign.cluster``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections import Counter
from dataclasses import asdict, dataclass, field, replace

from harness.campaign.fuzz import Campaign, Finding, Summary, tally, walk

__all__ = ["SHARD_SIZE", "ShardResult", "parse_shards", "run_shard", "shard_campaign", "version"]

#: systems per shard: about two minutes of one core of the project machine
#: (~90 systems/s), long enough that a shard's set-up (engines, a Ray task) is
#: noise and short enough that a lost machine costs little
SHARD_SIZE = 10_000


def version() -> str:
    """The jitdiff version findings are reproducible with."""
    try:
        return importlib.metadata.version("jitdiff")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_shards(text: str) -> range:
    """``K/N`` (shard K of N) or ``A-B/N`` (shards A to B inclusive), counted
    from 0 as Slurm arrays and Kubernetes indexed jobs count; an argparse type."""
    try:
        which, total = text.split("/")
        first, _, last = which.partition("-")
        k, n = int(first), int(total)
        last_k = int(last) if last else k
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N or A-B/N, not {text!r}") from None
    if n <= 0 or not 0 <= k <= last_k < n:
        raise argparse.ArgumentTypeError(f"need 0 <= A <= B < N in A-B/N, not {text!r}")
    return range(k, last_k + 1)


def shard_campaign(camp: Campaign, shards: range, size: int = SHARD_SIZE) -> Campaign:
    """``camp`` restricted to ``shards``: consecutive shards are one range of
    case indices, so running them together finds what running them one by
    one does (each signature kept at its earliest case)."""
    return replace(camp, start=shards.start * size, examples=len(shards) * size, seconds=None)


@dataclass
class ShardResult:
    shard: int
    version: str
    cases: int = 0
    duplicates: int = 0
    known: Counter = field(default_factory=Counter)
    poisoned: Counter = field(default_factory=Counter)
    coverage: Counter = field(default_factory=Counter)
    #: harness events (a kernel worker killed from outside), counted and retried
    incidents: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def to_json(self) -> dict:
        # by hand: asdict would rebuild each Counter from its (key, count) pairs
        return {
            "shard": self.shard,
            "version": self.version,
            "cases": self.cases,
            "duplicates": self.duplicates,
            "known": dict(self.known),
            "poisoned": dict(self.poisoned),
            "coverage": dict(self.coverage),
            "incidents": dict(self.incidents),
            "findings": [asdict(f) for f in self.findings],
        }

    @classmethod
    def from_json(cls, d: dict) -> ShardResult:
        d = dict(d)
        for k in ("known", "poisoned", "coverage", "incidents"):
            d[k] = Counter(d.get(k, {}))
        d["findings"] = [Finding(**f) for f in d["findings"]]
        return cls(**d)

    def add_to(self, summary: Summary) -> None:
        """Fold the statistics (not the findings) into a campaign summary."""
        summary.cases += self.cases
        summary.duplicates += self.duplicates
        summary.known.update(self.known)
        summary.poisoned.update(self.poisoned)
        summary.coverage.update(self.coverage)
        summary.incidents.update(self.incidents)


class _Collect:
    """The worker's message queue, in-process."""

    def __init__(self, result: ShardResult):
        self.result = result

    def put(self, msg) -> None:
        if msg[0] == "finding":
            self.result.findings.append(msg[1])
        else:
            tally(self.result, msg)


class _Never:
    def is_set(self) -> bool:
        return False


def run_shard(camp: Campaign, shard: int, size: int = SHARD_SIZE) -> ShardResult:
    """Run shard ``shard`` of ``camp``'s seed here, in one process: the
    campaign's worker loop over the shard's indices. Its findings carry no
    corpus path (the caller saves them)."""
    one = replace(
        shard_campaign(camp, range(shard, shard + 1), size),
        workers=1,
        corpus=None,
        progress=False,
        stop_on_first=False,
    )
    result = ShardResult(shard, version())
    walk(0, one, _Collect(result), _Never())
    return result
