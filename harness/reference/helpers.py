"""Deterministic models of the helpers and kfuncs a case may call.

Every engine calls the same models (the interpreter directly, the native
engines from their stub hooks), so a helper's result can never be a source of
divergence; only the JIT's handling of registers and memory around the call
can. Helpers whose real result is nondeterministic (time, randomness) return a
fixed sequence here; the ``kernel-native`` engine, which runs the real
helpers, marks a run that used them ``nondeterministic`` and it is poisoned
rather than compared.

The stack-reading helper is ``bpf_map_update_elem``: it copies a stack buffer
into an array value, so stack contents become observable both in the helper
event (the bytes read) and in the final map contents, on every engine,
including the real kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "HELPERS",
    "HELPER_IDS",
    "KFUNCS",
    "KFUNC_IDS",
    "Helper",
    "Machine",
    "MapState",
    "TAIL_CALL",
    "BPF_THROW",
    "call_helper",
    "NONDETERMINISTIC",
]

EINVAL, ENOENT, E2BIG = 22, 2, 7
U64 = (1 << 64) - 1


@dataclass
class MapState:
    """A live map during a run: an array's values, or a prog array's slots."""

    name: str
    kind: str
    max_entries: int
    value_size: int
    #: array: one bytearray of max_entries * value_size; prog_array: unused.
    data: bytearray = field(default_factory=bytearray)
    #: prog_array: slot -> program name.
    slots: dict[int, str] = field(default_factory=dict)


class Machine(Protocol):
    """What a helper model may do to the engine that called it."""

    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    #: the map whose object pointer is ``addr`` (as loaded by ld_imm64), or None.
    def map_at(self, addr: int) -> MapState | None: ...
    #: the address of an array value, for lookups.
    def value_addr(self, m: MapState, key: int) -> int: ...

    #: the per-run counter feeding the deterministic clock and prng.
    ticks: int


@dataclass(frozen=True)
class Helper:
    id: int
    name: str
    #: (machine, r1..r5) -> (r0, bytes the helper read from BPF memory)
    model: Callable[[Machine, tuple[int, ...]], tuple[int, bytes]] | None
    #: number of argument registers the helper reads.
    nargs: int


def _neg(errno: int) -> int:
    return (-errno) & U64


def _key(m: Machine, ptr: int) -> tuple[int, bytes]:
    raw = m.read(ptr, 4)
    return int.from_bytes(raw, "little"), raw


def _lookup(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    mp = m.map_at(a[0])
    if mp is None or mp.kind != "array":
        return 0, b""
    key, raw = _key(m, a[1])
    return (m.value_addr(mp, key) if key < mp.max_entries else 0), raw


def _update(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    mp = m.map_at(a[0])
    if mp is None or mp.kind != "array":
        return _neg(EINVAL), b""
    key, raw = _key(m, a[1])
    flags = a[3]
    if flags > 2:  # BPF_ANY=0, BPF_NOEXIST=1, BPF_EXIST=2
        return _neg(EINVAL), raw
    if key >= mp.max_entries:
        return _neg(E2BIG), raw
    if flags == 1:  # array elements always exist
        return _neg(17), raw  # EEXIST
    value = m.read(a[2], mp.value_size)
    m.write(m.value_addr(mp, key), value)
    return 0, raw + value


def _delete(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    m.map_at(a[0])
    _, raw = _key(m, a[1])
    # array map elements cannot be deleted
    return _neg(EINVAL), raw


def _ktime(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    m.ticks += 1
    return 1_000_000_000 + 1000 * m.ticks, b""


def _prandom(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    # a fixed LCG stream per run: deterministic, and different call to call
    m.ticks += 1
    return (1103515245 * m.ticks + 12345) & 0xFFFFFFFF, b""


def _smp_processor_id(m: Machine, a: tuple[int, ...]) -> tuple[int, bytes]:
    # kernel runs are pinned to CPU 0, so 0 is the real value there too
    return 0, b""


#: helper id of bpf_tail_call; engines implement it themselves (it is control flow).
TAIL_CALL = 12

HELPERS: dict[int, Helper] = {
    h.id: h
    for h in (
        Helper(1, "bpf_map_lookup_elem", _lookup, 2),
        Helper(2, "bpf_map_update_elem", _update, 4),
        Helper(3, "bpf_map_delete_elem", _delete, 2),
        Helper(5, "bpf_ktime_get_ns", _ktime, 0),
        Helper(7, "bpf_get_prandom_u32", _prandom, 0),
        Helper(8, "bpf_get_smp_processor_id", _smp_processor_id, 0),
        Helper(TAIL_CALL, "bpf_tail_call", None, 3),
    )
}
HELPER_IDS: dict[str, int] = {h.name: h.id for h in HELPERS.values()}

#: helpers whose real (kernel) result is not reproducible.
NONDETERMINISTIC = frozenset({5, 7})

#: jitdiff's kfunc numbers (the imm of a src=2 call in a case); the kernel
#: engine rebinds them to vmlinux BTF ids at load time.
BPF_THROW = 1
KFUNCS: dict[int, str] = {BPF_THROW: "bpf_throw"}
KFUNC_IDS: dict[str, int] = {v: k for k, v in KFUNCS.items()}


def call_helper(m: Machine, helper_id: int, args: tuple[int, ...]) -> tuple[int, bytes]:
    """Run a modelled helper; the caller has checked that the id is known."""
    model = HELPERS[helper_id].model
    assert model is not None, "bpf_tail_call is control flow, not a model"
    r0, read = model(m, args)
    return r0 & U64, read
