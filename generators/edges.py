"""Values aimed at the edges: immediates and run-time data drawn with a bias
toward the boundaries where JITs special-case or slip (0, +-1, the signed and
unsigned minimum and maximum of 8, 16, 32 and 64 bits, powers of two and their
neighbours), and data whose words repeat (equal operands) or agree in their
low halves only (64- versus 32-bit comparisons disagree exactly there).

Every draw's simplest answer is 0, so a shrunk case holds zeros.
"""

from __future__ import annotations

from generators.draw import Draw

__all__ = ["EDGES", "U64", "edge_u64", "edge_imm32", "edge_shift", "edge_bytes", "s32"]

U64 = (1 << 64) - 1


def _edges() -> tuple[int, ...]:
    out = [0, 1, U64, 2]
    for bits in (8, 16, 32, 64):
        smax = (1 << (bits - 1)) - 1
        # smax, smin as an unsigned of its width, umax, smin sign-extended
        out += [smax, smax + 1, (1 << bits) - 1, (-(smax + 1)) & U64]
    return tuple(dict.fromkeys(out))


#: 0, 1, -1, 2, then per width 8/16/32/64: smax, smin, umax, sign-extended smin.
EDGES: tuple[int, ...] = _edges()


def s32(v: int) -> int:
    """The low 32 bits of v as a signed immediate."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >> 31 else v


def edge_u64(draw: Draw) -> int:
    """A 64-bit value: an edge, a power of two or a neighbour, a small signed
    value, or anything (simplest 0)."""
    kind = draw.integer(0, 3)
    if kind == 0:
        return draw.choice(EDGES)
    if kind == 1:
        v = (1 << draw.integer(0, 63)) + draw.choice((0, -1, 1))
        return (-v if draw.boolean(0.25) else v) & U64
    if kind == 2:
        return draw.integer(-16, 16) & U64
    return draw.integer(0, U64)


def edge_imm32(draw: Draw) -> int:
    """A signed 32-bit immediate from ``edge_u64``'s low half (the ISA
    sign-extends it, so 0xffffffff is -1 and 0x80000000 is s32 min)."""
    return s32(edge_u64(draw))


def edge_shift(draw: Draw, width: int) -> int:
    """A shift amount below ``width``: 0, width - 1, 1, width / 2 or any."""
    kind = draw.integer(0, 4)
    return (0, width - 1, 1, width // 2)[kind] if kind < 4 else draw.integer(0, width - 1)


def edge_bytes(draw: Draw, n: int) -> bytes:
    """``n`` bytes of run-time data (ctx, map contents) as little-endian words:
    an edge value, a copy of an earlier word (loads of two places compare
    equal), an earlier word with another high half, or an earlier word's low
    half repeated in its high half (u32 loads at off and off + 4 agree)."""
    words: list[int] = []
    for _ in range((n + 7) // 8):
        kind = draw.integer(0, 3) if words else 0
        if kind == 0:
            words.append(edge_u64(draw))
            continue
        w = draw.choice(words)
        if kind == 2:
            w = (w & 0xFFFFFFFF) | ((edge_u64(draw) & 0xFFFFFFFF) << 32)
        elif kind == 3:
            w = (w & 0xFFFFFFFF) * 0x1_0000_0001
        words.append(w)
    return b"".join(w.to_bytes(8, "little") for w in words)[:n]
