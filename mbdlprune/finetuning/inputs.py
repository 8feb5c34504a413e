"""What a fine-tuning run trains on: the data split by file, batches, the teacher and its cached outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

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


def _prepare_data(cfg: FinetuneConfig, op, data, val_data, eval_data, d: _Dist):
    from ..data import build_dataset, check_no_overlap, file_hashes, list_data_files, read_volumes, split_by_file
    from ..io import sha256_file

    vols = read_volumes(data, axis=cfg.axis)
    if val_data is not None:
        train_v, val_v = vols, read_volumes(val_data, axis=cfg.axis)
        check_no_overlap(file_hashes(train_v), file_hashes(val_v), "training", "validation")
    else:
        train_v, val_v = split_by_file(vols, cfg.val_fraction, cfg.seed)
    eval_hashes: dict[str, str] = {}
    if eval_data is not None:
        eval_hashes = {str(p.resolve()): sha256_file(p) for p in list_data_files(eval_data)}
        check_no_overlap(file_hashes(train_v), eval_hashes, "training", "evaluation")
        if val_v:
            check_no_overlap(file_hashes(val_v), eval_hashes, "validation", "evaluation")
    train = build_dataset(train_v, op, fit=cfg.fit, normalize=cfg.normalize, seed=cfg.seed, stream=0)
    val = build_dataset(val_v, op, fit=cfg.fit, normalize=cfg.normalize, seed=cfg.seed, stream=1) if val_v else None
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
    outs = []
    teacher.to(device).eval()
    with torch.no_grad():
        for start in range(0, n, max(1, batch_size)):
            y = ds.y[start:start + batch_size].to(device)
            outs.append(teacher(y, op).float().cpu())
    ds.extra["teacher"] = torch.cat(outs)
    return True
