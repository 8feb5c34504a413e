"""Progress of a fine-tuning run, reported as calls on a reporter: the core never draws anything.

A reporter has ``start(epochs, steps_per_epoch, metric)``, ``step(epoch, loss)``,
``val(text)``, ``skip(steps)`` and ``close()``. :class:`ProgressReporter` does nothing; the
CLI and the demo pass :class:`mbdlprune.render.FinetuneProgressBar` (a Rich bar), and any
object with those methods works (a logger, a notebook widget).
"""

from __future__ import annotations

from typing import Any


class ProgressReporter:
    """Receives a run's progress; this one ignores it (machine mode, other ranks, tests)."""

    def start(self, epochs: int, steps_per_epoch: int, metric: str) -> None:
        pass

    def step(self, epoch: int, loss: float) -> None:
        pass

    def val(self, text: str) -> None:
        pass

    def skip(self, steps: int) -> None:
        pass

    def close(self) -> None:
        pass


def reporter_for(progress: Any, main: bool) -> Any:
    """The reporter for ``finetune(progress=...)``: False/None (nothing), True (a Rich bar) or a reporter."""
    if not main or not progress:
        return ProgressReporter()
    if progress is True:
        from ..render import FinetuneProgressBar  # people asked for a bar: the renderer draws it

        return FinetuneProgressBar()
    missing = [m for m in ("start", "step", "val", "skip", "close") if not callable(getattr(progress, m, None))]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"progress must be true/false or a reporter, and {type(progress).__name__} lacks {', '.join(missing)}",
                          "pass progress=True, or an object with start, step, val, skip and close")
    return progress
