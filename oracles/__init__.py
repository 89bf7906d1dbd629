"""Oracles: decide whether a candidate engine's outcome matches the reference.

``verdict`` first sorts a pair of runs into agree / diverge / poisoned; only
when both ran to completion do the value oracles compare, cheapest first, and
the first one that fires is the divergence (``compare``).
"""

from oracles.base import Divergence, Verdict, compare, compare_case, first_difference, verdict

__all__ = ["Divergence", "Verdict", "compare", "compare_case", "first_difference", "verdict"]
