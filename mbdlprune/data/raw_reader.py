"""Reading untrusted raw k-space files (fastMRI ``.h5`` and ``.npz``) into their arrays, bounded.

Every check that runs before an array is allocated lives here: the file size
(:data:`MAX_RAW_FILE_BYTES`; each file is read once, whole), k-space, target and mask shapes and
dtypes from their HDF5 or ``.npy`` headers (:data:`MAX_KSPACE_ELEMENTS` and the image limits),
no pickled arrays, HDF5 links and external or virtual datasets refused, the ISMRMRD header as one
bounded string, scalar attributes only. The readers return a dict of the file's parts, which
:mod:`.raw` assembles into a :class:`~.raw_volume.RawVolume`. :func:`holds_kspace` and
:func:`is_raw` tell raw k-space from image files by their names alone.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DataError
from ..operators.common import MAX_PIXELS, MAX_SIDE
from ..operators.mri import MAX_COILS
from .ismrmrd import MAX_HEADER_BYTES, _header_too_large
from .raw_volume import TARGET_KEYS
from .volumes import NIFTI_SUFFIXES, _os_problem, _suffix, list_data_files

RAW_SUFFIXES = (".h5", ".hdf5", ".npz")
#: at most 2**28 complex k-space samples per file (2 GiB as complex64); fastMRI's largest
#: multi-coil volumes hold about 1.3e8 (e.g. 35 slices x 15 coils x 640 x 368)
MAX_KSPACE_ELEMENTS = 1 << 28
#: a raw file is read whole (its sha256 and its contents come from the same bytes)
MAX_RAW_FILE_BYTES = 1 << 32
MAX_ATTR_CHARS = 256


# ----------------------------------------------------------------------------- files
def list_raw_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The raw k-space files among the given files and folders; image files are refused."""
    files = list_data_files(paths)
    for f in files:
        if _suffix(f) not in RAW_SUFFIXES:
            kind = "a NIfTI image" if _suffix(f) in NIFTI_SUFFIXES else "an image array"
            raise DataError(f"{f.name} is {kind} file, not raw k-space",
                            "image files go to the image path (read_volumes); raw k-space comes in .h5 or .npz with a kspace array")
    return files


