"""The widths timer: milliseconds per layer signature on one device, from memory, a cache file or measured.

:class:`WidthTimer` measures with :mod:`.layer_timing` what it does not know yet and keeps the
timings as JSON per device name, dtype, torch version and layer signature in
``$XDG_CACHE_HOME/mbdlprune/widths`` (or ``~/.cache/mbdlprune/widths``). A cache file is
untrusted input: one that fails any check (:func:`_checked_entries`) is ignored with a note and
rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

from ..machine import cpu_name
from .layer_timing import REPEATS, WARMUP, measure_many, signature_key

CACHE_FORMAT = "mbdlprune-widths"
CACHE_VERSION = 1
#: A cache file larger than this, or with more entries, is not read.
MAX_CACHE_BYTES = 8 << 20
MAX_CACHE_ENTRIES = 50_000
_MAX_KEY_CHARS = 2000
_MAX_MS = 1e7

_DEFAULT = "default"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mbdlprune/widths`` (:func:`mbdlprune.io.user_cache_dir`)."""
    from ..io.writer import user_cache_dir

    return user_cache_dir("widths")


def resolve_device(device: str | None = None) -> torch.device:
    """The device widths are measured on: ``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_info(device: torch.device) -> dict[str, Any]:
    """What timings depend on besides the layer: device name (CPU: model and threads), dtype, torch version."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        name = f"cuda: {torch.cuda.get_device_name(idx)} (sm_{major}{minor}, tf32 {bool(torch.backends.cudnn.allow_tf32)})"
    else:
        name = f"{device.type}: {cpu_name()} ({torch.get_num_threads()} threads)"
    return {"device": device.type, "name": name, "dtype": "float32", "torch": torch.__version__}


# -- the timer and its cache --------------------------------------------------------------------
class WidthTimer:
    """Milliseconds per layer signature on one device, from memory, the cache file, or measured.

    ``cache_dir``: the folder of cache files (default :func:`default_cache_dir`; None: no file,
    memory only). ``measure``: a function ``sig -> ms`` replacing the real timing (tests).
    ``notes`` lists cache files that were ignored.
    """

    def __init__(self, device: str | torch.device | None = None, cache_dir: str | Path | None = _DEFAULT,
                 measure: Callable[[dict[str, Any]], float] | None = None, warmup: int = WARMUP, repeats: int = REPEATS):
        self.device = resolve_device(str(device) if device is not None else None)
        self.info = device_info(self.device)
        self.cache_dir = default_cache_dir() if cache_dir == _DEFAULT else (Path(cache_dir).expanduser() if cache_dir is not None else None)
        self._measure = measure
        self.warmup, self.repeats = warmup, repeats
        self.notes: list[str] = []
        self.measured = 0
        self.from_cache = 0
        self._memory: dict[str, float] = {}
        self._new: dict[str, float] = {}
        self._file_keys: set[str] = set()
        self._loaded = False
        self._rewrite = False

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(json.dumps(self.info, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"{digest}.json"

    def ms(self, sig: dict[str, Any]) -> float:
        """Milliseconds of one call of the layer ``sig``."""
        return self.ms_many([sig])[0]

    def ms_many(self, sigs: list[dict[str, Any]]) -> list[float]:
        """Milliseconds of each layer of ``sigs``; those not known yet are measured together (interleaved)."""
        if not self._loaded:
            self._loaded = True
            self._memory.update(self._read())
            self._file_keys = set(self._memory)
        keys = [signature_key(sig) for sig in sigs]
        missing: dict[str, dict[str, Any]] = {}
        for key, sig in zip(keys, sigs):
            if key in self._memory:
                if key in self._file_keys:  # counted once per signature
                    self.from_cache += 1
                    self._file_keys.discard(key)
            else:
                missing.setdefault(key, sig)
        if missing:
            todo = list(missing.values())
            if self._measure is not None:
                got = [float(self._measure(sig)) for sig in todo]
            else:
                got = measure_many(todo, self.device, self.warmup, self.repeats)
            for key, ms in zip(missing, got):
                if not (math.isfinite(ms) and ms >= 0):
                    raise ValueError(f"timing of {key} gave {ms!r}")
                self.measured += 1
                self._memory[key] = self._new[key] = ms
        return [self._memory[k] for k in keys]

    def _read(self) -> dict[str, float]:
        """The entries of the cache file, checked; {} (with a note) for a file that fails a check."""
        p = self.cache_path
        if p is None or not p.is_file():
            return {}
        try:
            entries = _checked_entries(p, self.info)
        except _Unusable as e:
            self.notes.append(f"ignored widths cache file {p.name}: {e}; it is rewritten")
            self._rewrite = True
            return {}
        return entries

    def flush(self) -> None:
        """Write the new timings to the cache file (atomically, merged with what it holds now)."""
        p = self.cache_path
        if p is None or not (self._new or self._rewrite):
            return
        from ..io import write_file

        try:
            current = _checked_entries(p, self.info) if p.is_file() else {}
        except _Unusable:
            current = {}
        entries = {**current, **self._new}
        if len(entries) > MAX_CACHE_ENTRIES:  # keep the newest
            entries = dict(list(entries.items())[-MAX_CACHE_ENTRIES:])
        doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "header": self.info, "entries": entries}
        text = json.dumps(doc, sort_keys=True, indent=0)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_file(p, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force=True)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be written costs a re-measurement, not the prune
            self.notes.append(f"could not write widths cache {str(p)!r}: {e}")
            return
        self._new = {}
        self._rewrite = False


class _Unusable(Exception):
    """A cache file that cannot be used (the reason is its message)."""


def _checked_entries(p: Path, info: dict[str, Any]) -> dict[str, float]:
    try:
        size = p.stat().st_size
        if size > MAX_CACHE_BYTES:
            raise _Unusable(f"{size} bytes, more than {MAX_CACHE_BYTES}")
        doc = json.loads(p.read_text(encoding="utf-8"))
    except _Unusable:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Unusable(f"not readable JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or doc.get("version") != CACHE_VERSION:
        raise _Unusable("not an mbdlprune widths cache of this version")
    if doc.get("header") != info:
        raise _Unusable("recorded for another device, dtype or torch version")
    entries = doc.get("entries")
    if not isinstance(entries, dict) or len(entries) > MAX_CACHE_ENTRIES:
        raise _Unusable("entries are not a table of timings")
    out = {}
    for k, v in entries.items():
        if not isinstance(k, str) or len(k) > _MAX_KEY_CHARS or not k.startswith("{"):
            raise _Unusable("an entry is not a layer signature")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < _MAX_MS:
            raise _Unusable(f"an entry's time is not a number of milliseconds in [0, {_MAX_MS:g})")
        out[k] = float(v)
    return out
