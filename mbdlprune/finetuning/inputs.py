"""What a fine-tuning run trains on: the data split by file, batches, the teacher and its cached outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from .config import FinetuneConfig
from .distributed import _Dist

#: teacher outputs are cached for the whole training set below this many bytes
TEACHER_CACHE_BYTES = 2 << 30


def _step_generator(seed: int, epoch: int, step: int, rank: int):
    import torch

    from ..data import sample_seed

    return torch.Generator().manual_seed(sample_seed(seed, epoch * 1_000_003 + step, 1000 + rank))


def _load_teacher(path: str | Path, meta: Mapping[str, Any], arch: str | None, unsafe_pickle: bool, key_map: Any = None):
    """The original (unpruned) model, through the one loader: its own record, or the pruned file's architecture."""
    from ..io import load_model, sha256_file

    p = Path(path)
    model = load_model(p, arch=arch, unsafe_pickle=unsafe_pickle, like=meta, resize=True, key_map=key_map).model
    model.eval()
    for q in model.parameters():
        q.requires_grad_(False)
    digest = sha256_file(p)
    return model, {"path": str(p), "sha256": digest, "is_parent": meta.get("parent_sha256") in (None, digest),
                   "parent_sha256": meta.get("parent_sha256")}


def _prepare_data(cfg: FinetuneConfig, op, data, val_data, eval_data, d: _Dist, raw: dict[str, Any] | None = None):
    """Training and validation datasets, split by file and checked against the evaluation files.

    ``raw``: how raw k-space files are prepared (``targets``, ``scale``, ``coil_maps``) when the data
    are raw k-space (:mod:`mbdlprune.data.raw_dataset`); image files are read as before.
    """
    from ..data import build_dataset, check_no_overlap, file_hashes, list_data_files, read_volumes, split_by_file
    from ..data.raw import read_raw
    from ..data.raw_reader import is_raw
    from ..io import sha256_file

    if val_data is not None and is_raw(val_data) != is_raw(data):
        raise DataError("the training and validation data mix raw k-space files and image files",
                        "give --val-data of the same kind as --data (raw k-space, or images)")
    if is_raw(data):
        raw = dict(raw or {})

        def read(paths, val=False):
            # no training target is decoded unless the loss needs one; separate validation files
            # give their targets (if they have them) so the best epoch is chosen by PSNR
            return read_raw(paths, target="auto" if (raw.get("targets") or val) else "none")

        def build(vols, stream, val=False):
            from ..data.raw_dataset import build_raw_dataset

            targets = bool(raw.get("targets")) or (val and all(v.target is not None for v in vols))
            if raw.get("coil_maps") and raw.get("cache") is None:
                from ..data.coilmaps import CoilMapCache

                raw["cache"] = CoilMapCache.for_method(raw["coil_maps"])
            return build_raw_dataset(vols, op, targets=targets, scale=raw.get("scale", "max"),
                                     coil_maps=raw.get("coil_maps"), cache=raw.get("cache"))
    else:
        def read(paths, val=False):
            return read_volumes(paths, axis=cfg.axis)

        def build(vols, stream, val=False):
            return build_dataset(vols, op, fit=cfg.fit, normalize=cfg.normalize, seed=cfg.seed, stream=stream)

    vols = read(data)
    if val_data is not None:
        train_v, val_v = vols, read(val_data, val=True)
        check_no_overlap(file_hashes(train_v), file_hashes(val_v), "training", "validation")
    else:
        train_v, val_v = split_by_file(vols, cfg.val_fraction, cfg.seed)
    eval_hashes: dict[str, str] = {}
    if eval_data is not None:
        eval_hashes = {str(p.resolve()): sha256_file(p) for p in list_data_files(eval_data)}
        check_no_overlap(file_hashes(train_v), eval_hashes, "training", "evaluation")
        if val_v:
            check_no_overlap(file_hashes(val_v), eval_hashes, "validation", "evaluation")
    train = build(train_v, 0)
    val = build(val_v, 1, val=val_data is not None) if val_v else None
    return train, val, eval_hashes


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def _autocast(device: str, enabled: bool):
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def _cache_teacher(teacher, ds, op, device: str, batch_size: int) -> bool:
    """Store the teacher's reconstructions of the training measurements (fixed for the run)."""
    import torch

    n = len(ds)
    c, h, w = op.image_shape
    if n * c * h * w * 4 > TEACHER_CACHE_BYTES:
        return False
    from ..data.raw_dataset import batch_operator

    outs = []
    teacher.to(device).eval()
    with torch.no_grad():
        for start in range(0, n, max(1, batch_size)):
            y = ds.y[start:start + batch_size].to(device)
            part = {k: v[start:start + batch_size] for k, v in ds.extra.items() if k in ("mask", "maps")}
            outs.append(teacher(y, batch_operator(op, part, device)).float().cpu())
    ds.extra["teacher"] = torch.cat(outs)
    return True
