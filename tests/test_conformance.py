"""The public bpf_conformance suite (read from ../shared/conformance, never
copied into the repository) on the interpreter and the x86-64 model."""

from __future__ import annotations

import pytest

from harness import engines
from harness.campaign.conformance import check_test

from .conftest import SHARED

SUITE = SHARED / "conformance"
FILES = sorted((SUITE / "tests").glob("*.data")) + sorted((SUITE / "negative").glob("*.data"))


@pytest.fixture(scope="module", params=["interp", "x86_64"])
def engine(request):
    why = engines.available(request.param)
    if why:
        pytest.skip(why)
    eng = engines.get(request.param)
    yield eng
    eng.close()


@pytest.mark.skipif(not SUITE.is_dir(), reason=f"{SUITE} is absent")
@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_conformance(path, engine):
    verdict, message = check_test(path, [engine])
    if verdict == "skip":
        pytest.skip(message)
    assert verdict == "pass", message
