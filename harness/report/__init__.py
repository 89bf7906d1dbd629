"""A divergence rendered as a corpus case ready to commit.

The report is itself a valid case file: the header comment names the oracle,
the first differing event with both values, and the candidate's listing around
it (BPF instruction, then its native instructions); the body is the shrunk
system with the reference's outcome as expectations. Save it under corpus/
and it becomes a regression test. ``harness.report.document`` is the same
facts as one JSON document (``jitdiff run --json``, docs/cli.md).
"""

from __future__ import annotations

import copy

from harness.formats import casefile
from harness.outcome import Event, RunOutcome, Status
from harness.system import Case, Expect
from oracles import Divergence

__all__ = ["with_expectations", "render_divergence", "excerpt"]


def with_expectations(case: Case, runs: list[RunOutcome]) -> Case:
    """A copy of ``case`` whose run steps expect what the reference did."""
    case = copy.deepcopy(case)
    if not case.steps:
        case.steps = case.script()
    initial = {m.name: m for m in case.maps.values()}
    outs = iter(runs)
    for step in case.steps:
        if step.kind != "run":
            continue
        out = next(outs, None)
        if out is None or out.status is not Status.OK:
            continue
        exp = Expect(retval=out.retval, tail_calls=out.tail_calls)
        for name, data in out.maps.items():
            m = initial[name]
            for key in range(m.max_entries):
                value = data[key * m.value_size : (key + 1) * m.value_size]
                if any(value) or key in m.init:
                    exp.maps[(name, key)] = value
        step.expect = exp
    return case


def excerpt(listing: str, where, context: int = 12) -> list[str]:
    """The lines of a listing around the BPF instruction ``where`` names (the
    listings print a ``PROG func N NAME @ addr`` header per function and a
    ``; PC: insn`` line before each instruction's native code)."""
    lines = listing.splitlines()
    if where is None or not lines:
        return lines[: 2 * context]
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if line.lstrip().startswith(f"{where.prog} func ") and f" {where.func} " in line
        ),
        0,
    )
    hit = next(
        (i for i in range(start, len(lines)) if lines[i].lstrip().startswith(f"; {where.pc}:")),
        start,
    )
    return lines[max(0, hit - context) : hit + context]


def render_divergence(
    case: Case,
    engine: str,
    d: Divergence,
    ref_runs: list[RunOutcome],
    ref_listing: str = "",
    cand_listing: str = "",
    step: tuple[Event | None, Event | None] | None = None,
) -> str:
    head = [
        f"DIVERGENCE: {engine} vs interp, oracle {d.oracle}, run {d.run}",
        f"first difference: {d.detail or d.oracle}" + (f" at {d.where}" if d.where else ""),
        f"  interp:  {d.expected!r}",
        f"  {engine}: {d.actual!r}",
        "as a kernel selftest: jitdiff export THIS_FILE --selftest "
        "LINUX/tools/testing/selftests/bpf",
    ]
    where = d.where
    if step is not None:
        a, b = step
        where = (a or b).where
        head += [
            f"first differing BPF instruction (lockstep): {where}",
            f"  interp  r0-r10: {a.data if a else 'not reached'}",
            f"  {engine} r0-r10: {b.data if b else 'not reached'}",
        ]
    if cand_listing:
        head += ["", f"{engine} listing around it:"]
        head += ["  " + line for line in excerpt(cand_listing, where)]
    if ref_listing:
        head += ["", "interp (BPF) around it:"]
        head += ["  " + line for line in excerpt(ref_listing, d.where)]
    body = with_expectations(case, ref_runs)
    body.comment = "\n".join(head + ([""] + case.comment.splitlines() if case.comment else []))
    return casefile.render(body)
