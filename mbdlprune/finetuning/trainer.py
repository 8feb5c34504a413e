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
DistributedSampler, and only rank 0 writes files and reports progress (:mod:`.progress`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, DataError, MbdlError
from .state import STATE_FORMAT, STATE_VERSION, state_path, state_paths  # noqa: F401  (public names)
from .config import BACKWARDS, OPTIMIZERS, FinetuneConfig, FinetuneResult  # noqa: F401  (public names)
from .schedules import SCHEDULES
from .distributed import _Dist, _all_reduce_sum, _resolve_device, _setup_distributed
from .inputs import TEACHER_CACHE_BYTES, _autocast, _cache_teacher, _collate, _load_teacher, _prepare_data, _step_generator  # noqa: F401
from .progress import reporter_for
from .validation import _fmt_val, _norm_text, _val_definition, _validate, _ValResult  # noqa: F401


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
    progress: Any = False,
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
    ``progress``: True for a Rich bar (:mod:`mbdlprune.render`), or a reporter (:mod:`.progress`).
    ``callback(event)`` receives ``{"event": "epoch", ...}`` dicts after each epoch's state is saved.
    ``out=None`` trains in memory and writes nothing (no resume).
    """
    base = config.to_dict() if isinstance(config, FinetuneConfig) else dict(config or {})
    cfg = FinetuneConfig.from_dict({**base, **options})
    d = _setup_distributed(cfg.device if cfg.device != "auto" else ("cuda" if _cuda() else "cpu"))
    try:
        trainer = Trainer(pruned_path, cfg, d, data=data, out=out, operator=operator, teacher=teacher, arch=arch,
                          val_data=val_data, eval_data=eval_data, force=force, resume=resume, progress=progress,
                          callback=callback, unsafe_pickle=unsafe_pickle, teacher_key_map=teacher_key_map)
        return trainer.setup().fit()
    finally:
        if d.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class Trainer:
    """One fine-tuning run: :meth:`setup` (model, teacher, loss, data, optimiser, resume),
    :meth:`train_epoch`, :meth:`validate`, and :meth:`fit`, which loops, saves the state after
    every epoch and writes the best weights with their record."""

    def __init__(self, pruned_path, cfg: FinetuneConfig, d: _Dist, *, data, out, operator=None, teacher=None,
                 arch=None, val_data=None, eval_data=None, force=False, resume=False, progress=False, callback=None,
                 unsafe_pickle=False, teacher_key_map=None):
        self.pruned_path, self.cfg, self.d = pruned_path, cfg, d
        self.data, self.val_data, self.eval_data = data, val_data, eval_data
        self.operator, self.teacher, self.arch = operator, teacher, arch
        self.force, self.resume, self.progress, self.callback = force, resume, progress, callback
        self.unsafe_pickle, self.teacher_key_map = unsafe_pickle, teacher_key_map
        self.out_path = Path(out) if out is not None else None
        self.warnings: list[str] = []
        self.t_start = time.perf_counter()

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Check the output, build model, teacher, loss, data and optimiser; restore a state to resume."""
        self._check_start()
        self._load_model()
        self._load_teacher_and_loss()
        self._load_data()
        self._make_optimizer_and_restore()
        self._make_loader()
        return self

    def _check_start(self) -> None:
        from ..io import check_output_path
        from .state import check_start

        d, out_path = self.d, self.out_path
        self.device = _resolve_device(self.cfg.device, d)
        self.begin = "fresh"
        if out_path is not None:
            # --resume may replace the output: a run killed after writing it, before removing its state
            check_output_path(out_path, self.force or self.resume, inputs=[self.pruned_path, self.teacher, self.operator])
            self.begin = check_start(out_path, resume=self.resume, force=self.force)
            if self.resume and self.begin == "fresh":
                self.warnings.append(f"no training state beside {out_path.name} (the run stopped before its first save): started from epoch 0")
        elif self.resume:
            raise MbdlError("--resume needs the output path of the interrupted run", "pass -o OUT.safetensors")
        if d.active:  # every rank has looked for a state before rank 0 can write one
            import torch.distributed as dist

            dist.barrier()

    def _load_model(self) -> None:
        from ..io import resolve_operator
        from ..io import load_model
        from ..models.protocol import is_deq

        cfg = self.cfg
        loaded = load_model(self.pruned_path, arch=self.arch, device="cpu")
        model, self.meta = loaded.model, dict(loaded.meta)
        op = resolve_operator(self.operator) if self.operator is not None else loaded.operator
        if op is None:
            raise ConfigError(f"{Path(self.pruned_path).name} stores no operator", "pass --operator SPEC (TOML/JSON with an [operator] table)")
        self.op = op.to(self.device)
        self.settings: dict[str, Any] = {}
        if is_deq(model) and hasattr(model, "backward"):
            if cfg.deq_backward is not None:
                model.backward = cfg.deq_backward
            self.settings["deq_backward"] = model.backward
        elif cfg.deq_backward is not None:
            self.warnings.append(f"--deq-backward {cfg.deq_backward} ignored: the model is not a DEQ")
        if hasattr(model, "checkpointing"):
            model.checkpointing = bool(cfg.checkpointing)
            self.settings["checkpointing"] = bool(cfg.checkpointing)
        elif cfg.checkpointing:
            self.warnings.append("--checkpointing ignored: the model has no activation checkpointing switch")
        self.model = model.to(self.device)

    def _load_teacher_and_loss(self) -> None:
        from .losses import build_mode_loss, mode_weights

        cfg, teacher = self.cfg, self.teacher
        self.teacher_model, self.teacher_info = None, None
        if mode_weights(cfg.mode, cfg.weights).get("distill", 0) > 0:
            if teacher is None:
                raise ConfigError(f"mode {cfg.mode!r} distils from the original model, and no teacher was given",
                                  "pass --teacher ORIGINAL_CHECKPOINT (the unpruned file given to prune)")
            self.teacher_model, self.teacher_info = _load_teacher(teacher, self.meta, self.arch, self.unsafe_pickle,
                                                                  self.teacher_key_map)
            self.teacher_model.to(self.device)
            if not self.teacher_info["is_parent"]:
                self.warnings.append(f"teacher {Path(teacher).name} is not the checkpoint this model was pruned from (sha256 differs)")
        elif teacher is not None:
            self.warnings.append(f"--teacher ignored: mode {cfg.mode!r} does not distil")
        self.loss_fn = build_mode_loss(cfg.mode, cfg.weights, pixel=cfg.loss, teacher=self.teacher_model, norm=cfg.mc_norm,
                                       noise=cfg.eq_noise, spectral_target=cfg.spectral_target)
        self.loss_fn.check_model(self.model)  # e.g. the jacobian term applies to DEQ models only

    def _load_data(self) -> None:
        cfg, d = self.cfg, self.d
        train, val, self.eval_hashes = _prepare_data(cfg, self.op, self.data, self.val_data, self.eval_data, d,
                                                     raw=self._raw_settings())
        self.warnings.extend(list(getattr(train, "notes", [])) + list(getattr(val, "notes", []) if val else []))
        self.raw = train.kind == "raw"
        if self.loss_fn.needs_ground_truth and not train.dataset.has_ground_truth:
            raise DataError(f"mode {cfg.mode!r} needs ground-truth images, and the training data is k-space only",
                            "use --mode self-supervised, or distill with --teacher")
        if len(train.dataset) < d.world:
            raise DataError(f"{len(train.dataset)} training slices for {d.world} processes", "use more data or fewer processes")
        self.train, self.val = train, val
        self.cached_teacher = False
        if self.teacher_model is not None:
            self.cached_teacher = _cache_teacher(self.teacher_model, train.dataset, self.op, self.device, cfg.batch_size)

    def _raw_settings(self) -> dict[str, Any]:
        """How raw k-space would be prepared for this model: targets only for a loss that needs them,
        the k-space scaling (``auto``: raw units for an e2e-varnet) and coil maps for models that
        take them from the operator."""
        from ..data.raw_protocol import resolve_kspace_scale
        from ..models.protocol import estimates_coil_maps

        cfg = self.cfg
        maps = cfg.coil_maps if (not estimates_coil_maps(self.model) and getattr(self.op, "coils", 1) > 1) else None
        arch = (self.meta.get("arch") or {}).get("name")
        return {"targets": self.loss_fn.needs_ground_truth, "scale": resolve_kspace_scale(cfg.kspace_scale, [arch]),
                "coil_maps": maps}

    def _make_optimizer_and_restore(self) -> None:
        import torch

        from ..io import sha256_file
        from .state import load_state, restore

        cfg = self.cfg
        # a new optimiser: the pruned shapes differ from any earlier optimiser's
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.identity = {"pruned_sha256": sha256_file(self.pruned_path), "train_files": self.train.hashes,
                         "val_files": self.val.hashes if self.val else {}}
        self.start_epoch, self.best_value, self.best_epoch, self.best_state = 0, None, None, None
        self.history: list[dict[str, Any]] = []
        self.before = None
        self.resumed_from = None
        if self.begin == "resume":
            doc, tensors = load_state(self.out_path)
            _check_resume(doc, cfg, self.identity)
            self.best_state = restore(doc, tensors, self.model, self.optimizer, state_path(self.out_path))
            self.start_epoch, self.best_value, self.best_epoch = doc["epoch"], doc["best_value"], doc["best_epoch"]
            self.history, self.before = doc["history"], doc["before"]
            self.resumed_from = self.start_epoch
        else:
            v0 = self.validate()
            self.before = None if v0 is None else {"metric": v0.metric, "value": v0.value, **v0.extra}

    def _make_loader(self) -> None:
        from torch.utils.data.distributed import DistributedSampler

        cfg, d = self.cfg, self.d
        self.net = self.model
        if d.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[d.local_rank] if self.device.startswith("cuda") else None)
        ds = self.train.dataset
        self.sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed) if d.active else None
        self.steps_per_epoch = math.ceil((len(self.sampler) if self.sampler is not None else len(ds)) / cfg.batch_size)
        val = self.val
        self.val_metric = "psnr" if (val and val.dataset.has_ground_truth) else ("measurement-consistency" if val else None)

    # -- one epoch -----------------------------------------------------------------------
    def validate(self):
        """Validation on the held-out files (PSNR with ground truth, else measurement consistency), or None."""
        return _validate(self.model, self.val.dataset if self.val else None, self.op, self.cfg, self.device, self.d)

    def train_epoch(self, epoch: int, bar) -> tuple[float, dict[str, float]]:
        """Train over every training sample once; returns the learning rate and the mean losses."""
        import torch
        from torch.utils.data import DataLoader

        from ..data import sample_seed
        from ..data.raw_dataset import batch_operator

        cfg, d, device, loss_fn, ds = self.cfg, self.d, self.device, self.loss_fn, self.train.dataset
        lr = SCHEDULES.get(cfg.lr_schedule)(epoch, cfg.epochs, cfg.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(sample_seed(cfg.seed, epoch, 2000 + d.rank))
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            order = None
        else:
            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, 3000))).tolist()
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=self.sampler if self.sampler is not None else order,
                            collate_fn=_collate, num_workers=0)
        self.net.train()
        sums = {"loss": 0.0}
        n_seen = 0
        for step, batch in enumerate(loader):
            y = batch["y"].to(device)
            op = batch_operator(self.op, batch, device)
            x = batch["x"].to(device) if (loss_fn.needs_ground_truth and "x" in batch) else None
            extra = {"teacher": batch["teacher"].to(device)} if "teacher" in batch else None
            gen = _step_generator(cfg.seed, epoch, step, d.rank)
            self.optimizer.zero_grad(set_to_none=True)
            with _autocast(device, cfg.bf16):
                x_net = self.net(y, op)
                loss = loss_fn(x_net, x, y, op, self.net, batch=extra, generator=gen)
            finite = bool(torch.isfinite(loss.detach()).all())
            if d.active:
                finite = _all_reduce_sum([0.0 if finite else 1.0], d, device)[0] == 0.0
            if not finite:
                raise MbdlError(
                    f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; nothing was written to the output",
                    ("lower --lr, set --grad-clip or drop --bf16, then continue from the last good state with --resume"
                     if self.out_path is not None else "lower --lr, set grad_clip or drop bf16"),
                )
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            n = y.shape[0]
            sums["loss"] += float(loss.detach()) * n
            for k, v in loss_fn.last.items():
                sums[k] = sums.get(k, 0.0) + v * n
            n_seen += n
            bar.step(epoch + 1, float(loss.detach()))
        keys = sorted(sums)
        totals = _all_reduce_sum([sums[k] for k in keys] + [float(n_seen)], d, device)
        return lr, {k: totals[i] / max(totals[-1], 1.0) for i, k in enumerate(keys)}

    def _state_info(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "config": self.cfg.to_dict(), **self.identity, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "history": self.history, "before": self.before, "val_metric": self.val_metric}

    # -- the run -------------------------------------------------------------------------
    def fit(self) -> FinetuneResult:
        """Train every remaining epoch (state saved after each), then write the best weights and the record."""
        from .state import save_state

        cfg, d, out_path = self.cfg, self.d, self.out_path
        bar = reporter_for(self.progress, d.main)
        bar.start(cfg.epochs, self.steps_per_epoch, self.val_metric or "-")
        bar.skip(self.start_epoch * self.steps_per_epoch)
        try:
            if out_path is not None and d.main and self.begin == "fresh":
                save_state(out_path, self.model, self.optimizer, self.best_state, self._state_info(0))
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                lr, train_means = self.train_epoch(epoch, bar)
                v = self.validate()
                if v is not None and v.better_than(self.best_value):
                    self.best_value, self.best_epoch = v.value, epoch + 1
                    self.best_state = {k: t.detach().cpu().clone() for k, t in self.model.state_dict().items()}
                entry = {"epoch": epoch + 1, "lr": lr, "train": train_means, "time_s": time.perf_counter() - t0}
                if v is not None:
                    entry["val"] = {"metric": v.metric, "value": v.value, **v.extra}
                self.history.append(entry)
                bar.val(_fmt_val(v))
                if out_path is not None and d.main:
                    save_state(out_path, self.model, self.optimizer, self.best_state, self._state_info(epoch + 1))
                if self.callback is not None and d.main:
                    self.callback({"event": "epoch", **entry})
        finally:
            bar.close()
        return self._finish()

    def _finish(self) -> FinetuneResult:
        from ..io import save_model, versions
        from .state import remove_state

        d, out_path, op = self.d, self.out_path, self.op
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        record = self.record()
        meta = self.meta
        record["previous"] = meta.get("finetune")  # a chain of earlier fine-tuning records, newest first
        new_meta = {**meta, "finetune": record, "versions": versions()}
        if getattr(op, "spec", None):
            new_meta["operator"] = op.spec
        written = None
        if out_path is not None and d.main:
            # the state goes only after the output is in place: a kill in between resumes to the same output
            written = save_model(out_path, self.model, new_meta, force=self.force or self.resume, operator=op)
            remove_state(out_path)
        if d.active:
            import torch.distributed as dist

            dist.barrier()
        return FinetuneResult(written or out_path, self.model, op, new_meta, record, self.warnings)

    def record(self) -> dict[str, Any]:
        """The ``finetune`` record written into the output's metadata."""
        from ..io import versions

        cfg, train, val, before = self.cfg, self.train, self.val, self.before
        val_metric, best_value = self.val_metric, self.best_value
        return {
            "mode": cfg.mode,
            "pruned": Path(self.pruned_path).name,
            "pruned_sha256": self.identity["pruned_sha256"],
            "losses": self.loss_fn.describe(),
            "weights": self.loss_fn.weights(),
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "lr_schedule": cfg.lr_schedule,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "grad_clip": cfg.grad_clip,
            "batch_size": cfg.batch_size,
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "normalization": ({"kspace": train.normalization, "description": _norm_text(train.normalization, "kspace")}
                              if train.kind == "raw" else
                              {"images": cfg.normalize, "description": _norm_text(cfg.normalize, train.kind)}),
            "data": {"train": train.record(), "val": val.record() if val else None,
                     "val_source": "val_data" if self.val_data is not None else (f"split by file, fraction {cfg.val_fraction}" if val else "none"),
                     "eval_files": self.eval_hashes or None},
            "validation": {
                "metric": val_metric,
                "definition": _val_definition(val_metric, cfg, getattr(self, "raw", False)),
                "before": None if before is None else before["value"],
                "before_detail": before,
                "best": best_value,
                "best_epoch": self.best_epoch,
                "kept": "best validation epoch" if self.best_state is not None else "last epoch (no validation data)",
            },
            "best_val_psnr": best_value if val_metric == "psnr" else None,
            "val_psnr_before": (before or {}).get("value") if val_metric == "psnr" else None,
            "history": self.history,
            "epoch_time_s": [h["time_s"] for h in self.history],
            "teacher": self.teacher_info,
            "teacher_cached": self.cached_teacher,
            "model_settings": self.settings,
            "operator": getattr(self.op, "spec", None),
            "device": self.device,
            "bf16": cfg.bf16,
            "world_size": self.d.world,
            "resumed_from_epoch": self.resumed_from,
            "wall_time_s": time.perf_counter() - self.t_start,
            "versions": versions(),
        }
