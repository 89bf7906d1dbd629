"""Shrink a failing system by simplifying the choices that built it.

Generators draw every decision through ``generators.draw``; the fast path
records them as a list of small integers (each the distance from the simplest
answer). Like Hypothesis's own shrinker, we edit that list, not the system:
delete runs of choices (drops a function, a tail-call edge, a step), lower
values toward zero (smaller stacks, fewer features, earlier options), and keep
an edit whenever the rebuilt system still fails the same way. Every edited
list still builds a valid system, because the builder clamps and defaults.

The budget is work (attempts), never the clock: the same failing list always
shrinks to the same result, so a seed's reproducers are byte-identical from
one run to the next. A campaign with a wall-clock limit passes ``stop`` to cut
a shrink short at its deadline, keeping the best list found so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["shrink_choices"]


def shrink_choices(
    choices: Sequence[int],
    fails: Callable[[list[int]], bool],
    *,
    max_tries: int = 3000,
    stop: Callable[[], bool] | None = None,
) -> list[int]:
    """The smallest choice list found for which ``fails`` still holds (``fails``
    is assumed true for ``choices``) within ``max_tries`` attempts.
    Deterministic for a given input unless ``stop`` (asked before each
    attempt) ends it early."""
    best = list(choices)
    tries = 0

    def budget_left() -> bool:
        return tries < max_tries and not (stop is not None and stop())

    def attempt(candidate: list[int]) -> bool:
        nonlocal best, tries
        if candidate == best or not budget_left():
            return False
        tries += 1
        if fails(candidate):
            best = candidate
            return True
        return False

    improved = True
    while improved and budget_left():
        improved = False
        # 1. delete runs, long ones first, from the end (later choices depend
        #    on earlier ones, so deleting late is the most local change)
        for size in (32, 16, 8, 4, 2, 1):
            i = len(best) - size
            while i >= 0 and budget_left():
                if attempt(best[:i] + best[i + size :]):
                    improved = True
                i -= 1 if size <= 2 else size // 2
        # 2. lower each value: to zero, then halve, then minus one
        i = 0
        while i < len(best) and budget_left():
            v = best[i]
            if v:
                for nv in dict.fromkeys((0, v // 2, v - 1)):
                    if nv < v and attempt(best[:i] + [nv] + best[i + 1 :]):
                        improved = True
                        break
            i += 1
        # 3. truncate trailing zeros (the builder's default past the end)
        while best and best[-1] == 0:
            best.pop()
    return best
