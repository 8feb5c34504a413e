"""Raw k-space volumes (fastMRI ``.h5`` and ``.npz``) and the fastMRI evaluation protocol.

Reading: :func:`read_raw` turns files into :class:`RawVolume` objects: k-space (S, coils, H, W)
complex64, the stored target (``reconstruction_rss`` / ``reconstruction_esc``) or the RSS of fully
sampled k-space, ``max``, the ISMRMRD matrix sizes and the acquisition attributes, without any
patient attribute. Files are hostile: each is read once (sha256 and contents from the same bytes),
array shapes are checked before anything is allocated, nothing is unpickled, the XML header is
parsed with DTDs and entities refused, HDF5 links and external or virtual datasets (paths named
inside a file) are refused, and NaN/Inf or all-zero slices are dropped with a note.

Protocol (what fastMRI's ``SliceDataset`` + ``VarNetDataTransform`` + ``VarNetModule`` do):

* the mask of a fully sampled file is drawn with a seed fixed per file, ``tuple(map(ord, name))``
  (:func:`volume_seed`, :func:`volume_mask`), so a file gets the same mask in every run and the
  same mask as fastMRI's ``RandomMaskFunc`` / ``EquiSpacedMaskFunc`` / ``EquispacedMaskFractionFunc``; columns outside the
  ISMRMRD ``padding_left .. padding_right`` are zeroed as fastMRI does;
* k-space is undersampled retrospectively without noise (:func:`undersample`);
* outputs are compared with the target after a centre crop (:func:`center_crop`) to the target's
  size, or to the ISMRMRD recon matrix when there is no target (:func:`crop_size`);
* fastMRI's VarNet takes k-space unscaled; DEQ/unrolled models here were trained on max-normalised
  data, so :func:`scale_kspace` returns the scale that maps outputs back to the target's units.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DataError
from ..errors import first_line as _first_line
from ..operators.common import MAX_PIXELS, MAX_SIDE
from ..operators.mri import MAX_COILS
from .volumes import NIFTI_SUFFIXES, NORMALIZATIONS, _os_problem, _suffix, list_data_files

RAW_SUFFIXES = (".h5", ".hdf5", ".npz")
TARGET_KEYS = ("reconstruction_rss", "reconstruction_esc")
#: where :attr:`RawVolume.target` came from
TARGET_SOURCES = ("reconstruction_rss", "reconstruction_esc", "rss of fully sampled k-space", None)
#: ``target=`` choices of :func:`read_raw`
TARGET_CHOICES = ("auto", "reconstruction_rss", "reconstruction_esc", "kspace", "none")
#: at most 2**28 complex k-space samples per file (2 GiB as complex64); fastMRI's largest
#: multi-coil volumes hold about 1.3e8 (e.g. 35 slices x 15 coils x 640 x 368)
MAX_KSPACE_ELEMENTS = 1 << 28
#: a raw file is read whole (its sha256 and its contents come from the same bytes)
MAX_RAW_FILE_BYTES = 1 << 32
#: real ISMRMRD headers are a few kB
MAX_HEADER_BYTES = 1 << 20
MAX_XML_DEPTH = 32
MAX_ATTR_CHARS = 256
MASK_KINDS = ("random", "equispaced", "equispaced_fraction")
#: attribute names never kept (fastMRI's ``patient_id`` and anything naming a person or a date)
_PRIVATE_ATTR = re.compile(r"patient|subject|name|birth|date|(^|_)id$|uid", re.IGNORECASE)
_CHECK = "check that the file is a complete fastMRI-layout file"


@dataclass
class RawVolume:
    """One raw k-space file: k-space, target, scalars and where they came from.

    ``kspace`` (S, coils, H, W) complex64 (H: readout, W: phase-encode columns; single-coil files
    have coils = 1 and ``single_coil=True``). ``target`` (S, h, w) float32 or None. ``maxval``:
    the file's ``max`` attribute, else the target's maximum. ``encoding``: ISMRMRD sizes in
    fastMRI's metadata names (``encoding_size``, ``recon_size``: (x, y, z) with x = readout,
    ``padding_left`` / ``padding_right``). ``slice_index``: indices in the file of the kept slices.
    """

    name: str
    path: str
    sha256: str
    kspace: np.ndarray
    target: np.ndarray | None = None
    target_source: str | None = None
    maxval: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    mask: np.ndarray | None = None
    single_coil: bool = False
    slice_index: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return int(self.kspace.shape[0])

    @property
    def coils(self) -> int:
        return int(self.kspace.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the k-space (and of the full-FOV images reconstructed from it)."""
        return int(self.kspace.shape[-2]), int(self.kspace.shape[-1])

    @property
    def fully_sampled(self) -> bool:
        """No mask stored in the file (fastMRI stores masks only with undersampled k-space)."""
        return self.mask is None or bool(np.all(self.mask > 0))

    def record(self) -> dict[str, Any]:
        """What a report says about this volume (no arrays)."""
        return {"name": self.name, "sha256": self.sha256, "slices": self.num_slices, "coils": self.coils,
                "kspace_shape": list(self.image_shape), "single_coil": self.single_coil,
                "fully_sampled": self.fully_sampled, "target_source": self.target_source,
                "target_shape": None if self.target is None else list(self.target.shape[-2:]),
                "maxval": self.maxval, "attrs": dict(self.attrs), "encoding": dict(self.encoding),
                "notes": list(self.notes)}


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


