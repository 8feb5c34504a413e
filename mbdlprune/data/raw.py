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

Modules: :mod:`.raw_volume` (:class:`RawVolume`), :mod:`.raw_reader` (untrusted files read and
checked into arrays), :mod:`.ismrmrd` (the XML header), :mod:`.raw_protocol` (masks,
undersampling, crops, RSS, scaling, :func:`prepare_eval`). This module assembles a file's arrays
into a :class:`RawVolume` (the target chosen, the stored mask, bad slices dropped, attributes
kept) and re-exports the others' names: ``mbdlprune.data.raw`` is the one import for all of it.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import DataError
from ..errors import first_line as _first_line
from .ismrmrd import MAX_HEADER_BYTES, MAX_XML_DEPTH, parse_ismrmrd_header
from .raw_protocol import (KSPACE_SCALES, MASK_KINDS, EvalSlices, center_crop, check_same_coils, crop_size, ifft2c_np,
                           operator_mask_rule, prepare_eval, resolve_kspace_scale, rss, rss_target, scale_kspace, undersample,
                           volume_mask, volume_seed)
from .raw_reader import (MAX_ATTR_CHARS, MAX_KSPACE_ELEMENTS, MAX_RAW_FILE_BYTES, RAW_SUFFIXES, _read_capped, _read_h5,
                         _read_npz, holds_kspace, is_raw, list_raw_files)
from .raw_volume import TARGET_KEYS, TARGET_SOURCES, RawVolume
from .volumes import _suffix

__all__ = [
    # this module
    "TARGET_CHOICES", "read_raw", "read_raw_file",
    # .raw_volume
    "RawVolume", "TARGET_KEYS", "TARGET_SOURCES",
    # .raw_reader
    "MAX_ATTR_CHARS", "MAX_KSPACE_ELEMENTS", "MAX_RAW_FILE_BYTES", "RAW_SUFFIXES", "holds_kspace", "is_raw", "list_raw_files",
    # .ismrmrd
    "MAX_HEADER_BYTES", "MAX_XML_DEPTH", "parse_ismrmrd_header",
    # .raw_protocol
    "KSPACE_SCALES", "MASK_KINDS", "EvalSlices", "center_crop", "check_same_coils", "crop_size", "ifft2c_np",
    "operator_mask_rule", "prepare_eval", "resolve_kspace_scale", "rss", "rss_target", "scale_kspace", "undersample",
    "volume_mask", "volume_seed",
]

#: ``target=`` choices of :func:`read_raw`
TARGET_CHOICES = ("auto", "reconstruction_rss", "reconstruction_esc", "kspace", "none")
#: attribute names never kept (fastMRI's ``patient_id`` and anything naming a person or a date)
_PRIVATE_ATTR = re.compile(r"patient|subject|name|birth|date|(^|_)id$|uid", re.IGNORECASE)
_CHECK = "check that the file is a complete fastMRI-layout file"


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


# ----------------------------------------------------------------------------- assembling
def _as_kspace(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """(S, [C,] H, W) complex or (S, C, H, W, 2) real pairs -> (S, C, H, W) complex64 and single_coil."""
    if a.dtype.kind != "c":
        a = a[..., 0] + 1j * a[..., 1]
    single = a.ndim == 3
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, dropped below
        return np.ascontiguousarray((a[:, None] if single else a).astype(np.complex64)), single


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
