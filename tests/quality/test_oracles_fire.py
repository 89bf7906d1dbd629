"""Each oracle fires on the bug it exists for: a deliberately wrong variant of
the x86-64 model runs a hand-written case, and the oracle that reports it is
the one the bug's mechanism predicts (worked out in each case's comment)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.campaign.runner import Runner
from harness.formats import casefile

CORPUS = Path(__file__).resolve().parents[2] / "corpus"

BOUNDED_SELF_LOOP = """
# Counts its runs and stops attempting after 34 (a 35th attempt would make the
# 6.18 counter look like a pointer). Correct JIT: 33 tail calls.
map jt prog_array max_entries=1
    0 = entry
map counts array max_entries=1 value_size=8
program entry sched_cls
main:
    r6 = r1
    r1 = map_value[counts] ll
    r2 = *(u64 *)(r1 + 0)
    r2 += 1
    *(u64 *)(r1 + 0) = r2
    if r2 > 34 goto out
    r1 = r6
    r2 = map[jt] ll
    r3 = 0
    call bpf_tail_call
out:
    r0 = 1
    exit
"""

PRIVATE_STACK_HELPER = """
# raw_tp, 72 bytes of stack, no tail calls: a private stack, r10 lives in r9.
# The helper may clobber r9; the load after it must still find fp-72.
program p raw_tp
main:
    *(u64 *)(r10 - 72) = 7
    call bpf_ktime_get_ns
    r0 = *(u64 *)(r10 - 72)
    exit
"""

SHARED_PRIVATE_STACK = """
# raw_tp with private stacks in main and sub: each frame has its own area.
# main keeps 0x11 at fp-72, sub writes 0x22 at its own fp-72; main then
# copies its fp-72 into the map through bpf_map_update_elem (stack oracle)
# and stores it directly into the map (memory oracle, same value)
map out array max_entries=1 value_size=8
map direct array max_entries=1 value_size=8
program p raw_tp
main:
    *(u64 *)(r10 - 72) = 0x11
    *(u32 *)(r10 - 4) = 0
    call sub
    {tail}
sub:
    *(u64 *)(r10 - 72) = 0x22
    r0 = *(u64 *)(r10 - 72)
    exit
"""

VIA_HELPER = """r1 = map[out] ll
    r2 = r10
    r2 += -4
    r3 = r10
    r3 += -72
    r4 = 0
    call bpf_map_update_elem
    r0 = 0
    exit"""

VIA_STORE = """r1 = map_value[direct] ll
    r2 = *(u64 *)(r10 - 72)
    *(u64 *)(r1 + 0) = r2
    r0 = 0
    exit"""


def first_oracle(spec: str, text: str) -> str | None:
    case = casefile.parse(text)
    res = Runner([spec]).check(case)
    divs = res.divergences
    return divs[0][1].oracle if divs else None


def corpus(path: str) -> str:
    return (CORPUS / path).read_text()


@pytest.mark.parametrize(
    "fault,text,oracle",
    [
        # jae -> ja: the 34th run takes one more tail call; retval and maps
        # are cheaper but equal (retval) or later (memory): tail_calls fires
        ("tcc-limit-off-by-one", BOUNDED_SELF_LOOP, "tail_calls"),
        # the counter by value: the second subprogram call starts from the
        # caller's stale count, ~2^33 runs: the budget runs out
        ("tcc-by-value", corpus("subprogs/hierarchy_two_calls.case"), "termination"),
        # r9 not saved around the helper: the load goes through garbage
        ("r9-not-saved", PRIVATE_STACK_HELPER, "trap"),
        # the target site left as jmp to program a after the update to b
        ("stale-poke", corpus("poke/slot_transitions.case"), "retval"),
        # the boundary does not save r12 but the callback restores it
        ("boundary-missing-r12", corpus("exceptions/nested_throw_callback.case"), "host_state"),
        # r0 moved into r1 on the tail-call path: r1 != ctx at the target
        (
            "tail-call-clobbers-ctx",
            corpus("subprogs/tail_call_after_subprog_call.case"),
            "registers",
        ),
        # sub's private frame is main's: main's fp-72 is 0x22 when copied out
        ("priv-stack-shared", SHARED_PRIVATE_STACK.format(tail=VIA_HELPER), "stack"),
        ("priv-stack-shared", SHARED_PRIVATE_STACK.format(tail=VIA_STORE), "memory"),
        # the frame 8 bytes low: fp-64 is the overflow guard; the program
        # reads back what it wrote, only the executor's guard check sees it
        ("priv-stack-8-low", corpus("private_stack/deepest_slot.case"), "stack"),
    ],
)
def test_oracle_fires(fault: str, text: str, oracle: str):
    assert first_oracle("x86_64", text) is None, "the correct model must agree"
    assert first_oracle(f"x86_64+{fault}", text) == oracle


def test_missing_pop_leaves_a_host_register_unrestored():
    # the tail-call path skips "pop rbx" (r6); the target never touches rbx, so
    # the entry program returns with the caller's r6 (ctx) in rbx, not the
    # host's value: only the host-state oracle can see it
    text = corpus("tail_calls/failed_tail_calls_fall_through.case")
    assert first_oracle("x86_64", text) is None
    assert first_oracle("x86_64+missing-pop", text) == "host_state"
