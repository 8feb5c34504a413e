"""Spec parsing shared by the operator builders: common keys and typed getters with range checks.

Every getter raises :class:`ConfigError` naming the key, the bad value and what to write instead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..config import expect
from ..errors import ConfigError

#: Keys every operator kind accepts.
COMMON_KEYS = ("kind", "image_size", "noise_sigma")
#: Sane bounds: a side of at most 8192 pixels, at most 2**24 pixels (4096 x 4096) per image,
#: so a typo or a hostile spec cannot ask for terabytes of masks, coil maps or projections.
MAX_SIDE = 8192
MAX_PIXELS = 1 << 24
MAX_CHANNELS = 64


def where_of(kind: str) -> str:
    """How error messages name an operator table."""
    return f"[operator] kind = {kind!r}"


def get_image_size(table: Mapping[str, Any], where: str) -> tuple[int, int]:
    """Required ``image_size = [H, W]`` with two positive integers."""
    if "image_size" not in table:
        raise ConfigError(f"{where}: missing key 'image_size'", "add image_size = [H, W], e.g. image_size = [256, 256]")
    v = table["image_size"]
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in v)
    if not ok:
        raise ConfigError(f"{where}: image_size must be two positive integers [H, W], got {_short(v)}",
                          "write e.g. image_size = [256, 256]")
    if max(v) > MAX_SIDE or v[0] * v[1] > MAX_PIXELS:
        raise ConfigError(f"{where}: image_size {list(v)} is beyond the supported size (sides up to {MAX_SIDE}, "
                          f"at most {MAX_PIXELS:,} pixels)", "crop or downsample the images")
    return int(v[0]), int(v[1])


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _range_text(minimum, maximum, min_open, max_open) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if min_open else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if max_open else '<='} {maximum}")
    return " and ".join(parts)


def _check_range(v, key, where, minimum, maximum, min_open=False, max_open=False):
    bad = (minimum is not None and (v <= minimum if min_open else v < minimum)) or \
          (maximum is not None and (v >= maximum if max_open else v > maximum))
    if bad:
        rng = _range_text(minimum, maximum, min_open, max_open)
        raise ConfigError(f"{where}: {key} must be {rng}, got {v!r}", f"set {key} to a value {rng}")
    return v


def get_int(table: Mapping[str, Any], key: str, default: int | None, where: str,
            minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer key with an optional inclusive range."""
    v = expect(table.get(key, default), int, key, where)
    return int(_check_range(v, key, where, minimum, maximum))


def get_float(table: Mapping[str, Any], key: str, default: float | None, where: str,
              minimum: float | None = None, maximum: float | None = None,
              min_open: bool = False, max_open: bool = False) -> float:
    """A number key (int or float accepted) with an optional range."""
    v = expect(table.get(key, default), (int, float), key, where)
    try:
        v = float(v)
    except OverflowError:  # an integer too large for a float
        v = float("inf")
    if not math.isfinite(v):
        raise ConfigError(f"{where}: {key} must be a finite number, got {_short(table.get(key, default))}", f"set {key} to a finite value")
    return float(_check_range(v, key, where, minimum, maximum, min_open, max_open))


def get_str(table: Mapping[str, Any], key: str, default: str | None, where: str) -> str:
    """A string key."""
    return expect(table.get(key, default), str, key, where)


def get_noise_sigma(table: Mapping[str, Any], where: str) -> float:
    """``noise_sigma``: standard deviation of the simulated Gaussian noise, >= 0 (default 0)."""
    return get_float(table, "noise_sigma", 0.0, where, minimum=0.0)


def get_channels(table: Mapping[str, Any], where: str, default: int = 1) -> int:
    """``channels``: number of image channels, >= 1."""
    return get_int(table, "channels", default, where, minimum=1, maximum=MAX_CHANNELS)


def odd_kernel_size(size: int, key: str, where: str, image_size: tuple[int, int]) -> int:
    """Check a kernel size is odd and fits in the image."""
    if size % 2 == 0:
        raise ConfigError(f"{where}: {key} must be odd so the kernel has a centre, got {size}",
                          f"set {key} to {size + 1} or {size - 1}")
    if size > min(image_size):
        largest = min(image_size) - (min(image_size) % 2 == 0)
        raise ConfigError(f"{where}: {key} = {size} is larger than the image {list(image_size)}",
                          f"set {key} to an odd value of at most {largest}")
    return size


def reject_with(table: Mapping[str, Any], keys: tuple[str, ...], reason: str, where: str) -> None:
    """Raise if any of ``keys`` is given although ``reason`` makes it meaningless."""
    for k in keys:
        if k in table:
            raise ConfigError(f"{where}: {k} has no effect {reason}", f"remove {k}")
