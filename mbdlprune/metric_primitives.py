"""The per-image metric computations: PSNR, SSIM (Gaussian or uniform window), MSE and NMSE.

Each takes (N, C, H, W), (N, H, W) or (H, W) images (:func:`as_batch`) and returns one value per
image (N,); :func:`magnitude` turns two-channel complex images into magnitudes. These are the
primitives the definitions of :mod:`mbdlprune.metrics` (``plain``, ``paper``, ``fastmri``)
compose; the formulas and the degenerate cases are documented there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .metric_definitions import K1, K2


# ------------------------------------------------------------------------------ helpers
def as_batch(x: Any) -> torch.Tensor:
    """Return ``x`` as an (N, C, H, W) tensor (accepts numpy arrays and 2-D/3-D tensors)."""
    t = torch.as_tensor(x)
    if t.dim() == 2:
        return t[None, None]
    if t.dim() == 3:
        return t[:, None]
    if t.dim() == 4:
        return t
    raise ValueError(f"expected an image tensor of 2, 3 or 4 dimensions, got shape {tuple(t.shape)}")


def _work_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 for reporting; keep the input's float dtype when gradients are needed."""
    if any(t.requires_grad for t in ts):
        dt = torch.promote_types(ts[0].dtype, ts[-1].dtype)
        return dt if dt.is_floating_point else torch.float32
    return torch.float64


