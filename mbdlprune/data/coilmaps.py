"""Coil sensitivities of raw multi-coil k-space, estimated per slice from the calibration (ACS) region.

Methods (the ACS region is the fully sampled centre block of ``num_low_frequencies`` columns,
detected from the mask as fastMRI does when it is not given):

* ``"espirit"``: ESPIRiT (Uecker et al. 2014) through ``sigpy.mri.app.EspiritCalib`` on a square
  ``calib_width`` x ``calib_width`` centre of k-space (default: the ACS width); maps are zero
  where the eigenvalue is below ``crop``. Needs sigpy (``pip install "mbdlprune[espirit]"``).
* ``"acs"``: the low-resolution estimate fastMRI's VarNet sensitivity model starts from: the ACS
  columns alone, inverse FFT, each coil image divided by the RSS over coils (its CNN, which
  refines this, is not applied).

Output: (S, coils, H, W, 2) float32 (real, imaginary), the MRI operator's ``coil_maps`` layout
per slice, with sum_c |S_c|^2 = 1 wherever the maps are defined (0 elsewhere).

:class:`CoilMapCache` keeps maps per volume, keyed by (file sha256, method, parameters), in
memory and optionally as safetensors files in a folder; a file read back is checked (format,
key, shape, dtype, finite, sum |S_c|^2 <= 1), never trusted, and recomputed when it fails.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from ..errors import first_line as _first_line
from ..operators.masks import fastmri_low_frequencies
from .raw_protocol import EvalSlices, ifft2c_np
from .raw_volume import RawVolume

METHODS = ("espirit", "acs")
ESPIRIT_DEFAULTS = {"kernel_width": 6, "thresh": 0.02, "crop": 0.95, "max_iter": 100}
CACHE_FORMAT = "mbdlprune-coilmaps"
CACHE_VERSION = "1"
#: in-memory cache size (fastMRI brain maps are ~0.5 GB per volume as float32)
DEFAULT_MEMORY_BYTES = 2 << 30
_SIGPY_FIX = 'pip install "mbdlprune[espirit]" (sigpy), or use coil maps "acs"'


# ----------------------------------------------------------------------------- ACS region
def acs_width(mask: np.ndarray, num_low_frequencies: int | None = None) -> int:
    """Columns of the ACS block: ``num_low_frequencies`` if given (> 0), else fastMRI's detection
    from the mask's first row (:func:`mbdlprune.operators.masks.fastmri_low_frequencies`)."""
    cols = np.asarray(mask)
    cols = cols if cols.ndim == 1 else cols[0]
    if num_low_frequencies:
        if not 0 < int(num_low_frequencies) <= cols.shape[-1]:
            raise DataError(f"num_low_frequencies {num_low_frequencies} does not fit {cols.shape[-1]} columns",
                            f"use a value in 1..{cols.shape[-1]}")
        return int(num_low_frequencies)
    return fastmri_low_frequencies(cols)


def acs_kspace(kspace: np.ndarray, n: int) -> np.ndarray:
    """Only the ``n`` centre columns of (..., H, W) k-space, from ``(W - n + 1) // 2`` (fastMRI's
    ``batched_mask_center``), zero elsewhere."""
    w = kspace.shape[-1]
    pad = (w - n + 1) // 2
    out = np.zeros_like(kspace)
    out[..., pad:pad + n] = kspace[..., pad:pad + n]
    return out


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Divide (S, C, H, W) complex maps by their RSS over coils, so sum_c |S_c|^2 = 1 (0 where the RSS is 0)."""
    r = np.sqrt((np.abs(maps) ** 2).sum(axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, maps / np.where(r > 0, r, 1), 0).astype(np.complex64)


# ----------------------------------------------------------------------------- methods
def acs_maps(kspace: np.ndarray, n: int) -> np.ndarray:
    """fastMRI's initial estimate: RSS-normalised inverse FFT of the ACS columns; (S, C, H, W) complex64."""
    return normalize_maps(ifft2c_np(acs_kspace(kspace, n)))


def _sigpy():
    try:
        import sigpy.mri.app as app
    except ImportError:
        raise DataError("ESPIRiT coil maps need sigpy, which is not installed", _SIGPY_FIX) from None
    return app


