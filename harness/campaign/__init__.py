"""Campaigns: ``runner`` (the differential step as one call), ``fuzz`` (seeded
multi-worker campaigns), ``shrink`` and ``reduce`` (minimising a divergence),
``known`` (documented kernel behaviour), ``mutants`` (does jitdiff find known
JIT bugs?), ``bench`` (where the time goes), ``conformance`` (the
bpf_conformance suite), ``shards`` (a campaign as fixed slices of a seed) and
``cluster`` (shards as Ray tasks; the only module that imports Ray)."""

__all__ = [
    "bench", "cluster", "conformance", "fuzz", "known", "mutants", "reduce", "runner", "shards",
    "shrink",
]  # fmt: skip