def read_raw(paths: str | Path | Iterable[str | Path], target: str = "auto") -> list[RawVolume]:
    """Read every raw k-space file in the given files/folders into :class:`RawVolume` objects.

    ``target``: ``"auto"`` takes ``reconstruction_rss`` for multi-coil and ``reconstruction_esc``
    for single-coil files (else the other), else the RSS of the k-space when it is fully
    sampled; ``"reconstruction_rss"`` / ``"reconstruction_esc"`` require that dataset;
    ``"kspace"`` always computes the RSS target; ``"none"`` reads no target.
    """
    if target not in TARGET_CHOICES:
        raise DataError(f"unknown target {target!r}", f"use one of: {', '.join(TARGET_CHOICES)}")
    return [read_raw_file(f, target) for f in list_raw_files(paths)]


def read_raw_file(path: str | Path, target: str = "auto") -> RawVolume:
    """One raw file (see :func:`read_raw`); every problem is one :class:`DataError`."""
    f = Path(path)
    raw = _read_capped(f)
    digest = hashlib.sha256(raw).hexdigest()
    try:
        wanted = ("mask",) if target == "none" else (*TARGET_KEYS, "mask")  # "none": no target is decoded at all
        parts = _read_npz(f, raw, wanted) if _suffix(f) == ".npz" else _read_h5(f, raw, wanted)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{f.name} does not fit in memory", "split it into smaller files") from None
    except Exception as e:  # corrupt or foreign files: one line naming the file
        raise DataError(f"cannot read {f.name}: {type(e).__name__}: {_first_line(e)}", _CHECK) from None
    del raw
    return _assemble(f, digest, parts, target)


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


