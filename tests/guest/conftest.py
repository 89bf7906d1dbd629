"""Guests set up on this machine (``jitdiff guest setup``), one engine spec
each; tests over them skip with the reason when there are none."""

from __future__ import annotations

from harness.guest.arches import ARCHES
from harness.guest.setup import installed


def guest_specs() -> list[str]:
    specs = []
    for name, a in ARCHES.items():
        for suite in a.suites:
            g = installed(name, suite)
            if g is not None and not g.no_jit:
                specs.append(f"guest:{name}@{suite}")
    return specs
