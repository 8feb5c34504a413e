"""Turning volumes into samples: images fitted to the operator, measurements simulated with per-sample seeds, datasets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .splits import file_hashes
from .volumes import EMPTY_FRACTION, _finite_part, FITS, NORMALIZATIONS, Volume, volume_notes


# ----------------------------------------------------------------------------- images
def _fit_slices(a: np.ndarray, size: tuple[int, int], fit: str, where: str) -> np.ndarray:
    """Centre crop and/or zero pad (S, H, W) to ``size``."""
    if fit not in FITS:
        raise DataError(f"unknown fit {fit!r}", f"use one of: {', '.join(FITS)}")
    h, w = a.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return a
    needs_crop = h > th or w > tw
    needs_pad = h < th or w < tw
    if fit == "error" or (needs_crop and fit == "pad") or (needs_pad and fit == "crop"):
        raise DataError(
            f"image size {h}x{w} of {where} does not fit the operator's image_size {th}x{tw}",
            "set image_size in the operator spec to the data's size, or pass --fit crop-pad",
        )
    out = a
    if needs_crop:
        top, left = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        out = out[:, top:top + min(h, th), left:left + min(w, tw)]
    if needs_pad:
        ch, cw = out.shape[-2:]
        ph, pw = th - ch, tw - cw
        out = np.pad(out, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
    return np.ascontiguousarray(out)


def nonempty_slices(array: np.ndarray, fraction: float = EMPTY_FRACTION) -> np.ndarray:
    """Indices of slices that are not empty: not all zero and mean magnitude >= fraction x the largest."""
    mag = np.abs(array).reshape(array.shape[0], -1)
    means = mag.mean(axis=1)
    peak = means.max() if means.size else 0.0
    keep = (mag.max(axis=1) > 0) & (means >= fraction * peak)
    return np.nonzero(keep)[0]


def slices_to_images(volume: Volume, op, fit: str = "error", normalize: str = "max", skip_empty: bool = True):
    """Ground-truth images (S, C, H, W) float32 for ``op`` from an image volume.

    Slices with NaN/Inf values are dropped (noted once in ``volume.meta["notes"]``, see
    :func:`volume_notes`), slices are centre-cropped / zero-padded to ``op.image_size`` as
    ``fit`` allows, empty slices are dropped (see :func:`nonempty_slices`), and each slice (``"max"``) or the whole volume
    (``"volume"``) is scaled to a largest magnitude of 1 (``"none"`` leaves values alone).
    For 2-channel operators a real image becomes (real = image, imaginary = 0); for 1-channel
    operators a complex image becomes its magnitude.
    """
    return _images_and_kept(volume, op, fit, normalize, skip_empty)[0]


def _images_and_kept(volume: Volume, op, fit: str, normalize: str, skip_empty: bool):
    import torch

    if volume.kind != "image":
        raise DataError(f"{volume.name} holds k-space, not images", "use image files for ground truth, or a mode that needs no ground truth")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalisation {normalize!r}", f"use one of: {', '.join(NORMALIZATIONS)}")
    clean, finite = _finite_part(volume)
    a = clean.array
    rel = nonempty_slices(a) if skip_empty else np.arange(a.shape[0])
    a = a[rel]
    kept = finite[rel]
    a = _fit_slices(a, tuple(op.image_size), fit, volume.name)
    mag = np.abs(a)
    if normalize == "max":
        peak = mag.reshape(a.shape[0], -1).max(axis=1)
        a = a / np.where(peak > 0, peak, 1.0)[:, None, None]
    elif normalize == "volume":
        peak = float(mag.max()) if mag.size else 0.0
        a = a / (peak if peak > 0 else 1.0)
    channels = int(op.channels)
    if channels == 2:
        if np.iscomplexobj(a):
            x = np.stack([a.real, a.imag], axis=1)
        else:
            x = np.stack([a, np.zeros_like(a)], axis=1)
    elif channels == 1:
        x = (np.abs(a) if np.iscomplexobj(a) else a)[:, None]
    else:
        raise DataError(f"the operator takes {channels}-channel images; data files give 1 (real) or 2 (complex)",
                        "use an operator with channels = 1 or 2")
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.float32))), kept


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A per-sample seed: the same (seed, stream, index) always gives the same noise."""
    h = hashlib.sha256(f"{int(seed)}:{int(stream)}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def simulate(images, op, seed: int = 0, stream: int = 0, batch_size: int = 16):
    """Measurements ``op.measure(x_i)`` with a generator seeded per sample index (reproducible)."""
    import torch

    op.check_image(images)
    dev = next((b.device for b in op.buffers()), torch.device("cpu"))
    out = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            g = torch.Generator().manual_seed(sample_seed(seed, i, stream))
            out.append(op.measure(images[i:i + 1].to(dev), g).cpu())
    return torch.cat(out) if out else torch.empty(0)


def _measurement_shape(op) -> tuple[int, ...]:
    import torch

    shape = getattr(op, "measurement_shape", None)
    if shape is not None:
        return tuple(shape)
    dev = next((b.device for b in op.buffers()), torch.device("cpu"))
    with torch.no_grad():
        return tuple(op.A(torch.zeros((1, *op.image_shape), device=dev)).shape[1:])


def kspace_to_measurements(volume: Volume, op, normalize: str = "max", skip_empty: bool = True):
    """Measurements (S, coils, H, W, 2) from a k-space volume, checked against ``op``.

    The operator's mask (if it has one) is applied, so fully sampled files are undersampled
    the way the operator samples; a mask stored in the file must agree with the operator's.
    ``"max"`` scales each slice's k-space by its largest magnitude; ``"volume"`` the whole volume.
    """
    import torch

    if normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalisation {normalize!r}", f"use one of: {', '.join(NORMALIZATIONS)}")
    if volume.kind != "kspace":
        raise DataError(f"{volume.name} holds images, not k-space", "use k-space files (fastMRI .h5 kspace, or .npz with a kspace array)")
    clean, finite = _finite_part(volume)
    k = clean.array
    rel = nonempty_slices(k) if skip_empty else np.arange(k.shape[0])
    k = k[rel]
    kept = finite[rel]
    y = torch.view_as_real(torch.from_numpy(np.ascontiguousarray(k))).float()
    want = _measurement_shape(op)
    if tuple(y.shape[1:]) != want:
        raise DataError(
            f"k-space of {volume.name} has shape {tuple(y.shape[1:])} per slice (coils, H, W, 2), the operator measures {want}",
            "build the operator with the data's image_size and coil count (coil_maps)",
        )
    op_mask = getattr(op, "mask", None)
    if op_mask is not None and hasattr(op_mask, "shape"):
        m = op_mask.detach().cpu().float()
        if volume.mask is not None:
            fm = torch.from_numpy(volume.mask.astype(np.float32))
            fm = fm.reshape(1, 1, 1, -1, 1) if fm.dim() == 1 else fm.reshape(1, 1, *fm.shape, 1)
            full = (1, 1, *y.shape[2:4], 1)
            try:
                same = torch.equal((fm > 0).expand(full), (m > 0).expand(full))
            except RuntimeError:
                same = False
            if not same:
                raise DataError(
                    f"the sampling mask stored in {volume.name} differs from the operator's mask",
                    "build the operator with that file's mask (mask = path to the file) or use fully sampled k-space",
                )
        y = y * m
    mag = y.square().sum(-1).sqrt()
    if normalize == "max":
        peak = mag.reshape(y.shape[0], -1).amax(dim=1)
        y = y / torch.where(peak > 0, peak, torch.ones_like(peak)).reshape(-1, 1, 1, 1, 1)
    elif normalize == "volume":
        peak = float(mag.max()) if mag.numel() else 0.0
        y = y / (peak if peak > 0 else 1.0)
    return y.contiguous(), kept


# ----------------------------------------------------------------------------- datasets
class ReconDataset:
    """Samples ``{"y", "x" (when there is ground truth), "index", "volume"}``.

    A map-style dataset (``__len__`` / ``__getitem__``) that torch's DataLoader and samplers take.
    """

    def __init__(self, y, x=None, volumes: Sequence[str] = (), extra: dict[str, Any] | None = None):
        if x is not None and x.shape[0] != y.shape[0]:
            raise ValueError("x and y must have the same number of samples")
        self.y = y
        self.x = x
        self.volumes = list(volumes) or [""] * int(y.shape[0])
        self.extra = dict(extra or {})  # name -> tensor (N, ...), e.g. cached teacher outputs

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"y": self.y[i], "index": int(i), "volume": self.volumes[i]}
        if self.x is not None:
            item["x"] = self.x[i]
        for k, v in self.extra.items():
            item[k] = v[i]
        return item

    @property
    def has_ground_truth(self) -> bool:
        return self.x is not None


