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

from generators.config import Config
from harness import engines
from harness.fuzz import case_for
from harness.runner import REFERENCE_BUDGET, native_budget
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
    names: list[str], *, cases: int = 300, seed: int = 1, config: Config | None = None
) -> str:
    config = config or Config()
    ref = engines.get("interp")
    cands = [engines.get_spec(n) for n in names if n != "interp"]
    t: dict[str, float] = defaultdict(float)
    systems = []
    t0 = time.perf_counter()
    for i in range(cases):
        systems.append(case_for(seed, i, config)[0])
    t["generate"] = time.perf_counter() - t0
    per_engine: dict[str, dict[str, float]] = {e.name: defaultdict(float) for e in cands}
    for case in systems:
        t0 = time.perf_counter()
        r = ref.run(case, budget=REFERENCE_BUDGET)
        t["interpret"] += time.perf_counter() - t0
        budget = native_budget(max((x.steps for x in r.runs), default=0))
        for eng in cands:
            pe = per_engine[eng.name]
            if hasattr(eng, "compile") and hasattr(eng, "executor"):
                t0 = time.perf_counter()
                eng.compile(case)
                pe["compile"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            out = eng.run(case, budget=budget)
            pe["run"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            compare_case(r.runs, out.runs)
            pe["compare"] += time.perf_counter() - t0
    lines = [
        f"machine: {_machine()}",
        f"{cases} systems, seed {seed}, default generator settings, one process",
        f"  generate   {1000 * t['generate'] / cases:8.2f} ms/case",
        f"  interpret  {1000 * t['interpret'] / cases:8.2f} ms/case",
    ]
    for name, pe in per_engine.items():
        # the engine's run includes its own compile; report emulate = run - compile
        emulate = pe["run"] - pe.get("compile", 0.0)
        total = t["generate"] + t["interpret"] + pe["run"] + pe["compare"]
        lines.append(f"engine {name}:")
        if "compile" in pe:
            lines.append(f"  compile    {1000 * pe['compile'] / cases:8.2f} ms/case")
            lines.append(f"  emulate    {1000 * emulate / cases:8.2f} ms/case")
        else:
            lines.append(f"  run        {1000 * pe['run'] / cases:8.2f} ms/case")
        lines.append(f"  compare    {1000 * pe['compare'] / cases:8.2f} ms/case")
        lines.append(
            f"  => {cases / total:.0f} differential cases/s per core "
            f"(interp vs {name}, generation included)"
        )
    for e in cands:
        e.close()
    return "\n".join(lines)
