"""What the runner sends to an engine, and what it does not."""

from __future__ import annotations

from pathlib import Path

from harness.campaign.runner import Runner
from harness.engines import Engine
from harness.formats import casefile
from harness.outcome import Status
from harness.reference.profile import LINUX

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


class _Counting(Engine):
    """Judged with 6.1's counter (a copy per frame); counts what it is sent."""

    name = "counting"
    runs_runaways = False

    def __init__(self):
        super().__init__(LINUX)
        self.sent = 0

    def reference_profile(self, profile):
        return profile.but(name="per-frame", tail_call_counter_per_frame=True)

    def run(self, case, *, budget, lockstep=False):
        self.sent += 1
        raise AssertionError("a runaway was sent")


def test_a_runaway_is_not_sent_to_an_engine_that_would_lock_up():
    """hierarchy_two_calls: main calls a subprogram twice, which tail-calls
    main; with a counter per frame every level starts again at 0, about 2^33
    runs, so the reference runs out of budget. A 6.1 guest would spin until
    its watchdog fired: the run is poisoned without it."""
    runner = Runner([])
    eng = _Counting()
    runner.engines.append(eng)
    res = runner.check(casefile.load(CORPUS / "subprogs" / "hierarchy_two_calls.case"))
    verdict, _, out = res.candidates["counting"]
    assert eng.sent == 0 and verdict.value == "poisoned"
    assert out.runs[0].status is Status.UNSUPPORTED and "ran away" in out.runs[0].detail
    assert res.reference_for("counting").runs[0].status is Status.BUDGET
    assert res.reference.runs[0].status is Status.OK  # one counter: 33 tail calls, done
