"""Fine-tuning settings and results: :class:`FinetuneConfig` (strict, validated) and :class:`FinetuneResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import StepConfig
from ..errors import ConfigError

OPTIMIZERS = ("adam", "adamw")
BACKWARDS = ("jfb", "implicit")


@dataclass
class FinetuneConfig(StepConfig):
    """Every setting that shapes a fine-tuning run (stored in the record and the resume state).

    ``loss`` is the pixel loss of the supervised/distill terms (l1, l2, smoothl1, ssim);
    ``weights`` overrides the mode's term weights (e.g. ``{"equivariance": 0.5}``);
    ``deq_backward`` ``None`` keeps the checkpoint's setting. ``metric``: the validation PSNR's
    definition (``auto``: ``fastmri`` on raw k-space, ``plain`` on images). ``spectral_target``:
    the largest singular value of a DEQ iteration's Jacobian the ``spectral`` term lets pass
    unpenalised. ``kspace_scale`` and ``coil_maps`` apply to raw k-space training data, as in
    :class:`~mbdlprune.benchmark.BenchConfig`.
    """

    mode: str = "supervised"
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_schedule: str = "none"
    optimizer: str = "adam"
    loss: str = "smoothl1"
    weights: dict[str, float] = field(default_factory=dict)
    mc_norm: str = "l1"
    eq_noise: bool = True
    spectral_target: float = 0.5
    device: str = "auto"
    bf16: bool = False
    checkpointing: bool = False
    deq_backward: str | None = None
    fit: str = "error"
    axis: int = 2
    normalize: str = "max"
    metric: str = "auto"
    kspace_scale: str = "auto"
    coil_maps: str = "acs"

    #: settings that may change between an interrupted run and its resumption
    RESUMABLE_CHANGES = ("device", "epochs")

    WHERE = "fine-tuning config"

    def validate(self) -> None:
        from ..metrics import metric_names
        from .losses import PIXEL_LOSSES, mode_weights

        METRIC_NAMES = tuple(metric_names())
        from .modes import MODES
        from .schedules import SCHEDULES

        def num(key, lo=None, integer=False, open_lo=False, allow_none=False):
            v = getattr(self, key)
            if v is None and allow_none:
                return
            ok_type = (int,) if integer else (int, float)
            if isinstance(v, bool) or not isinstance(v, ok_type) or (not integer and v != v):
                raise ConfigError(f"{key} must be a {'whole ' if integer else ''}number, got {v!r}", f"fix {key}")
            if lo is not None and (v <= lo if open_lo else v < lo):
                raise ConfigError(f"{key} must be {'>' if open_lo else '>='} {lo}, got {v}", f"set {key} {'above' if open_lo else 'to at least'} {lo}")

        for key in ("mode", "lr_schedule", "optimizer", "loss", "mc_norm", "device", "fit", "normalize", "metric",
                    "kspace_scale", "coil_maps"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"{key} must be a string, got {getattr(self, key)!r:.60}", f"fix {key}")
        MODES.get(self.mode)
        num("epochs", 1, integer=True)
        num("lr", 0, open_lo=True)
        num("batch_size", 1, integer=True)
        num("val_fraction", 0)
        if self.val_fraction >= 1:
            raise ConfigError(f"val_fraction must be below 1, got {self.val_fraction}", "use e.g. 0.2")
        num("seed", 0, integer=True)
        num("weight_decay", 0)
        num("grad_clip", 0, open_lo=True, allow_none=True)
        num("axis", 0, integer=True)
        num("spectral_target", 0, open_lo=True)
        for key, allowed in (("lr_schedule", SCHEDULES.names()), ("optimizer", OPTIMIZERS), ("loss", PIXEL_LOSSES),
                             ("mc_norm", ("l1", "l2")), ("fit", ("error", "crop", "pad", "crop-pad")),
                             ("normalize", ("max", "volume", "none")), ("metric", ("auto", *METRIC_NAMES)),
                             ("kspace_scale", ("auto", "none", "max", "volume")), ("coil_maps", ("acs", "espirit"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}", f"use one of: {', '.join(allowed)}")
        if self.deq_backward is not None and self.deq_backward not in BACKWARDS:
            raise ConfigError(f"unknown DEQ backward {self.deq_backward!r}", "use jfb or implicit")
        if not isinstance(self.weights, Mapping):
            raise ConfigError("weights must be a JSON object of loss names to numbers", 'write e.g. {"mc": 1.0, "equivariance": 0.5}')
        for key in ("eq_noise", "bf16", "checkpointing"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key} must be true or false, got {getattr(self, key)!r}", f"fix {key}")
        mode_weights(self.mode, self.weights)  # unknown names fail here


@dataclass
class FinetuneResult:
    """The fine-tuned model (best validation weights), its metadata, and the record."""

    out: Path | None
    model: Any
    operator: Any
    meta: dict[str, Any]
    record: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The summary and the full record, for JSON."""
        return {**self.summary(), "record": self.record}

    def render(self, console) -> None:
        from ..render import render_finetune

        render_finetune(self, console)

    def summary(self) -> dict[str, Any]:
        r = self.record
        v = r["validation"]
        return {
            "out": str(self.out) if self.out else None,
            "mode": r["mode"],
            "epochs": r["epochs"],
            "val_metric": v["metric"],
            "before": v.get("before"),
            "best": v.get("best"),
            "best_epoch": v.get("best_epoch"),
            "epoch_time_s": r["epoch_time_s"],
            "train_slices": r["data"]["train"]["slices"],
            "val_slices": (r["data"].get("val") or {}).get("slices", 0),
            "warnings": list(self.warnings),
        }
