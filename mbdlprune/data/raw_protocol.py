"""fastMRI's evaluation protocol on raw k-space: per-file masks, undersampling, crops, RSS, scaling.

What fastMRI's ``SliceDataset`` + ``VarNetDataTransform`` + ``VarNetModule`` do to a volume
(see :mod:`.raw` for the whole protocol): :func:`volume_mask` with fastMRI's per-file seed,
:func:`undersample`, :func:`center_crop` / :func:`crop_size`, :func:`rss_target`,
:func:`scale_kspace`, all of it for one volume in :func:`prepare_eval` (an :class:`EvalSlices`);
and the run-level choices training and evaluation share (:func:`resolve_kspace_scale`,
:func:`operator_mask_rule`, :func:`check_same_coils`). It works on :class:`~.raw_volume.RawVolume`
objects and never reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .raw_volume import TARGET_KEYS, RawVolume
from .volumes import NORMALIZATIONS

#: the masks drawn per file with fastMRI's seed (:func:`volume_mask`)
MASK_KINDS = ("random", "equispaced", "equispaced_fraction")
#: how raw k-space is scaled before a model sees it (``auto``: see :func:`resolve_kspace_scale`)
KSPACE_SCALES = ("auto", "none", "max", "volume")


def resolve_kspace_scale(scale: str, arch_names: Sequence[str | None]) -> str:
    """``auto`` -> ``none`` when every model is an E2E-VarNet (fastMRI feeds it raw k-space), else
    ``max`` (each slice to 1, what the image-domain models train on); models of both kinds in one
    run need an explicit scale."""
    if scale not in KSPACE_SCALES:
        raise DataError(f"unknown k-space scale {scale!r}", f"use one of: {', '.join(KSPACE_SCALES)}")
    if scale != "auto":
        return scale
    kinds = {name == "e2e-varnet" for name in arch_names}
    if kinds == {True}:
        return "none"
    if kinds == {False}:
        return "max"
    raise DataError("the models mix an e2e-varnet (raw k-space units) with models trained on scaled k-space",
                    "pass --kspace-scale none, max or volume: one scaling for every model")


def operator_mask_rule(op) -> "tuple[str | np.ndarray, float | None, float | None]":
    """How raw k-space is undersampled for ``op``: a mask kind drawn per file with fastMRI's seed
    (``random``, ``equispaced``, ``equispaced_fraction``) with its acceleration and centre fraction,
    or, for any other mask (``uniform``, a mask file), the operator's own columns, the same for every file."""
    spec = getattr(op, "spec", None) or {}
    kind = str(spec.get("mask", "uniform"))
    if kind not in MASK_KINDS:
        m = op.mask.detach().cpu()
        return (m.reshape(-1) if m.shape[2] == 1 else m[0, 0, :, :, 0]).numpy(), None, None
    from ..operators.mri import DEFAULT_CENTER_FRACTION

    cf = spec.get("center_fraction", DEFAULT_CENTER_FRACTION)
    return kind, float(spec.get("acceleration", 4)), float(cf)


def check_same_coils(volumes: Sequence[RawVolume]) -> int:
    """The coil count shared by all volumes of one run; files that differ are refused."""
    if not volumes:
        raise DataError("no raw k-space volumes", "pass .h5 or .npz files with a kspace array")
    first = volumes[0]
    for v in volumes[1:]:
        if v.coils != first.coils:
            raise DataError(f"the files' coil counts differ: {first.name} has {first.coils}, {v.name} has {v.coils}",
                            "use files of one coil count per run (split the data by coil count)")
    return first.coils


# ----------------------------------------------------------------------------- protocol primitives
def rss(images, dim: int = 1):
    """Root-sum-of-squares sqrt(sum |x|^2) over ``dim`` of a complex or real NumPy array or torch tensor.

    fastMRI's ``reconstruction_rss`` is this over the coil dim of the coil images.
    """
    if isinstance(images, np.ndarray):
        return np.sqrt((np.abs(images) ** 2).sum(axis=dim))
    return (images.abs() ** 2).sum(dim).sqrt()


def ifft2c_np(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2-D FFT over the last two dims of complex k-space, through
    :func:`mbdlprune.operators.fft.ifft2c` (the operators' convention, the same as ``fastmri.ifft2c``)."""
    import torch

    from ..operators.fft import ifft2c

    t = torch.view_as_real(torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64)))
    return torch.view_as_complex(ifft2c(t).contiguous()).numpy()


def rss_target(kspace: np.ndarray) -> np.ndarray:
    """RSS of the coil images of fully sampled k-space (S, coils, H, W) -> (S, H, W) float32, slice by slice."""
    return np.stack([rss(ifft2c_np(s), 0).astype(np.float32) for s in kspace]) if len(kspace) else \
        np.zeros((0, *kspace.shape[-2:]), np.float32)


