"""Rendering for people: tables of results and Rich progress bars (the core never imports Rich itself).

Each result object's ``render(console)`` calls one function here; the CLI prints through them.
"""

from __future__ import annotations

import json
import math
from typing import Any


def require_matplotlib():
    """``matplotlib.pyplot`` on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import MbdlError

        raise MbdlError("--figure needs matplotlib, which is not installed", 'pip install "mbdlprune[plot]"') from None
    return plt


def fmt(v: Any, spec: str = ".2f", none: str = "—") -> str:
    """A number for a table: ``spec``-formatted, "—" for None/NaN, "inf" for infinities."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def si(v: float | None) -> str:
    """A count with an SI prefix (1.23M, 4.56G) for a table; "—" for None."""
    if v is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}"




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


# -- results ----------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_layers(report: dict, c) -> None:
    """Per-layer widths, the removal asked and the removal achieved (rounding and channel groups can differ)."""
    from rich.table import Table

    t = Table(title="layers (output channels)")
    for col in ("layer", "before", "after", "requested", "achieved", "note"):
        t.add_column(col, justify="left" if col in ("layer", "note") else "right")
    for prior, p in report["priors"].items():
        for layer, w in p["layers"].items():
            name = f"{prior}.{layer}" if prior and layer else prior or layer
            note = w.get("note") or ""
            if w.get("held_back"):
                note = f"held back: {note}" if note else "held back"
            t.add_row(name, str(w["before"]), str(w["after"]), _pct(w.get("requested")), _pct(w["removed"]), note)
    c.print(t)


def render_prune(report: dict, out, c) -> None:
    from rich.table import Table

    t = Table(title=f"Pruned at ratio {report['ratio']} ({report['importance']}, round_to={report['round_to']}) in {report['seconds']:.2f} s")
    for col in ("prior", "params", "MACs/call", "calls", "widths before → after", "requested", "achieved"):
        t.add_column(col, justify="right" if col not in ("prior", "widths before → after") else "left")
    for name, p in report["priors"].items():
        t.add_row(
            name,
            f"{si(p['params_before'])} → {si(p['params_after'])}",
            f"{si(p['macs_before'])} → {si(p['macs_after'])}",
            str(p["calls_per_reconstruction"]),
            f"{p['widths_before']} → {p['widths_after']}",
            _pct(p.get("requested_channel_ratio")),
            _pct(p["achieved_channel_ratio"]),
        )
    c.print(t)
    b, a = report["macs_per_reconstruction_before"], report["macs_per_reconstruction_after"]
    it = report.get("nominal_iterations")
    nominal = f" (at max_iter = {it}, an upper bound; `bench` measures real iterations)" if it else ""
    c.print(f"model params {si(report['params_before'])} → {si(report['params_after'])}; "
            f"prior MACs per reconstruction {si(b)} → {si(a)} ({b / max(a, 1):.2f}x fewer){nominal}")
    held = report.get("held_back") or {}
    if held:
        names = ", ".join(list(held)[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        c.print(f"--allow-partial: {len(held)} layer(s) removed less than asked ({names}); `--layers` shows why")
    for note in report.get("notes") or ():
        c.print(f"note: {note}", style="yellow", highlight=False)
    if out:
        c.print(f"wrote {out}")


def _with_unit(v, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.2f}{unit}" if isinstance(v, float) else str(v)


def render_finetune(result, c) -> None:
    from rich.table import Table

    r = result.record
    v = r["validation"]
    unit = " dB" if v["metric"] == "psnr" else ""
    t = Table(title=f"Fine-tuned ({r['mode']}) for {r['epochs']} epochs")
    for col in ("epoch", "lr", "train loss", f"val {v['metric'] or '-'}", "time (s)"):
        t.add_column(col, justify="right")
    if v["before"] is not None:
        t.add_row("before", "-", "-", _with_unit(v["before"], unit), "-")
    for h in r["history"]:
        val = (h.get("val") or {}).get("value")
        mark = " *" if h["epoch"] == v["best_epoch"] else ""
        t.add_row(str(h["epoch"]), f"{h['lr']:.3g}", f"{h['train']['loss']:.4g}", _with_unit(val, unit) + mark, f"{h['time_s']:.2f}")
    c.print(t)
    data = r["data"]
    c.print(f"train: {data['train']['slices']} slices from {len(data['train']['files'])} file(s); "
            f"validation: {(data['val'] or {}).get('slices', 0)} slices ({data['val_source']}); "
            f"normalisation: {r['normalization']['description']}")
    if v["metric"] == "measurement-consistency":
        c.print("validation has no ground truth: the best epoch is chosen by measurement consistency (lower is better)")
    c.print(f"kept: {v['kept']}" + (f" (epoch {v['best_epoch']})" if v["best_epoch"] else ""))
    for w in result.warnings:
        c.print(f"warning: {w}")
    if result.out:
        c.print(f"wrote {result.out}")


def render_inspect(info: dict, title: str, c) -> None:
    """The header table (architecture, operator, records) and the priors table of ``inspect``."""
    from rich.table import Table

    head = Table(show_header=False, title=title)
    head.add_column("key")
    head.add_column("value")
    for key in ("arch", "params", "params_in_file", "operator", "key_map", "parent_sha256", "versions", "note"):
        if key in info:
            head.add_row(key, json.dumps(info[key]) if isinstance(info[key], (dict, list)) else str(info[key]))
    if info.get("pruning"):
        p = info["pruning"]
        head.add_row("pruning", f"ratio {p['ratio']} ({p['importance']}, round_to={p['round_to']}), params {p['params_before']} → {p['params_after']}")
    if info.get("finetune"):
        f = info["finetune"]
        head.add_row("finetune", f"mode {f.get('mode')}, epochs {f.get('epochs')}, best val PSNR {f.get('best_val_psnr')}")
    c.print(head)
    if info.get("priors"):
        t = Table(title="priors")
        for col in ("prior", "params", "MACs/call", "input", "widths"):
            t.add_column(col)
        for name, p in info["priors"].items():
            widths = sorted(set((p.get("widths") or {}).values()))
            t.add_row(name, si(p["params"]), si(p["macs_per_call"]) if "macs_per_call" in p else "-",
                      "x".join(map(str, p.get("input_shape", []))) or "-", str(widths) if widths else "-")
        c.print(t)
