"""The instruction set and the input formats: ``isa`` (the ISA as a table,
encode/decode, the kernel's encoding checks), ``asm`` (the kernel/LLVM assembly
syntax both ways), ``casefile`` (jitdiff's case files), ``elf`` (clang-built BPF
objects, read the way libbpf loads them) and ``ubpf`` (the bpf_conformance
``.data`` files). ``load_any`` and ``inputs_under`` pick between case files and
objects for the command line."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import AsmError

__all__ = ["asm", "casefile", "elf", "isa", "ubpf", "load_any", "inputs_under", "read_text"]


def load_any(path: str | os.PathLike[str]):
    """A ``Case`` from a case file or a BPF ELF object (told apart by the ELF
    magic, so the suffix does not matter)."""
    # imported here: harness.system imports this package for isa
    from harness.formats import casefile, elf

    return elf.load(path) if elf.is_object(path) else casefile.load(path)


def inputs_under(*paths) -> list[Path]:
    """Case files and ``.o`` objects under ``paths`` (``casefile.corpus_cases``'
    rules), without the sidecar case files of objects (read with their object)."""
    from harness.formats import casefile, elf

    found = casefile.corpus_cases(*paths)
    for p in map(Path, paths):
        if p.is_dir():
            found += [
                f
                for f in p.rglob("*.o")
                if not casefile.DIVERGENT & set(f.parts) and elf.is_object(f)
            ]
    sidecars = {elf.sidecar_of(f) for f in found if f.suffix == ".o"}
    return sorted(f for f in set(found) if f not in sidecars or f in map(Path, paths))


def read_text(path: str | Path, error: type[AsmError] = AsmError) -> str:
    """A text file's contents as UTF-8. Anything else (a binary, Latin-1) is
    ``error`` naming the file and the line of the first bad byte: the formats
    are text a person edits, and a decode traceback names neither."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        why = f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        raise error(why, file=str(path), line=line) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise error("a NUL byte: a binary file, not text", file=str(path), line=line)
    return text
