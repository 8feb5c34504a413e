"""Cartesian undersampling masks over phase-encode columns (the last image dim, W).

Every mask is a float32 vector of length W (1 = sampled), the same for every row. The fully
sampled centre block of ``n`` columns sits at columns ``pad .. pad + n - 1`` with
``pad = (W - n + 1) // 2`` (fastMRI's placement), which contains the k-space centre W // 2 after
the centred FFT.

Mask rules are versioned (``mask_rule`` in an operator spec, :data:`MASK_RULE` for new specs):

* rule 2 (current), names as fastMRI's ``create_mask_for_mask_type``:

  - ``uniform``: the reference paper's ``uniformly_cartesian_mask`` (Park et al., code at
    github.com/wustl-cig/MBDL_Pruning): every R-th column from column 0 plus a centre block of
    ``2 * (int(W * 0.2 * (2 / R)) // 2) + W % 2`` columns (:func:`paper_center_lines`);
  - ``equispaced``: fastMRI's ``EquiSpacedMaskFunc``: a centre block plus every R-th column from
    an offset;
  - ``equispaced_fraction``: fastMRI's ``EquispacedMaskFractionFunc``: a centre block plus
    columns at an adjusted spacing so the total is about W / R;
  - ``random``: fastMRI's ``RandomMaskFunc``.

* rule 1 (legacy: specs written before ``mask_rule`` existed): ``uniform`` has a centre block of
  ``int(W * 0.2 * 2 / R)`` columns (one column more than the paper's when that count is odd and
  W even, one fewer when it is even and W odd); ``equispaced`` is the fraction rule (rule 2's
  ``equispaced_fraction``); ``random`` as in rule 2.

The random streams are numpy's ``default_rng(seed)``, not fastMRI's ``RandomState``, so a seed
does not give fastMRI's mask for the same seed; passing ``rng=np.random.RandomState(seed)``
(random) or fastMRI's ``offset`` (equispaced rules) reproduces fastMRI's masks exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

#: The rule new specs get; files record it as ``mask_rule``.
MASK_RULE = 2
#: The rule of specs that lack ``mask_rule`` in model files (written before it existed).
LEGACY_MASK_RULE = 1
#: Generated mask names per rule.
RULE_MASK_TYPES: dict[int, tuple[str, ...]] = {
    1: ("uniform", "random", "equispaced"),
    2: ("uniform", "random", "equispaced", "equispaced_fraction"),
}
MASK_RULES = tuple(sorted(RULE_MASK_TYPES))
#: Generated mask names of the current rule.
MASK_TYPES = RULE_MASK_TYPES[MASK_RULE]


def paper_center_lines(width: int, acceleration: float) -> int:
    """Centre block of the paper's ``uniform`` mask (rule 2): ``2 * (int(W * 0.2 * (2 / R)) // 2) + W % 2``.

    The paper's code takes ``h = int(W * 0.2 * (2 / R)) // 2`` and samples columns
    ``W // 2 - h .. W // 2 + h``, less the last one when W is even; that is the fastMRI-placed
    block of this many columns.
    """
    half = int(width * 0.2 * (2 / acceleration)) // 2
    return 2 * half + width % 2


def legacy_center_lines(width: int, acceleration: float) -> int:
    """Centre block of the rule-1 ``uniform`` mask: ``int(W * 0.2 * 2 / R)``."""
    return int(width * 0.2 * 2 / acceleration)


def uniform_center_lines(width: int, acceleration: float, rule: int = MASK_RULE) -> int:
    """Centre block of ``uniform`` without a ``center_fraction`` under mask rule ``rule``."""
    check_rule(rule)
    return paper_center_lines(width, acceleration) if rule >= 2 else legacy_center_lines(width, acceleration)


def fraction_center_lines(width: int, center_fraction: float) -> int:
    """Centre block from a centre fraction: round(W * center_fraction)."""
    return int(round(width * center_fraction))


def check_rule(rule: int) -> int:
    if isinstance(rule, bool) or rule not in RULE_MASK_TYPES:
        raise ConfigError(f"unknown mask_rule {rule!r}", f"use one of {', '.join(map(str, MASK_RULES))} "
                          f"({MASK_RULE} for new specs, {LEGACY_MASK_RULE} for files written before mask_rule existed)")
    return rule


def _center_block(width: int, n: int) -> np.ndarray:
    mask = np.zeros(width, dtype=np.float32)
    pad = (width - n + 1) // 2
    mask[pad:pad + n] = 1
    return mask


def _every(width: int, step: float, offset: int = 0) -> np.ndarray:
    """Columns ``offset, offset + step, ...`` below W (rounded positions for a non-integer step)."""
    cols = np.round(np.arange(offset, width, step)).astype(np.int64)
    return cols[cols < width]


def uniform_mask(width: int, acceleration: float, num_center: int) -> np.ndarray:
    """Every R-th column (from column 0; rounded positions for non-integer R) plus a centre block.

    With ``num_center = paper_center_lines(W, R)`` and an integer R this is the paper's
    ``uniformly_cartesian_mask((H, W), R)`` (every row).
    """
    mask = _center_block(width, num_center)
    mask[_every(width, acceleration)] = 1
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


def _offset(width: int, offset: int | None, high: float, seed: int) -> int:
    if offset is not None:
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ConfigError(f"equispaced offset {offset!r} is not a column index", "use an integer offset >= 0")
        return int(offset)
    return int(np.random.default_rng(seed).integers(0, max(int(round(high)), 1)))


def equispaced_mask(width: int, acceleration: float, num_center: int, seed: int = 0,
                    offset: int | None = None) -> np.ndarray:
    """fastMRI's ``EquiSpacedMaskFunc``: centre block plus every R-th column from ``offset``.

    Lines sit at ``offset, offset + R, ...`` below W (rounded positions for non-integer R, which
    fastMRI does not accept); the offset defaults to a seeded random one in ``[0, round(R))``.
    The total is not adjusted for the centre block, so the effective acceleration is below R.
    """
    if acceleration == 1:
        return np.ones(width, dtype=np.float32)
    start = _offset(width, offset, acceleration, seed)
    mask = _center_block(width, num_center)
    mask[_every(width, acceleration, start)] = 1
    return mask


def equispaced_fraction_mask(width: int, acceleration: float, num_center: int, seed: int = 0,
                             offset: int | None = None) -> np.ndarray:
    """fastMRI's ``EquispacedMaskFractionFunc``: centre block plus equispaced columns whose spacing
    is adjusted so the total is about W / R.

    The spacing solves n + (W - n) / a = W / R, i.e. a = R (n - W) / (n R - W); lines sit at
    ``round(offset + k a) < W - 1`` with the first at ``offset`` (default: a seeded random offset
    in [0, round(a))).
    """
    if num_center * acceleration >= width and acceleration > 1:
        raise _too_many_center(width, acceleration, num_center)
    if acceleration == 1:
        return np.ones(width, dtype=np.float32)
    spacing = acceleration * (num_center - width) / (num_center * acceleration - width)
    start = _offset(width, offset, spacing, seed)
    cols = np.round(np.arange(start, width - 1, spacing)).astype(np.int64)
    mask = _center_block(width, num_center)
    mask[cols[cols < width]] = 1
    return mask


_RULES = {
    1: {"uniform": uniform_mask, "random": random_mask, "equispaced": equispaced_fraction_mask},
    2: {"uniform": uniform_mask, "random": random_mask, "equispaced": equispaced_mask,
        "equispaced_fraction": equispaced_fraction_mask},
}


def unknown_mask_error(kind: str, rule: int) -> ConfigError:
    """The error for a mask name the rule does not have (names the rule that has it, if any)."""
    known = RULE_MASK_TYPES[rule]
    others = [r for r, names in RULE_MASK_TYPES.items() if kind in names]
    if others:
        return ConfigError(f"mask {kind!r} does not exist under mask_rule {rule} (it is a mask_rule {others[-1]} name)",
                           f"use mask_rule = {others[-1]}, or one of {', '.join(known)}")
    return ConfigError(f"unknown mask type {kind!r}", f"use one of {', '.join(known)} or a mask file")


def make_mask(kind: str, width: int, acceleration: float, num_center: int, seed: int = 0,
              rule: int = MASK_RULE) -> np.ndarray:
    """Build a 1-D mask named ``kind`` under mask rule ``rule`` (see the module notes)."""
    check_rule(rule)
    if not 0 <= num_center <= width:
        raise ConfigError(f"centre block of {num_center} columns does not fit width {width}", "lower center_fraction")
    func = _RULES[rule].get(kind)
    if func is None:
        raise unknown_mask_error(kind, rule)
    if func is uniform_mask:
        return uniform_mask(width, acceleration, num_center)
    return func(width, acceleration, num_center, seed)


#: rule-1 names whose rule has another name under the current rule
LEGACY_RENAMES = {"equispaced": "equispaced_fraction"}


def current_equivalent(kind: str, rule: int, width: int, acceleration: float, num_center: int, seed: int,
                       mask: np.ndarray, center_fraction_given: bool) -> str | None:
    """The current-rule name that rebuilds ``mask`` (built by ``kind`` under ``rule``) with the same
    centre count, or None. A legacy spec is recorded under it, so an old model file and one written
    now compare equal when they describe the same operator; otherwise it keeps its rule."""
    if rule == MASK_RULE:
        return kind
    name = LEGACY_RENAMES.get(kind, kind) if rule == LEGACY_MASK_RULE else kind
    n = num_center if center_fraction_given or name != "uniform" else uniform_center_lines(width, acceleration)
    if n != num_center:
        return None
    try:
        again = make_mask(name, width, acceleration, n, seed, rule=MASK_RULE)
    except ConfigError:
        return None
    return name if np.array_equal(again, mask) else None


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