def _pair(x_hat: Any, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = as_batch(x_hat), as_batch(x)
    if a.shape != b.shape:
        raise ValueError(f"reconstruction shape {tuple(a.shape)} differs from ground truth {tuple(b.shape)}")
    dt = _work_dtype(a, b)
    return a.to(dt), b.to(device=a.device, dtype=dt)


def magnitude(x: Any, complex_channels: bool | None = None) -> torch.Tensor:
    """Magnitude image: (N, 2, H, W) real/imaginary -> (N, 1, H, W); other shapes pass through.

    ``complex_channels=None`` treats any 2-channel image as complex; pass ``False`` for real
    two-channel images, ``True`` to insist (then C must be 2).
    """
    t = as_batch(x)
    if complex_channels is None:
        complex_channels = t.shape[1] == 2
    if not complex_channels:
        return t
    if t.shape[1] != 2:
        raise ValueError(f"complex images need 2 channels (real, imaginary), got {t.shape[1]}")
    return torch.sqrt(t[:, 0:1] ** 2 + t[:, 1:2] ** 2)


def data_range(x: Any) -> torch.Tensor:
    """Per-image max - min of ``x`` (N,); a constant image gets max(|x|), or 1 if all zero."""
    t = as_batch(x)
    flat = t.reshape(t.shape[0], -1)
    r = flat.max(dim=1).values - flat.min(dim=1).values
    fallback = flat.abs().max(dim=1).values
    fallback = torch.where(fallback > 0, fallback, torch.ones_like(fallback))
    return torch.where(r > 0, r, fallback)


def _peak(peak: float | torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if peak is None:
        return data_range(x).to(x.dtype)
    p = torch.as_tensor(peak, dtype=x.dtype, device=x.device)
    if p.dim() == 0:
        p = p.expand(x.shape[0])
    if p.shape != (x.shape[0],):
        raise ValueError(f"peak/data_range must be a number or one value per image, got shape {tuple(p.shape)}")
    if not bool((torch.isfinite(p) & (p > 0)).all()):
        raise ValueError(f"peak/data_range must be positive and finite, got {peak!r}")
    return p


# --------------------------------------------------------------------------------- PSNR
def mse(x_hat: Any, x: Any) -> torch.Tensor:
    """Mean squared error per image (N,)."""
    a, b = _pair(x_hat, x)
    return ((a - b) ** 2).reshape(a.shape[0], -1).mean(dim=1)


def psnr(x_hat: Any, x: Any, peak: float | torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB per image (N,): 10 log10(peak^2 / MSE); ``inf`` for a perfect reconstruction.

    ``peak=None``: the data range (max - min) of each ground-truth image ``x``; a number (e.g.
    1.0 for images normalised to [0, 1]) or one value per image otherwise.
    """
    a, b = _pair(x_hat, x)
    p = _peak(peak, b)
    err = ((a - b) ** 2).reshape(a.shape[0], -1).mean(dim=1)
    out = 10.0 * torch.log10(p**2 / err)
    finite = torch.isfinite(a.reshape(a.shape[0], -1)).all(dim=1)
    return torch.where(finite, out, torch.full_like(out, math.nan))  # an Inf reconstruction is NaN, not -inf dB


# --------------------------------------------------------------------------------- SSIM
def gaussian_window(window: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``window`` taps (odd), centred."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the SSIM window must be an odd positive size, got {window}")
    if sigma <= 0:
        raise ValueError(f"the SSIM sigma must be positive, got {sigma}")
    r = (window - 1) / 2
    t = torch.arange(window, dtype=dtype, device=device) - r
    g = torch.exp(-(t**2) / (2.0 * sigma**2))
    return g / g.sum()


def uniform_window(window: int = 7, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """1-D box of ``window`` taps (odd), each 1 / window (scikit-image's default SSIM window)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the SSIM window must be an odd positive size, got {window}")
    return torch.full((window,), 1.0 / window, dtype=dtype, device=device)


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of (N*C, 1, H, W) by the 1-D window ``g``."""
    k = g.numel()
    x = F.conv2d(x, g.reshape(1, 1, k, 1))
    return F.conv2d(x, g.reshape(1, 1, 1, k))


def ssim(x_hat: Any, x: Any, window: int = 11, sigma: float = 1.5,
         data_range: float | torch.Tensor | None = None, k1: float = K1, k2: float = K2,
         sample_covariance: bool = False, return_map: bool = False, weights: str = "gaussian") -> torch.Tensor:
    """Mean SSIM per image (N,) with a Gaussian (or uniform) window; SSIM(x, x) = 1.

    ``data_range=None`` uses each ground-truth image's max - min. ``sample_covariance=True``
    multiplies variances by n/(n-1) with n = window^2 (scikit-image's default for uniform
    windows); the default follows Wang et al. ``weights="uniform"`` uses a window x window box
    instead of the Gaussian (``sigma`` is then unused): with ``window=7`` and
    ``sample_covariance=True`` this is scikit-image's default ``structural_similarity``, the
    one fastMRI uses. With ``return_map`` the (N, C, H', W') map of the valid positions is
    returned instead of the means. Differentiable (use 1 - ssim as a loss). Images smaller than
    the window are an error.
    """
    a, b = _pair(x_hat, x)
    n, c, h, w = a.shape
    if h < window or w < window:
        raise ValueError(f"images of {h}x{w} are smaller than the {window}x{window} SSIM window")
    L = _peak(data_range, b).detach()
    if weights == "gaussian":
        g = gaussian_window(window, sigma, a.dtype, a.device)
    elif weights == "uniform":
        g = uniform_window(window, a.dtype, a.device)
    else:
        raise ValueError(f"SSIM weights must be 'gaussian' or 'uniform', got {weights!r}")
    a2, b2 = a.reshape(n * c, 1, h, w), b.reshape(n * c, 1, h, w)
    mu_a, mu_b = _filter(a2, g), _filter(b2, g)
    var_a = _filter(a2 * a2, g) - mu_a**2
    var_b = _filter(b2 * b2, g) - mu_b**2
    cov = _filter(a2 * b2, g) - mu_a * mu_b
    if sample_covariance:
        m = window * window
        corr = m / (m - 1.0)
        var_a, var_b, cov = var_a * corr, var_b * corr, cov * corr
    L = L.repeat_interleave(c).reshape(n * c, 1, 1, 1)
    c1, c2 = (k1 * L) ** 2, (k2 * L) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    smap = (num / den).reshape(n, c, h - window + 1, w - window + 1)
    if return_map:
        return smap
    out = smap.mean(dim=(1, 2, 3))
    finite = torch.isfinite(a.reshape(n, -1)).all(dim=1)
    return torch.where(finite, out, torch.full_like(out, math.nan))


# ------------------------------------------------------------------------------ NMSE
def nmse(x_hat: Any, x: Any) -> torch.Tensor:
    """Normalised MSE per image (N,): ||x - x_hat||^2 / ||x||^2 (fastMRI's ``nmse``).

    An all-zero ground truth gives ``inf`` (0 for an all-zero reconstruction); a reconstruction
    with NaN/Inf values gives NaN.
    """
    a, b = _pair(x_hat, x)
    return _nmse(((a - b) ** 2).reshape(a.shape[0], -1).sum(dim=1), (b**2).reshape(b.shape[0], -1).sum(dim=1),
                 torch.isfinite(a.reshape(a.shape[0], -1)).all(dim=1))


def _nmse(err: torch.Tensor, ref: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    safe = torch.where(ref > 0, ref, torch.ones_like(ref))
    empty = torch.where(err > 0, torch.full_like(err, math.inf), torch.zeros_like(err))
    out = torch.where(ref > 0, err / safe, empty)
    return torch.where(finite, out, torch.full_like(out, math.nan))
