"""Generated systems against the host kernel's verifier: a sample of the
default generator's systems, every instruction form of issue #12 among them,
all load (the verifier is the ground truth for "valid by construction")."""

from __future__ import annotations

import pytest

from generators import generate
from generators.census import census
from harness.kernel import KnownKernelBug, available, load_case

REASON = available()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=f"kernel unusable: {REASON}")

SEEDS = range(120)


@needs_kernel
def test_generated_systems_load():
    loaded, forms = 0, set()
    for seed in SEEDS:
        case = generate(seed)
        try:
            with load_case(case):
                loaded += 1
        except KnownKernelBug:
            continue  # refused before loading: a layout that oopses 6.18
        census(case, forms)
    # the sample holds the new forms, so their acceptance is what is checked
    assert {"isa:alu64.sdiv.reg", "isa:jmp32.jsle.reg", "isa:atomic32.cmpxchg"} <= forms
    assert {"isa:ldsx.h", "isa:alu64.bswap16", "isa:gotol", "reg:stx.b.src=r10"} <= forms
    assert loaded >= len(SEEDS) - 5