def _read_capped(path: Path) -> bytes:
    """The whole file, refused beyond :data:`MAX_RAW_FILE_BYTES` before it is read."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            if size > MAX_RAW_FILE_BYTES:
                raise DataError(f"{path.name} is {size / 2**30:.1f} GiB, beyond the {MAX_RAW_FILE_BYTES / 2**30:.0f} GiB a raw file may have",
                                "split the volume into smaller files")
            f.seek(0)
            raw = f.read(size)  # the size found (a larger request would allocate that much up front)
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {_os_problem(e)}", "check the path and the file's permissions") from None
    if not raw:
        raise DataError(f"data file {path.name} is empty (0 bytes)", "check that the file was written completely, or remove it")
    return raw

# ----------------------------------------------------------------------------- shape checks
def _check_kspace_header(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """Refuse k-space that is not complex or is too large, from its declared shape and dtype only."""
    if dtype.kind not in "biufc":
        raise DataError(f"{where}: kspace holds {dtype} data, not numbers", "store kspace as complex64 (slices, coils, H, W)")
    pairs = dtype.kind != "c" and len(shape) == 5 and shape[-1] == 2
    if dtype.kind != "c" and not pairs:
        raise DataError(f"{where}: kspace is {dtype}, not complex",
                        "store kspace as complex64 (slices, [coils,] H, W), as fastMRI does")
    dims = shape[:-1] if pairs else shape
    if len(dims) not in (3, 4):
        raise DataError(f"{where}: kspace has shape {tuple(shape)}", "store kspace as (slices, [coils,] H, W) complex")
    h, w = dims[-2:]
    coils = dims[1] if len(dims) == 4 else 1
    total = math.prod(dims)
    if min(dims) < 1:
        raise DataError(f"{where}: kspace has shape {tuple(shape)} (an empty dimension)", "store at least one slice of k-space")
    if max(h, w) > MAX_SIDE or h * w > MAX_PIXELS or coils > MAX_COILS or total > MAX_KSPACE_ELEMENTS:
        raise DataError(f"{where}: kspace shape {tuple(shape)} is beyond the supported size (sides up to {MAX_SIDE}, "
                        f"{MAX_PIXELS:,} pixels, {MAX_COILS} coils, {MAX_KSPACE_ELEMENTS:,} samples)",
                        "split the volume into smaller files")


def _check_small_header(shape: tuple[int, ...], dtype: np.dtype, key: str, where: str, ndims: tuple[int, ...]) -> None:
    """Targets and masks: numeric, ``ndims`` dimensions, within the image limits, before reading."""
    if dtype.kind not in "biuf" + ("c" if key in TARGET_KEYS else ""):
        raise DataError(f"{where}: {key} holds {dtype} data, not numbers", f"store {key} as real numbers")
    if len(shape) not in ndims:
        want = "(slices, h, w)" if key in TARGET_KEYS else "(W,) or (H, W)"
        raise DataError(f"{where}: {key} has shape {tuple(shape)}", f"store {key} as {want}")
    side = shape[-2:] if len(shape) >= 2 else shape
    if max(side, default=0) > MAX_SIDE or math.prod(shape) > MAX_KSPACE_ELEMENTS or math.prod(side) > MAX_PIXELS:
        raise DataError(f"{where}: {key} shape {tuple(shape)} is beyond the supported size", "split the volume into smaller files")


# ----------------------------------------------------------------------------- HDF5
def _h5_dataset(h, key: str, where: str):
    """The dataset ``key`` stored in this file (:func:`mbdlprune.data.volumes.h5_dataset`'s refusals)."""
    from .volumes import h5_dataset

    return h5_dataset(h, key, where)


def _read_h5(f: Path, raw: bytes, wanted: Sequence[str]) -> dict[str, Any]:
    import h5py

    with h5py.File(io.BytesIO(raw), "r") as h:
        keys = sorted(h.keys())
        if "kspace" not in keys:
            _no_kspace(f.name, keys)
        parts: dict[str, Any] = {"keys": keys}
        ds = _h5_dataset(h, "kspace", f.name)
        _check_kspace_header(tuple(ds.shape), ds.dtype, f.name)
        parts["kspace"] = ds[()]
        for key in wanted:
            if key in keys:
                ds = _h5_dataset(h, key, f.name)
                _check_small_header(tuple(ds.shape), ds.dtype, key, f.name, (3,) if key != "mask" else (1, 2))
                parts[key] = ds[()]
        if "ismrmrd_header" in h:
            parts["ismrmrd_header"] = _h5_header(_h5_dataset(h, "ismrmrd_header", f.name), f.name)
        parts["attrs"] = {k: h.attrs[k] for k in h.attrs.keys() if _scalar_attr(h.attrs.get_id(k))}
    return parts


def _scalar_attr(aid) -> bool:
    """An HDF5 attribute that is one number or one string (read only then)."""
    return aid.shape in ((), (1,)) and aid.dtype.kind in "biufSUO"


def _h5_header(ds, where: str) -> bytes:
    """The ``ismrmrd_header`` bytes: one string, at most :data:`MAX_HEADER_BYTES`."""
    if ds.shape not in ((), (1,)) or ds.dtype.kind not in "SUO":
        raise DataError(f"{where}: ismrmrd_header has shape {ds.shape} and dtype {ds.dtype}, not one string",
                        "store the ISMRMRD XML header as one string, or remove it")
    if ds.dtype.kind == "S" and ds.dtype.itemsize > MAX_HEADER_BYTES:
        raise _header_too_large(where, ds.dtype.itemsize)
    value = ds[()]
    value = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
    return _header_bytes(value, where)


def _header_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if not isinstance(value, (bytes, np.bytes_)):
        raise DataError(f"{where}: ismrmrd_header is {type(value).__name__}, not a string", "store the ISMRMRD XML header as one string")
    if len(value) > MAX_HEADER_BYTES:
        raise _header_too_large(where, len(value))
    return bytes(value)


def _no_kspace(name: str, keys: Sequence[str]) -> None:
    images = [k for k in keys if k in (*TARGET_KEYS, "images")]
    if images:
        raise DataError(f"{name} holds images ({', '.join(images)}) but no kspace",
                        "image files go to the image path (read_volumes); raw k-space needs a kspace dataset")
    held = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "") if keys else "nothing"
    raise DataError(f"{name} has no kspace dataset (it holds: {held})",
                    "store raw k-space as 'kspace' (slices, [coils,] H, W) complex, as fastMRI does")


