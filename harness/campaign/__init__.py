"""Campaigns: ``runner`` (the differential step as one call), ``fuzz`` (seeded
multi-worker campaigns), ``shrink`` and ``reduce`` (minimising a divergence),
``known`` (documented kernel behaviour), ``mutants`` (does jitdiff find known
JIT bugs?), ``bench`` (where the time goes) and ``conformance`` (the
bpf_conformance suite)."""

__all__ = ["bench", "conformance", "fuzz", "known", "mutants", "reduce", "runner", "shrink"]
