"""Model JITs: native code generators that reproduce a kernel JIT's bytes.

``harness.jit.x86_64`` models the Linux 6.18 x86-64 BPF JIT; its API is
re-exported here.
"""

from harness.jit.x86_64 import (
    DESIGNS,
    FAULT_SYMPTOMS,
    FAULTS,
    JitError,
    Variant,
    apply_patches,
    compile_system,
    listing,
    poke_transition,
)

__all__ = [
    "DESIGNS",
    "FAULTS",
    "FAULT_SYMPTOMS",
    "JitError",
    "Variant",
    "apply_patches",
    "compile_system",
    "listing",
    "poke_transition",
]
