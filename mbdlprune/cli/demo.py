"""CLI wiring for ``demo`` and ``examples`` (thin: parse options, call :func:`mbdlprune.run_demo`, print)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import DebugOpt, JsonOpt, console, handle_errors, print_json


def _wide(c):
    """Let tables use 180 columns when output is not a terminal (logs, pipes)."""
    if not c.is_terminal:
        c.width = max(c.width, 180)
    return c


def demo_cmd(
    out: Path = typer.Option(Path("mbdlprune-demo"), "--out", "-o", help="Folder for every file the demo writes (must be empty or new)."),
    model: str = typer.Option("default", "--model", help="Which example: default (deq and unrolled), deq, unrolled, varnet (multi-coil raw k-space, about 2 more minutes) or all."),
    force: bool = typer.Option(False, "--force", help="Reuse a non-empty output folder (the demo's files in it are overwritten)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny budgets (seconds): a smoke test, the numbers mean little."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    json_out: bool = JsonOpt,
    debug: bool = DebugOpt,
):
    """Prune the shipped example models (each at its fastest ratio within 0.1 dB), fine-tune them by distillation, and bench all three versions."""
    from .common import resolve_device
    from ..workflows.demo import run_demo

    dev = resolve_device(device)
    if json_out:
        result = run_demo(out, models=model, force=force, quick=quick, device=dev)
        from ..io import json_safe as _json_safe

        summary = result.to_dict()
        for m in summary["models"]:
            m.pop("bench", None)  # the full reports are in the folder
        print_json(_json_safe(summary))
        return
    err = _wide(console(stderr=True))
    err.print(f"[bold]mbdlprune demo[/bold]: prune -> fine-tune -> bench on the example models shipped with the package "
              f"({'quick budgets' if quick else 'about 3 minutes on 2 idle CPU cores'})")

    def say(msg: str) -> None:
        err.print(msg, highlight=False)

    result = run_demo(out, models=model, force=force, quick=quick, device=dev, say=say, progress=True, status=err.status)
    c = _wide(console())
    for m in result.models:
        c.rule(f"{m.name}: bench report")
        m.report.print(c)
    c.rule("summary")
    c.print(result.summary_table())
    for line in result.warm_start_lines():
        c.print(line)
    c.print(f"wall time {result.wall_time_s:.0f} s; files in {result.out.resolve()}/ "
            f"({', '.join(m.name + '/' for m in result.models)}: pruned and fine-tuned models, bench.json, bench.md"
            f"{', bench.png' if any('figure' in m.files for m in result.models) else ''}; demo.json)")


def examples_cmd(json_out: bool = JsonOpt, debug: bool = DebugOpt):
    """List the example models and data shipped inside the package."""
    from ..examples import list_examples

    rows = list_examples()
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    t = Table(title="examples shipped with mbdlprune (mbdlprune.examples.example_path(name))", title_justify="left")
    for col in ("name", "file", "what", "held-out PSNR / SSIM (zero-filled)"):
        t.add_column(col)
    for r in rows:
        ev = r.get("eval")
        score = (f"{ev['psnr_mean']:.2f} dB / {ev['ssim_mean']:.3f} ({ev['zero_filled_psnr_mean']:.2f} / "
                 f"{ev['zero_filled_ssim_mean']:.3f}), metric {ev.get('metric', 'plain')}") if ev else ""
        what = r["description"] + (f"; {r['params']:,} parameters" if r.get("params") else "")
        t.add_row(r["name"], r["file"] + ("" if r["present"] else " (missing)"), what, score)
    _wide(console()).print(t)


def register(app: typer.Typer) -> None:
    app.command("demo")(handle_errors(demo_cmd))
    app.command("examples")(handle_errors(examples_cmd))
