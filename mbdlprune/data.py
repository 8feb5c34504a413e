"""Data for fine-tuning: read image or k-space files, split by file, turn slices into samples.

Readers return :class:`Volume` objects: one 3-D stack of 2-D slices (S, H, W) from one file
(a 4-D NIfTI or a multi-array .npz gives several volumes that share a file). Image volumes
become ground-truth images fitted to the operator's image size and normalised; measurements
are then simulated with ``op.measure``. K-space volumes are measurements as they are (no
ground truth, nothing simulated).

Supported files
  * NIfTI ``.nii`` / ``.nii.gz``: 2-D, 3-D (sliced along ``axis``) or 4-D (one volume per
    index of the 4th dimension, each sliced along ``axis``).
  * NumPy ``.npy`` / ``.npz``: (H, W), (S, H, W) real or complex, or (S, 2, H, W) real/imag.
    In an ``.npz`` every array is a volume, except that a ``kspace`` array (with an optional
    ``mask``) makes the file a measurement file.
  * HDF5 ``.h5`` / ``.hdf5`` in fastMRI's layout: images from ``reconstruction_rss``,
    ``reconstruction_esc`` or ``images`` (S, H, W); otherwise measurements from ``kspace``
    (S, [coils,] H, W) complex with an optional ``mask`` (W,) or (H, W).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NUMPY_SUFFIXES = (".npy", ".npz")
H5_SUFFIXES = (".h5", ".hdf5")
IMAGE_H5_KEYS = ("reconstruction_rss", "reconstruction_esc", "images")
FITS = ("error", "crop", "pad", "crop-pad")
NORMALIZATIONS = ("max", "volume", "none")
#: a slice whose mean magnitude is below this fraction of the volume's largest slice mean is "empty"
EMPTY_FRACTION = 0.05


@dataclass
class Volume:
    """A stack of 2-D slices from one file.

    ``array``: images (S, H, W) real or complex; k-space (S, coils, H, W) complex.
    ``mask``: the sampling mask stored with k-space, if any. ``name`` is unique per volume
    (``file.nii.gz[t=1]`` for the second volume of a 4-D file).
    """

    name: str
    path: str
    sha256: str
    kind: str  # "image" or "kspace"
    array: np.ndarray
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return (int(self.array.shape[-2]), int(self.array.shape[-1]))


# ----------------------------------------------------------------------------- reading
def _suffix(p: Path) -> str:
    name = p.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return p.suffix.lower()


SUPPORTED = NIFTI_SUFFIXES + NUMPY_SUFFIXES + H5_SUFFIXES


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_data_files(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of supported files."""
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not items:
        raise DataError("no data paths given", "pass --data with a file or folder")
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _suffix(q) in SUPPORTED and not q.name.startswith("."))
            if not found:
                raise DataError(f"folder {str(p)!r} holds no data files", f"put {', '.join(SUPPORTED)} files in it")
            files.extend(found)
        elif p.is_file():
            if _suffix(p) not in SUPPORTED:
                raise DataError(f"unsupported data file {p.name!r}", f"use one of: {', '.join(SUPPORTED)}")
            files.append(p)
        else:
            raise DataError(f"data path {str(p)!r} does not exist", "check the path")
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    return unique


