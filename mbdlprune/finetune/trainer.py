"""The fine-tuning loop: data, losses, validation, best-weights selection, resumable state.

One plain loop for every mode. Per epoch: train over the training samples, validate (PSNR on
validation images with ground truth; measurement consistency for measurement-only data), keep
the best-validation weights, write the training state beside the output (one file, replaced
atomically: :mod:`.state`). At the end the best weights are written with
:func:`mbdlprune.io.save_model`, the checkpoint's metadata gains a ``finetune`` record, and
the state file is removed. ``resume`` continues from the state wherever the run was stopped,
including after its last epoch (then it only writes the output).

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the loop joins the process group (NCCL on
CUDA, gloo on CPU), wraps the model in DistributedDataParallel, shards samples with a
DistributedSampler, and only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, DataError, MbdlError
from .state import STATE_FORMAT, STATE_VERSION, state_path, state_paths  # noqa: F401  (public names)
from .config import BACKWARDS, OPTIMIZERS, SCHEDULES, FinetuneConfig, FinetuneResult  # noqa: F401  (public names)
from .distributed import _Dist, _all_reduce_sum, _resolve_device, _setup_distributed

#: teacher outputs are cached for the whole training set below this many bytes
TEACHER_CACHE_BYTES = 2 << 30



# ----------------------------------------------------------------------------- helpers
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


@dataclass
class _ValResult:
    metric: str  # "psnr" or "measurement-consistency"
    value: float
    extra: dict[str, float]

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "psnr"

    def better_than(self, other: float | None) -> bool:
        if other is None:
            return True
        return self.value > other if self.higher_is_better else self.value < other


def _validate(model, ds, op, cfg: FinetuneConfig, device: str, d: _Dist) -> _ValResult | None:
    """Mean PSNR/SSIM over validation images; mean L1 measurement consistency without ground truth."""
    if ds is None:
        return None
    import torch

    from .. import metrics

    model.eval()
    idx = list(range(d.rank, len(ds), d.world))
    sums = [0.0, 0.0, 0.0, 0.0]  # psnr|mc, ssim, iterations, count
    with torch.no_grad():
        for start in range(0, len(idx), cfg.batch_size):
            batch = _collate([ds[i] for i in idx[start:start + cfg.batch_size]])
            y = batch["y"].to(device)
            with _autocast(device, cfg.bf16):
                x_net = model(y, op)
            x_net = x_net.float()
            n = y.shape[0]
            if ds.has_ground_truth:
                m = metrics.compute_metrics(x_net, batch["x"].to(device), cfg.metric)
                sums[0] += float(m["psnr"].clamp(max=200).sum())
                sums[1] += float(m["ssim"].sum())
            else:
                r = (op.A(x_net) - y).abs().reshape(n, -1).mean(dim=1)
                sums[0] += float(r.sum())
            info = getattr(model, "last_info", None) or {}
            sums[2] += float(info.get("iterations", 0)) * n
            sums[3] += n
    sums = _all_reduce_sum(sums, d, device)
    count = max(sums[3], 1.0)
    if ds.has_ground_truth:
        extra = {"ssim": sums[1] / count}
        res = _ValResult("psnr", sums[0] / count, extra)
    else:
        res = _ValResult("measurement-consistency", sums[0] / count, {})
    if sums[2] > 0:
        res.extra["deq_iterations"] = sums[2] / count
    return res


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


# ----------------------------------------------------------------------------- state files
# (saving, loading and checking the one-file state: see .state; here: does it fit this run)
def _check_resume(doc: dict[str, Any], cfg: FinetuneConfig, identity: dict[str, Any]) -> None:
    old = doc.get("config", {})
    new = cfg.to_dict()
    skip = set(FinetuneConfig.RESUMABLE_CHANGES) if cfg.lr_schedule == "none" else {"device"}
    for key in sorted(set(old) | set(new)):
        if key in skip:
            continue
        if old.get(key) != new.get(key):
            raise ConfigError(f"--resume with {key} = {new.get(key)!r}, but the interrupted run used {old.get(key)!r}",
                              f"resume with the same settings ({key} = {old.get(key)!r}), or start over with --force (without --resume)")
    for key, value in identity.items():
        if doc.get(key) != value:
            raise ConfigError(f"--resume: the {key.replace('_', ' ')} differs from the interrupted run's", "resume with the same model and data, or start over with --force (without --resume)")
    if doc["epoch"] > cfg.epochs:
        raise ConfigError(f"the saved state has finished {doc['epoch']} epochs, more than the {cfg.epochs} asked for",
                          f"resume with --epochs {doc['epoch']} or more")


# ----------------------------------------------------------------------------- progress
class _Progress:
    """A Rich progress bar (epoch, step, loss, validation, ETA) on stderr, or nothing."""

    def __init__(self, enabled: bool, epochs: int, steps: int, metric: str):
        self.enabled = enabled
        self.p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                          TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          console=Console(stderr=True), transient=False)
        self.epochs = epochs
        self.metric = metric
        self.p.start()
        self.task = self.p.add_task(f"epoch 0/{epochs}", total=epochs * steps, loss="-", val="-")

    def step(self, epoch: int, loss: float) -> None:
        if self.p:
            self.p.update(self.task, advance=1, description=f"epoch {epoch}/{self.epochs}", loss=f"{loss:.4g}")

    def val(self, text: str) -> None:
        if self.p:
            self.p.update(self.task, val=text)

    def skip(self, steps: int) -> None:
        if self.p:
            self.p.update(self.task, advance=steps)

    def close(self) -> None:
        if self.p:
            self.p.stop()


def _fmt_val(v: _ValResult | None) -> str:
    if v is None:
        return "-"
    return f"{v.value:.2f} dB" if v.metric == "psnr" else f"MC {v.value:.3g}"


# ----------------------------------------------------------------------------- the loop
def finetune(
    pruned_path: str | Path,
    *,
    data: Any,
    out: str | Path | None,
    operator: Any = None,
    teacher: str | Path | None = None,
    arch: str | None = None,
    val_data: Any = None,
    eval_data: Any = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    unsafe_pickle: bool = False,
    config: FinetuneConfig | Mapping[str, Any] | None = None,
    teacher_key_map: Any = None,
    **options: Any,
) -> FinetuneResult:
    """Fine-tune a pruned checkpoint and write the best-validation weights to ``out``.

    ``options`` are :class:`FinetuneConfig` fields (``mode``, ``epochs``, ``lr``, ``batch_size``,
    ``val_fraction``, ``seed``, ...) and override ``config``; unknown names are a ConfigError.
    ``operator``: spec path / dict / operator (default: the one stored in the checkpoint).
    ``teacher``: the original (unpruned) checkpoint, needed by the distill modes;
    ``teacher_key_map`` renames its tensors first (see :mod:`mbdlprune.keymap`).
    ``val_data``: separate validation files (else ``val_fraction`` of the files, split by file).
    ``eval_data``: files kept for evaluation; any overlap with training/validation is refused.
    ``callback(event)`` receives ``{"event": "epoch", ...}`` dicts after each epoch's state is saved.
    ``out=None`` trains in memory and writes nothing (no resume).
    """
    base = config.to_dict() if isinstance(config, FinetuneConfig) else dict(config or {})
    cfg = FinetuneConfig.from_dict({**base, **options})
    d = _setup_distributed(cfg.device if cfg.device != "auto" else ("cuda" if _cuda() else "cpu"))
    try:
        return _run(pruned_path, cfg, d, data=data, out=out, operator=operator, teacher=teacher, arch=arch,
                    val_data=val_data, eval_data=eval_data, force=force, resume=resume, progress=progress,
                    callback=callback, unsafe_pickle=unsafe_pickle, teacher_key_map=teacher_key_map)
    finally:
        if d.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(pruned_path, cfg: FinetuneConfig, d: _Dist, *, data, out, operator, teacher, arch, val_data, eval_data,
         force, resume, progress, callback, unsafe_pickle, teacher_key_map=None) -> FinetuneResult:
    import torch

    from ..api import resolve_operator
    from ..io import check_output_path, load_model, save_model, sha256_file, versions
    from .losses import build_mode_loss
    from .state import check_start, load_state, remove_state, restore, save_state

    t_start = time.perf_counter()
    device = _resolve_device(cfg.device, d)
    out_path = Path(out) if out is not None else None
    warnings: list[str] = []
    begin = "fresh"
    if out_path is not None:
        # --resume may replace the output: a run killed after writing it, before removing its state
        check_output_path(out_path, force or resume, inputs=[pruned_path, teacher,
                                                              *([operator] if isinstance(operator, (str, Path)) else [])])
        begin = check_start(out_path, resume=resume, force=force)
        if resume and begin == "fresh":
            warnings.append(f"no training state beside {out_path.name} (the run stopped before its first save): started from epoch 0")
    elif resume:
        raise MbdlError("--resume needs the output path of the interrupted run", "pass -o OUT.safetensors")
    if d.active:  # every rank has looked for a state before rank 0 can write one
        import torch.distributed as dist

        dist.barrier()

    # model, operator, teacher
    loaded = load_model(pruned_path, arch=arch, device="cpu")
    model, meta = loaded.model, dict(loaded.meta)
    op = resolve_operator(operator, meta) if operator is not None else loaded.operator
    if op is None:
        raise ConfigError(f"{Path(pruned_path).name} stores no operator", "pass --operator SPEC (TOML/JSON with an [operator] table)")
    op = op.to(device)
    settings: dict[str, Any] = {}
    from ..models.protocol import is_deq

    if is_deq(model) and hasattr(model, "backward"):
        if cfg.deq_backward is not None:
            model.backward = cfg.deq_backward
        settings["deq_backward"] = model.backward
    elif cfg.deq_backward is not None:
        warnings.append(f"--deq-backward {cfg.deq_backward} ignored: the model is not a DEQ")
    if hasattr(model, "checkpointing"):
        model.checkpointing = bool(cfg.checkpointing)
        settings["checkpointing"] = bool(cfg.checkpointing)
    elif cfg.checkpointing:
        warnings.append("--checkpointing ignored: the model has no activation checkpointing switch")
    model.to(device)

    teacher_model, teacher_info = None, None
    from .losses import mode_weights

    weights = mode_weights(cfg.mode, cfg.weights)
    if weights.get("distill", 0) > 0:
        if teacher is None:
            raise ConfigError(f"mode {cfg.mode!r} distils from the original model, and no teacher was given",
                              "pass --teacher ORIGINAL_CHECKPOINT (the unpruned file given to prune)")
        teacher_model, teacher_info = _load_teacher(teacher, meta, arch, unsafe_pickle, teacher_key_map)
        teacher_model.to(device)
        if not teacher_info["is_parent"]:
            warnings.append(f"teacher {Path(teacher).name} is not the checkpoint this model was pruned from (sha256 differs)")
    elif teacher is not None:
        warnings.append(f"--teacher ignored: mode {cfg.mode!r} does not distil")
    loss_fn = build_mode_loss(cfg.mode, cfg.weights, pixel=cfg.loss, teacher=teacher_model, norm=cfg.mc_norm, noise=cfg.eq_noise)
    loss_fn.check_model(model)  # e.g. the jacobian term applies to DEQ models only

    # data
    train, val, eval_hashes = _prepare_data(cfg, op, data, val_data, eval_data, d)
    warnings.extend(list(getattr(train, "notes", [])) + list(getattr(val, "notes", []) if val else []))
    if loss_fn.needs_ground_truth and train.kind != "image":
        raise DataError(f"mode {cfg.mode!r} needs ground-truth images, and the training data is k-space only",
                        "use --mode self-supervised, or distill with --teacher")
    if len(train.dataset) < d.world:
        raise DataError(f"{len(train.dataset)} training slices for {d.world} processes", "use more data or fewer processes")
    cached_teacher = False
    if teacher_model is not None:
        cached_teacher = _cache_teacher(teacher_model, train.dataset, op, device, cfg.batch_size)

    # optimiser (new: the pruned shapes differ from any earlier optimiser's)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    identity = {"pruned_sha256": sha256_file(pruned_path), "train_files": train.hashes,
                "val_files": val.hashes if val else {}}
    start_epoch, best_value, best_epoch, best_state = 0, None, None, None
    history: list[dict[str, Any]] = []
    before = None
    resumed_from = None
    if begin == "resume":
        doc, tensors = load_state(out_path)
        _check_resume(doc, cfg, identity)
        best_state = restore(doc, tensors, model, optimizer, state_path(out_path))
        start_epoch, best_value, best_epoch = doc["epoch"], doc["best_value"], doc["best_epoch"]
        history, before = doc["history"], doc["before"]
        resumed_from = start_epoch
    else:
        v0 = _validate(model, val.dataset if val else None, op, cfg, device, d)
        before = None if v0 is None else {"metric": v0.metric, "value": v0.value, **v0.extra}

    # distributed wrapper
    net = model
    if d.active:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[d.local_rank] if device.startswith("cuda") else None)

    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    ds = train.dataset
    sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed) if d.active else None
    steps_per_epoch = math.ceil((len(sampler) if sampler is not None else len(ds)) / cfg.batch_size)
    val_metric = "psnr" if (val and val.kind == "image") else ("measurement-consistency" if val else None)
    bar = _Progress(bool(progress) and d.main, cfg.epochs, steps_per_epoch, val_metric or "-")
    bar.skip(start_epoch * steps_per_epoch)

    def state_info(epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "config": cfg.to_dict(), **identity, "best_value": best_value, "best_epoch": best_epoch,
                "history": history, "before": before, "val_metric": val_metric}

    try:
        if out_path is not None and d.main and begin == "fresh":
            save_state(out_path, model, optimizer, best_state, state_info(0))
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            lr = cfg.lr if cfg.lr_schedule == "none" else cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
            for g in optimizer.param_groups:
                g["lr"] = lr
            from ..data import sample_seed

            torch.manual_seed(sample_seed(cfg.seed, epoch, 2000 + d.rank))
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = None
            else:
                order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, 3000))).tolist()
            loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler if sampler is not None else order,
                                collate_fn=_collate, num_workers=0)
            net.train()
            sums = {"loss": 0.0}
            n_seen = 0
            for step, batch in enumerate(loader):
                y = batch["y"].to(device)
                x = batch["x"].to(device) if (loss_fn.needs_ground_truth and "x" in batch) else None
                extra = {"teacher": batch["teacher"].to(device)} if "teacher" in batch else None
                gen = _step_generator(cfg.seed, epoch, step, d.rank)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, cfg.bf16):
                    x_net = net(y, op)
                    loss = loss_fn(x_net, x, y, op, net, batch=extra, generator=gen)
                finite = bool(torch.isfinite(loss.detach()).all())
                if d.active:
                    finite = _all_reduce_sum([0.0 if finite else 1.0], d, device)[0] == 0.0
                if not finite:
                    raise MbdlError(
                        f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; nothing was written to the output",
                        ("lower --lr, set --grad-clip or drop --bf16, then continue from the last good state with --resume"
                         if out_path is not None else "lower --lr, set grad_clip or drop bf16"),
                    )
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                n = y.shape[0]
                sums["loss"] += float(loss.detach()) * n
                for k, v in loss_fn.last.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                n_seen += n
                bar.step(epoch + 1, float(loss.detach()))
            keys = sorted(sums)
            totals = _all_reduce_sum([sums[k] for k in keys] + [float(n_seen)], d, device)
            train_means = {k: totals[i] / max(totals[-1], 1.0) for i, k in enumerate(keys)}
            v = _validate(model, val.dataset if val else None, op, cfg, device, d)
            if v is not None and v.better_than(best_value):
                best_value, best_epoch = v.value, epoch + 1
                best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            elapsed = time.perf_counter() - t0
            entry = {"epoch": epoch + 1, "lr": lr, "train": train_means, "time_s": elapsed}
            if v is not None:
                entry["val"] = {"metric": v.metric, "value": v.value, **v.extra}
            history.append(entry)
            bar.val(_fmt_val(v))
            if out_path is not None and d.main:
                save_state(out_path, model, optimizer, best_state, state_info(epoch + 1))
            if callback is not None and d.main:
                callback({"event": "epoch", **entry})
    finally:
        bar.close()

    # best weights, record, output
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    record = {
        "mode": cfg.mode,
        "pruned": Path(pruned_path).name,
        "pruned_sha256": identity["pruned_sha256"],
        "losses": loss_fn.describe(),
        "weights": loss_fn.weights(),
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule,
        "optimizer": cfg.optimizer,
        "weight_decay": cfg.weight_decay,
        "grad_clip": cfg.grad_clip,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "normalization": {"images": cfg.normalize, "description": _norm_text(cfg.normalize, train.kind)},
        "data": {"train": train.record(), "val": val.record() if val else None,
                 "val_source": "val_data" if val_data is not None else (f"split by file, fraction {cfg.val_fraction}" if val else "none"),
                 "eval_files": eval_hashes or None},
        "validation": {
            "metric": val_metric,
            "definition": _val_definition(val_metric, cfg),
            "before": None if before is None else before["value"],
            "before_detail": before,
            "best": best_value,
            "best_epoch": best_epoch,
            "kept": "best validation epoch" if best_state is not None else "last epoch (no validation data)",
        },
        "best_val_psnr": best_value if val_metric == "psnr" else None,
        "val_psnr_before": (before or {}).get("value") if val_metric == "psnr" else None,
        "history": history,
        "epoch_time_s": [h["time_s"] for h in history],
        "teacher": teacher_info,
        "teacher_cached": cached_teacher,
        "model_settings": settings,
        "operator": getattr(op, "spec", None),
        "device": device,
        "bf16": cfg.bf16,
        "world_size": d.world,
        "resumed_from_epoch": resumed_from,
        "wall_time_s": time.perf_counter() - t_start,
        "versions": versions(),
    }
    record["previous"] = meta.get("finetune")  # a chain of earlier fine-tuning records, newest first
    new_meta = {**meta, "finetune": record, "versions": versions()}
    if getattr(op, "spec", None):
        new_meta["operator"] = op.spec
    written = None
    if out_path is not None and d.main:
        # the state goes only after the output is in place: a kill in between resumes to the same output
        written = save_model(out_path, model, new_meta, force=force or resume, operator=op)
        remove_state(out_path)
    if d.active:
        import torch.distributed as dist

        dist.barrier()
    return FinetuneResult(written or out_path, model, op, new_meta, record, warnings)


def _norm_text(normalize: str, kind: str) -> str:
    what = "k-space" if kind == "kspace" else "image"
    return {
        "max": f"each slice's {what} divided by its largest magnitude",
        "volume": f"each volume's {what} divided by its largest magnitude",
        "none": f"{what} values as stored",
    }[normalize]


def _val_definition(metric: str | None, cfg: FinetuneConfig) -> str | None:
    if metric == "psnr":
        from ..metrics import get_definition

        return get_definition(cfg.metric).describe()
    if metric == "measurement-consistency":
        return ("no ground truth in the validation data: mean |A x_hat - y| (L1) over the validation measurements, "
                "lower is better; this checks data fidelity only, not image quality")
    return None
