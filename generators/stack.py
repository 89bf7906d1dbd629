"""Stack layouts: depths on both sides of 64 bytes up to the limits, objects
whose sizes and offsets are not multiples of 8, and buffers whose bytes a
helper (bpf_map_update_elem) copies out, so stack contents become observable.

Every object is written in the function's prologue, before any branch, so
every later read (by the program or by a helper) is of initialised bytes on
every path, as the verifier demands. Stack accesses are size-aligned (the
verifier enforces that for the stack even on x86).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from generators.emit import R10
from generators.plan import FnState, imm32

__all__ = ["StackLayout", "draw_layout", "emit_init", "fill", "readable"]


@dataclass
class StackLayout:
    #: the verifier's stack depth for the frame: the deepest byte touched.
    depth: int = 0
    #: (fp offset, size) of every object written in the prologue.
    objects: list[tuple[int, int]] = field(default_factory=list)
    #: (fp offset, size) of the buffer handed to bpf_map_update_elem.
    buffer: tuple[int, int] | None = None
    #: fp offset of a u32 map key and its value.
    key: tuple[int, int] | None = None


def _largest_align(off: int, room: int) -> int:
    for size in (8, 4, 2, 1):
        if off % size == 0 and size <= room:
            return size
    return 1


def fill(lo: int, hi: int) -> list[tuple[int, int]]:
    """Aligned stores covering fp offsets [lo, hi) exactly, largest first."""
    out = []
    a = lo
    while a < hi:
        s = _largest_align(a, hi - a)
        out.append((a, s))
        a += s
    return out


def draw_layout(st: FnState, *, limit: int, want_buffer: bool = False) -> StackLayout:
    """A layout whose depth rounds up (to 16) to at most ``limit`` bytes.

    Tiers, simplest first: no stack, up to 64 bytes (below the private-stack
    threshold), 65..255, 256..limit. The exact depth is pulled to the top of
    its tier now and then, so the 64/240/256/512 boundaries come up often.
    """
    sp, draw = st.sp, st.draw
    tiers = [(0, 0), (1, 64)]
    if sp.on("big_stack"):
        tiers += [(65, 255), (256, sp.config.max_stack)]
    tiers = [(lo, min(hi, limit)) for lo, hi in tiers if lo <= limit]
    lo, hi = draw.choice(tiers)
    # a limit set by the callees (240 above a tail-calling subprogram, what
    # is left of 512) is the interesting boundary: pull to it more often
    pull = 0.5 if limit < sp.config.max_stack and hi == limit else 0.25
    depth = hi if draw.boolean(pull) else draw.integer(lo, hi)
    if depth and not sp.on("unaligned_stack"):
        depth = max(8, depth - depth % 8) if limit >= 8 else 0
    lay = StackLayout(depth)
    if not depth:
        return lay
    # the deepest object sets the depth, so an odd depth is a small object
    lay.objects.append((-depth, _largest_align(-depth, depth)))
    n = 0
    while draw.more(n, max_size=3, average=1.0):
        n += 1
        size = draw.choice((8, 4, 2, 1))
        if size > depth:
            continue
        lay.objects.append((-size * draw.integer(1, depth // size), size))
    if want_buffer and sp.bufs_size + 4 <= depth and draw.boolean(0.7):
        start = draw.integer(sp.bufs_size, depth)
        lay.buffer = (-start, sp.bufs_size)
        lay.key = (-4 * draw.integer(1, depth // 4), draw.integer(0, sp.bufs_entries))
    elif want_buffer and depth >= 4 and draw.boolean(0.5):
        lay.key = (-4 * draw.integer(1, depth // 4), draw.integer(0, sp.bufs_entries))
    return lay


def emit_init(st: FnState, lay: StackLayout) -> None:
    """Write every object (and the buffer, then the key) in the prologue."""
    fn, draw = st.fn, st.draw
    stores = list(lay.objects)
    if lay.buffer:
        off, size = lay.buffer
        stores += fill(off, off + size)
    for off, size in stores:
        if draw.boolean(0.6):
            fn.stx(size, R10, off, draw.choice(st.scalars))
        else:
            fn.st(size, R10, off, imm32(draw))
    if lay.key:
        off, value = lay.key
        fn.st(4, R10, off, value)


def readable(lay: StackLayout) -> list[tuple[int, int]]:
    """Aligned (offset, size) pieces the function may load: all initialised."""
    out = list(lay.objects)
    if lay.buffer:
        off, size = lay.buffer
        out += fill(off, off + size)
    if lay.key:
        out.append((lay.key[0], 4))
    return out
