"""CLI wiring for ``bench``, ``sweep`` and ``run`` (thin: parse, call the API, print).

Exit codes: 0 when every gate passes (or none is set), 1 when a gate fails (one line says
which and by how much), 2 for user errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..pruning.importances import importance_help
from ..metric_definitions import metric_help
from .common import (ArchArgsOpt, DebugOpt, DeviceOpt, ForceOpt, KeyMapOpt, OperatorOpt, UnsafePickleOpt, console,
                         handle_errors)

JsonPathOpt = typer.Option(None, "--json", help="Write the report as JSON to this file ('-' for stdout, then no table).")
MarkdownOpt = typer.Option(None, "--markdown", help="Write a Markdown report (e.g. for a CI comment) to this file.")
FigureOpt = typer.Option(None, "--figure", help="Write reconstructions, error maps and speed vs PSNR to this PNG (needs matplotlib).")
BatchOpt = typer.Option(1, "--batch-size", help="Images per reconstruction call (timing and quality).")
WarmupOpt = typer.Option(10, "--warmup", help="Untimed runs per model before timing.")
RepeatsOpt = typer.Option(30, "--repeats", help="Timed runs per model (interleaved across models).")
TolOpt = typer.Option(None, "--tol", help="DEQ tolerance for EVERY model (default: the first model's).")
MaxIterOpt = typer.Option(None, "--max-iter", help="DEQ iteration cap for EVERY model (default: the first model's).")
SolverOpt = typer.Option(None, "--solver", help="DEQ solver for EVERY model (default: the first model's).")
CheckEveryOpt = typer.Option(None, "--check-every", help="DEQ solvers read their residual on the host only every K iterations, for EVERY model: fewer GPU synchronisations, identical results, up to K-1 extra iterations of work (default: the models' own, 1).")
WarmBatchesOpt = typer.Option(8, "--warm-batches", help="With --warm-start: how many batches of one volume the cold and warm passes time (after an untimed first one).")
WarmStartOpt = typer.Option(False, "--warm-start", help="Also reconstruct each volume's slices in order, every DEQ solve started from the previous slice's fixed point, scored and timed cold and warm on the same slices: the solver's gain reported apart from pruning's.")
MetricOpt = typer.Option("auto", "--metric", help=metric_help())
KspaceScaleOpt = typer.Option("auto", "--kspace-scale", help="Raw k-space: none (raw units, fastMRI's VarNet), max (each slice to 1), volume; auto: none for e2e-varnet, else max.")
CompileOpt = typer.Option(False, "--compile", help="Also time every model with its priors compiled (torch.compile, inductor; FFTs and solver stay eager), side by side; compile time reported apart.")
ChannelsLastOpt = typer.Option(False, "--channels-last", help="Also time every model with its priors in channels-last memory format (with --compile: both).")
Bf16Opt = typer.Option(False, "--bf16", help="Also run every model with its priors in bfloat16 (autocast; data consistency and solver stay float32), timed and scored side by side (combines with --compile and --channels-last).")
CoilMapsOpt = typer.Option("acs", "--coil-maps", help="Raw multi-coil k-space, models that take coil maps from the operator: acs (low-resolution estimate) or espirit (sigpy); E2E-VarNet estimates its own.")
SeedOpt = typer.Option(0, "--seed", help="Seed of the simulated measurement noise (image data; raw k-space gets no noise, its masks are seeded per file as fastMRI does).")
MaxImagesOpt = typer.Option(None, "--max-images", help="Use only the first N evaluation images.")
FitOpt = typer.Option("error", "--fit", help="Fit slices to the operator's image size: error, crop, pad, crop-pad.")
ThreadsOpt = typer.Option(None, "--threads", help="torch intra-op threads (default: torch's); 1 gives steadier CPU timings on a busy machine.")


def _wide_console():
    """The shared console; when output is not a terminal (CI logs, pipes) let tables use 160 columns."""
    c = console()
    if not c.is_terminal:
        c.width = max(c.width, 160)
    return c


def _progress(quiet: bool):
    if quiet:
        return None
    err = console(stderr=True)
    return lambda msg: err.print(f"[dim]{msg}[/dim]")


def check_report_paths(json_out: Optional[str], markdown: Optional[Path], figure: Optional[Path], force: bool,
                       inputs=()) -> None:
    """Refuse report paths that exist (without --force), sit in a missing folder or are inputs, before any work."""
    from ..errors import MbdlError
    from ..io import check_output_path

    paths = [Path(p) for p in (json_out if json_out != "-" else None, markdown, figure) if p is not None]
    if len({p.resolve() for p in paths}) < len(paths):
        raise MbdlError("two report options name the same file", "give --json, --markdown and --figure different paths")
    for p in paths:
        check_output_path(p, force, suffix=None, inputs=inputs)


def _emit(report, json_out: Optional[str], markdown: Optional[Path], figure: Optional[Path], force: bool = False) -> None:
    """Write the requested files; print the table unless JSON goes to stdout."""
    to_stdout = json_out == "-"
    if figure is not None:
        report.figure(figure, force=force)
    if markdown is not None:
        report.write_markdown(markdown, force=force)
    if json_out and not to_stdout:
        report.write_json(json_out, force=force)
    if to_stdout:
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
    else:
        report.print(_wide_console())


def _finish(code: int, line: str, json_to_stdout: bool) -> None:
    if code:
        sys.stderr.write(line + "\n")
        raise typer.Exit(code)
    if not json_to_stdout:
        console().print(line)


def bench_cmd(
    models: List[Path] = typer.Argument(..., help="ORIGINAL PRUNED [MORE...]: model files; the first is the reference."),
    data: List[Path] = typer.Option(..., "--data", help="Evaluation data: images (NIfTI / .npy / .npz) or raw k-space (fastMRI .h5 / .npz with kspace, evaluated the fastMRI way); file or folder; repeatable."),
    operator: Optional[Path] = OperatorOpt,
    device: str = DeviceOpt,
    batch_size: int = BatchOpt,
    warmup: int = WarmupOpt,
    repeats: int = RepeatsOpt,
    tol: Optional[float] = TolOpt,
    max_iter: Optional[int] = MaxIterOpt,
    solver: Optional[str] = SolverOpt,
    check_every: Optional[int] = CheckEveryOpt,
    warm_start: bool = WarmStartOpt,
    warm_batches: int = WarmBatchesOpt,
    metric: str = MetricOpt,
    kspace_scale: str = KspaceScaleOpt,
    coil_maps: str = CoilMapsOpt,
    compile: bool = CompileOpt,
    channels_last: bool = ChannelsLastOpt,
    bf16: bool = Bf16Opt,
    seed: int = SeedOpt,
    max_images: Optional[int] = MaxImagesOpt,
    fit: str = FitOpt,
    threads: Optional[int] = ThreadsOpt,
    json_out: Optional[str] = JsonPathOpt,
    markdown: Optional[Path] = MarkdownOpt,
    figure: Optional[Path] = FigureOpt,
    control: bool = typer.Option(False, "--control", help="Also fine-tune the ORIGINAL with the pruned model's fine-tune data and budget, and bench it."),
    control_out: Optional[Path] = typer.Option(None, "--control-out", help="Where to write the control model (default: a temporary folder)."),
    control_data: List[Path] = typer.Option([], "--control-data", help="With --control: the files the pruned model was fine-tuned on (matched by sha256 to its record); repeatable."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing report files and --control-out."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Gate: every pruned model must be at least this much faster (exit 1 otherwise)."),
    max_psnr_drop: Optional[float] = typer.Option(None, "--max-psnr-drop", help="Gate: no pruned model may lose more PSNR than this, in dB (exit 1 otherwise)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="file.py:factory, only for models built by user code (runs that code)."),
    key_map: Optional[str] = KeyMapOpt,
    unsafe_pickle: bool = UnsafePickleOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress messages."),
    debug: bool = DebugOpt,
):
    """Time and score an original model and its pruned versions side by side, with identical solver settings."""
    from ..api import bench
    from ..errors import MbdlError

    if len(models) < 2 and not control:
        raise MbdlError("bench needs the original model and at least one pruned model", "run: mbdlprune bench ORIGINAL PRUNED --data EVAL")
    check_report_paths(json_out, markdown, figure, force, inputs=[*models, *data, control_out])
    report = bench(
        [str(m) for m in models], [str(d) for d in data] if len(data) > 1 else str(data[0]), operator=operator,
        device=device, solver=solver, tol=tol, max_iter=max_iter, warmup=warmup, repeats=repeats,
        batch_size=batch_size, metric=metric, seed=seed, max_images=max_images, fit=fit, threads=threads, arch=arch,
        kspace_scale=kspace_scale, coil_maps=coil_maps, compile=compile, channels_last=channels_last, bf16=bf16,
        check_every=check_every, warm_start=warm_start, warm_batches=warm_batches, min_speedup=min_speedup, max_psnr_drop=max_psnr_drop, control=control, control_out=control_out,
        progress=_progress(quiet or json_out == "-"), control_data=[str(d) for d in control_data] or None, force=force,
        key_map=key_map, unsafe_pickle=unsafe_pickle,
    )
    _emit(report, json_out, markdown, figure, force)
    _finish(report.exit_code(), report.gate_line(), json_out == "-")


def sweep_cmd(
    checkpoint: Path = typer.Argument(..., help="The unpruned checkpoint (.safetensors, .pt, ...)."),
    ratios: str = typer.Option(..., "--ratios", help="Comma-separated pruning ratios, e.g. 0.1,0.3,0.5."),
    eval_data: List[Path] = typer.Option(..., "--eval-data", help="Evaluation data, images or raw k-space (never used for training); repeatable."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Registry name or file.py:factory (needed for plain checkpoints)."),
    arch_args: Optional[str] = ArchArgsOpt,
    key_map: Optional[str] = KeyMapOpt,
    operator: Optional[Path] = OperatorOpt,
    importance: str = typer.Option("l1", "--importance", help=importance_help()),
    round_to: Optional[str] = typer.Option(None, "--round-to", help="Keep widths multiples of this (default: the pruner's, 16), or auto (measured on this machine, see `prune --help`)."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept ratios at which some layers are held back (rounding, channel groups) instead of stopping."),
    finetune_mode: Optional[str] = typer.Option(None, "--finetune", help="Fine-tune every pruned model with this mode (needs --data and --out-dir)."),
    data: List[Path] = typer.Option([], "--data", help="Fine-tuning data (separate from --eval-data); repeatable."),
    epochs: int = typer.Option(1, "--epochs", help="Fine-tuning epochs per ratio."),
    finetune_args: Optional[str] = typer.Option(None, "--finetune-args", help='More fine-tune settings as JSON, e.g. \'{"lr": 1e-4}\'.'),
    max_psnr_drop: Optional[float] = typer.Option(None, "--max-psnr-drop", help="Write the fastest model within this PSNR drop (dB) to OUT_DIR/best.safetensors; exit 1 if none."),
    finetune_devices: str = typer.Option("auto", "--finetune-devices", help="Fine-tune the ratios in parallel, one worker per device: auto (every CUDA device when 2 or more are visible), none (one after another), or a list such as cuda:0,cuda:1. The bench still runs on --device."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Folder for the pruned models, sweep.json and sweep.md."),
    device: str = DeviceOpt,
    batch_size: int = BatchOpt,
    warmup: int = WarmupOpt,
    repeats: int = RepeatsOpt,
    tol: Optional[float] = TolOpt,
    max_iter: Optional[int] = MaxIterOpt,
    solver: Optional[str] = SolverOpt,
    check_every: Optional[int] = CheckEveryOpt,
    warm_start: bool = WarmStartOpt,
    warm_batches: int = WarmBatchesOpt,
    metric: str = MetricOpt,
    kspace_scale: str = KspaceScaleOpt,
    coil_maps: str = CoilMapsOpt,
    compile: bool = CompileOpt,
    channels_last: bool = ChannelsLastOpt,
    bf16: bool = Bf16Opt,
    seed: int = SeedOpt,
    max_images: Optional[int] = MaxImagesOpt,
    fit: str = FitOpt,
    threads: Optional[int] = ThreadsOpt,
    json_out: Optional[str] = JsonPathOpt,
    markdown: Optional[Path] = MarkdownOpt,
    figure: Optional[Path] = typer.Option(None, "--figure", help="Write the speed-vs-PSNR frontier to this PNG: every ratio, the Pareto front, the chosen model, timing and PSNR error bars (needs matplotlib)."),
    unsafe_pickle: bool = UnsafePickleOpt,
    force: bool = ForceOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress messages."),
    debug: bool = DebugOpt,
):
    """Prune at several ratios and bench all side by side: speedup, MACs reduction, PSNR, Pareto front."""
    import json

    from ..config import parse_json_or_file
    from ..errors import ConfigError, MbdlError
    from ..workflows.sweep import sweep

    ft = None
    if finetune_mode:
        ft = {"mode": finetune_mode, "epochs": epochs}
        if finetune_args:
            t = finetune_args.strip()
            try:
                extra = json.loads(t)
            except json.JSONDecodeError as e:
                raise ConfigError(f"--finetune-args is not valid JSON: {e}", 'write e.g. \'{"lr": 1e-4}\'') from None
            if not isinstance(extra, dict):
                raise ConfigError("--finetune-args must be a JSON object", 'write e.g. \'{"lr": 1e-4}\'')
            ft.update(extra)
        ft["data"] = [str(d) for d in data] or None
    ev = [str(d) for d in eval_data] if len(eval_data) > 1 else str(eval_data[0])
    # a figure inside an --out-dir the sweep has yet to create is checked by sweep() itself
    fig_in_out = figure is not None and out_dir is not None and figure.parent.resolve() == out_dir.resolve() and not out_dir.is_dir()
    check_report_paths(json_out, markdown, None if fig_in_out else figure, force, inputs=[checkpoint, *eval_data, *data])
    if fig_in_out and any(p is not None and p != "-" and Path(p).resolve() == figure.resolve() for p in (json_out, markdown)):
        raise MbdlError("two report options name the same file", "give --json, --markdown and --figure different paths")
    sr = sweep(
        checkpoint, arch=arch, arch_args=parse_json_or_file(arch_args), operator=operator, ratios=ratios, finetune=ft,
        data=[str(d) for d in data] or None, eval_data=ev, max_psnr_drop=max_psnr_drop, out_dir=out_dir,
        importance=importance, round_to=round_to, device=device, solver=solver, tol=tol, max_iter=max_iter,
        warmup=warmup, repeats=repeats, batch_size=batch_size, metric=metric, seed=seed, max_images=max_images,
        kspace_scale=kspace_scale, coil_maps=coil_maps, compile=compile, channels_last=channels_last, bf16=bf16, fit=fit, threads=threads, force=force, unsafe_pickle=unsafe_pickle, progress=_progress(quiet or json_out == "-"),
        key_map=key_map, prune_options={"allow_partial": True} if allow_partial else None, figure=figure,
        finetune_devices=finetune_devices, check_every=check_every, warm_start=warm_start, warm_batches=warm_batches,
    )
    from ..io import json_safe, write_text

    to_stdout = json_out == "-"
    text = json.dumps(json_safe(sr.to_dict()), indent=2, allow_nan=False)
    if json_out and not to_stdout:
        write_text(json_out, text + "\n", force=force)
    if markdown is not None:
        write_text(markdown, sr.markdown(), force=force)
    if to_stdout:
        sys.stdout.write(text + "\n")
    else:
        sr.print(_wide_console())
    if sr.exit_code():
        sys.stderr.write(sr.summary_line() + "\n")
        raise typer.Exit(sr.exit_code())


def run_cmd(
    pipeline: Path = typer.Argument(..., help="Pipeline TOML: [model], [prune], [finetune], [bench], [gates], [output]."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Output folder (overrides [output] dir)."),
    device: Optional[str] = typer.Option(None, "--device", help="Override [bench] device: cpu, cuda, cuda:N or auto."),
    json_out: Optional[str] = JsonPathOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite outputs in the folder (as [output] force = true)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Allow the file.py:factory / pkg.mod:factory the pipeline names to run (must be identical)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress messages."),
    debug: bool = DebugOpt,
):
    """Run prune -> fine-tune -> bench from one TOML file; exit 1 when a gate fails."""
    from ..workflows.pipeline import run_pipeline

    check_report_paths(json_out, None, None, force, inputs=[pipeline])
    result = run_pipeline(pipeline, out_dir=out_dir, device=device, force=force or None,
                          progress=_progress(quiet or json_out == "-"), allow_arch=arch)
    report = result.report
    to_stdout = json_out == "-"
    if json_out and not to_stdout:
        report.write_json(json_out, force=force)
    if to_stdout:
        sys.stdout.write(report.to_json() + "\n")
    else:
        c = _wide_console()
        report.print(c)
        c.print(f"outputs in {result.out_dir}: " + ", ".join(sorted(Path(p).name for p in result.files.values())))
    _finish(result.exit_code, report.gate_line(), to_stdout)


def register(app: typer.Typer) -> None:
    app.command("bench")(handle_errors(bench_cmd))
    app.command("sweep")(handle_errors(sweep_cmd))
    app.command("run")(handle_errors(run_cmd))
