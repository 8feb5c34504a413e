"""Read fixed operator data (masks, kernels, coil maps) from .npy, .nii, .nii.gz and .h5 files."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ConfigError, DataError

SUFFIXES = (".npy", ".nii", ".nii.gz", ".h5", ".hdf5")


def file_suffix(path: str | Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def looks_like_path(value: str) -> bool:
    """True if a string names an array file rather than a built-in choice."""
    return file_suffix(value) in SUFFIXES or "/" in value or "\\" in value


def resolve_path(value: str, base_dir: str | Path | None, key: str, where: str) -> Path:
    """Absolute path of an existing array file; relative paths are read from ``base_dir``."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or Path.cwd()) / p
    p = p.resolve()
    if file_suffix(p) not in SUFFIXES:
        raise ConfigError(f"{where}: {key} file {str(p)!r} has an unsupported type",
                          f"use one of {', '.join(SUFFIXES)}")
    if not p.is_file():
        raise ConfigError(f"{where}: {key} file {str(p)!r} does not exist",
                          f"check {key}; relative paths are read from the spec file's folder")
    return p


def _read_h5(path: Path, datasets: Iterable[str]) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        for name in datasets:
            if name in f:
                return np.asarray(f[name][()])
        found = [k for k in f if isinstance(f[k], h5py.Dataset)]
        if len(found) == 1:
            return np.asarray(f[found[0]][()])
    wanted = ", ".join(datasets) or "a single dataset"
    raise DataError(f"{path.name} holds datasets {found} but none of: {wanted}",
                    f"store the array in {path.name} under the name {next(iter(datasets), 'data')!r}")


def read_array(path: str | Path, datasets: Iterable[str] = ()) -> np.ndarray:
    """Load an array; NIfTI trailing singleton axes are dropped, h5 picks the first dataset of ``datasets``."""
    p = Path(path)
    suffix = file_suffix(p)
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in (".nii", ".nii.gz"):
            import nibabel

            arr = np.asarray(nibabel.load(str(p)).dataobj)
            while arr.ndim > 1 and arr.shape[-1] == 1:
                arr = arr[..., 0]
        elif suffix in (".h5", ".hdf5"):
            arr = _read_h5(p, tuple(datasets))
        else:
            raise DataError(f"{p.name} has an unsupported type", f"use one of {', '.join(SUFFIXES)}")
    except DataError:
        raise
    except Exception as e:  # numpy/nibabel/h5py raise many types for corrupt files
        raise DataError(f"cannot read {str(p)!r}: {e}", "check that the file is a valid, uncorrupted array file") from None
    if arr.dtype.kind not in "biufc":
        raise DataError(f"{p.name} holds {arr.dtype} data, not numbers", "save a numeric array")
    return arr


def load_array(value: str, base_dir: str | Path | None, key: str, where: str,
               datasets: Iterable[str] = ()) -> tuple[np.ndarray, Path]:
    """Resolve and read the file named by a spec value; returns (array, absolute path)."""
    path = resolve_path(value, base_dir, key, where)
    return read_array(path, datasets), path


def binary_mask(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    """Check an array holds only 0/1 (or booleans) and return it as float32."""
    if arr.dtype.kind == "c":
        raise ConfigError(f"{where}: {key} file holds complex values", "save a real 0/1 mask")
    vals = np.unique(arr)
    if not np.all(np.isin(vals, (0, 1))):
        raise ConfigError(f"{where}: {key} file must hold only 0 and 1, found values like {vals[:5].tolist()}",
                          "save the mask as 0/1 (or boolean)")
    return arr.astype(np.float32)
