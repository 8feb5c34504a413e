"""Small valid specs for every operator kind, so tests and demos can build each one quickly."""

from __future__ import annotations

import copy
from typing import Any

#: kind -> a small ``[operator]`` table that builds in milliseconds.
SMALL_SPECS: dict[str, dict[str, Any]] = {
    "mri": {"kind": "mri", "image_size": [32, 32], "acceleration": 4, "mask": "uniform", "coils": 4,
            "noise_sigma": 0.01},
    "denoise": {"kind": "denoise", "image_size": [32, 32], "channels": 1, "noise_sigma": 0.1},
    "deblur": {"kind": "deblur", "image_size": [32, 32], "kernel": "gaussian", "kernel_size": 5,
               "kernel_sigma": 1.0, "noise_sigma": 0.01},
    "inpaint": {"kind": "inpaint", "image_size": [32, 32], "mask": "random", "fraction": 0.5, "seed": 0},
    "superres": {"kind": "superres", "image_size": [32, 32], "factor": 2, "filter": "box"},
    "ct": {"kind": "ct", "image_size": [32, 32], "angles": 30, "noise_sigma": 0.01},
}


def small_spec(kind: str) -> dict[str, Any]:
    """A fresh copy of the small table for ``kind`` (KeyError if there is none)."""
    return copy.deepcopy(SMALL_SPECS[kind])


def small_operator(kind: str):
    """Build the small operator of ``kind``."""
    from . import load_operator

    return load_operator(small_spec(kind))
