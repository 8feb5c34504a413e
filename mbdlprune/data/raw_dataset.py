"""Fine-tuning samples from raw k-space: real undersampled measurements, and RSS targets only when asked.

Each file is undersampled the way :mod:`mbdlprune.benchmark.rawdata` evaluates it (the operator's
mask rule with fastMRI's per-file seed, or the operator's fixed mask, or the file's stored mask),
so a sample carries its own mask row (``mask``, (W,)) and, for models that take coil maps from
the operator, its own maps (``maps``, (coils, H, W, 2)); :func:`batch_operator` builds the
operator of a batch from them. With ``targets=False`` (self-supervised and distillation modes)
no target is read from any file.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError


def build_raw_dataset(volumes: Sequence[Any], op, *, targets: bool, scale: str, coil_maps: str | None,
                      cache: Any = None):
    """``PreparedData`` of raw samples: ``y`` (N, coils, H, W, 2); ``x`` (N, 1, h, w) = target / scale
    when ``targets``; extras ``mask`` (N, W), ``maps`` (with ``coil_maps``), ``maxval`` (N,)."""
    import torch

    from . import raw_protocol as R
    from .samples import PreparedData, ReconDataset

    if not volumes:
        raise DataError("no raw k-space volumes to train on", "check --data")
    if getattr(op, "kind", None) != "mri":
        raise DataError("raw k-space needs an MRI operator", 'use a model whose operator is of kind "mri"')
    coils = R.check_same_coils(volumes)
    if coils != op.coils:
        raise DataError(f"the k-space has {coils} coils, the model's operator {op.coils}",
                        f"use a model (operator) for {coils}-coil data")
    rule, accel, cf = R.operator_mask_rule(op)
    ys, xs, masks, maps, maxvals, names, notes = [], [], [], [], [], [], []
    for v in volumes:
        if tuple(v.image_shape) != tuple(op.image_size):
            raise DataError(f"{v.name}: k-space of {v.image_shape[0]}x{v.image_shape[1]}, the model's operator takes "
                            f"{op.image_size[0]}x{op.image_size[1]}", "use a model built for this k-space size")
        if targets and v.target is None:
            raise DataError(f"{v.name} has no target (no reconstruction_rss and undersampled k-space)",
                            "train without ground truth (--mode self-supervised or distill), or use fully sampled files")
        ev = R.prepare_eval(v, mask=rule, acceleration=accel or 4, center_fraction=cf or 0.08, scale=scale)
        if ev.mask.ndim != 1:
            raise DataError(f"{v.name}: a 2-D sampling mask cannot be trained on per sample", "use column masks (W,)")
        s = v.num_slices
        ys.append(ev.measurements())
        masks.append(torch.from_numpy(np.repeat(ev.mask[None], s, 0)))
        if coil_maps:
            from .coilmaps import coil_maps_for

            m, _ = coil_maps_for(v, ev, coil_maps, cache=cache)
            maps.append(torch.from_numpy(np.ascontiguousarray(m)))
        if targets:
            t = torch.from_numpy(np.ascontiguousarray(ev.target)).float()
            sc = torch.from_numpy(np.asarray(ev.scale, np.float32)).reshape(-1, 1, 1)
            xs.append((t / sc)[:, None])
            maxvals.append(float(t.max()) / sc.reshape(-1))
        names += [v.name] * s
        notes += [n for n in v.notes if n not in notes]
    extra = {"mask": torch.cat(masks)}
    if maps:
        extra["maps"] = torch.cat(maps)
    if targets:
        extra["maxval"] = torch.cat(maxvals)
    ds = ReconDataset(torch.cat(ys), torch.cat(xs) if targets else None, names, extra)
    hashes = {str(v.path): v.sha256 for v in volumes}
    pd = PreparedData(ds, "raw", hashes, sorted({v.name for v in volumes}), len(names), 0, scale, "crop to the target",
                      0, notes)
    pd.protocol = {"mask": rule if isinstance(rule, str) else "fixed (the operator's)", "acceleration": accel,
                   "center_fraction": cf, "mask_seed": "tuple(map(ord, file name))" if isinstance(rule, str) else None,
                   "kspace_scale": scale, "coil_maps": coil_maps or "estimated by the model or single coil",
                   "targets": "reconstruction_rss / RSS of fully sampled k-space" if targets else "none read"}
    return pd


def batch_operator(op, batch: dict[str, Any], device=None):
    """The operator of a batch of raw samples (their masks and maps), or ``op`` for other samples."""
    if "mask" not in batch:
        return op
    out = op.with_sampling(mask=batch["mask"], coil_maps=batch.get("maps"), per_image_mask=True)
    return out.to(device) if device is not None else out
