"""CLI wiring for ``prune``, ``inspect`` and ``archs`` (thin: parse, call the API, print)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..pruning.importances import importance_help
from .common import (ArchArgsOpt, ArchOpt, DebugOpt, ForceOpt, JsonOpt, KeyMapOpt, OperatorOpt, UnsafePickleOpt,
                         console, handle_errors, print_json)


def _parse_layer_ratios(items: list[str]) -> dict[str, float]:
    from ..errors import MbdlError

    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        name = name.strip()
        try:
            r = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise MbdlError(f"--layer-ratio {item!r} is not NAME=RATIO", "write e.g. --layer-ratio 'prior.body.*=0.3'")
        if name in out:
            raise MbdlError(f"--layer-ratio gives {name!r} twice ({out[name]} and {r})", "give each pattern once")
        out[name] = r
    return out


def prune_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint: .safetensors, .pt/.pth/.ckpt/.tar."),
    arch: Optional[str] = ArchOpt,
    arch_args: Optional[str] = ArchArgsOpt,
    operator: Optional[Path] = OperatorOpt,
    ratio: float = typer.Option(..., "--ratio", help="Fraction of channels to remove from each prunable layer, in (0, 1)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file."),
    importance: str = typer.Option("l1", "--importance", help=importance_help()),
    global_pruning: bool = typer.Option(False, "--global", help="Rank channels across layers instead of per layer."),
    iterative_steps: int = typer.Option(1, "--iterative-steps", help="Reach the ratio in this many steps."),
    round_to: str = typer.Option("16", "--round-to", help="Keep widths multiples of this (16: full-speed AVX-512/GPU kernels; 1: off), or auto: time the prior's layers on this machine (CUDA when available, else the CPU) and keep, per group, the width it runs best within the ratio."),
    layer_ratio: List[str] = typer.Option([], "--layer-ratio", help="Per-layer ratio NAME=RATIO (glob on module names); repeatable."),
    ignore: List[str] = typer.Option([], "--ignore", help="Module name or glob never pruned; repeatable."),
    prior: List[str] = typer.Option([], "--prior", help="Prior to prune: a dotted module name or glob (default: the model's priors, or found automatically); +NAME adds to the default; repeatable."),
    prune_sensitivity: bool = typer.Option(False, "--prune-sensitivity", help="e2e-varnet: prune the sensitivity-map U-Net too (short for --prior +sens_net.norm_unet.unet)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="HxW for tracing a bare prior without an operator, e.g. 64x64."),
    seed: int = typer.Option(0, "--seed"),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Accept layers that remove fewer channels than asked (rounding, channel groups, --ignore); they are reported."),
    layers: bool = typer.Option(False, "--layers", help="Also print every layer's width before/after, the removal requested and achieved."),
    unsafe_pickle: bool = UnsafePickleOpt,
    key_map: Optional[str] = KeyMapOpt,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    debug: bool = DebugOpt,
):
    """Remove channels from the prior CNN(s) of a checkpoint and write a slim safetensors model."""
    from ..api import prune
    from ..config import parse_json_or_file
    from ..errors import MbdlError

    size = None
    if image_size:
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
            size = (h, w)
        except ValueError:
            raise MbdlError(f"--image-size {image_size!r} is not HxW", "write e.g. --image-size 64x64") from None
        if h < 1 or w < 1:
            raise MbdlError(f"--image-size {image_size!r} must be positive", "write e.g. --image-size 64x64")
    from ..pruning import PruneConfig, parse_round_to

    round_to = parse_round_to(round_to)
    layer_ratios = _parse_layer_ratios(layer_ratio)
    # the options are checked before the checkpoint is read (patterns are checked against the model later)
    PruneConfig(ratio=ratio, importance=importance, global_pruning=global_pruning, iterative_steps=iterative_steps,
                round_to=round_to, layer_ratios=layer_ratios, ignore=list(ignore), priors=list(prior) or None, seed=seed,
                allow_partial=allow_partial).validate()
    result = prune(
        checkpoint, arch=arch, arch_args=parse_json_or_file(arch_args), operator=operator, out=out, force=force,
        unsafe_pickle=unsafe_pickle, key_map=key_map, ratio=ratio, importance=importance, global_pruning=global_pruning,
        iterative_steps=iterative_steps, round_to=round_to, layer_ratios=layer_ratios,
        ignore=list(ignore), priors=list(prior) or None, prune_sensitivity=prune_sensitivity, image_size=size, seed=seed,
        allow_partial=allow_partial,
    )
    if json_out:
        print_json({"output": str(result.out), **result.report})
    else:
        result.render(console(), layers=layers)


def inspect_cmd(
    checkpoint: Path = typer.Argument(..., help="Any checkpoint mbdlprune can read."),
    arch: Optional[str] = ArchOpt,
    arch_args: Optional[str] = ArchArgsOpt,
    operator: Optional[Path] = OperatorOpt,
    unsafe_pickle: bool = UnsafePickleOpt,
    key_map: Optional[str] = KeyMapOpt,
    json_out: bool = JsonOpt,
    debug: bool = DebugOpt,
):
    """Show architecture, priors, widths, params, MACs and pruning record of a checkpoint."""
    from ..api import inspect_checkpoint
    from ..config import parse_json_or_file

    info = inspect_checkpoint(checkpoint, arch, parse_json_or_file(arch_args), operator, unsafe_pickle, key_map)
    if json_out:
        print_json(info)
        return
    from ..api import InspectResult

    InspectResult(info, Path(checkpoint)).render(console())


def convert_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint: .safetensors, .pt/.pth/.ckpt/.tar."),
    arch: Optional[str] = ArchOpt,
    arch_args: Optional[str] = ArchArgsOpt,
    operator: Optional[Path] = OperatorOpt,
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file."),
    unsafe_pickle: bool = UnsafePickleOpt,
    key_map: Optional[str] = KeyMapOpt,
    force: bool = ForceOpt,
    json_out: bool = JsonOpt,
    debug: bool = DebugOpt,
):
    """Write a checkpoint as a self-describing mbdlprune file (for bench/finetune without --arch)."""
    from ..api import convert
    from ..config import parse_json_or_file
    from ..errors import MbdlError

    if not arch and not key_map:
        raise MbdlError("convert needs --arch", "pass --arch NAME (see `mbdlprune archs`) or file.py:factory")
    result = convert(checkpoint, arch=arch, arch_args=parse_json_or_file(arch_args), operator=operator, out=out,
                     force=force, unsafe_pickle=unsafe_pickle, key_map=key_map)
    if json_out:
        print_json({"output": str(result.out)})
    else:
        result.render(console())


def archs_cmd(json_out: bool = JsonOpt, debug: bool = DebugOpt):
    """List the built-in architectures and operator kinds."""
    from ..models import get_arch, list_archs
    from ..operators import list_operator_kinds

    rows = [{"name": n, "kind": get_arch(n).kind, "version": get_arch(n).version, "summary": get_arch(n).summary} for n in list_archs()]
    if json_out:
        print_json({"architectures": rows, "operators": list_operator_kinds()})
        return
    from rich.table import Table

    t = Table(title="architectures")
    for col in ("name", "kind", "version", "summary"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["kind"], str(r["version"]), r["summary"])
    c = console()
    c.print(t)
    c.print("operator kinds: " + ", ".join(list_operator_kinds()))


def register(app: typer.Typer) -> None:
    app.command("prune")(handle_errors(prune_cmd))
    app.command("inspect")(handle_errors(inspect_cmd))
    app.command("convert")(handle_errors(convert_cmd))
    app.command("archs")(handle_errors(archs_cmd))