def read_volumes(path_or_paths: str | Path | Iterable[str | Path], axis: int = 2, prefer: str = "image") -> list[Volume]:
    """Read every volume in the given files/folders.

    ``axis`` is the slicing axis of 3-D/4-D NIfTI volumes (0, 1 or 2). ``prefer`` decides what a
    fastMRI .h5 holding both images and k-space gives: ``"image"`` (default) or ``"kspace"``.
    """
    if axis not in (0, 1, 2):
        raise DataError(f"slice axis {axis} is not 0, 1 or 2", "pass --axis 0, 1 or 2")
    if prefer not in ("image", "kspace"):
        raise DataError(f"prefer={prefer!r} is not 'image' or 'kspace'", "choose image or kspace")
    volumes: list[Volume] = []
    for f in list_data_files(path_or_paths):
        digest = _sha256(f)
        sfx = _suffix(f)
        try:
            if sfx in NIFTI_SUFFIXES:
                found = _read_nifti(f, axis)
            elif sfx == ".npy":
                found = [(f.name, "image", _image_stack(np.load(f, allow_pickle=False), f.name), None)]
            elif sfx == ".npz":
                found = _read_npz(f)
            else:
                found = _read_h5(f, prefer)
        except DataError:
            raise
        except Exception as e:  # corrupt or foreign files: one line naming the file
            raise DataError(f"cannot read {f.name}: {type(e).__name__}: {e}", "check that the file is complete and in a supported layout") from None
        for name, kind, arr, mask in found:
            if arr.shape[0] == 0:
                continue
            volumes.append(Volume(name, str(f.resolve()), digest, kind, arr, mask))
    if not volumes:
        raise DataError("the data files hold no slices", "check --data")
    return volumes


def _read_nifti(f: Path, axis: int) -> list[tuple[str, str, np.ndarray, None]]:
    import nibabel as nib

    img = nib.load(str(f))
    data = np.asanyarray(img.dataobj)
    if np.iscomplexobj(data):
        data = data.astype(np.complex64)
    else:
        data = data.astype(np.float32)
    if data.ndim == 2:
        return [(f.name, "image", data[None], None)]
    if data.ndim == 3:
        return [(f.name, "image", np.ascontiguousarray(np.moveaxis(data, axis, 0)), None)]
    if data.ndim == 4:
        return [(f"{f.name}[t={t}]", "image", np.ascontiguousarray(np.moveaxis(data[..., t], axis, 0)), None)
                for t in range(data.shape[3])]
    raise DataError(f"{f.name} is a {data.ndim}-D NIfTI", "use 2-D, 3-D or 4-D NIfTI files")


def _image_stack(a: np.ndarray, where: str) -> np.ndarray:
    """(H, W), (S, H, W) real/complex or (S, 2, H, W) real/imag -> (S, H, W) float32/complex64."""
    a = np.asarray(a)
    if a.dtype.kind not in "biufc":
        raise DataError(f"{where} holds {a.dtype} data", "store images as real or complex numbers")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 2 and a.dtype.kind != "c":
        a = a[:, 0] + 1j * a[:, 1]
    elif a.ndim != 3:
        raise DataError(f"{where} has shape {a.shape}", "store images as (slices, H, W) or (slices, 2, H, W) real/imaginary")
    return np.ascontiguousarray(a.astype(np.complex64 if np.iscomplexobj(a) else np.float32))


