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
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .metric_definitions import FASTMRI, K1, K2, METRICS, PAPER, PLAIN, WIDTH_CROP  # noqa: F401  (re-exported)
from .metric_definitions import MetricDefinition, get_definition, metric_names  # noqa: F401

__all__ = [
    "FASTMRI",
    "METRICS",
    "MetricDefinition",
    "PLAIN",
    "PAPER",
    "as_batch",
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
]



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


# ------------------------------------------------------------------ paper normalisation
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


def nonfinite_note(values: Any, label: str = "reconstructions") -> str | None:
    """A line for reports when some scores are NaN (NaN/Inf reconstructions), else None."""
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = int(torch.isnan(t).sum())
    if not n:
        return None
    return (f"{n} of {t.numel()} {label} hold NaN/Inf values (the model diverged on them): "
            "their PSNR/SSIM are NaN, and so are the means")


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


# ------------------------------------------------------------------------ definitions


def width_crop(x: torch.Tensor) -> torch.Tensor:
    """fastMRI's evaluation crop: the centre W x W of (N, C, H, W) images (H >= W needed)."""
    h, w = x.shape[-2:]
    if h < w:
        from .errors import DataError

        raise DataError(f"images of {h}x{w} are wider than tall: the fastmri metric crops them to W x W "
                        "as fastMRI's evaluate.py does, which needs H >= W",
                        "use --metric plain, or evaluate images with at least as many rows as columns")
    return center_crop(x, (w, w))


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
