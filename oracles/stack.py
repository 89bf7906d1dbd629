"""Stack contents wherever the reference makes them observable: the bytes each
helper read (a stack buffer copied into a map by bpf_map_update_elem)."""

from harness.outcome import Event
from oracles.base import event_oracle

__all__ = ["check"]


def _bytes_read(e: Event) -> Event:
    return Event(e.kind, e.where, (e.data[0], e.data[3]))


check = event_oracle("stack", "helper", project=_bytes_read)
