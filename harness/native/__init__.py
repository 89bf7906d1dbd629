"""Native execution: ``image`` (a system as machine code at kernel-like
addresses, whoever compiled it) and ``emu`` (the Unicorn executor that runs an
image and reports the interpreter's events plus the invariants only native code
can break). The compilers live beside it: ``harness.jit`` (models) and
``harness.kernel`` (the host kernel's own JIT)."""

__all__ = ["emu", "image"]
