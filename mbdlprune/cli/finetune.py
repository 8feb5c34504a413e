"""CLI wiring for ``finetune`` (thin: parse options, call :func:`mbdlprune.finetuning.finetune`, print)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..finetuning.modes import mode_help
from ..finetuning.schedules import schedule_help
from ..metric_definitions import metric_help
from .common import DebugOpt, DeviceOpt, JsonOpt, OperatorOpt, UnsafePickleOpt, console, handle_errors, print_json

MODE_HELP = mode_help()


def _parse_weights(text: Optional[str]) -> dict:
    from ..config import parse_json_or_file

    return parse_json_or_file(text, "--weights", '{"mc": 1.0, "equivariance": 0.5}')


def finetune_cmd(
    pruned: Path = typer.Argument(..., help="Pruned model (.safetensors written by `mbdlprune prune`)."),
    mode: str = typer.Option(..., "--mode", help=MODE_HELP),
    data: List[Path] = typer.Option(..., "--data", help="Training data: images (NIfTI / .npy / .npz) or raw k-space (fastMRI .h5 / .npz with kspace: undersampled with the model's mask rule, RSS targets for supervised); file or folder; repeatable."),
    out: Path = typer.Option(..., "-o", "--out", help="Output .safetensors file (best validation weights)."),
    val_data: List[Path] = typer.Option([], "--val-data", help="Separate validation files/folders (instead of --val-fraction); repeatable."),
    eval_data: List[Path] = typer.Option([], "--eval-data", help="Files kept for evaluation: any overlap with training/validation is refused; repeatable."),
    operator: Optional[Path] = OperatorOpt,
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="The original (unpruned) checkpoint, for distill modes."),
    arch: Optional[str] = typer.Option(None, "--arch", help="file.py:factory, only for models built by user code (runs that code)."),
    epochs: int = typer.Option(..., "--epochs", help="Number of epochs."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate (Adam)."),
    batch_size: int = typer.Option(1, "--batch-size"),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Fraction of the --data files held out for validation (split by file)."),
    seed: int = typer.Option(0, "--seed"),
    loss: str = typer.Option("smoothl1", "--loss", help="Pixel loss of supervised/distill terms: l1, l2, smoothl1, ssim (1 - SSIM)."),
    weights: Optional[str] = typer.Option(None, "--weights", help='Loss weights as JSON, e.g. \'{"mc": 1, "equivariance": 0.5}\'; adds terms too, e.g. \'{"jacobian": 0.05}\' (DEQ only).'),
    spectral_target: float = typer.Option(0.5, "--spectral-target", help="DEQ spectral term: the Jacobian's largest singular value it leaves unpenalised (with --weights '{\"spectral\": w}')."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Clip the gradient norm to this value."),
    lr_schedule: str = typer.Option("none", "--lr-schedule", help=f"Learning-rate schedule: {schedule_help()}."),
    device: str = DeviceOpt,
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast for the forward pass."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing (unrolled networks)."),
    deq_backward: Optional[str] = typer.Option(None, "--deq-backward", help="DEQ gradients: jfb (Jacobian-free) or implicit."),
    fit: str = typer.Option("error", "--fit", help="Fit slices to the operator's image size: error, crop, pad, crop-pad."),
    axis: int = typer.Option(2, "--axis", help="Slicing axis of 3-D/4-D NIfTI volumes."),
    normalize: str = typer.Option("max", "--normalize", help="Image files: max (each slice to max magnitude 1), volume, or none."),
    kspace_scale: str = typer.Option("auto", "--kspace-scale", help="Raw k-space files: none (raw units, fastMRI's VarNet), max (each slice to 1), volume; auto: none for e2e-varnet, else max."),
    coil_maps: str = typer.Option("acs", "--coil-maps", help="Raw multi-coil k-space, models that take coil maps from the operator: acs or espirit."),
    metric: str = typer.Option("auto", "--metric", help=f"Validation PSNR definition: {metric_help()}."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.state.safetensors (after its last epoch: only write the output)."),
    unsafe_pickle: bool = UnsafePickleOpt,
    key_map: Optional[str] = typer.Option(None, "--key-map", help="Rename the --teacher checkpoint's tensors first: a shipped map (e.g. mbdl-pruning) or a TOML file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output; without --resume, also discard an interrupted run's state and start over."),
    json_out: bool = JsonOpt,
    debug: bool = DebugOpt,
):
    """Fine-tune a pruned model on data (supervised, distillation or self-supervised) and keep the best weights."""
    from ..api import finetune

    result = finetune(
        pruned, data=list(data), out=out, operator=operator, teacher=teacher, arch=arch,
        val_data=list(val_data) or None, eval_data=list(eval_data) or None, force=force, resume=resume,
        progress=not json_out, unsafe_pickle=unsafe_pickle, teacher_key_map=key_map,
        mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, val_fraction=val_fraction, seed=seed, loss=loss,
        weights=_parse_weights(weights), weight_decay=weight_decay, grad_clip=grad_clip, lr_schedule=lr_schedule,
        device=device, bf16=bf16, checkpointing=checkpointing, deq_backward=deq_backward, fit=fit, axis=axis,
        normalize=normalize, kspace_scale=kspace_scale, coil_maps=coil_maps, metric=metric,
        spectral_target=spectral_target,
    )
    import os

    if int(os.environ.get("RANK", "0") or 0) != 0:
        return
    if json_out:
        print_json(result.to_dict())
    else:
        result.render(console())


def register(app: typer.Typer) -> None:
    app.command("finetune")(handle_errors(finetune_cmd))
