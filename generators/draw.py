"""The tiny choice interface every builder is written against.

A builder asks for integers, booleans, choices and "one more list element?",
nothing else. ``HypothesisDraw`` answers from a Hypothesis ``data`` object
(so Hypothesis records and shrinks the choices), ``RandomDraw`` from a seeded
``random.Random`` (thousands of systems per second, deterministic per seed).
Every answer's simplest value is the first one: ``integer`` shrinks toward
``lo``, ``boolean`` toward False, ``choice`` toward ``options[0]``, ``more``
toward the shortest list, so builders put the simplest option first.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from hypothesis import strategies as st

__all__ = ["Draw", "RandomDraw", "ChoiceDraw", "HypothesisDraw"]

T = TypeVar("T")


class Draw(Protocol):
    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]; simplest lo."""
        ...

    def boolean(self, p: float = 0.5) -> bool:
        """True with probability about p; simplest False."""
        ...

    def choice(self, options: Sequence[T]) -> T:
        """One of options; simplest the first."""
        ...

    def more(self, n: int, *, min_size: int = 0, max_size: int, average: float = 2.0) -> bool:
        """Whether a list that has n elements gets another one."""
        ...


class _Sized:
    """``more`` for every Draw, on top of its ``boolean``."""

    def more(self, n: int, *, min_size: int = 0, max_size: int, average: float = 2.0) -> bool:
        # the same protocol as st.lists: one coin per element, so deleting an
        # element is deleting a contiguous run of choices
        if n < min_size:
            return True
        if n >= max_size:
            return False
        return self.boolean(average / (average + 1.0))


class RandomDraw(_Sized):
    """Choices from ``random.Random(seed)``: the fast, deterministic path.

    Every answer is also recorded in ``choices`` as its distance from the
    simplest answer, so ``ChoiceDraw(choices)`` rebuilds the same system and a
    shrinker can simplify the list (delete runs, lower values) the way
    Hypothesis shrinks its own choice sequences."""

    def __init__(self, seed: int | random.Random):
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.choices: list[int] = []

    def integer(self, lo: int, hi: int) -> int:
        v = self.rng.randint(lo, hi)
        self.choices.append(v - lo)
        return v

    def boolean(self, p: float = 0.5) -> bool:
        v = self.rng.random() < p
        self.choices.append(int(v))
        return v

    def choice(self, options: Sequence[T]) -> T:
        i = self.rng.randrange(len(options))
        self.choices.append(i)
        return options[i]


class ChoiceDraw(_Sized):
    """Answers replayed from a recorded choice list (see ``RandomDraw``);
    values are clamped into range and a list that runs out answers the
    simplest value, so every edited list still builds a valid system."""

    def __init__(self, choices: Sequence[int]):
        self.choices = list(choices)
        self.i = 0

    def _next(self, span: int) -> int:
        if self.i >= len(self.choices):
            return 0
        v = self.choices[self.i]
        self.i += 1
        return min(max(v, 0), span)

    def integer(self, lo: int, hi: int) -> int:
        return lo + self._next(hi - lo)

    def boolean(self, p: float = 0.5) -> bool:
        return bool(self._next(1))

    def choice(self, options: Sequence[T]) -> T:
        return options[self._next(len(options) - 1)]


_COIN = st.integers(0, 255)


class HypothesisDraw(_Sized):
    """Choices from a Hypothesis ``data`` object (``st.composite``/``st.data()``)."""

    def __init__(self, draw):
        #: the ``draw`` function of ``st.composite`` (or ``data.draw``).
        self._draw = draw
        self._ints: dict[tuple[int, int], st.SearchStrategy[int]] = {}

    def integer(self, lo: int, hi: int) -> int:
        if lo == hi:
            return lo
        s = self._ints.get((lo, hi))
        if s is None:
            s = self._ints[(lo, hi)] = st.integers(lo, hi)
        return self._draw(s)

    def boolean(self, p: float = 0.5) -> bool:
        if p <= 0.0:
            return False
        if p >= 1.0:
            return True
        if p == 0.5:
            return self._draw(st.booleans())
        # 0 (the shrink target) maps to False
        return self._draw(_COIN) >= 256 - round(p * 256)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]
