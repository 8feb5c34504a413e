"""User-facing errors: one line naming the problem and the fix."""

from __future__ import annotations


class MbdlError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits 2."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (or its type's name), for one-line errors."""
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else type(e).__name__
    return line[:limit] if limit else line


class ConfigError(MbdlError):
    """A spec or config file is malformed or holds unknown keys."""


class CheckpointError(MbdlError):
    """A checkpoint cannot be read or does not match the architecture."""


class PruningError(MbdlError):
    """Pruning did not do what was asked (nothing removed, shapes changed)."""


class DataError(MbdlError):
    """Data files are missing, unreadable or inconsistent."""
