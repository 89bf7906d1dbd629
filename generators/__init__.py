"""Hypothesis strategies (and a fast seeded path) for systems of eBPF programs
that the Linux 6.18 verifier accepts by construction, aimed at JIT
control-transfer bugs (tail calls, subprograms, helpers, exceptions, stacks)
with plain code over the whole instruction set between them.

    systems(config)        SearchStrategy[Case]  (shrinks well)
    generate(seed, config) Case                  (fast, deterministic)
    coverage(case, outs)   set[str]              (shapes reached, see SHAPES
                                                  and ISA_SHAPES)

Both paths run the same builder (``build_system``) over the tiny ``Draw``
interface in ``generators.draw``.
"""

from generators.census import ISA_SHAPES
from generators.config import FEATURES, Config
from generators.coverage import SHAPES, coverage, record, report, summary
from generators.draw import Draw, HypothesisDraw, RandomDraw
from generators.systems import (
    build_system,
    draw_features,
    features,
    generate,
    helper_calls,
    programs,
    subprograms,
    systems,
    tail_call_graphs,
    throws,
)

__all__ = [
    "Config",
    "FEATURES",
    "ISA_SHAPES",
    "SHAPES",
    "Draw",
    "HypothesisDraw",
    "RandomDraw",
    "build_system",
    "coverage",
    "draw_features",
    "features",
    "generate",
    "helper_calls",
    "programs",
    "record",
    "report",
    "subprograms",
    "summary",
    "systems",
    "tail_call_graphs",
    "throws",
]
