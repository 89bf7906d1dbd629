"""Stack contents wherever the reference makes them observable: the bytes each
helper read (a stack buffer copied into a map by bpf_map_update_elem); and
the private stacks' guards, which the native engine plants and checks like
``priv_stack_check_guard`` (a candidate-only violation)."""

from harness.outcome import Event, RunOutcome
from oracles.base import Divergence, event_oracle, violation_oracle

__all__ = ["check"]


def _bytes_read(e: Event) -> Event:
    return Event(e.kind, e.where, (e.data[0], e.data[3]))


_helper_reads = event_oracle("stack", "helper", project=_bytes_read)
_guards = violation_oracle("stack")


def check(i: int, ref: RunOutcome, cand: RunOutcome) -> Divergence | None:
    return _guards(i, ref, cand) or _helper_reads(i, ref, cand)