def espirit_maps(kspace: np.ndarray, calib_width: int, kernel_width: int = 6, thresh: float = 0.02,
                 crop: float = 0.95, max_iter: int = 100) -> np.ndarray:
    """ESPIRiT maps of each slice of (S, C, H, W) k-space with sigpy; (S, C, H, W) complex64."""
    app = _sigpy()
    if calib_width < 2 * kernel_width or calib_width > min(kspace.shape[-2:]):
        raise DataError(f"ESPIRiT calibrates on {calib_width}x{calib_width} samples, which needs at least twice its kernel width "
                        f"{kernel_width} and at most {min(kspace.shape[-2:])}",
                        f'use a larger center_fraction (ACS of at least {2 * kernel_width} columns), a smaller kernel_width, or coil maps "acs"')
    out = np.empty(kspace.shape, np.complex64)
    for s, k in enumerate(kspace):
        out[s] = app.EspiritCalib(np.ascontiguousarray(k, np.complex64), calib_width=calib_width, thresh=thresh,
                                  kernel_width=kernel_width, crop=crop, max_iter=max_iter, show_pbar=False).run()
        if not np.any(np.abs(out[s]) > 0):
            raise DataError(f"ESPIRiT found no sensitivities above crop={crop} in slice {s} "
                            f"(calibration {calib_width}x{calib_width}, kernel {kernel_width})",
                            'use a larger center_fraction, a lower crop, or coil maps "acs"')
    return out


def method_params(method: str, n: int, **params: Any) -> dict[str, Any]:
    """The full parameters of ``method`` (defaults filled in) for the ACS width ``n``; unknown keys refused."""
    if method not in METHODS:
        raise DataError(f"unknown coil-map method {method!r}", f"use one of: {', '.join(METHODS)}")
    allowed = {"espirit": {*ESPIRIT_DEFAULTS, "calib_width"}, "acs": set()}[method]
    extra = sorted(set(params) - allowed)
    if extra:
        raise DataError(f"coil-map method {method!r} takes no parameter {extra[0]!r}",
                        f"use {', '.join(sorted(allowed))}" if allowed else "pass no parameters")
    out: dict[str, Any] = {"num_low_frequencies": int(n)}
    if method == "espirit":
        out.update(ESPIRIT_DEFAULTS, calib_width=int(n))
        out.update({k: v for k, v in params.items() if v is not None})
        _sigpy()
        import sigpy

        out["sigpy"] = sigpy.__version__
    return out


def _compute(kspace: np.ndarray, method: str, p: dict[str, Any]) -> np.ndarray:
    if method == "acs":
        z = acs_maps(kspace, p["num_low_frequencies"])
    else:
        z = espirit_maps(kspace, int(p["calib_width"]), int(p["kernel_width"]), float(p["thresh"]), float(p["crop"]),
                         int(p["max_iter"]))
    return np.ascontiguousarray(np.stack((z.real, z.imag), -1).astype(np.float32))


