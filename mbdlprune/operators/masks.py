"""Cartesian undersampling masks over phase-encode columns (the last image dim, W).

Every mask is a float32 vector of length W (1 = sampled), the same for every row. The fully
sampled centre block sits at columns ``pad .. pad + n - 1`` with ``pad = (W - n + 1) // 2``,
which contains the k-space centre W // 2 after the centred FFT.

The rules are fastMRI's (``fastmri.data.subsample``): ``random`` is ``RandomMaskFunc``'s and
``equispaced`` is ``EquispacedMaskFractionFunc``'s. The random stream is numpy's
``default_rng(seed)``, not fastMRI's ``RandomState``, so a seed does not give fastMRI's mask for
the same seed; passing ``rng=np.random.RandomState(seed)`` (random) or fastMRI's ``offset``
(equispaced) reproduces fastMRI's masks exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

MASK_TYPES = ("uniform", "random", "equispaced")


def paper_center_lines(width: int, acceleration: float) -> int:
    """Centre block of the "uniform" mask when no center_fraction is given: int(W * 0.2 * 2 / R)."""
    return int(width * 0.2 * 2 / acceleration)


def fraction_center_lines(width: int, center_fraction: float) -> int:
    """Centre block from a centre fraction: round(W * center_fraction)."""
    return int(round(width * center_fraction))


def _center_block(width: int, n: int) -> np.ndarray:
    mask = np.zeros(width, dtype=np.float32)
    pad = (width - n + 1) // 2
    mask[pad:pad + n] = 1
    return mask


def uniform_mask(width: int, acceleration: float, num_center: int) -> np.ndarray:
    """Every R-th column (from column 0; rounded positions for non-integer R) plus a centre block."""
    mask = _center_block(width, num_center)
    cols = np.round(np.arange(0, width, acceleration)).astype(np.int64)
    mask[cols[cols < width]] = 1
    return mask


def _too_many_center(width: int, acceleration: float, n: int) -> ConfigError:
    return ConfigError(
        f"the {n} fully sampled centre columns already exceed W / acceleration = {width / acceleration:.1f} columns",
        "lower center_fraction or acceleration")


def random_mask(width: int, acceleration: float, num_center: int, seed: int = 0, rng=None) -> np.ndarray:
    """Centre block plus other columns drawn with the probability that makes the expected total W / R.

    Every column is sampled when one uniform draw ``u < (W/R - n) / (W - n)`` (W draws from
    ``rng``, default ``np.random.default_rng(seed)``), then the centre block is added.
    """
    if num_center > width / acceleration:
        raise _too_many_center(width, acceleration, num_center)
    if rng is None:
        rng = np.random.default_rng(seed)
    prob = (width / acceleration - num_center) / max(width - num_center, 1)
    mask = (rng.uniform(size=width) < prob).astype(np.float32)
    return np.maximum(mask, _center_block(width, num_center))


def equispaced_mask(width: int, acceleration: float, num_center: int, seed: int = 0,
                    offset: int | None = None) -> np.ndarray:
    """Centre block plus equispaced columns whose spacing is adjusted so the total is about W / R.

    The spacing solves n + (W - n) / a = W / R, i.e. a = R (n - W) / (n R - W); lines sit at
    ``round(offset + k a) < W - 1`` with the first at ``offset`` (default: a seeded random offset
    in [0, round(a))).
    """
    if num_center * acceleration >= width and acceleration > 1:
        raise _too_many_center(width, acceleration, num_center)
    if acceleration == 1:
        return np.ones(width, dtype=np.float32)
    spacing = acceleration * (num_center - width) / (num_center * acceleration - width)
    if offset is not None and not 0 <= offset < width:
        raise ConfigError(f"equispaced offset {offset} is outside the {width} columns", f"use an offset in [0, {width})")
    if offset is None:
        offset = int(np.random.default_rng(seed).integers(0, max(int(round(spacing)), 1)))
    cols = np.round(np.arange(offset, width - 1, spacing)).astype(np.int64)
    mask = _center_block(width, num_center)
    mask[cols[cols < width]] = 1
    return mask


def make_mask(kind: str, width: int, acceleration: float, num_center: int, seed: int = 0) -> np.ndarray:
    """Build a 1-D mask of one of :data:`MASK_TYPES`."""
    if not 0 <= num_center <= width:
        raise ConfigError(f"centre block of {num_center} columns does not fit width {width}", "lower center_fraction")
    if kind == "uniform":
        return uniform_mask(width, acceleration, num_center)
    if kind == "random":
        return random_mask(width, acceleration, num_center, seed)
    if kind == "equispaced":
        return equispaced_mask(width, acceleration, num_center, seed)
    raise ConfigError(f"unknown mask type {kind!r}", f"use one of {', '.join(MASK_TYPES)} or a mask file")


def fastmri_low_frequencies(columns: np.ndarray) -> int:
    """fastMRI's count of centre (ACS) columns detected from a mask, as its VarNet does when
    ``num_low_frequencies`` is None or 0: ``max(2 * min(left, right), 1)``.

    ``left`` counts the sampled columns from ``W // 2 - 1`` leftwards up to the first unsampled
    one, ``right`` those from ``W // 2`` rightwards. As in fastMRI (an ``argmin`` over the run),
    a side sampled up to the border counts 0, so the count is then 1.
    """
    cols = (np.asarray(columns) > 0).astype(np.int8)
    cent = len(cols) // 2
    left = int(np.argmin(cols[:cent][::-1])) if cent else 0
    right = int(np.argmin(cols[cent:]))
    return max(2 * min(left, right), 1)


def center_run(columns: np.ndarray) -> int:
    """Number of contiguous sampled columns around the centre column W // 2 (0 if it is not sampled)."""
    cols = np.asarray(columns) > 0
    c = len(cols) // 2
    if not cols[c]:
        return 0
    lo, hi = c, c
    while lo > 0 and cols[lo - 1]:
        lo -= 1
    while hi < len(cols) - 1 and cols[hi + 1]:
        hi += 1
    return hi - lo + 1
