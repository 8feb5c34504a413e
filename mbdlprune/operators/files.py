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

    from ..data.volumes import h5_dataset

    with h5py.File(path, "r") as f:
        names = list(f)  # link names only: nothing is resolved yet
        for name in datasets:
            if name in names:
                return np.asarray(h5_dataset(f, name, path.name)[()])  # links to other files refused
        # hard links to datasets only: an external, soft or virtual entry is never resolved
        found = [k for k in names if isinstance(f.get(k, getlink=True), h5py.HardLink) and isinstance(f[k], h5py.Dataset)]
        if len(found) == 1:
            return np.asarray(h5_dataset(f, found[0], path.name)[()])
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


def check_mask_coverage(mask: np.ndarray, key: str, where: str) -> None:
    """Refuse a mask that samples nothing (no measurements) or everything (nothing to reconstruct)."""
    total = float(np.asarray(mask).sum())
    if total == 0:
        raise ConfigError(f"{where}: the {key} file samples nothing (all zeros)", "save a mask with 1 where data are measured")
    if total == np.asarray(mask).size:
        raise ConfigError(f"{where}: the {key} file samples everything (all ones), so there is nothing to reconstruct",
                          "save the undersampling mask (or use a generated mask, e.g. acceleration = 1 for full sampling on purpose)")


def binary_mask(arr: np.ndarray, key: str, where: str) -> np.ndarray:
    """Check an array holds only 0/1 (or booleans) and return it as float32."""
    if arr.dtype.kind == "c":
        raise ConfigError(f"{where}: {key} file holds complex values", "save a real 0/1 mask")
    if arr.size == 0:
        raise ConfigError(f"{where}: {key} file is empty", "save a non-empty 0/1 mask")
    vals = np.unique(arr)
    if not np.all(np.isin(vals, (0, 1))):
        raise ConfigError(f"{where}: {key} file must hold only 0 and 1, found values like {vals[:5].tolist()}",
                          "save the mask as 0/1 (or boolean)")
    return arr.astype(np.float32)


# -- where a spec's array files come from ---------------------------------------------------
#: Spec values that point at arrays stored inside a model file: ``embedded:KEY@SHA256[:16]``.
EMBEDDED_PREFIX = "embedded:"


def canonical_array(arr: np.ndarray) -> np.ndarray:
    """The dtype an array is kept in once read (safetensors can store it; hashes are of this form)."""
    kind = arr.dtype.kind
    dtype = {"b": np.int64, "u": np.int64, "i": np.int64, "f": np.float64, "c": np.complex64}[kind]
    return np.ascontiguousarray(arr, dtype=dtype)


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (first 16 hex digits)."""
    import hashlib

    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def embedded_ref(key: str, arr: np.ndarray) -> str:
    return f"{EMBEDDED_PREFIX}{key}@{array_digest(arr)}"


def is_embedded_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(EMBEDDED_PREFIX)


class SpecFiles:
    """The source of the arrays an operator spec names (masks, coil maps, kernels).

    A spec the user gave (a file named on the command line, or a dict from Python code) reads
    its array files from disk, relative to ``base_dir``. A spec read from a model file gets
    ``embedded`` arrays (stored inside that model file) and never opens a path: a path in a
    file someone else wrote could point anywhere on this machine. Every array read is kept in
    ``read`` so that a model file written later can embed it.
    """

    def __init__(self, base_dir: str | Path | None = None, embedded: dict[str, np.ndarray] | None = None):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.embedded = embedded
        self.read: dict[str, np.ndarray] = {}
        self.sources: dict[str, str] = {}

    @property
    def from_model_file(self) -> bool:
        return self.embedded is not None

    def load(self, value: str, key: str, where: str, datasets: Iterable[str] = ()) -> tuple[np.ndarray, str]:
        """The array named by a spec value, and the reference to record in the operator's spec."""
        if self.embedded is not None:
            arr = self._embedded(value, key, where)
            self.sources[key] = "embedded in the model file"
        else:
            if is_embedded_ref(value):
                raise ConfigError(f"{where}: {key} = {value!r} refers to data embedded in a model file",
                                  "load the model file with mbdlprune.load_model, or name the array file")
            arr, path = load_array(value, self.base_dir, key, where, datasets)
            arr = canonical_array(arr)
            self.sources[key] = str(path)
        self.read[key] = arr
        return arr, embedded_ref(key, arr)

    def _embedded(self, value: str, key: str, where: str) -> np.ndarray:
        if not is_embedded_ref(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise ConfigError(f"{where}: {key} names the file {shown!r} inside a model file, and paths inside files are never opened",
                              "pass --operator SPEC to give the operator, or re-save the model with this mbdlprune (it embeds the data)")
        name, _, digest = value[len(EMBEDDED_PREFIX):].partition("@")
        arr = self.embedded.get(name)
        if name != key or arr is None:
            raise ConfigError(f"{where}: the model file has no embedded {key!r} array", "the file is damaged: export it again")
        arr = canonical_array(np.asarray(arr))
        if array_digest(arr) != digest:
            raise ConfigError(f"{where}: the embedded {key!r} array does not match its checksum", "the file is damaged: export it again")
        return arr