def center_crop(x, shape: tuple[int, int]):
    """The centre (h, w) of the last two dims, fastMRI's way: rows from (H - h) // 2, columns from (W - w) // 2."""
    h, w = int(shape[0]), int(shape[1])
    if not (0 < h <= x.shape[-2] and 0 < w <= x.shape[-1]):
        raise DataError(f"cannot crop {tuple(x.shape[-2:])} to {(h, w)}", "crop to a size inside the image")
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def crop_size(volume: RawVolume) -> tuple[int, int]:
    """Where outputs are compared with the target: the stored target's size (fastMRI: 320x320),
    else the ISMRMRD recon matrix (x, y) (narrower k-space, fastMRI's "FLAIR 203" case: (W, W)),
    else the whole image."""
    h, w = volume.image_shape
    if volume.target is not None and volume.target_source in TARGET_KEYS:
        return int(volume.target.shape[-2]), int(volume.target.shape[-1])
    recon = volume.encoding.get("recon_size")
    if not recon:
        return h, w
    rh, rw = int(recon[0]), int(recon[1])
    if w < rw:  # fastMRI's VarNetModule.test_step
        rh, rw = w, w
    if rh > h or rh < 1 or rw < 1:
        raise DataError(f"{volume.name}: the ISMRMRD recon matrix {recon[0]}x{recon[1]} is larger than the {h}x{w} image",
                        "fix the file's ismrmrd_header, or store a target")
    return rh, rw


def volume_seed(name: str) -> tuple[int, ...]:
    """fastMRI's per-volume mask seed: ``tuple(map(ord, fname))`` of the file name (``fname.name``
    in ``SliceDataset``), so every slice of a file gets the same mask in every run."""
    return tuple(map(ord, Path(name).name))


