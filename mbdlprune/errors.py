"""User-facing errors: one line naming the problem and the fix."""


class MbdlError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits 2."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class ConfigError(MbdlError):
    """A spec or config file is malformed or holds unknown keys."""


class CheckpointError(MbdlError):
    """A checkpoint cannot be read or does not match the architecture."""


class PruningError(MbdlError):
    """Pruning did not do what was asked (nothing removed, shapes changed)."""


class DataError(MbdlError):
    """Data files are missing, unreadable or inconsistent."""
