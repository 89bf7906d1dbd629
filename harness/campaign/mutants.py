"""``jitdiff mutants``: does the harness find known JIT bugs from scratch?

Every historical design and every named fault of the x86-64 model, and every
older semantic profile of the interpreter, is fuzzed from an empty corpus
until the first divergence; the scoreboard says how fast, how small the shrunk
reproducer is and which oracle fired.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from generators.config import Config
from harness.campaign.fuzz import Campaign, run_campaign
from harness.jit import DESIGNS, FAULTS
from harness.process import Interrupted
from harness.reference.profile import PROFILES

__all__ = ["MUTANTS", "Score", "scoreboard", "render"]


def _mutants() -> dict[str, str]:
    """spec -> what it is. Specs are engine specs (``harness.engines.get_spec``)."""
    out = {}
    for name, doc in DESIGNS.items():
        if name != "linux-6.18":
            out[f"x86_64+{name}"] = f"design: {doc}"
    for name, doc in FAULTS.items():
        out[f"x86_64+{name}"] = f"fault: {doc}"
    for name in PROFILES:
        if name != "linux-6.18":
            out[f"interp@{name}"] = f"profile: {name}"
    return out


MUTANTS: dict[str, str] = _mutants()

#: the reference semantics each historical design is judged against: the old
#: x86-64 designs bump the counter before the empty-slot check (the kernel
#: interpreter's order), so only their real bugs remain to be found
REFERENCE_PROFILE: dict[str, str] = {
    "x86_64+linux-5.10": "linux-interp",
    "x86_64+linux-6.1": "linux-interp",
}


@dataclass
class Score:
    spec: str
    found: bool
    examples: int | None
    seconds: float | None
    insns: int | None
    programs: int | None
    oracle: str | None
    wall: float


def scoreboard(
    specs: list[str] | None = None,
    *,
    seconds: float = 60.0,
    workers: int = 2,
    seed: int = 0,
    shrink: bool = True,
    config: Config | None = None,
    stream=None,
) -> list[Score]:
    scores = []
    for spec in specs or list(MUTANTS):
        t0 = time.monotonic()
        profile = PROFILES[REFERENCE_PROFILE.get(spec, "linux-6.18")]
        camp = Campaign(
            engines=(spec,),
            seed=seed,
            seconds=seconds,
            workers=workers,
            config=config or Config(),
            shrink=shrink,
            stop_on_first=True,
            profile=profile,
        )
        with open(os.devnull, "w") as quiet:  # the scoreboard is the output
            summary = run_campaign(camp, stream=quiet)
        if summary.interrupted:  # Ctrl-C: the rows so far are the answer
            raise Interrupted(render(scores) + f"\ninterrupted while fuzzing {spec}")
        f = summary.findings[0] if summary.findings else None
        score = Score(
            spec,
            f is not None,
            f.index + 1 if f else None,
            f.seconds if f else None,
            f.insns if f else None,
            f.programs if f else None,
            f.oracle if f else None,
            time.monotonic() - t0,
        )
        scores.append(score)
        if stream is not None:
            print(_row(score), file=stream, flush=True)
    return scores


def _row(s: Score) -> str:
    if not s.found:
        return f"| {s.spec} | NOT FOUND | | | | | |"
    return (
        f"| {s.spec} | found | {s.examples} | {s.seconds:.1f} | {s.insns} | "
        f"{s.programs} | {s.oracle} |"
    )


def render(scores: list[Score]) -> str:
    head = [
        "| mutant | result | examples to first divergence | seconds to first divergence "
        "| shrunk insns | shrunk programs | oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = head + [_row(s) for s in scores]
    times = sorted(s.seconds for s in scores if s.found)
    found = sum(s.found for s in scores)
    if times:
        median = times[len(times) // 2]
        lines.append("")
        lines.append(
            f"{found}/{len(scores)} found; median {median:.1f}s, max {times[-1]:.1f}s "
            "to the first divergence"
        )
    return "\n".join(lines)