def _kspace_stack(k: np.ndarray, mask: np.ndarray | None, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    k = np.asarray(k)
    if k.dtype.kind != "c":
        if k.shape[-1] == 2 and k.ndim in (4, 5):
            k = k[..., 0] + 1j * k[..., 1]
        else:
            raise DataError(f"{where}: kspace is {k.dtype}, not complex", "store kspace as complex (slices, coils, H, W)")
    if k.ndim == 3:
        k = k[:, None]
    if k.ndim != 4:
        raise DataError(f"{where}: kspace has shape {k.shape}", "store kspace as (slices, [coils,] H, W) complex")
    if mask is not None:
        mask = np.asarray(mask).astype(np.float32)
        if mask.ndim not in (1, 2):
            raise DataError(f"{where}: mask has shape {mask.shape}", "store the mask as (W,) or (H, W)")
    return np.ascontiguousarray(k.astype(np.complex64)), mask


def _read_npz(f: Path):
    with np.load(f, allow_pickle=False) as z:
        keys = list(z.keys())
        if "kspace" in keys:
            k, m = _kspace_stack(z["kspace"], z["mask"] if "mask" in keys else None, f.name)
            return [(f.name, "kspace", k, m)]
        return [(f"{f.name}[{k}]" if len(keys) > 1 else f.name, "image", _image_stack(z[k], f"{f.name}[{k}]"), None) for k in keys]


def _read_h5(f: Path, prefer: str):
    import h5py

    with h5py.File(f, "r") as h:
        image_key = next((k for k in IMAGE_H5_KEYS if k in h), None)
        has_k = "kspace" in h
        if image_key is not None and not (prefer == "kspace" and has_k):
            return [(f.name, "image", _image_stack(h[image_key][()], f"{f.name}[{image_key}]"), None)]
        if has_k:
            k, m = _kspace_stack(h["kspace"][()], h["mask"][()] if "mask" in h else None, f.name)
            return [(f.name, "kspace", k, m)]
    raise DataError(f"{f.name} has none of {', '.join(IMAGE_H5_KEYS)} or kspace", "store images or kspace under one of those names")


# ----------------------------------------------------------------------------- splits
def file_hashes(volumes: Sequence[Volume]) -> dict[str, str]:
    """{file path: sha256} of the files the volumes come from."""
    return {v.path: v.sha256 for v in volumes}


def split_by_file(volumes: Sequence[Volume], val_fraction: float, seed: int = 0) -> tuple[list[Volume], list[Volume]]:
    """Split volumes into (train, val) by file, never by slice.

    Files with identical contents count as one file, so a copy cannot leak across the split.
    ``val_fraction = 0`` gives no validation set. With at least two files, each side gets at
    least one; with one file a validation split is refused.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"validation fraction {val_fraction} is not in [0, 1)", "pass --val-fraction between 0 and 1, e.g. 0.2")
    if val_fraction == 0:
        return list(volumes), []
    groups: dict[str, list[Volume]] = {}
    names: dict[str, str] = {}
    for v in volumes:
        groups.setdefault(v.sha256, []).append(v)
        names.setdefault(v.sha256, Path(v.path).name)
    keys = sorted(groups, key=lambda k: (names[k], k))
    if len(keys) < 2:
        only = names[keys[0]] if keys else "none"
        raise DataError(
            f"a validation split needs at least 2 data files (split by file, never by slice), got 1 ({only})",
            "pass --val-data with separate validation files, or --val-fraction 0 to train without validation",
        )
    n_val = min(max(1, int(round(len(keys) * float(val_fraction)))), len(keys) - 1)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    train = [v for v in volumes if v.sha256 not in val_keys]
    val = [v for v in volumes if v.sha256 in val_keys]
    return train, val


def check_no_overlap(train_hashes: dict[str, str], eval_hashes: dict[str, str], train_label: str = "training", eval_label: str = "evaluation") -> None:
    """Refuse when a file (by content) is both in the training and the evaluation data."""
    by_hash = {h: p for p, h in train_hashes.items()}
    for path, h in sorted(eval_hashes.items()):
        if h in by_hash:
            same = "" if Path(by_hash[h]).resolve() == Path(path).resolve() else f" (same contents as {by_hash[h]})"
            raise DataError(
                f"{eval_label} file {path} is also in the {train_label} data{same}",
                f"remove it from one of the two sets: scores on data used for {train_label} are not honest",
            )


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

    Slices are centre-cropped / zero-padded to ``op.image_size`` as ``fit`` allows, empty slices
    are dropped (see :func:`nonempty_slices`), and each slice (``"max"``) or the whole volume
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
    a = volume.array
    kept = nonempty_slices(a) if skip_empty else np.arange(a.shape[0])
    a = a[kept]
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
    k = volume.array
    kept = nonempty_slices(k) if skip_empty else np.arange(k.shape[0])
    k = k[kept]
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

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "files": self.hashes,
            "volumes": len(self.volumes),
            "slices": self.slices,
            "skipped_empty_slices": self.skipped_empty,
            "normalization": self.normalization,
            "fit": self.fit,
            "ground_truth": self.kind == "image",
        }


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
    skipped = 0
    for v in volumes:
        if kind == "image":
            x, kept = _images_and_kept(v, op, fit, normalize, skip_empty)
            xs.append(x)
        else:
            y, kept = kspace_to_measurements(v, op, normalize, skip_empty)
            ys.append(y)
        skipped += v.num_slices - len(kept)
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
    return PreparedData(ds, kind, file_hashes(volumes), sorted({v.name for v in volumes}), len(names), skipped, normalize, fit)

