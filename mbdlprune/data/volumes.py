"""Reading data files into :class:`Volume` objects: each file read once, bad slices dropped with a note.

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
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import DataError
from ..errors import first_line as _first_line


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


def _os_problem(e: OSError) -> str:
    """A short reason for an OSError while reading a user's file or folder."""
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "it is a folder"
    if isinstance(e, FileNotFoundError):
        return "it does not exist (any more)"
    return e.strerror or _first_line(e)


def _read_bytes(path: Path) -> bytes:
    """The whole file, read once (its hash and its contents come from the same bytes)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {_os_problem(e)}", "check the path and the file's permissions") from None
    if not raw:
        raise DataError(f"data file {path.name} is empty (0 bytes)", "check that the file was written completely, or remove it")
    return raw


def _walk_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (symlinked folders not followed); an unreadable subfolder is an error."""

    def refuse(e: OSError):
        where = e.filename or folder
        raise DataError(f"cannot list data folder {str(where)!r}: {_os_problem(e)}", "check the folder's permissions")

    out = []
    for root, dirs, names in os.walk(folder, onerror=refuse, followlinks=False):
        dirs.sort()
        out.extend(Path(root) / n for n in names)
    return out


def list_data_files(path_or_paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of supported files."""
    items = [path_or_paths] if isinstance(path_or_paths, (str, Path)) else list(path_or_paths)
    if not items:
        raise DataError("no data paths given", "pass --data with a file or folder")
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in _walk_files(p) if _suffix(q) in SUPPORTED and not q.name.startswith("."))
            if not found:
                raise DataError(f"folder {str(p)!r} holds no data files", f"put {', '.join(SUPPORTED)} files in it")
            broken = [q for q in found if not q.is_file()]
            if broken:
                raise DataError(f"data file {str(broken[0])!r} is not a regular file (a broken link or a device)",
                                "remove it or point it at a real file")
            files.extend(found)
        elif p.is_file():
            if _suffix(p) not in SUPPORTED:
                raise DataError(f"unsupported data file {p.name!r}", f"use one of: {', '.join(SUPPORTED)}")
            files.append(p)
        elif p.exists():
            raise DataError(f"data path {str(p)!r} is neither a file nor a folder", "pass a data file or a folder of them")
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

    Each file is read once (its sha256 and its contents come from the same bytes), and nothing
    a file names (HDF5 external links, virtual or external datasets) is followed. Slices with
    NaN/Inf values and all-zero slices are dropped; the count and the reason are in each
    volume's ``meta["notes"]`` (see :func:`volume_notes`). A volume with no slice left, an
    empty file, or an array that is not a stack of 2-D numeric slices is refused.
    """
    if axis not in (0, 1, 2):
        raise DataError(f"slice axis {axis} is not 0, 1 or 2", "pass --axis 0, 1 or 2")
    if prefer not in ("image", "kspace"):
        raise DataError(f"prefer={prefer!r} is not 'image' or 'kspace'", "choose image or kspace")
    volumes: list[Volume] = []
    for f in list_data_files(path_or_paths):
        raw = _read_bytes(f)
        digest = hashlib.sha256(raw).hexdigest()
        sfx = _suffix(f)
        try:
            if sfx in NIFTI_SUFFIXES:
                found = _read_nifti(f, raw, axis)
            elif sfx == ".npy":
                found = [(f.name, "image", _image_stack(np.load(io.BytesIO(raw), allow_pickle=False), f.name), None)]
            elif sfx == ".npz":
                found = _read_npz(f, raw)
            else:
                found = _read_h5(f, raw, prefer)
        except DataError:
            raise
        except MemoryError:
            raise DataError(f"{f.name} does not fit in memory", "split it into smaller files") from None
        except Exception as e:  # corrupt or foreign files: one line naming the file
            raise DataError(f"cannot read {f.name}: {type(e).__name__}: {_first_line(e)}",
                            "check that the file is complete and in a supported layout") from None
        del raw
        if not found:
            raise DataError(f"{f.name} holds no arrays", "store images or k-space in it, or remove it")
        for name, kind, arr, mask in found:
            if arr.shape[0] == 0 or arr.size == 0:
                raise DataError(f"{name} holds no slices (shape {tuple(arr.shape)})", "check the file, or remove it from the data")
            vol = Volume(name, str(f.resolve()), digest, kind, arr, mask, {"slices_in_file": int(arr.shape[0])})
            volumes.append(_drop_invalid_slices(vol, zeros=True)[0])
    if not volumes:
        raise DataError("the data files hold no slices", "check --data")
    return volumes


def _drop_invalid_slices(volume: Volume, zeros: bool) -> tuple[Volume, np.ndarray]:
    """``volume`` without its NaN/Inf slices (and, with ``zeros``, its all-zero slices), with a note,
    and the indices of the slices kept.

    Refuses a volume with no slice left: normalising an all-NaN or all-zero volume divides by
    zero or by NaN.
    """
    a = volume.array
    flat = a.reshape(a.shape[0], -1)
    nonfinite = ~np.isfinite(flat).all(axis=1)
    zero = ~flat.any(axis=1) & ~nonfinite if zeros else np.zeros(a.shape[0], dtype=bool)
    n_bad, n_zero = int(nonfinite.sum()), int(zero.sum())
    if not n_bad and not n_zero:
        return volume, np.arange(a.shape[0])
    total = a.shape[0]
    reasons = [r for r in (f"{n_zero} all-zero" if n_zero else "", f"{n_bad} with NaN/Inf values" if n_bad else "") if r]
    if n_bad + n_zero == total:
        what = "NaN/Inf or all-zero" if zeros else "NaN/Inf"
        detail = f" ({', '.join(reasons)})" if len(reasons) > 1 else ""
        raise DataError(f"all {total} slices of {volume.name} are {what}{detail}", "check the file, or remove it from the data")
    keep = np.nonzero(~(nonfinite | zero))[0]
    meta = dict(volume.meta)
    meta["notes"] = [*meta.get("notes", []), f"dropped {n_bad + n_zero} of {total} slices of {volume.name}: {', '.join(reasons)}"]
    meta["dropped_nonfinite"] = int(meta.get("dropped_nonfinite", 0)) + n_bad
    meta["dropped_zero"] = int(meta.get("dropped_zero", 0)) + n_zero
    old_index = np.asarray(meta.get("slice_index", np.arange(total)))
    meta["slice_index"] = old_index[keep].tolist()
    return Volume(volume.name, volume.path, volume.sha256, volume.kind, np.ascontiguousarray(a[keep]), volume.mask, meta), keep


def _finite_part(volume: Volume) -> tuple[Volume, np.ndarray]:
    """Before normalising: drop NaN/Inf slices of a volume that did not come from :func:`read_volumes`.

    The note is added to ``volume.meta["notes"]`` (once), so :func:`volume_notes` reports it.
    """
    clean, keep = _drop_invalid_slices(volume, zeros=False)
    if clean is not volume:
        note = clean.meta["notes"][-1]
        notes = volume.meta.setdefault("notes", [])
        if note not in notes:
            notes.append(note)
    return clean, keep


def volume_notes(volumes: Iterable[Volume]) -> list[str]:
    """The notes of the volumes (dropped NaN/Inf and all-zero slices), in order, for reports and warnings."""
    return [n for v in volumes for n in v.meta.get("notes", [])]


@contextmanager
def _quiet_nibabel():
    """nibabel logs header problems to stderr; the error raised says what is wrong in one line."""
    import logging

    from nibabel.imageglobals import logger

    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(old)


def _read_nifti(f: Path, raw: bytes, axis: int) -> list[tuple[str, str, np.ndarray, None]]:
    import gzip
    import zlib

    import nibabel as nib

    if f.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{f.name} is not a complete gzip file ({_first_line(e)})", "check that the file was copied completely") from None
    if len(raw) < 348:
        raise DataError(f"{f.name} is too short for a NIfTI file ({len(raw)} bytes)", "check that the file is complete")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes:
        cls = nib.Nifti1Image
    elif 540 in sizes:
        cls = nib.Nifti2Image
    else:
        raise DataError(f"{f.name} is not a NIfTI file (no NIfTI-1 or NIfTI-2 header)", "check the file, or give it its real suffix")
    with _quiet_nibabel():
        img = cls.from_bytes(raw)
        data = np.asanyarray(img.dataobj)
    if data.dtype.kind not in "biufc":
        raise DataError(f"{f.name} holds {data.dtype} voxels", "store images as real or complex numbers (not RGB or structured voxels)")
    with np.errstate(over="ignore", invalid="ignore"):
        data = data.astype(np.complex64 if np.iscomplexobj(data) else np.float32)
    if data.ndim == 2:
        return [(f.name, "image", data[None], None)]
    if data.ndim == 3:
        return [(f.name, "image", np.ascontiguousarray(np.moveaxis(data, axis, 0)), None)]
    if data.ndim == 4:
        return [(f"{f.name}[t={t}]", "image", np.ascontiguousarray(np.moveaxis(data[..., t], axis, 0)), None)
                for t in range(data.shape[3])]
    raise DataError(f"{f.name} is a {data.ndim}-D NIfTI", "use 2-D, 3-D or 4-D NIfTI files")


def _numeric(a: np.ndarray, where: str, what: str = "images") -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biufc":
        raise DataError(f"{where} holds {a.dtype} data, not numbers", f"store {what} as real or complex numbers")
    return a


def _image_stack(a: np.ndarray, where: str) -> np.ndarray:
    """(H, W), (S, H, W) real/complex or (S, 2, H, W) real/imag -> (S, H, W) float32/complex64."""
    a = _numeric(a, where)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 4 and a.shape[1] == 2 and a.dtype.kind != "c":
        a = a[:, 0] + 1j * a[:, 1]
    elif a.ndim != 3:
        raise DataError(f"{where} has shape {a.shape}", "store images as (H, W), (slices, H, W) or (slices, 2, H, W) real/imaginary")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: dropped and noted
        return np.ascontiguousarray(a.astype(np.complex64 if np.iscomplexobj(a) else np.float32))


def _kspace_stack(k: np.ndarray, mask: np.ndarray | None, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    k = _numeric(k, f"{where}: kspace", "kspace")
    if k.dtype.kind != "c":
        if k.shape[-1:] == (2,) and k.ndim in (4, 5):
            k = k[..., 0] + 1j * k[..., 1]
        else:
            raise DataError(f"{where}: kspace is {k.dtype}, not complex", "store kspace as complex (slices, coils, H, W)")
    if k.ndim == 3:
        k = k[:, None]
    if k.ndim != 4:
        raise DataError(f"{where}: kspace has shape {k.shape}", "store kspace as (slices, [coils,] H, W) complex")
    if mask is not None:
        mask = _numeric(mask, f"{where}: mask", "the mask").astype(np.float32)
        if mask.ndim not in (1, 2):
            raise DataError(f"{where}: mask has shape {mask.shape}", "store the mask as (W,) or (H, W)")
        if not np.isfinite(mask).all():
            raise DataError(f"{where}: mask holds NaN/Inf values", "store the mask as 0/1 values")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(k.astype(np.complex64)), mask


def _read_npz(f: Path, raw: bytes):
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        keys = list(z.keys())
        if "kspace" in keys:
            k, m = _kspace_stack(z["kspace"], z["mask"] if "mask" in keys else None, f.name)
            return [(f.name, "kspace", k, m)]
        return [(f"{f.name}[{k}]" if len(keys) > 1 else f.name, "image", _image_stack(z[k], f"{f.name}[{k}]"), None) for k in keys]


def h5_dataset(h, key: str, where: str):
    """The dataset ``key`` stored in this file: links to other files, virtual and external datasets
    are refused (mbdlprune never follows a path named inside a data file). Not read yet."""
    import h5py

    link = h.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise DataError(f"{where}[{key}] is a link ({type(link).__name__}), not data stored in the file",
                        "store the array itself in the file (mbdlprune never follows paths named inside data files)")
    ds = h[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{where}[{key}] is a group, not an array", f"store {key} as an array")
    if ds.is_virtual or ds.id.get_create_plist().get_external_count() > 0:
        raise DataError(f"{where}[{key}] is a virtual or external dataset that names other files",
                        "store the array itself in the file (mbdlprune never follows paths named inside data files)")
    return ds


def _h5_array(h, key: str, where: str) -> np.ndarray:
    """The array of :func:`h5_dataset`."""
    return h5_dataset(h, key, where)[()]


def _read_h5(f: Path, raw: bytes, prefer: str):
    import h5py

    with h5py.File(io.BytesIO(raw), "r") as h:
        image_key = next((k for k in IMAGE_H5_KEYS if k in h), None)
        has_k = "kspace" in h
        if image_key is not None and not (prefer == "kspace" and has_k):
            return [(f.name, "image", _image_stack(_h5_array(h, image_key, f.name), f"{f.name}[{image_key}]"), None)]
        if has_k:
            mask = _h5_array(h, "mask", f.name) if "mask" in h else None
            k, m = _kspace_stack(_h5_array(h, "kspace", f.name), mask, f.name)
            return [(f.name, "kspace", k, m)]
    raise DataError(f"{f.name} has none of {', '.join(IMAGE_H5_KEYS)} or kspace", "store images or kspace under one of those names")
