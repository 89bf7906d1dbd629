"""Divergences that are known kernel behaviour, documented with evidence.

A campaign counts these apart from new divergences (it neither saves nor
fails on them) so that its time goes to new bugs; ``--report-known`` turns
that off. Each key is a divergence signature (``Divergence.signature()``),
each value where the evidence is. A verifier rejection of what the reference
ran has the signature ``rejected:(ERRNO) REASON`` (numbers in the reason as
``N``; ``harness.campaign.runner.rejection``): list one here only with the
evidence that the kernel is right to refuse it and the reference is wrong.
"""

from __future__ import annotations

__all__ = ["KNOWN_FINDINGS", "known"]

KNOWN_FINDINGS: dict[str, str] = {
    # 33 tail calls, each re-entering a chain of subprograms, need more native
    # stack than the task stack has; the verifier's per-chain 256-byte rule
    # does not count the JIT's per-frame overhead (docs/kernel-findings.md)
    "trap:kernel stack overflow": "docs/kernel-findings.md, 'Tail calls through subprogram "
    "chains overflow the kernel stack'",
    # powerpc64 7.2: a tail call out of an exception-boundary program reads
    # the tail-call info from a slot holding a saved register and writes the
    # count through it (docs/kernel-findings.md section 6, sid)
    "trap:guest kernel crash guest-ppc64el-bpf-prog-bug-unable-to-handle-kernel-data-access-on-write": (
        "docs/kernel-findings.md, 'powerpc64 7.2: a tail call from a program that uses bpf_throw "
        "writes into kernel memory'"
    ),
}


def known(signature: str) -> str | None:
    """Where a known finding is documented, or None for a new divergence."""
    return KNOWN_FINDINGS.get(signature)