def _as_kspace(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """(S, [C,] H, W) complex or (S, C, H, W, 2) real pairs -> (S, C, H, W) complex64 and single_coil."""
    if a.dtype.kind != "c":
        a = a[..., 0] + 1j * a[..., 1]
    single = a.ndim == 3
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, dropped below
        return np.ascontiguousarray((a[:, None] if single else a).astype(np.complex64)), single


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


def _header_too_large(where: str, n: int) -> DataError:
    return DataError(f"{where}: ismrmrd_header is {n:,} bytes, more than the {MAX_HEADER_BYTES:,} an ISMRMRD header needs",
                     "store a standard ISMRMRD header, or remove it")


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


# ----------------------------------------------------------------------------- ISMRMRD header
_WANTED = {
    ("encoding", "encodedSpace", "matrixSize", "x"), ("encoding", "encodedSpace", "matrixSize", "y"),
    ("encoding", "encodedSpace", "matrixSize", "z"), ("encoding", "reconSpace", "matrixSize", "x"),
    ("encoding", "reconSpace", "matrixSize", "y"), ("encoding", "reconSpace", "matrixSize", "z"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "center"),
    ("encoding", "encodingLimits", "kspace_encoding_step_1", "maximum"),
}


def _refuse_dtd(*_args) -> None:
    raise DataError("__dtd__", "")


def _xml_values(text: bytes, where: str) -> dict[tuple[str, ...], str]:
    """Text of the elements in :data:`_WANTED` (first ``encoding`` only), parsed with expat.

    DOCTYPE and ENTITY declarations are refused (no entity is ever expanded and no external
    file is opened), as are documents nested deeper than :data:`MAX_XML_DEPTH`.
    """
    from xml.parsers import expat

    if len(text) > MAX_HEADER_BYTES:
        raise _header_too_large(where, len(text))
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", text, re.IGNORECASE):
        raise DataError(f"{where}: ismrmrd_header declares a DOCTYPE or ENTITY",
                        "store a plain ISMRMRD header (mbdlprune refuses XML with document type or entity declarations)")
    p = expat.ParserCreate(namespace_separator="}")
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.StartDoctypeDeclHandler = p.EntityDeclHandler = p.ExternalEntityRefHandler = _refuse_dtd
    stack: list[str] = []
    found: dict[tuple[str, ...], str] = {}
    encodings = [0]

    def start(name, _attrs):
        stack.append(name.rsplit("}", 1)[-1])
        if len(stack) > MAX_XML_DEPTH:
            raise DataError(f"{where}: ismrmrd_header nests deeper than {MAX_XML_DEPTH} elements", "store a standard ISMRMRD header")
        if stack[1:] == ["encoding"]:
            encodings[0] += 1

    def end(_name):
        stack.pop()

    def chars(data):
        path = tuple(stack[1:])
        if encodings[0] == 1 and path in _WANTED:
            found[path] = found.get(path, "") + data

    p.StartElementHandler, p.EndElementHandler, p.CharacterDataHandler = start, end, chars
    try:
        p.Parse(text, True)
    except DataError as e:
        if e.problem == "__dtd__":
            raise DataError(f"{where}: ismrmrd_header declares a DOCTYPE or ENTITY",
                            "store a plain ISMRMRD header (mbdlprune refuses XML with document type or entity declarations)") from None
        raise
    except expat.ExpatError as e:
        raise DataError(f"{where}: ismrmrd_header is not well-formed XML ({_first_line(e, 80)})",
                        "store a standard ISMRMRD header, or remove it") from None
    return found


def parse_ismrmrd_header(text: bytes, where: str = "ismrmrd_header") -> dict[str, Any]:
    """fastMRI's metadata from an ISMRMRD XML header: ``encoding_size``, ``recon_size`` (x, y, z),
    and ``padding_left`` / ``padding_right`` from ``kspace_encoding_step_1``, as its
    ``SliceDataset._retrieve_metadata`` computes them. Missing or non-integer values are left out."""
    values = _xml_values(text, where)

    def number(*path):
        v = values.get(("encoding", *path), "").strip()
        return int(v) if re.fullmatch(r"[0-9]{1,6}", v) else None

    out: dict[str, Any] = {}
    for key, space in (("encoding_size", "encodedSpace"), ("recon_size", "reconSpace")):
        size = tuple(number(space, "matrixSize", a) for a in "xyz")
        if None not in size[:2]:
            out[key] = (size[0], size[1], size[2] if size[2] is not None else 1)
    center = number("encodingLimits", "kspace_encoding_step_1", "center")
    maximum = number("encodingLimits", "kspace_encoding_step_1", "maximum")
    if "encoding_size" in out and center is not None and maximum is not None:
        out["padding_left"] = out["encoding_size"][1] // 2 - center
        out["padding_right"] = out["padding_left"] + maximum + 1
    return out


# ----------------------------------------------------------------------------- assembling
def _clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Scalar acquisition attributes, JSON-safe; patient attributes and long strings are dropped."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if not isinstance(k, str) or _PRIVATE_ATTR.search(k):
            continue
        v = v.reshape(-1)[0] if isinstance(v, np.ndarray) and v.size == 1 else v
        if isinstance(v, (bytes, np.bytes_)):
            v = bytes(v).decode("utf-8", "replace")
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)) and math.isfinite(float(v)):
            out[k] = float(v)
        elif isinstance(v, str) and len(v) <= MAX_ATTR_CHARS:
            out[k] = v
    return out


def _pick_target(parts: dict[str, Any], target: str, single: bool, name: str) -> str | None:
    """Which stored target to use (None: compute or none)."""
    if target in TARGET_KEYS:
        if target not in parts:
            raise DataError(f"{name} has no {target}", f"use target='auto', or a file that stores {target}")
        return target
    if target in ("kspace", "none"):
        return None
    order = TARGET_KEYS[::-1] if single else TARGET_KEYS
    return next((k for k in order if k in parts), None)


