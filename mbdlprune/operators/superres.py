"""Super-resolution: y = decimate(filter(x)) by an integer factor, with an exact adjoint.

``filter = "box"`` averages f x f blocks (adjoint: nearest upsampling divided by f^2);
``filter = "gaussian"`` blurs circularly then keeps every f-th pixel (adjoint: zero-filled
upsampling then correlation with the kernel).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..config import check_keys
from ..errors import ConfigError, MbdlError
from . import register_operator
from .base import Operator
from .blur import circular_filter, gaussian_kernel, kernel_otf
from .common import (COMMON_KEYS, get_channels, get_float, get_image_size, get_int, get_noise_sigma,
                     get_str, odd_kernel_size, reject_with, where_of)

SUPERRES_KEYS = (*COMMON_KEYS, "channels", "factor", "filter", "kernel_size", "kernel_sigma")
FILTERS = ("box", "gaussian")


class SuperResOperator(Operator):
    """Downsampling by ``factor``: (N, C, H, W) -> (N, C, H/f, W/f)."""

    kind = "superres"

    def __init__(self, image_size: tuple[int, int], channels: int, factor: int, kernel: np.ndarray | None = None,
                 noise_sigma: float = 0.0, spec: dict[str, Any] | None = None):
        super().__init__(image_size, channels, noise_sigma, spec)
        self.factor = int(factor)
        self.filter = "box" if kernel is None else "gaussian"
        if kernel is not None:
            self.register_buffer("kernel", torch.as_tensor(kernel, dtype=torch.float32))
            self.register_buffer("otf", torch.as_tensor(kernel_otf(kernel, *self.image_size)))

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """(C, H/f, W/f) of one measurement."""
        return (self.channels, self.image_size[0] // self.factor, self.image_size[1] // self.factor)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(x)
        f = self.factor
        if self.filter == "box":
            return F.avg_pool2d(x, f)
        return circular_filter(x, self.otf)[..., ::f, ::f]

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        f = self.factor
        if y.dim() != 4 or tuple(y.shape[1:]) != self.measurement_shape:
            raise MbdlError(f"measurement of shape {tuple(y.shape)} does not fit the superres operator "
                            f"(expects (N, {', '.join(map(str, self.measurement_shape))}))",
                            "check factor and image_size in the operator spec")
        if self.filter == "box":
            return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / (f * f)
        up = y.new_zeros((*y.shape[:2], *self.image_size))
        up[..., ::f, ::f] = y
        return circular_filter(up, self.otf, adjoint=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}, filter={self.filter}"


@register_operator("superres")
def build_superres(table: Mapping[str, Any], files) -> SuperResOperator:
    """Build the super-resolution operator from an ``[operator]`` table."""
    where = where_of("superres")
    check_keys(table, SUPERRES_KEYS, where)
    h, w = get_image_size(table, where)
    spec: dict[str, Any] = {"kind": "superres", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where),
                            "channels": get_channels(table, where)}
    factor = get_int(table, "factor", 2, where, minimum=2, maximum=min(h, w))
    if h % factor or w % factor:
        raise ConfigError(f"{where}: factor {factor} does not divide image_size {[h, w]}",
                          f"choose a factor that divides both {h} and {w}, or crop the images")
    filt = get_str(table, "filter", "box", where)
    if filt not in FILTERS:
        raise ConfigError(f"{where}: unknown filter {filt!r}", f"use one of {', '.join(FILTERS)}")
    spec.update(factor=factor, filter=filt)
    kernel = None
    if filt == "gaussian":
        sigma = get_float(table, "kernel_sigma", factor / 2, where, minimum=0.0, min_open=True)
        size = get_int(table, "kernel_size", 2 * math.ceil(3 * sigma) + 1, where, minimum=1)
        size = odd_kernel_size(size, "kernel_size", where, (h, w))
        spec.update(kernel_size=size, kernel_sigma=sigma)
        kernel = gaussian_kernel(size, sigma)
    else:
        reject_with(table, ("kernel_size", "kernel_sigma"), 'with filter = "box"', where)
    return SuperResOperator((h, w), spec["channels"], factor, kernel, spec["noise_sigma"], spec)
