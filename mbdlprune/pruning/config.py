"""What to prune and how: :class:`PruneConfig`, validated in one line per problem (NaN included)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError



from .importances import IMPORTANCES  # noqa: E402


#: Default width multiple. oneDNN's AVX-512 convolution kernels (16 floats per vector) ran
#: widths 16/32/48/64 at 42-49 GMAC/s on the reference CPU but 20/24 at 25-35, and CUDA tensor
#: cores want multiples of 8; widths like 20, 42, 44 ran no faster than the unpruned model.
DEFAULT_ROUND_TO = 16

#: ``round_to`` value that chooses each group's width by timing its layers on the device
#: (:mod:`.widths`). Not the default: the widths it gives depend on the machine.
AUTO = "auto"


def parse_round_to(value: Any) -> Any:
    """``--round-to`` as given on a command line or in a file: an integer, ``"auto"`` (any case),
    or the value unchanged (for :meth:`PruneConfig.validate` to refuse)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == AUTO:
            return AUTO
        if text.isdigit():
            return int(text)
    return value


def is_auto(round_to: Any) -> bool:
    return isinstance(round_to, str) and round_to == AUTO


LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


#: Largest side of the input used to trace a fully convolutional prior (see trace_inputs).
TRACE_SIDE = 64


#: A layer may remove up to this fraction of its width less than asked, beyond what rounding
#: allows, before the prune counts as held back (see :func:`shortfall`).
SHORTFALL_TOLERANCE = 0.02


@dataclass
class PruneConfig:
    """What to prune and how; mirrors the ``prune`` command's options."""

    ratio: float = 0.5
    importance: str = "l1"
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int | str | None = DEFAULT_ROUND_TO  # an integer >= 1, or "auto"
    layer_ratios: dict[str, float] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    priors: list[str] | None = None
    max_layer_ratio: float = 0.9
    seed: int = 0
    allow_partial: bool = False

    def rounding(self) -> int:
        """The integer width multiple (1: none); ``auto`` rounds only to channel groups."""
        return self.round_to if _is_int(self.round_to) and self.round_to > 1 else 1

    def validate(self) -> None:
        """Refuse, in one line, options that are not what pruning can do (NaN included: ``nan < 0`` is False)."""
        _fraction(self.ratio, "--ratio", "(0, 1)", lambda r: 0.0 < r < 1.0,
                  "give the fraction of channels to remove, e.g. --ratio 0.5")
        if not isinstance(self.importance, str) or self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown --importance {self.importance!r}", f"use one of: {', '.join(IMPORTANCES.names())}")
        if not _is_int(self.iterative_steps) or self.iterative_steps < 1:
            raise ConfigError(f"--iterative-steps must be an integer >= 1, got {self.iterative_steps!r}", "use e.g. --iterative-steps 1")
        if self.round_to is not None and not is_auto(self.round_to) and (not _is_int(self.round_to) or self.round_to < 1):
            raise ConfigError(f"--round-to must be an integer >= 1 or 'auto', got {self.round_to!r}",
                              "use 1 to disable rounding, 8/16, or auto to choose widths by timing them on this machine")
        _fraction(self.max_layer_ratio, "max_layer_ratio", "(0, 1]", lambda r: 0.0 < r <= 1.0, "use e.g. 0.9")
        if not isinstance(self.global_pruning, bool):
            raise ConfigError(f"global_pruning must be true or false, got {self.global_pruning!r}", "pass --global or leave it out")
        if not isinstance(self.allow_partial, bool):
            raise ConfigError(f"allow_partial must be true or false, got {self.allow_partial!r}", "pass --allow-partial or leave it out")
        if not _is_int(self.seed):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}", "use e.g. --seed 0")
        if not isinstance(self.layer_ratios, dict):
            raise ConfigError("layer_ratios must map layer patterns to ratios", "write e.g. --layer-ratio 'prior.body.*=0.3'")
        for name, r in self.layer_ratios.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"layer ratio pattern {name!r} is not a module name or glob", "write e.g. --layer-ratio 'prior.body.*=0.3'")
            _fraction(r, f"layer ratio for {name!r}", "[0, 1)", lambda v: 0.0 <= v < 1.0, "fix the per-layer ratio, e.g. 0.3")
        for label, items in (("--ignore", self.ignore), ("--prior", self.priors or [])):
            if isinstance(items, str) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{label} must be a list of module names, got {items!r}", f"pass {label} NAME once per module")
        for pat in self.ignore:
            if not pat:
                raise ConfigError("--ignore '' names no module", "pass a module name or glob, e.g. --ignore 'prior.tail'")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fraction(v: Any, label: str, interval: str, ok: Callable[[float], bool], fix: str) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ConfigError(f"{label} must be a number in {interval}, got {v!r}", fix)
    if not math.isfinite(v):
        raise ConfigError(f"{label} must be a finite number in {interval}, got {v!r}", fix)
    if not ok(float(v)):
        raise ConfigError(f"{label} {v} is outside {interval}", fix)

#: Layers that keep every channel, and what the report says about them and about layers coupled to them.
FIXED = {
    "image": ("image layer", "coupled to the image layer"),
    "ignore": ("--ignore", "coupled to --ignore"),
    "one-channel": ("one channel", "coupled to the one-channel layer"),
}