def estimate_coil_maps(kspace: np.ndarray, mask: np.ndarray, method: str = "espirit", *,
                       num_low_frequencies: int | None = None, cache: "CoilMapCache | None" = None,
                       volume_key: str | None = None, **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Coil maps (S, C, H, W, 2) float32 of undersampled k-space (S, C, H, W) complex and a record.

    ``mask`` (W,) or (H, W) is applied first, so only sampled data are used. ``params``:
    ESPIRiT's ``calib_width``, ``kernel_width``, ``thresh``, ``crop``, ``max_iter``. With a
    ``cache`` and a ``volume_key`` (the file's sha256 and slices, see :func:`coil_maps_for`) maps
    are looked up and stored there. The record (``method``, ``params``, ``cache``) is for reports.
    """
    if kspace.ndim != 4 or kspace.dtype.kind != "c":
        raise DataError(f"coil maps need k-space (slices, coils, H, W) complex, got {kspace.dtype} {tuple(kspace.shape)}",
                        "pass a RawVolume's k-space")
    m = np.asarray(mask, np.float32)
    h, w = kspace.shape[-2:]
    if m.shape not in ((w,), (h, w)):
        raise DataError(f"mask of shape {m.shape} does not fit k-space of {h}x{w}", f"use a mask of shape ({w},) or ({h}, {w})")
    n = acs_width(m, num_low_frequencies)
    p = method_params(method, n, **params)
    digest = hashlib.sha256(np.ascontiguousarray(m > 0).tobytes() + str(m.shape).encode()).hexdigest()[:16]
    key_params = {**p, "mask": digest, "shape": list(kspace.shape)}
    compute = lambda: _compute((kspace * (m > 0)).astype(np.complex64), method, p)  # noqa: E731
    if cache is None or volume_key is None:
        maps, where = compute(), "computed"
    else:
        maps, where = cache.get(volume_key, method, key_params, tuple(kspace.shape) + (2,), compute)
    defined = float((np.square(maps).sum(axis=(1, -1)) > 0.5).mean())
    return maps, {"method": method, "params": p, "cache": where, "defined_fraction": round(defined, 4)}


def coil_maps_for(volume: RawVolume, ev: EvalSlices, method: str = "espirit", cache: "CoilMapCache | None" = None,
                  **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Coil maps of a prepared volume (:func:`mbdlprune.data.raw.prepare_eval`), cached per file
    sha256 and kept slices. Maps do not depend on ``ev``'s scale."""
    slices = hashlib.sha256(json.dumps(volume.slice_index).encode()).hexdigest()[:16]
    return estimate_coil_maps(ev.kspace, ev.mask, method, num_low_frequencies=ev.num_low_frequencies, cache=cache,
                              volume_key=f"{volume.sha256}:{slices}", **params)


# ----------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mbdlprune/coilmaps`` (:func:`mbdlprune.io.user_cache_dir`)."""
    from ..io.writer import user_cache_dir

    return user_cache_dir("coilmaps")


def _key_text(volume_key: str, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"volume": volume_key, "method": method, "params": params}, sort_keys=True)


class CoilMapCache:
    """Coil maps per (volume, method, parameters): in memory (up to ``memory_bytes``, oldest
    dropped first) and, with ``folder``, as verified safetensors files there.

    ``notes`` lists cache files that were ignored (damaged, foreign or mismatched) and replaced.
    """

    def __init__(self, folder: str | Path | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.folder = Path(folder).expanduser() if folder is not None else None
        self.memory_bytes = int(memory_bytes)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.notes: list[str] = []

    @classmethod
    def for_method(cls, method: str, folder: str | Path | None = None) -> "CoilMapCache":
        """The cache a run uses: ``folder`` if given; else ESPIRiT's maps (seconds per slice) on disk
        in :func:`default_cache_dir`, the fast ACS estimate in memory only."""
        return cls(folder if folder is not None else (default_cache_dir() if method == "espirit" else None))

    def get(self, volume_key: str, method: str, params: dict[str, Any], shape: tuple[int, ...],
            compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, str]:
        """Maps for the key and where they came from: ``"memory"``, ``"disk"`` or ``"computed"``."""
        text = _key_text(volume_key, method, params)
        if text in self._memory:
            self._memory.move_to_end(text)
            return self._memory[text], "memory"
        maps = self._read(text, shape) if self.folder is not None else None
        where = "disk"
        if maps is None:
            maps, where = compute(), "computed"
            if self.folder is not None:
                self._write(text, maps)
        self._remember(text, maps)
        return maps, where

    def _remember(self, text: str, maps: np.ndarray) -> None:
        self._memory[text] = maps
        while len(self._memory) > 1 and sum(a.nbytes for a in self._memory.values()) > self.memory_bytes:
            self._memory.popitem(last=False)

    def path_for(self, text: str) -> Path:
        """The file of a key: a digest of the key text (the key itself is checked inside)."""
        assert self.folder is not None
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"

    def _read(self, text: str, shape: tuple[int, ...]) -> np.ndarray | None:
        p = self.path_for(text)
        if not p.is_file():
            return None
        problem = None
        try:
            maps = _read_checked(p, text, shape)
        except _Unusable as e:
            maps, problem = None, str(e)
        if problem:
            self.notes.append(f"ignored coil-map cache file {p.name}: {problem}; recomputed")
        return maps

    def _write(self, text: str, maps: np.ndarray) -> None:
        from safetensors.numpy import save_file

        from ..io import write_file

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the coil-map cache folder {str(self.folder)!r} ({e.strerror or e})",
                            "choose a cache folder you can write to") from None
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": text}
        write_file(self.path_for(text), lambda tmp: save_file({"maps": maps}, tmp, metadata=meta), force=True)


class _Unusable(Exception):
    """A cache file that cannot be used (the reason is its message)."""


def _read_checked(p: Path, text: str, shape: tuple[int, ...]) -> np.ndarray:
    """The maps of a cache file after checking everything about it; :class:`_Unusable` otherwise."""
    from safetensors import SafetensorError
    from safetensors.numpy import safe_open

    expected = int(np.prod(shape)) * 4
    try:
        size = p.stat().st_size
        if size > expected + (1 << 20):
            raise _Unusable(f"{size:,} bytes, more than maps of shape {shape} need")
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                raise _Unusable("not an mbdlprune coil-map cache file of this version")
            if meta.get("key") != text:
                raise _Unusable("it holds maps for another volume, method or parameters")
            if list(f.keys()) != ["maps"]:
                raise _Unusable(f"tensors {list(f.keys())[:4]}, expected one named 'maps'")
            sl = f.get_slice("maps")
            if tuple(sl.get_shape()) != tuple(shape) or sl.get_dtype() not in ("F32", "float32"):
                raise _Unusable(f"maps {sl.get_dtype()} {tuple(sl.get_shape())}, expected float32 {tuple(shape)}")
            maps = f.get_tensor("maps")
    except _Unusable:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _Unusable(f"unreadable ({_first_line(e, 100)})") from None
    if maps.dtype != np.float32 or maps.shape != tuple(shape):
        raise _Unusable(f"maps {maps.dtype} {maps.shape}, expected float32 {tuple(shape)}")
    if not np.isfinite(maps).all():
        raise _Unusable("maps hold NaN/Inf values")
    if (np.square(maps).sum(axis=(1, -1)) > 1 + 1e-3).any():
        raise _Unusable("maps with sum over coils of |S|^2 above 1")
    return np.ascontiguousarray(maps)
