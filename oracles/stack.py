"""Stack contents wherever the reference makes them observable: the bytes each
helper read (a stack buffer copied into a map by bpf_map_update_elem)."""

from oracles.base import event_oracle

__all__ = ["check"]

check = event_oracle("stack", "helper")
