"""Every corpus case on every engine: expectations hold and candidates agree with
the reference. One test id per case and engine; an engine that cannot run here
is skipped with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import engines
from harness.campaign.runner import Runner, expectation_failures
from harness.formats import casefile

ROOT = Path(__file__).resolve().parents[1] / "corpus"
#: crashes/ and kernel-findings/ hold cases where engines disagree on purpose
#: (a kernel bug); tests/test_kernel_findings.py checks those
CASES = casefile.corpus_cases(ROOT)
ENGINES = ["interp", "x86_64", "kernel", "kernel-native"]

_runners: dict[str, Runner] = {}


def _runner(name: str) -> Runner:
    if name not in _runners:
        _runners[name] = Runner([name])
    return _runners[name]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(ROOT)) for p in CASES])
def test_corpus_case(path: Path, engine: str):
    why = engines.available(engine)
    if why:
        pytest.skip(f"engine {engine}: {why}")
    case = casefile.load(path)
    result = _runner(engine).check(case)
    assert not expectation_failures(case, result.reference.runs), "reference fails its case"
    if engine == "interp":
        return
    verdict, divergence, out = result.candidates[engine]
    unsupported = [r.detail for r in out.runs if r.status.value == "unsupported"]
    if unsupported:
        pytest.skip(f"engine {engine}: {unsupported[0]}")
    assert divergence is None, str(divergence)
    assert verdict.value == "agree", [r.detail for r in out.runs]
    if engine != "kernel-native":  # natively only retval and maps are observable
        assert not expectation_failures(case, out.runs)


def test_corpus_is_not_empty():
    assert len(CASES) >= 12
