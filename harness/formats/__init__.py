"""The instruction set and the text formats: ``isa`` (the ISA as a table,
encode/decode, the kernel's encoding checks), ``asm`` (the kernel/LLVM assembly
syntax both ways), ``casefile`` (jitdiff's case files) and ``ubpf`` (the
bpf_conformance ``.data`` files)."""

__all__ = ["asm", "casefile", "isa", "ubpf"]