# ----------------------------------------------------------------------------- npz
def _npz_header(z, key: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an .npz member from its .npy header, without reading the array."""
    fmt = np.lib.format
    member = f"{key}.npy" if f"{key}.npy" in z.zip.namelist() else key
    with z.zip.open(member) as fp:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise DataError(f"{where}[{key}] uses .npy format {version}", "save it with numpy.savez (format 1.0 or 2.0)")
    if dtype.hasobject:
        raise DataError(f"{where}[{key}] is a pickled object array",
                        "store plain numeric arrays (mbdlprune never unpickles data files)")
    return tuple(shape), dtype


def _read_npz(f: Path, raw: bytes, wanted: Sequence[str]) -> dict[str, Any]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        keys = sorted(z.keys())
        if "kspace" not in keys:
            _no_kspace(f.name, keys)
        parts: dict[str, Any] = {"keys": keys, "attrs": {}}
        headers = {k: _npz_header(z, k, f.name) for k in keys}
        _check_kspace_header(*headers["kspace"], f.name)
        parts["kspace"] = z["kspace"]
        for key in wanted:
            if key in keys:
                _check_small_header(*headers[key], key, f.name, (3,) if key != "mask" else (1, 2))
                parts[key] = z[key]
        for key in keys:
            shape, dtype = headers[key]
            if key == "ismrmrd_header":
                if shape != () or dtype.kind not in "SU" or dtype.itemsize > 4 * MAX_HEADER_BYTES:
                    raise DataError(f"{f.name}: ismrmrd_header has shape {shape} and dtype {dtype}, not one string",
                                    "store the ISMRMRD XML header as a 0-d string array, or remove it")
                parts["ismrmrd_header"] = _header_bytes(z[key], f.name)
            elif shape == () and key not in ("kspace", "mask", *TARGET_KEYS) and dtype.itemsize <= 4 * MAX_ATTR_CHARS:
                parts["attrs"][key] = z[key].item()
    return parts


# ----------------------------------------------------------------------------- raw or images
def holds_kspace(path: str | Path) -> bool:
    """Whether a file is raw k-space: an .h5 with a ``kspace`` dataset or an .npz with a ``kspace``
    array. Reads names only (nothing is loaded); unreadable files count as not raw."""
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(p, "r") as f:
                return "kspace" in f
        if name.endswith(".npz"):
            import zipfile

            with zipfile.ZipFile(p) as z:
                return "kspace.npy" in z.namelist()
    except Exception:  # a corrupt file: the readers give the one-line error later
        return False
    return False


def is_raw(data: Any) -> bool:
    """True when ``data`` (a path, or a list of paths, files or folders) holds raw k-space files."""
    if isinstance(data, (str, Path)):
        paths = [Path(data)]
    elif isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, Path)) for d in data):
        paths = [Path(d) for d in data]
    else:
        return False
    files: list[Path] = []
    for p in paths:
        files += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return any(holds_kspace(f) for f in files)