@dataclass
class PreparedData:
    """A dataset plus what a record needs to say about it."""

    dataset: Any
    kind: str  # "image" (simulated measurements, ground truth) or "kspace" (measurements only)
    hashes: dict[str, str]
    volumes: list[str]
    slices: int
    skipped_empty: int
    normalization: str
    fit: str
    nonfinite: int = 0
    notes: list[str] = field(default_factory=list)
    protocol: dict[str, Any] | None = None  # raw k-space: how it was undersampled, scaled and targeted

    def record(self) -> dict[str, Any]:
        rec = {
            "kind": self.kind,
            "files": self.hashes,
            "volumes": len(self.volumes),
            "slices": self.slices,
            "skipped_empty_slices": self.skipped_empty,
            "nonfinite_slices": self.nonfinite,
            "normalization": self.normalization,
            "fit": self.fit,
            "ground_truth": bool(getattr(self.dataset, "has_ground_truth", self.kind == "image")),
            "notes": list(self.notes),
        }
        if self.protocol is not None:
            rec["protocol"] = dict(self.protocol)
        return rec


def build_dataset(volumes: Sequence[Volume], op, *, fit: str = "error", normalize: str = "max", seed: int = 0,
                  stream: int = 0, skip_empty: bool = True) -> PreparedData:
    """Images -> (x, simulated y) samples; k-space -> y-only samples. Mixed kinds are refused."""
    import torch

    if not volumes:
        raise DataError("no volumes to build a dataset from", "check --data")
    kinds = {v.kind for v in volumes}
    if len(kinds) > 1:
        raise DataError("the data mixes image files and k-space files", "use one kind per data set (images, or k-space only)")
    kind = kinds.pop()
    xs, ys, names = [], [], []
    skipped = nonfinite = 0
    for v in volumes:
        bad = v.num_slices - _finite_part(v)[0].num_slices  # NaN/Inf slices of a volume built in code
        if kind == "image":
            x, kept = _images_and_kept(v, op, fit, normalize, skip_empty)
            xs.append(x)
        else:
            y, kept = kspace_to_measurements(v, op, normalize, skip_empty)
            ys.append(y)
        nonfinite += bad + int(v.meta.get("dropped_nonfinite", 0))
        skipped += v.num_slices - bad - len(kept) + int(v.meta.get("dropped_zero", 0))
        names.extend([v.name] * len(kept))
    if not names:
        raise DataError("every slice of the data is empty", "check the data files")
    if kind == "image":
        x = torch.cat(xs)
        op.check_image(x)
        y = simulate(x, op, seed=seed, stream=stream)
        ds = ReconDataset(y, x, names)
    else:
        ds = ReconDataset(torch.cat(ys), None, names)
    return PreparedData(ds, kind, file_hashes(volumes), sorted({v.name for v in volumes}), len(names), skipped, normalize, fit,
                        nonfinite, volume_notes(volumes))
