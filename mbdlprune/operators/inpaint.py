"""Inpainting: y = m ⊙ x with a fixed 0/1 pixel mask shared by all channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import check_keys
from ..errors import ConfigError
from . import register_operator
from .base import Operator
from .common import (COMMON_KEYS, get_channels, get_float, get_image_size, get_int, get_noise_sigma,
                     get_str, reject_with, where_of)
from .files import SpecFiles, binary_mask, check_mask_coverage, is_embedded_ref, looks_like_path

INPAINT_KEYS = (*COMMON_KEYS, "channels", "mask", "fraction", "seed")


def random_pixel_mask(height: int, width: int, fraction: float, seed: int) -> np.ndarray:
    """Keep exactly round(fraction * H * W) pixels chosen by a seeded permutation."""
    keep = int(round(fraction * height * width))
    mask = np.zeros(height * width, dtype=np.float32)
    mask[np.random.default_rng(seed).permutation(height * width)[:keep]] = 1
    return mask.reshape(height, width)


class InpaintOperator(Operator):
    """Pixel masking; self-adjoint. Buffer ``mask`` (1, 1, H, W); noise lands on kept pixels only."""

    kind = "inpaint"

    def __init__(self, image_size: tuple[int, int], channels: int, mask: np.ndarray,
                 noise_sigma: float = 0.0, spec: dict[str, Any] | None = None):
        super().__init__(image_size, channels, noise_sigma, spec)
        self.register_buffer("mask", torch.as_tensor(np.asarray(mask), dtype=torch.float32).reshape(1, 1, *self.image_size))

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(x)
        return x * self.mask

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(y)
        return y * self.mask

    def noise_mask(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask


@register_operator("inpaint")
def build_inpaint(table: Mapping[str, Any], files: SpecFiles) -> InpaintOperator:
    """Build the inpainting operator from an ``[operator]`` table."""
    where = where_of("inpaint")
    check_keys(table, INPAINT_KEYS, where)
    h, w = get_image_size(table, where)
    spec: dict[str, Any] = {"kind": "inpaint", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where),
                            "channels": get_channels(table, where)}
    mask = get_str(table, "mask", "random", where)
    if mask == "random":
        fraction = get_float(table, "fraction", 0.5, where, minimum=0.0, maximum=1.0, min_open=True)
        seed = get_int(table, "seed", 0, where, minimum=0, maximum=2**63 - 1)
        arr = random_pixel_mask(h, w, fraction, seed)
        spec.update(mask="random", fraction=fraction, seed=seed)
    elif looks_like_path(mask) or is_embedded_ref(mask) or files.from_model_file:
        arr, ref = files.load(mask, "mask", where, datasets=("mask",))
        reject_with(table, ("fraction", "seed"), "with a mask file", where)
        arr = binary_mask(np.squeeze(arr), "mask", where)
        if arr.shape != (h, w):
            raise ConfigError(f"{where}: mask file has shape {arr.shape}, expected ({h}, {w})",
                              "save an H x W mask matching image_size, or change image_size")
        check_mask_coverage(arr, "mask", where)
        spec["mask"] = ref
    else:
        raise ConfigError(f"{where}: unknown mask {mask!r}", 'use "random" or a path to a .npy/.nii/.nii.gz/.h5 mask')
    return InpaintOperator((h, w), spec["channels"], arr, spec["noise_sigma"], spec)
