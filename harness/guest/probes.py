"""What a guest's kernel accepts, discovered by loading tiny systems at
set-up, not assumed per arch.

Each probe is a case the verifier accepts on a kernel with the feature and
rejects without it (``--suite`` kernels differ as much as arches do: arm64
6.1 has no subprogram tail calls, 32-bit kernels have no BTF and so no
``bpf_throw``). The answers become generator switches that are turned off
(``narrow``): generation never draws a shape the guest cannot load. Private
stacks are a JIT decision invisible to user space, so there is no probe for
them: a guest runs whatever the generators draw, on its own stack or not.
"""

from __future__ import annotations

from harness.formats import casefile
from harness.system import Case

__all__ = ["PROBES", "probe_cases", "narrow_switches", "case_needs"]

#: capability -> (generator switches it gates, the probe case)
PROBES: dict[str, tuple[tuple[str, ...], str]] = {
    "tail_calls_in_subprograms": (
        ("tail_calls_in_subprograms",),
        """
map jmp_table prog_array max_entries=1
    0 = target

program entry sched_cls
main:
    call sub
    exit
sub:
    r2 = map[jmp_table] ll
    r3 = 0
    call bpf_tail_call
    r0 = 55
    exit

program target sched_cls
main:
    r0 = 5
    exit

run entry
""",
    ),
    "bpf_throw": (
        ("throws", "exception_callbacks"),
        """
program entry sched_cls
main:
    r1 = 7
    call bpf_throw
    r0 = 0
    exit

run entry
""",
    ),
    "exception_callback": (
        ("exception_callbacks",),
        """
program entry sched_cls exception_callback=cb
main:
    r1 = 7
    call bpf_throw
    r0 = 0
    exit
cb:
    r0 = r1
    exit

run entry
""",
    ),
}


def probe_cases() -> dict[str, Case]:
    return {
        name: casefile.parse(text, file=f"<probe {name}>") for name, (_, text) in PROBES.items()
    }  # noqa: E501


def narrow_switches(capabilities: dict[str, str]) -> dict[str, bool]:
    """Generator switches to turn off for the capabilities a probe found
    missing (``capabilities``: name -> "" when present, else why not)."""
    off: dict[str, bool] = {}
    for name, why in capabilities.items():
        if why and name in PROBES:
            for switch in PROBES[name][0]:
                off[switch] = False
    return off


def case_needs(case: Case) -> set[str]:
    """The probed capabilities a case's shape relies on."""
    from harness.formats import isa
    from harness.reference.helpers import KFUNC_IDS, TAIL_CALL

    need: set[str] = set()
    for prog in case.programs.values():
        if prog.exception_callback is not None:
            need.add("exception_callback")
        starts = prog.function_starts()
        for pc, i in enumerate(prog.insns):
            if i.opcode != isa.JMP | isa.CALL:
                continue
            if i.src == isa.PSEUDO_KFUNC_CALL and i.imm == KFUNC_IDS["bpf_throw"]:
                need.add("bpf_throw")
            elif i.src == 0 and i.imm == TAIL_CALL and any(0 < s <= pc for s in starts):
                need.add("tail_calls_in_subprograms")
    return need
