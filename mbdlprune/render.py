"""Rendering for people: Rich progress bars that the core reports into (it never imports Rich itself)."""

from __future__ import annotations


class FinetuneProgressBar:
    """A Rich progress bar on stderr: epoch, step, loss, validation and ETA of a fine-tuning run."""

    def __init__(self):
        self.p = None

    def start(self, epochs: int, steps_per_epoch: int, metric: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.epochs = epochs
        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                          TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.p.start()
        self.task = self.p.add_task(f"epoch 0/{epochs}", total=epochs * steps_per_epoch, loss="-", val="-")

    def step(self, epoch: int, loss: float) -> None:
        if self.p:
            self.p.update(self.task, advance=1, description=f"epoch {epoch}/{self.epochs}", loss=f"{loss:.4g}")

    def val(self, text: str) -> None:
        if self.p:
            self.p.update(self.task, val=text)

    def skip(self, steps: int) -> None:
        if self.p:
            self.p.update(self.task, advance=steps)

    def close(self) -> None:
        if self.p:
            self.p.stop()
            self.p = None
