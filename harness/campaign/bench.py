"""``jitdiff bench``: differential cases per second, with a breakdown.

Runs a fixed, seeded set of generated systems through the reference and each
engine, timing generate / interpret / compile / emulate / compare separately
(compile and emulate only where the engine exposes them, the x86-64 model).
Timings are measured here and recorded in docs/performance.md, never asserted.
"""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from dataclasses import fields

from generators.config import Config
from harness import engines
from harness.campaign.fuzz import case_for
from harness.campaign.runner import REFERENCE_BUDGET, native_budget
from harness.jit.x86_64.codegen import clear_memo
from harness.process import Interrupted
from harness.reference.profile import LINUX, Profile
from oracles import compare_case

__all__ = ["bench"]


def _machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} cpus, {cpu}, "
        f"Python {platform.python_version()}"
    )


def bench(
    names: list[str],
    *,
    cases: int = 300,
    seed: int = 1,
    rounds: int = 3,
    config: Config | None = None,
    profile: Profile = LINUX,
    options: dict | None = None,
) -> str:
    """Each phase's time is the best of ``rounds`` passes over the same
    systems (these machines are VMs whose speed drifts by a quarter from
    minute to minute; the minimum is the stable figure). Every round starts
    with the JIT's memo cold, as a fresh worker would."""
    config = config or Config()
    ref = engines.get("interp", profile)
    cands = [engines.get_spec(n, profile, **(options or {})) for n in names if n != "interp"]
    best: dict[str, float] = {}
    per_engine: dict[str, dict[str, float]] = {e.name: {} for e in cands}

    def keep(into: dict[str, float], got: dict[str, float]) -> None:
        for k, v in got.items():
            into[k] = min(into.get(k, v), v)

    #: per system, its best round's interpret + engine time (the spread)
    each = [float("inf")] * cases
    done = 0
    try:
        for _ in range(rounds):
            clear_memo()
            t: dict[str, float] = defaultdict(float)
            t0 = time.perf_counter()
            systems = [case_for(seed, i, config)[0] for i in range(cases)]
            t["generate"] = time.perf_counter() - t0
            pes: dict[str, dict[str, float]] = {e.name: defaultdict(float) for e in cands}
            for k, case in enumerate(systems):
                start = t0 = time.perf_counter()
                r = ref.run(case, budget=REFERENCE_BUDGET)
                t["interpret"] += time.perf_counter() - t0
                budget = native_budget(max((x.steps for x in r.runs), default=0))
                for eng in cands:
                    pe = pes[eng.name]
                    kw = {}
                    if hasattr(eng, "compile") and hasattr(eng, "executor"):
                        t0 = time.perf_counter()
                        kw["native"] = eng.compile(case)
                        pe["compile"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    out = eng.run(case, budget=budget, **kw)
                    pe["emulate" if kw else "run"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    compare_case(r.runs, out.runs)
                    pe["compare"] += time.perf_counter() - t0
                each[k] = min(each[k], time.perf_counter() - start)
            keep(best, t)
            for name, pe in pes.items():
                keep(per_engine[name], pe)
            done += 1
    except KeyboardInterrupt:  # Ctrl-C: the rounds finished so far are the answer
        if not done:
            for e in cands:
                e.close()
            raise Interrupted("bench: interrupted before the first round finished") from None
    changed = ", ".join(
        f"{f.name}={getattr(config, f.name)!r}"
        for f in fields(Config)
        if getattr(config, f.name) != f.default
    )
    lines = [
        f"machine: {_machine()}",
        f"{cases} systems, seed {seed}, generator settings "
        f"{'Config(' + changed + ')' if changed else 'default'}, one process, "
        f"best of {done} rounds",
        f"  generate   {1000 * best['generate'] / cases:8.2f} ms/case",
        f"  interpret  {1000 * best['interpret'] / cases:8.2f} ms/case",
    ]
    for name, pe in per_engine.items():
        total = best["generate"] + best["interpret"] + sum(pe.values())
        lines.append(f"engine {name}:")
        for phase in ("compile", "emulate", "run", "compare"):
            if phase in pe:
                lines.append(f"  {phase:10s} {1000 * pe[phase] / cases:8.2f} ms/case")
        lines.append(
            f"  => {cases / total:.0f} differential cases/s per core "
            f"(interp vs {name}, generation included)"
        )
    lines.append(_spread(each))
    for e in cands:
        e.close()
    if done < rounds:
        raise Interrupted("\n".join(lines) + f"\ninterrupted after {done} of {rounds} rounds")
    return "\n".join(lines)


def _spread(each: list[float]) -> str:
    """Where the time goes: the mean hides a heavy tail (33-call loops run
    several times by a poke script), which is what a speed-up must hit."""
    costs = sorted(each, reverse=True)
    total = sum(costs)
    share = [
        f"the dearest {pct}% {100 * sum(costs[: max(1, len(costs) * pct // 100)]) / total:.0f}%"
        for pct in (2, 10)
    ]
    return (
        f"per system (interpret + engines): median {1000 * costs[len(costs) // 2]:.2f} ms, "
        f"mean {1000 * total / len(costs):.2f} ms; of the time, {', '.join(share)}"
    )