def _stored_target(parts: dict[str, Any], key: str, kspace: np.ndarray, name: str) -> np.ndarray:
    t = np.asarray(parts[key])
    with np.errstate(over="ignore", invalid="ignore"):
        t = np.abs(t).astype(np.float32) if t.dtype.kind == "c" else t.astype(np.float32)
    if t.shape[0] != kspace.shape[0]:
        raise DataError(f"{name}: {key} has {t.shape[0]} slices but kspace has {kspace.shape[0]}",
                        "store one target slice per k-space slice")
    h, w = kspace.shape[-2:]
    if t.shape[1] > h or t.shape[2] > w:
        raise DataError(f"{name}: {key} is {t.shape[1]}x{t.shape[2]}, larger than the {h}x{w} image of its k-space",
                        "store targets cropped from the k-space's image (fastMRI: 320x320 from 640x320)")
    return np.ascontiguousarray(t)


def _stored_mask(parts: dict[str, Any], kspace: np.ndarray, name: str) -> np.ndarray | None:
    if "mask" not in parts:
        return None
    m = np.asarray(parts["mask"])
    if not np.isfinite(m).all():
        raise DataError(f"{name}: mask holds NaN/Inf values", "store the mask as 0/1 values")
    h, w = kspace.shape[-2:]
    if m.shape[-1] != w:
        raise DataError(f"{name}: the stored mask is {m.shape[-1]} columns wide but the k-space has {w} columns",
                        "store a mask over the k-space's phase-encode columns (W,) or (H, W)")
    if m.ndim == 2 and m.shape[0] != h:
        raise DataError(f"{name}: the stored mask has {m.shape[0]} rows but the k-space has {h}", "store the mask as (W,) or (H, W)")
    return (m > 0).astype(np.float32)


def _drop_bad_slices(k: np.ndarray, t: np.ndarray | None, name: str) -> tuple[np.ndarray, list[str]]:
    """Indices of the slices kept: k-space and target finite, k-space not all zero; a note otherwise.

    Refuses a volume with no slice left, as :mod:`.volumes` does.
    """
    flat = k.reshape(k.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if t is not None:
        bad |= ~np.isfinite(t.reshape(t.shape[0], -1)).all(axis=1)
    zero = ~flat.any(axis=1) & ~bad
    n_bad, n_zero, total = int(bad.sum()), int(zero.sum()), k.shape[0]
    if n_bad + n_zero == 0:
        return np.arange(total), []
    reasons = ", ".join(r for r in (f"{n_zero} all-zero" if n_zero else "", f"{n_bad} with NaN/Inf values" if n_bad else "") if r)
    if n_bad + n_zero == total:
        raise DataError(f"all {total} slices of {name} are NaN/Inf or all-zero ({reasons})", "check the file, or remove it from the data")
    return np.nonzero(~(bad | zero))[0], [f"dropped {n_bad + n_zero} of {total} slices of {name}: {reasons}"]


def _assemble(f: Path, digest: str, parts: dict[str, Any], target: str) -> RawVolume:
    name = f.name
    k, single = _as_kspace(np.asarray(parts["kspace"]))
    mask = _stored_mask(parts, k, name)
    key = _pick_target(parts, target, single, name)
    t = _stored_target(parts, key, k, name) if key else None
    keep, notes = _drop_bad_slices(k, t, name)
    k, t = k[keep], (t[keep] if t is not None else None)
    encoding = parse_ismrmrd_header(parts["ismrmrd_header"], name) if "ismrmrd_header" in parts else {}
    attrs = _clean_attrs(parts.get("attrs", {}))
    vol = RawVolume(name, str(f.resolve()), digest, np.ascontiguousarray(k), t, key, None, attrs, encoding, mask, single,
                    [int(i) for i in keep], notes)
    if t is None and (target == "kspace" or (target == "auto" and vol.fully_sampled)):
        vol.target = center_crop(rss_target(k), crop_size(vol))
        vol.target_source = "rss of fully sampled k-space"
    vol.maxval = _maxval(attrs, vol.target)
    return vol


def _maxval(attrs: dict[str, Any], target: np.ndarray | None) -> float | None:
    m = attrs.get("max")
    if isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and m > 0:
        return float(m)
    return float(target.max()) if target is not None and target.size else None


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
