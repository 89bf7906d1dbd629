"""``/proc/kallsyms``: kernel addresses to names and back.

JIT images call helpers and jump to thunks by absolute address, and which
symbol lives there varies with the kernel's configuration (the return thunk
is ``srso_alias_return_thunk`` on an AMD host with SRSO mitigations,
``__x86_return_thunk`` elsewhere). So nothing is looked up by a guessed name:
an address taken from real code is named by the nearest preceding symbol.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

from harness.errors import JitdiffError

__all__ = ["Kallsyms", "Symbol", "KallsymsError", "kallsyms", "jmp_rel32_target"]

PATH = "/proc/kallsyms"


class KallsymsError(JitdiffError):
    """kallsyms unreadable or with zeroed addresses, or a name not present."""


@dataclass(frozen=True, slots=True)
class Symbol:
    address: int
    type: str  #: nm-style type letter (T, t, D, ...)
    name: str
    module: str = ""  #: [module] suffix, empty for vmlinux


class Kallsyms:
    def __init__(self, text: str):
        syms: list[Symbol] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else ""
            syms.append(Symbol(int(parts[0], 16), parts[1], parts[2], module))
        if not syms or all(s.address == 0 for s in syms[:64]):
            raise KallsymsError("kallsyms addresses are zeroed (kernel.kptr_restrict)")
        # Stable sort keeps the file's order among aliases at one address.
        syms.sort(key=lambda s: s.address)
        self.symbols = syms
        self._addrs = [s.address for s in syms]
        self._by_name: dict[str, Symbol] = {}
        for s in syms:
            self._by_name.setdefault(s.name, s)

    @classmethod
    def load(cls, path: str = PATH) -> Kallsyms:
        try:
            with open(path) as f:
                return cls(f.read())
        except OSError as e:
            raise KallsymsError(f"cannot read {path}: {e.strerror}") from None

    def address(self, name: str) -> int:
        s = self._by_name.get(name)
        if s is None:
            raise KallsymsError(f"no kernel symbol {name!r}")
        return s.address

    def get(self, name: str) -> int | None:
        s = self._by_name.get(name)
        return None if s is None else s.address

    def names_at(self, address: int) -> list[str]:
        i = bisect.bisect_left(self._addrs, address)
        out = []
        while i < len(self._addrs) and self._addrs[i] == address:
            out.append(self.symbols[i].name)
            i += 1
        return out

    def lookup(self, address: int) -> tuple[Symbol, int] | None:
        """The symbol containing ``address`` (nearest at or below it) and the
        offset into it; among aliases a global text symbol is preferred."""
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        base = self._addrs[i]
        j = i
        while j > 0 and self._addrs[j - 1] == base:
            j -= 1
        aliases = self.symbols[j : i + 1]
        # Prefer a global text symbol, and the ordinary name over the
        # position-independent "__pi_" alias some startup code gets.
        best = min(
            aliases, key=lambda s: (s.type != "T", s.type not in "tT", s.name.startswith("__pi_"))
        )
        return best, address - base

    def describe(self, address: int) -> str:
        """``name`` or ``name+0x10`` (``0x...`` when nothing precedes it)."""
        found = self.lookup(address)
        if found is None:
            return f"{address:#x}"
        sym, off = found
        return sym.name if off == 0 else f"{sym.name}+{off:#x}"


@functools.lru_cache(maxsize=1)
def kallsyms() -> Kallsyms:
    """This kernel's symbols, read once per process. Symbols of BPF programs
    loaded later are not in this snapshot (their addresses come from
    ``jited_ksyms``)."""
    return Kallsyms.load()


def jmp_rel32_target(code: bytes, address: int, at: int | None = None) -> int | None:
    """Target of the ``jmp rel32`` (e9) at offset ``at`` of ``code`` mapped at
    ``address`` (default: the last 5 bytes, where every JIT image ends with
    ``jmp <return thunk>``), or None when there is no such jmp."""
    at = len(code) - 5 if at is None else at
    if at < 0 or at + 5 > len(code) or code[at] != 0xE9:
        return None
    rel = int.from_bytes(code[at + 1 : at + 5], "little", signed=True)
    return (address + at + 5 + rel) & (2**64 - 1)
