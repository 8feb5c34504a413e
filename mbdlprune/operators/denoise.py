"""Denoising: A = identity, so y = x + noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import check_keys
from . import register_operator
from .base import Operator
from .common import COMMON_KEYS, get_channels, get_image_size, get_noise_sigma, where_of


class IdentityOperator(Operator):
    """The identity; the measurement is the image plus Gaussian noise of ``noise_sigma``."""

    kind = "denoise"

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(x)
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(y)
        return y


@register_operator("denoise")
def build_denoise(table: Mapping[str, Any], files) -> IdentityOperator:
    """Build the denoising operator from an ``[operator]`` table."""
    where = where_of("denoise")
    check_keys(table, (*COMMON_KEYS, "channels"), where)
    h, w = get_image_size(table, where)
    spec = {"kind": "denoise", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where),
            "channels": get_channels(table, where)}
    return IdentityOperator((h, w), spec["channels"], spec["noise_sigma"], spec)