def volume_mask(name: str, kind: str, width: int, acceleration: float, center_fraction: float,
                padding: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """Mask columns (W,) float32 and the centre-block size for the file ``name``, equal to fastMRI's.

    fastMRI seeds its ``MaskFunc``'s ``RandomState`` with :func:`volume_seed`, draws the
    (center_fraction, acceleration) choice, then the columns: ``random`` (``RandomMaskFunc``) W
    uniforms; ``equispaced`` (``EquiSpacedMaskFunc``) and ``equispaced_fraction``
    (``EquispacedMaskFractionFunc``) an offset. The rules are those of
    :mod:`mbdlprune.operators.masks`, driven by that ``RandomState``. ``padding`` (fastMRI's
    ``padding_left``, ``padding_right``) zeroes the columns outside it, as ``VarNetDataTransform`` does.
    """
    from ..errors import ConfigError
    from ..operators import masks

    if kind not in MASK_KINDS:
        raise DataError(f"unknown mask kind {kind!r}", f"use one of: {', '.join(MASK_KINDS)}")
    rng = np.random.RandomState(volume_seed(name))
    rng.randint(1)  # MaskFunc.choose_acceleration with one (center_fraction, acceleration) pair
    n = masks.fraction_center_lines(width, center_fraction)
    try:
        cols = _seeded_columns(masks, kind, rng, width, float(acceleration), n)
    except ConfigError as e:
        raise DataError(f"{name}: {e.problem}", e.fix) from None
    cols = np.asarray(cols, dtype=np.float32).copy()
    if padding is not None:
        cols[:max(padding[0], 0)] = 0
        cols[max(padding[1], 0):] = 0
    return cols, n


def _seeded_columns(masks, kind: str, rng: np.random.RandomState, width: int, acceleration: float, n: int) -> np.ndarray:
    """The masks.py rule ``kind`` with fastMRI's draws from ``rng`` (after the acceleration choice)."""
    if kind == "random":
        return masks.random_mask(width, acceleration, n, rng=rng)
    if acceleration == 1:
        return np.ones(width, np.float32)
    if kind == "equispaced":
        return masks.equispaced_mask(width, acceleration, n, offset=int(rng.randint(0, high=round(acceleration))))
    if n * acceleration >= width:
        from ..errors import ConfigError

        raise ConfigError(f"the {n} fully sampled centre columns reach W / acceleration = {width / acceleration:.1f} columns",
                          "lower center_fraction or acceleration")
    spacing = acceleration * (n - width) / (n * acceleration - width)
    return masks.equispaced_fraction_mask(width, acceleration, n, offset=int(rng.randint(0, high=round(spacing))))


def undersample(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Retrospective undersampling: ``kspace * mask`` (no noise) of (S, [C,] H, W) k-space by a
    column mask (W,) or an (H, W) mask, 1 = sampled."""
    m = np.asarray(mask, dtype=np.float32)
    h, w = kspace.shape[-2:]
    if m.shape not in ((w,), (h, w)):
        raise DataError(f"mask of shape {m.shape} does not fit k-space of {h}x{w}", f"use a mask of shape ({w},) or ({h}, {w})")
    return (kspace * (m > 0)).astype(kspace.dtype, copy=False)


def scale_kspace(kspace: np.ndarray, mode: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """``(kspace / scale, scale)`` with one scale per slice (S,) float32.

    The modes are those of :func:`mbdlprune.data.samples.kspace_to_measurements`: ``"max"`` each
    slice's largest magnitude, ``"volume"`` the volume's, ``"none"`` 1 (fastMRI's VarNet takes
    raw k-space). The operator is linear, so an output ``x`` of scaled data is ``x * scale`` in
    the target's units.
    """
    if mode not in NORMALIZATIONS:
        raise DataError(f"unknown normalisation {mode!r}", f"use one of: {', '.join(NORMALIZATIONS)}")
    s = kspace.shape[0]
    peak = np.abs(kspace).reshape(s, -1).max(axis=1) if kspace.size else np.zeros(s)
    if mode == "max":
        scale = np.where(peak > 0, peak, 1.0)
    elif mode == "volume":
        top = float(peak.max()) if s else 0.0
        scale = np.full(s, top if top > 0 else 1.0)
    else:
        scale = np.ones(s)
    scale = scale.astype(np.float32)
    return (kspace / scale.reshape(-1, *([1] * (kspace.ndim - 1)))).astype(np.complex64), scale


# ----------------------------------------------------------------------------- evaluation slices
@dataclass
class EvalSlices:
    """One volume prepared for evaluation: what a model sees and what its output is compared with.

    ``kspace`` (S, C, H, W) complex64, masked and divided by ``scale`` (S,). ``mask`` (W,) float32
    (or the (H, W) mask a file stores).
    ``target`` (S, h, w) in the file's units, ``crop`` = (h, w), ``maxval`` for PSNR/SSIM.
    """

    name: str
    kspace: np.ndarray
    mask: np.ndarray
    num_low_frequencies: int
    scale: np.ndarray
    target: np.ndarray | None
    crop: tuple[int, int]
    maxval: float | None
    record: dict[str, Any]

    def measurements(self):
        """(S, C, H, W, 2) float32 torch tensor in the MRI operator's layout."""
        import torch

        return torch.view_as_real(torch.from_numpy(np.ascontiguousarray(self.kspace))).float()

    def to_target_units(self, x) -> np.ndarray:
        """Outputs (S, 2, H, W) real/imag, (S, H, W) complex or magnitude -> (S, h, w) float32
        magnitudes in the target's units, centre-cropped to ``crop``."""
        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        if a.ndim == 4 and a.shape[1] == 2:
            a = a[:, 0] + 1j * a[:, 1]
        elif a.ndim == 4 and a.shape[1] == 1:  # a magnitude (one-channel) output
            a = a[:, 0]
        mag = np.abs(a).astype(np.float32) * self.scale.reshape(-1, 1, 1)
        return np.ascontiguousarray(center_crop(mag, self.crop))


def prepare_eval(volume: RawVolume, mask: "str | np.ndarray" = "random", acceleration: float = 4,
                 center_fraction: float = 0.08, scale: str = "none") -> EvalSlices:
    """The fastMRI protocol for one volume: the file's own mask if it stores one, else the
    per-volume seeded mask of ``mask`` kind (with the ISMRMRD padding), or ``mask`` itself when
    it is an array of columns (W,) or an (H, W) mask (a fixed rule: the same for every file);
    undersampled k-space, scaled; the target and crop. ``record`` says what was done, for reports."""
    from ..operators.masks import fastmri_low_frequencies

    h, w = volume.image_shape
    if volume.mask is not None and not volume.fully_sampled:
        cols = volume.mask
        n = fastmri_low_frequencies(cols if cols.ndim == 1 else cols[0])  # fastMRI reads the first row
        how: dict[str, Any] = {"mask": "stored in file"}
    elif not isinstance(mask, str):
        cols = (np.asarray(mask) > 0).astype(np.float32)
        if cols.shape not in ((w,), (h, w)):
            raise DataError(f"{volume.name}: the mask has shape {cols.shape}, the k-space {h}x{w}",
                            f"use a mask over the {w} phase-encode columns")
        n = fastmri_low_frequencies(cols if cols.ndim == 1 else cols[0])
        how = {"mask": "fixed (the operator's)"}
    else:
        pad = _padding(volume)
        cols, n = volume_mask(volume.name, mask, w, acceleration, center_fraction, pad)
        how = {"mask": mask, "acceleration": float(acceleration), "center_fraction": float(center_fraction),
               "seed": "tuple(map(ord, file name))", "padding": list(pad) if pad else None}
    k, s = scale_kspace(undersample(volume.kspace, cols), scale)
    crop = crop_size(volume)
    rec = {**how, "num_low_frequencies": int(n), "scale": scale, "crop": list(crop), "target_source": volume.target_source,
           "maxval": volume.maxval, "sampled_fraction": float((cols > 0).mean()), "slices": volume.num_slices}
    return EvalSlices(volume.name, k, np.asarray(cols, np.float32), int(n), s, volume.target, crop, volume.maxval, rec)


def _padding(volume: RawVolume) -> tuple[int, int] | None:
    """fastMRI's ``padding_left`` / ``padding_right`` when the header gives a range inside the columns."""
    left, right = volume.encoding.get("padding_left"), volume.encoding.get("padding_right")
    if left is None or right is None:
        return None
    w = volume.image_shape[1]
    if not 0 <= left < right <= w:
        note = f"{volume.name}: ISMRMRD padding {left}..{right} is outside the {w} columns; not applied"
        if note not in volume.notes:
            volume.notes.append(note)
        return None
    return int(left), int(right)
