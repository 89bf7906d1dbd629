"""The host kernel's verifier as the oracle for the interpreter's refusals:
every shape in tests/verifier_shapes.py that the interpreter refuses in the
verifier's words is rejected by the host with those words, and every shape it
refuses as layout-dependent is one a privileged load accepts (so it is no
rejection the reference should have predicted). Loading is safe: nothing is
attached."""

from __future__ import annotations

import pytest

from harness import engines
from harness.formats import casefile
from harness.kernel import available
from harness.outcome import Status
from tests.verifier_shapes import SHAPES, case_text

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"kernel unusable: {REASON}")


@pytest.fixture(scope="module")
def kernel():
    eng = engines.get("kernel")
    yield eng
    eng.close()


@pytest.mark.parametrize("prog_type", ["raw_tp", "sched_cls"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_host_verifier_agrees(kernel, shape, prog_type):
    (out,) = kernel.run(casefile.parse(case_text(shape, prog_type)), budget=10**6).runs
    if shape.rejects:
        assert out.status is Status.REJECTED, out
        assert shape.rejects in out.detail
    else:
        assert out.status is Status.OK, out.detail
