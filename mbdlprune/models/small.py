"""Small factory arguments per architecture, for fast tests and smoke runs on a CPU.

``SMALL_ARGS[name]`` builds a model of 1-20 thousand parameters that still exercises
every code path (several blocks, poolings, cascades). ``SMALL_IMAGE_SIZE`` is an image
size all of them accept.
"""

from __future__ import annotations

from typing import Any

SMALL_IMAGE_SIZE = (16, 16)

SMALL_ARGS: dict[str, dict[str, Any]] = {
    "edsr": {"n_feats": 8, "n_blocks": 2},
    "dncnn": {"features": 8, "depth": 4},
    "unet": {"chans": 4, "num_pool_layers": 2},
    "deq-edsr": {"n_feats": 8, "n_blocks": 2, "gamma": 0.5, "alpha": 0.2, "max_iter": 12, "tol": 1e-3},
    "unrolled": {"prior": "dncnn", "steps": 3, "prior_args": {"features": 8, "depth": 4}},
    "varnet": {"num_cascades": 2, "chans": 4, "pools": 2},
    "e2e-varnet": {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2, "sens_pools": 2},
}


def small_args(name: str) -> dict[str, Any]:
    """A copy of ``SMALL_ARGS[name]`` (empty for an architecture without an entry)."""
    import copy

    return copy.deepcopy(SMALL_ARGS.get(name, {}))
