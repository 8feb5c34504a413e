"""Deblurring: circular convolution with a fixed kernel, applied per channel through the FFT."""

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
                     get_str, odd_kernel_size, reject_with, where_of)
from .files import SpecFiles, is_embedded_ref, looks_like_path

BLUR_KEYS = (*COMMON_KEYS, "channels", "kernel", "kernel_size", "kernel_sigma")


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Isotropic Gaussian (size, size) kernel summing to 1."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def kernel_otf(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-spectrum transfer function (H, W//2+1, 2) of a centred kernel wrapped to the origin."""
    kh, kw = kernel.shape
    pad = np.zeros((height, width))
    pad[:kh, :kw] = kernel
    pad = np.roll(pad, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    otf = np.fft.rfft2(pad)
    return np.stack((otf.real, otf.imag), -1).astype(np.float32)


def circular_filter(x: torch.Tensor, otf: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
    """Filter (..., H, W) with a real kernel given by its half spectrum; ``adjoint`` correlates instead."""
    k = torch.complex(otf[..., 0], -otf[..., 1] if adjoint else otf[..., 1])
    return torch.fft.irfft2(torch.fft.rfft2(x) * k, s=x.shape[-2:])


class BlurOperator(Operator):
    """y = k ⊛ x (circular); the adjoint is circular correlation with k. Buffers: ``kernel``, ``otf``."""

    kind = "deblur"

    def __init__(self, image_size: tuple[int, int], channels: int, kernel: np.ndarray,
                 noise_sigma: float = 0.0, spec: dict[str, Any] | None = None):
        super().__init__(image_size, channels, noise_sigma, spec)
        self.register_buffer("kernel", torch.as_tensor(np.asarray(kernel), dtype=torch.float32))
        self.register_buffer("otf", torch.as_tensor(kernel_otf(np.asarray(kernel, dtype=np.float64), *self.image_size)))

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(x)
        return circular_filter(x, self.otf)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        self.check_image(y)
        return circular_filter(y, self.otf, adjoint=True)


def kernel_from_spec(table: Mapping[str, Any], files: SpecFiles, hw: tuple[int, int], where: str,
                     spec: dict[str, Any], default_size: int = 9, default_sigma: float = 1.6) -> np.ndarray:
    """Read ``kernel`` ("gaussian" with kernel_size/kernel_sigma, or a 2-D array file normalised to sum 1)."""
    kernel = get_str(table, "kernel", "gaussian", where)
    if kernel == "gaussian":
        size = odd_kernel_size(get_int(table, "kernel_size", default_size, where, minimum=1), "kernel_size", where, hw)
        sigma = get_float(table, "kernel_sigma", default_sigma, where, minimum=0.0, min_open=True)
        spec.update(kernel="gaussian", kernel_size=size, kernel_sigma=sigma)
        return gaussian_kernel(size, sigma)
    if not (looks_like_path(kernel) or is_embedded_ref(kernel) or files.from_model_file):
        raise ConfigError(f"{where}: unknown kernel {kernel!r}", 'use "gaussian" or a path to a .npy/.nii/.nii.gz/.h5 kernel')
    arr, ref = files.load(kernel, "kernel", where, datasets=("kernel",))
    reject_with(table, ("kernel_size", "kernel_sigma"), "with a kernel file", where)
    arr = np.squeeze(arr)
    if arr.ndim != 2 or arr.dtype.kind == "c":
        raise ConfigError(f"{where}: kernel file must hold a real 2-D array, got shape {arr.shape} ({arr.dtype})",
                          "save the kernel as a 2-D real array")
    for n, axis in zip(arr.shape, ("height", "width")):
        odd_kernel_size(n, f"kernel {axis}", where, hw)
    arr = arr.astype(np.float64)
    total = arr.sum()
    if not np.isfinite(arr).all() or abs(total) < 1e-12:
        raise ConfigError(f"{where}: kernel file sums to {total:g}, so it cannot be normalised to sum 1",
                          "save a kernel with a non-zero, finite sum")
    spec["kernel"] = ref
    return arr / total


@register_operator("deblur")
def build_deblur(table: Mapping[str, Any], files: SpecFiles) -> BlurOperator:
    """Build the deblurring operator from an ``[operator]`` table."""
    where = where_of("deblur")
    check_keys(table, BLUR_KEYS, where)
    h, w = get_image_size(table, where)
    spec: dict[str, Any] = {"kind": "deblur", "image_size": [h, w], "noise_sigma": get_noise_sigma(table, where),
                            "channels": get_channels(table, where)}
    kernel = kernel_from_spec(table, files, (h, w), where, spec)
    return BlurOperator((h, w), spec["channels"], kernel, spec["noise_sigma"], spec)
