"""jitdiff's machinery: the ISA (``isa``), assembly (``asm``, ``ubpf``), the
case model and file format (``system``, ``casefile``), the reference
interpreter (``interp``, ``profile``, ``helpers``), the engines (``engines``,
``jit``, ``kernel``, ``emu``, ``image``), the differential step (``runner``,
``report``), and campaigns (``fuzz``, ``shrink``, ``reduce``, ``mutants``,
``bench``, ``fidelity``). Entry point: ``cli``. Nothing here knows pytest."""

__all__ = [
    "asm", "bench", "casefile", "cli", "conformance", "emu", "engines", "errors", "fidelity",
    "fuzz", "helpers", "image", "interp", "isa", "jit", "kernel", "known", "mutants",
    "outcome", "profile", "reduce", "report", "runner", "shrink", "system", "ubpf",
]  # fmt: skip
