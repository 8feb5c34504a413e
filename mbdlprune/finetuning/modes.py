"""Fine-tuning modes, by name: each is a default weighting of loss terms (see :mod:`.losses`).

The registry behind ``--mode`` (its help and checks); no torch here, so the command line can
list the modes without loading it.
"""

from __future__ import annotations

from ..registry import Registry

#: fine-tuning mode -> default term weights
MODES: Registry[dict[str, float]] = Registry("fine-tuning mode")
MODES.register("supervised", {"supervised": 1.0})
MODES.register("distill", {"distill": 1.0})
MODES.register("self-supervised", {"mc": 1.0, "equivariance": 1.0})
MODES.register("distill+self-supervised", {"distill": 1.0, "mc": 1.0, "equivariance": 1.0})


def mode_help() -> str:
    return " | ".join(MODES.names())
