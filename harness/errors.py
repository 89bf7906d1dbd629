"""One root error type for everything jitdiff reports to a user.

Each child names what went wrong in terms the user can act on; the CLI prints
``str(err)`` on one line and exits 2. Foreign errors (Unicorn, errno, the
verifier) never escape as these: engines turn them into outcomes instead.
"""

from __future__ import annotations

__all__ = [
    "JitdiffError",
    "DecodeError",
    "AsmError",
    "CaseError",
    "EngineUnavailable",
    "Unsupported",
]


class JitdiffError(Exception):
    """Root of every error jitdiff raises on purpose."""


class DecodeError(JitdiffError):
    """Bytes that are not a valid eBPF instruction."""


class AsmError(JitdiffError):
    """Assembly text that cannot be assembled; carries where."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.message, self.file, self.line = message, file, line
        where = ":".join(str(p) for p in (file, line) if p is not None)
        super().__init__(f"{where}: {message}" if where else message)


class CaseError(AsmError):
    """A malformed case file (names the file and line)."""


class EngineUnavailable(JitdiffError):
    """An engine that cannot run here (no bpf(), not root, ...); the reason is the message."""


class Unsupported(JitdiffError):
    """A feature an engine does not model; generation narrows instead of failing."""
