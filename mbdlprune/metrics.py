"""Image-quality metrics: PSNR and SSIM per image, magnitudes, and the paper's normalisation.

Shapes: a 4-D tensor is (N, C, H, W); a 3-D tensor is (N, H, W) (single-channel images);
a 2-D tensor is one (H, W) image. Every metric returns a tensor of shape (N,), one value
per image. Complex images are stored as two channels (real, imaginary); :func:`magnitude`
turns them into one-channel magnitude images.

Definitions (the same as scikit-image's ``peak_signal_noise_ratio`` and
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``,
re-derived here so scikit-image is not a dependency):

* PSNR = 10 log10(peak^2 / MSE), MSE averaged over all pixels and channels of one image.
  ``peak=None`` means the data range (max - min) of the ground-truth image, per image.
* SSIM (Wang et al. 2004): local means, variances and covariance under a normalised
  Gaussian window (11 x 11, sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the data
  range; the SSIM map is averaged over the positions where the window lies fully inside the
  image ("valid" filtering), then over channels.

Metric definitions (:data:`METRICS`, :func:`get_definition`): ``plain`` and ``paper`` score each
image on its own; ``fastmri`` is fastMRI's ``evaluate.py`` (``fastmri.evaluate``): per volume,
PSNR = 10 log10(maxval^2 / MSE) with maxval = the ground-truth volume's maximum and the MSE over
the whole volume, SSIM = the mean over slices of scikit-image's default ``structural_similarity``
(7 x 7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03) with data range maxval, NMSE =
||gt - pred||^2 / ||gt||^2, after a centre crop to W x W. :func:`volume_metrics` gives those
and the per-slice values; :func:`compute_metrics` scores a batch of slices (pass the volume's
``maxval``).

Degenerate images (defined values, never a silent division by zero):

* a constant ground-truth image has data range 0: the ``plain`` definition then uses max |x|
  as the peak, and 1 for an all-zero image (see :func:`data_range`); a perfect reconstruction
  scores PSNR ``inf``.
* the ``paper`` definition min-max normalises each ground-truth image, which is undefined for
  a constant one: :func:`paper_normalize` and :func:`compute_metrics` raise a one-line
  :class:`~mbdlprune.errors.DataError` naming the image (an empty slice is not an image to score).
* the ``fastmri`` definition needs a positive ground-truth maximum (maxval): an all-zero (or
  all-negative) volume, or slice when no volume maximum is given, raises DataError; NMSE of an
  all-zero ground-truth slice is ``inf`` (0 if the reconstruction is all zero too).
* a ground-truth image with NaN/Inf values is refused by :func:`compute_metrics` (DataError).
* a reconstruction with NaN/Inf values (a diverged model) scores NaN for PSNR and SSIM;
  :func:`nonfinite_note` gives the line a report must print next to such scores.

Modules: :mod:`.metric_primitives` (PSNR, SSIM, MSE, NMSE per image), :mod:`.metric_preprocess`
(crops, the paper's normalisation, refused ground truth), :mod:`.metric_definitions` (the
definitions, torch-free). This module scores under a definition (:func:`compute_metrics`,
:func:`volume_metrics`) and re-exports the others' names.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .metric_definitions import FASTMRI, K1, K2, METRICS, PAPER, PLAIN, WIDTH_CROP  # noqa: F401  (re-exported)
from .metric_definitions import MetricDefinition, get_definition, metric_names  # noqa: F401
from .metric_preprocess import _refuse_nonfinite_truth, center_crop, paper_normalize, width_crop
from .metric_primitives import _nmse, as_batch, data_range, gaussian_window, magnitude, mse, nmse, psnr, ssim, uniform_window

__all__ = [
    "FASTMRI",
    "K1",
    "K2",
    "METRICS",
    "MetricDefinition",
    "PLAIN",
    "PAPER",
    "WIDTH_CROP",
    "as_batch",
    "center_crop",
    "compute_metrics",
    "data_range",
    "gaussian_window",
    "get_definition",
    "magnitude",
    "metric_names",
    "mse",
    "nmse",
    "nonfinite_note",
    "paper_normalize",
    "psnr",
    "ssim",
    "uniform_window",
    "volume_metrics",
    "width_crop",
]


# ------------------------------------------------------------------------ definitions
def _fit_window(window: int, hw: tuple[int, int]) -> int:
    """The SSIM window, shrunk for tiny images to the largest odd size that fits."""
    h, w = hw
    if min(h, w) < window:
        window = max(1, min(h, w) - (1 - min(h, w) % 2))
    return window


def _maxvals(maxval: float | torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """Per-image maxval (N,) for the per-volume definition: given, or each ground-truth image's maximum."""
    from .errors import DataError

    n = b.shape[0]
    if maxval is None:
        mv = b.reshape(n, -1).max(dim=1).values
        bad = ~(mv > 0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise DataError(f"ground-truth image {i + 1} of {n} has maximum {float(mv[i]):g}: the fastmri metric's "
                            "maxval (the ground truth's maximum) must be positive",
                            "pass the volume's maximum as maxval, or drop empty slices from the evaluation data")
        return mv
    mv = torch.as_tensor(maxval, dtype=b.dtype, device=b.device).detach()
    if mv.dim() == 0:
        mv = mv.expand(n)
    if mv.shape != (n,):
        raise ValueError(f"maxval must be a number or one value per image, got shape {tuple(mv.shape)}")
    if not bool((torch.isfinite(mv) & (mv > 0)).all()):
        raise DataError(f"maxval must be positive and finite, got {maxval!r}",
                        "pass the ground-truth volume's maximum (fastMRI's gt.max())")
    return mv


def _volume_scores(a: torch.Tensor, b: torch.Tensor, d: MetricDefinition, peak: torch.Tensor) -> dict[str, torch.Tensor]:
    window = _fit_window(d.ssim_window, a.shape[-2:])
    return {
        "psnr": psnr(a, b, peak=peak),
        "ssim": ssim(a, b, window=window, sigma=d.ssim_sigma or 1.5, data_range=peak, k1=d.ssim_k1, k2=d.ssim_k2,
                     sample_covariance=d.ssim_sample_covariance, weights=d.ssim_weights),
        "nmse": nmse(a, b),
    }


def _checked_pair(d: MetricDefinition, x_hat: Any, x: Any, maxval) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``d`` compares, after refusing a ``maxval`` it does not take and NaN/Inf ground truth."""
    if maxval is not None and not d.per_volume:
        raise ValueError(f"maxval applies to per-volume metrics (fastmri), not to {d.name!r}")
    _refuse_nonfinite_truth(as_batch(x))
    return d.prepare(x_hat, x)


def compute_metrics(x_hat: Any, x: Any, definition: str | MetricDefinition = "plain",
                    maxval: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"psnr": (N,), "ssim": (N,)}`` per image under a metric definition (no gradients).

    ``fastmri`` adds ``"nmse"`` and scores each image with ``maxval`` as PSNR peak and SSIM data
    range: pass the ground-truth volume's maximum (a number, or one value per image) when the
    batch holds slices of volumes; without it each image's own maximum is used (each image a
    one-slice volume). ``maxval`` is for ``fastmri`` only. Ground truth with NaN/Inf values,
    (``paper``) a constant ground-truth image and (``fastmri``) a non-positive maximum raise
    DataError; a NaN/Inf reconstruction scores NaN (see the module notes and :func:`nonfinite_note`).
    """
    d = get_definition(definition)
    with torch.no_grad():
        a, b = _checked_pair(d, x_hat, x, maxval)
        if d.per_volume:
            return _volume_scores(a, b, d, _maxvals(maxval, b))
        peak = d.peak_value()
        window = _fit_window(d.ssim_window, a.shape[-2:])
        out = {
            "psnr": psnr(a, b, peak=peak),
            "ssim": ssim(a, b, window=window, sigma=d.ssim_sigma, data_range=peak, k1=d.ssim_k1, k2=d.ssim_k2),
        }
    return out


def volume_metrics(pred: Any, gt: Any, definition: str | MetricDefinition = "fastmri",
                   maxval: float | None = None) -> dict[str, Any]:
    """Scores of one volume: ``pred`` and ``gt`` are its slices, (S, H, W) or (S, C, H, W).

    Returns ``{"metric", "slices", "maxval", "psnr", "ssim", "nmse", "per_slice"}``: the volume's
    values (floats) and ``per_slice = {"psnr", "ssim", "nmse"}`` ((S,) tensors). For ``fastmri``
    these are fastMRI's evaluate.py values: maxval = ``gt.max()`` over the (cropped) volume
    unless given; PSNR = 10 log10(maxval^2 / MSE) with the MSE over the whole volume; SSIM = the
    mean of the slices' SSIM (each with data range maxval); NMSE = ||gt - pred||^2 / ||gt||^2
    over the volume; the per-slice values use the same maxval. For the per-image definitions
    (``plain``, ``paper``) the volume's PSNR and SSIM are the means over its slices, maxval is
    None, and NMSE is computed on the images those definitions compare.
    """
    d = get_definition(definition)
    with torch.no_grad():
        a, b = _checked_pair(d, pred, gt, maxval)
        n = a.shape[0]
        err = ((a - b) ** 2).sum()
        finite = torch.isfinite(a).all().reshape(1)
        vol_nmse = float(_nmse(err.reshape(1), (b**2).sum().reshape(1), finite)[0])
        if d.per_volume:
            if maxval is None:
                mv = float(b.max())
                if not mv > 0:
                    from .errors import DataError

                    raise DataError(f"the ground-truth volume's maximum is {mv:g}: the fastmri metric's maxval must be positive",
                                    "drop empty volumes from the evaluation data")
            else:
                mv = float(_maxvals(maxval, b[:1])[0])
            per = _volume_scores(a, b, d, torch.full((n,), mv, dtype=a.dtype, device=a.device))
            if not bool(finite):
                vol_psnr = math.nan  # as psnr(): a NaN/Inf reconstruction scores NaN
            elif float(err) == 0:
                vol_psnr = math.inf
            else:
                vol_psnr = 10.0 * math.log10(mv**2 / float(err / a.numel()))
            vol_ssim = float(per["ssim"].mean())
        else:
            mv = None
            per = {**compute_metrics(pred, gt, d), "nmse": nmse(a, b)}
            vol_psnr, vol_ssim = float(per["psnr"].mean()), float(per["ssim"].mean())
    return {"metric": d.name, "slices": n, "maxval": mv, "psnr": vol_psnr, "ssim": vol_ssim, "nmse": vol_nmse,
            "per_slice": per}


def finite_mean_std(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """Mean and population std of a list of numbers (``inf`` stays ``inf``)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if t.numel() == 0:
        return math.nan, math.nan
    if not bool(torch.isfinite(t).all()):
        return float(t.mean()), math.nan
    return float(t.mean()), float(t.std(unbiased=False)) if t.numel() > 1 else 0.0


def nonfinite_note(values: Any, label: str = "reconstructions") -> str | None:
    """A line for reports when some scores are NaN (NaN/Inf reconstructions), else None."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = int(torch.isnan(t).sum())
    if not n:
        return None
    return (f"{n} of {t.numel()} {label} hold NaN/Inf values (the model diverged on them): "
            "their PSNR/SSIM are NaN, and so are the means")
