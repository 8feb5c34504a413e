"""Splitting volumes into training and validation by file (never by slice), and refusing overlaps by sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from .volumes import Volume


# ----------------------------------------------------------------------------- splits
def file_hashes(volumes: Sequence[Volume]) -> dict[str, str]:
    """{file path: sha256} of the files the volumes come from."""
    return {v.path: v.sha256 for v in volumes}


def split_by_file(volumes: Sequence[Volume], val_fraction: float, seed: int = 0) -> tuple[list[Volume], list[Volume]]:
    """Split volumes into (train, val) by file, never by slice.

    Files with identical contents count as one file, so a copy cannot leak across the split.
    ``val_fraction = 0`` gives no validation set. With at least two files, each side gets at
    least one; with one file a validation split is refused.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"validation fraction {val_fraction} is not in [0, 1)", "pass --val-fraction between 0 and 1, e.g. 0.2")
    if val_fraction == 0:
        return list(volumes), []
    groups: dict[str, list[Volume]] = {}
    names: dict[str, str] = {}
    for v in volumes:
        groups.setdefault(v.sha256, []).append(v)
        names.setdefault(v.sha256, Path(v.path).name)
    keys = sorted(groups, key=lambda k: (names[k], k))
    if len(keys) < 2:
        only = names[keys[0]] if keys else "none"
        raise DataError(
            f"a validation split needs at least 2 data files (split by file, never by slice), got 1 ({only})",
            "pass --val-data with separate validation files, or --val-fraction 0 to train without validation",
        )
    n_val = min(max(1, int(round(len(keys) * float(val_fraction)))), len(keys) - 1)
    order = np.random.default_rng(int(seed)).permutation(len(keys))
    val_keys = {keys[i] for i in order[:n_val]}
    train = [v for v in volumes if v.sha256 not in val_keys]
    val = [v for v in volumes if v.sha256 in val_keys]
    return train, val


def check_no_overlap(train_hashes: dict[str, str], eval_hashes: dict[str, str], train_label: str = "training", eval_label: str = "evaluation") -> None:
    """Refuse when a file (by content) is both in the training and the evaluation data."""
    by_hash = {h: p for p, h in train_hashes.items()}
    for path, h in sorted(eval_hashes.items()):
        if h in by_hash:
            same = "" if Path(by_hash[h]).resolve() == Path(path).resolve() else f" (same contents as {by_hash[h]})"
            raise DataError(
                f"{eval_label} file {path} is also in the {train_label} data{same}",
                f"remove it from one of the two sets: scores on data used for {train_label} are not honest",
            )
