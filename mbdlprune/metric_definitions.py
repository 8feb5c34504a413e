"""Metric definitions, by name: how PSNR/SSIM (and NMSE) are computed, for reports and for choosing.

:data:`METRICS` is the registry behind ``--metric`` (its help and checks): ``plain``, ``paper``
and ``fastmri``; see :mod:`mbdlprune.metrics` for the computations and their notes. This module
imports no torch, so the command line can list the definitions without loading it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .registry import Registry

#: SSIM constants (Wang et al. 2004; scikit-image's and fastMRI's)
K1 = 0.01
K2 = 0.03
#: ``MetricDefinition.crop`` of the fastmri definition: centre crop to W x W (fastMRI's evaluate.py)
WIDTH_CROP = "width"


@dataclass(frozen=True)
class MetricDefinition:
    """How PSNR/SSIM (and NMSE) are computed, in words and numbers, for reports.

    ``name`` is ``plain`` (magnitude images as they are; peak and SSIM range = data range of
    each ground-truth image), ``paper`` (:func:`paper_normalize`, then peak 1) or ``fastmri``
    (fastMRI's evaluate.py: ``per_volume``, see :func:`volume_metrics`).
    """

    name: str = "plain"
    magnitude: bool = True
    crop: int | None | bool | str = False
    zero_background: bool = False
    normalisation: str = "none"
    peak: str = "data range (max - min) of each ground-truth image"
    ssim_window: int = 11
    ssim_sigma: float | None = 1.5
    ssim_k1: float = K1
    ssim_k2: float = K2
    #: ``"gaussian"`` (``ssim_sigma``) or ``"uniform"`` (a box, as scikit-image's default)
    ssim_weights: str = "gaussian"
    #: variances times n / (n - 1), n = window^2 (scikit-image's default)
    ssim_sample_covariance: bool = False
    #: peak = the ground-truth volume's maximum; PSNR and NMSE over the volume, SSIM the slice mean
    per_volume: bool = False

    def describe(self) -> str:
        """One paragraph for reports."""
        if self.per_volume:
            return self._describe_volume()
        if self.crop is False:
            crop = "no crop"
        elif self.crop is None or self.crop is True:
            crop = "centre crop to the largest square"
        elif isinstance(self.crop, int):
            crop = f"centre crop to {self.crop}x{self.crop}"
        else:
            crop = f"centre crop to {self.crop[0]}x{self.crop[1]}"
        parts = [
            f"metric '{self.name}':",
            "magnitude of complex (2-channel) images;" if self.magnitude else "images as stored;",
            f"{crop};",
        ]
        if self.zero_background:
            parts.append("reconstruction zeroed where the ground truth is 0;")
        parts.append(f"normalisation: {self.normalisation};")
        parts.append(f"PSNR = 10 log10(peak^2 / MSE) per image, peak = {self.peak};")
        parts.append(
            f"SSIM with a {self.ssim_window}x{self.ssim_window} Gaussian window (sigma {self.ssim_sigma}), "
            f"K1 = {self.ssim_k1}, K2 = {self.ssim_k2}, data range = peak, averaged over valid positions."
        )
        return " ".join(parts)

    def _describe_volume(self) -> str:
        w = self.ssim_window
        cov = f"sample covariance (n/(n-1), n = {w * w})" if self.ssim_sample_covariance else "population covariance"
        return (
            f"metric '{self.name}' (fastMRI's evaluate.py): "
            + ("magnitude of complex (2-channel) images; " if self.magnitude else "images as stored; ")
            + ("centre crop to W x W (the ground truth's width); " if self.crop == WIDTH_CROP else "")
            + f"per volume: PSNR = 10 log10(maxval^2 / MSE), MSE over the whole volume, maxval = {self.peak}; "
            f"SSIM = mean over the slices of the SSIM with a {w}x{w} {self.ssim_weights} window, {cov}, "
            f"K1 = {self.ssim_k1}, K2 = {self.ssim_k2}, data range = maxval, averaged over valid positions; "
            "NMSE = ||gt - pred||^2 / ||gt||^2. Per-slice scores use the volume's maxval "
            "(each slice's own maximum where no volume is given)."
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["description"] = self.describe()
        return d

    def prepare(self, x_hat: Any, x: Any):
        """Apply this definition's preprocessing; returns the images the metrics compare (tensors)."""
        from .metric_preprocess import paper_normalize, width_crop
        from .metric_primitives import _pair, magnitude

        if self.name == "paper":
            return paper_normalize(x_hat, x, crop=self.crop)
        a, b = _pair(x_hat, x)
        if self.magnitude:
            a, b = magnitude(a), magnitude(b)
        if self.crop == WIDTH_CROP:
            a, b = width_crop(a), width_crop(b)
        return a, b

    def peak_value(self) -> float | None:
        """The fixed peak of per-image definitions (``paper``: 1; otherwise each image's own)."""
        return 1.0 if self.name == "paper" else None


PLAIN = MetricDefinition()
PAPER = MetricDefinition(
    name="paper",
    crop=None,
    zero_background=True,
    normalisation="per-image min-max to [0, 1] (reconstruction and ground truth separately)",
    peak="1",
)
FASTMRI = MetricDefinition(
    name="fastmri",
    crop=WIDTH_CROP,
    peak="the maximum of the ground-truth volume",
    ssim_window=7,
    ssim_sigma=None,
    ssim_weights="uniform",
    ssim_sample_covariance=True,
    per_volume=True,
)

#: name -> MetricDefinition; ``METRICS.names()`` are the choices of ``--metric``
METRICS: Registry[MetricDefinition] = Registry("metric")
for _definition in (PLAIN, PAPER, FASTMRI):
    METRICS.register(_definition.name, _definition)


def metric_names() -> list[str]:
    """The metric definitions' names (the choices of ``--metric``)."""
    return METRICS.names()


def get_definition(name: str | MetricDefinition) -> MetricDefinition:
    """A definition by name (one of :func:`metric_names`), or a definition, returned as is."""
    if isinstance(name, MetricDefinition):
        return name
    if not isinstance(name, str):
        from .errors import MbdlError

        raise MbdlError(f"a metric is named by a string, got {name!r}", f"choose one of: {', '.join(METRICS.names())}")
    return METRICS.get(name)


def resolve_metric(metric: str, raw: bool) -> str:
    """A definition's name: ``auto`` is ``fastmri`` on raw k-space and ``plain`` on images."""
    return metric if metric != "auto" else ("fastmri" if raw else "plain")


#: one line per definition for the command line's help
SUMMARIES = {
    "plain": "magnitudes, peak = each ground truth's data range",
    "paper": "the reference paper's: square crop, background zeroed, min-max to [0, 1], peak 1",
    "fastmri": "fastMRI's evaluate.py: per volume, W x W crop, maxval = the volume maximum, 7x7 SSIM, NMSE",
}


def metric_help() -> str:
    """The choices of ``--metric`` with a line each, for the command line's help."""
    return "auto (fastmri on raw k-space, plain on images); " + "; ".join(
        f"{n} ({SUMMARIES.get(n, METRICS.get(n).peak)})" for n in METRICS.names())
