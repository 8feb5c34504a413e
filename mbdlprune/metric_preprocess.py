"""What a metric definition does to images before they are scored, and the ground truth it refuses.

Centre crops (:func:`center_crop`; fastMRI's W x W crop, :func:`width_crop`), the reference
paper's min-max normalisation (:func:`paper_normalize`), and the one-line
:class:`~mbdlprune.errors.DataError` refusals of ground truth a score would be undefined on
(constant images under min-max normalisation, NaN/Inf values). Used by
:meth:`mbdlprune.metric_definitions.MetricDefinition.prepare` and :mod:`mbdlprune.metrics`.
"""

from __future__ import annotations

from typing import Any

import torch

from .metric_primitives import _pair, magnitude


# ------------------------------------------------------------------ crops
def center_crop(x: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """Centre crop of (N, C, H, W) to ``size`` (int: square); ``None`` is the largest square."""
    h, w = x.shape[-2:]
    if size is None:
        ch = cw = min(h, w)
    elif isinstance(size, int):
        ch = cw = size
    else:
        ch, cw = int(size[0]), int(size[1])
    if ch > h or cw > w or ch < 1 or cw < 1:
        raise ValueError(f"cannot crop a {h}x{w} image to {ch}x{cw}")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def width_crop(x: torch.Tensor) -> torch.Tensor:
    """fastMRI's evaluation crop: the centre W x W of (N, C, H, W) images (H >= W needed)."""
    h, w = x.shape[-2:]
    if h < w:
        from .errors import DataError

        raise DataError(f"images of {h}x{w} are wider than tall: the fastmri metric crops them to W x W "
                        "as fastMRI's evaluate.py does, which needs H >= W",
                        "use --metric plain, or evaluate images with at least as many rows as columns")
    return center_crop(x, (w, w))


# ------------------------------------------------------------------ paper normalisation
def _minmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.reshape(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.reshape(-1, 1, 1, 1)
    span = hi - lo
    span = torch.where(span > 0, span, torch.ones_like(span))
    return (x - lo) / span


def paper_normalize(x_hat: Any, x: Any, crop: int | tuple[int, int] | None | bool = None,
                    complex_channels: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference paper's evaluation preprocessing; returns ``(x_hat', x')``.

    1. magnitude of complex (2-channel) images; 2. centre crop (``crop=None``: the largest
    centred square; an int or (h, w): that size; ``False``: no crop); 3. background zeroed in
    the reconstruction wherever the ground truth is exactly 0; 4. each image min-max normalised
    to [0, 1] on its own (reconstruction and ground truth separately). Use with peak 1.
    """
    a, b = _pair(x_hat, x)
    a, b = magnitude(a, complex_channels), magnitude(b, complex_channels)
    if crop is not False:
        size = None if crop is True else crop
        a, b = center_crop(a, size), center_crop(b, size)
    _refuse_constant(b, "the paper metric's min-max normalisation")
    a = torch.where(b == 0, torch.zeros_like(a), a)
    return _minmax(a), _minmax(b)


def _refuse_constant(b: torch.Tensor, what: str) -> None:
    from .errors import DataError

    flat = b.detach().reshape(b.shape[0], -1)
    const = flat.max(dim=1).values == flat.min(dim=1).values
    if bool(const.any()):
        i = int(const.nonzero()[0])
        value = float(flat[i, 0])
        raise DataError(f"ground-truth image {i + 1} of {b.shape[0]} is constant (every pixel {value:g}): {what} is undefined",
                        "drop empty or constant slices from the evaluation data, or use --metric plain")


def _refuse_nonfinite_truth(x: torch.Tensor) -> None:
    from .errors import DataError

    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise DataError(f"ground-truth image {i + 1} of {x.shape[0]} holds NaN/Inf values",
                        "drop it from the evaluation data (mbdlprune.data drops such slices when it reads files)")
