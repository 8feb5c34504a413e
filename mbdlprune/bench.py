"""Fair side-by-side benchmark of an original MBDL model and its pruned (fine-tuned) versions.

Fairness rules (see docs/bench.md):

* every model sees the same measurements (simulated once from the evaluation images with the
  operator and a fixed seed) and the same timing batch;
* every DEQ runs with the same solver, tolerance and iteration cap — the first model's,
  unless overridden for all — and the report gives iterations and residuals;
* timing is interleaved: each round runs every model once (in rotating order), so clock and
  thermal drift hits all models alike; medians and p10/p90 are reported, not means;
* costs (prior MACs) are counted on the reconstructions actually run, so DEQ iteration
  counts are part of the per-reconstruction cost;
* a fine-tuned model whose training data overlaps the evaluation data is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import DataError, MbdlError
from .report import (SCHEMA_VERSION, SOLVER_KEYS, BenchReport, GateResult, ModelResult, _clean, _fmt,  # noqa: F401
                     _si, _stats, _timed_calls, evaluate_gates)
from .timing import (DEFAULT_REPEATS, DEFAULT_WARMUP, TimingResult, _percentile, busy_note,  # noqa: F401
                     device_info, time_model, time_models)

ROLES = ("original", "pruned", "control")


# ------------------------------------------------------------------------------ models
@dataclass
class BenchModel:
    """One model to benchmark: the module, its metadata and operator, and how to call it."""

    label: str
    model: Any
    meta: dict[str, Any] = field(default_factory=dict)
    operator: Any = None
    path: str | None = None
    role: str = "pruned"


def _label_for(path: str | Path, taken: set[str]) -> str:
    base = Path(path).name
    if base.endswith(".safetensors"):
        base = base[: -len(".safetensors")]
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    return label


def load_bench_models(models: Sequence[Any], arch: str | None = None, unsafe_pickle: bool = False,
                      key_map: Any = None) -> list[BenchModel]:
    """Paths, :class:`io.LoadedModel` objects or :class:`BenchModel` s -> a list of BenchModel.

    The first model is the reference ("original"); the others are "pruned" unless their
    role says otherwise. A plain checkpoint (a .pth of the original, say) is built with the
    architecture and operator recorded in the first mbdlprune file among ``models``. Every
    file goes through the one loader, :func:`mbdlprune.io.load_model`.
    """
    from .io import LoadedModel, is_mbdlprune_file, load_model

    out: list[BenchModel | None] = []
    plain: list[tuple[int, Path]] = []
    taken: set[str] = set()
    for i, m in enumerate(models):
        if isinstance(m, BenchModel):
            bm = m
        elif isinstance(m, LoadedModel):
            bm = BenchModel(_label_for(m.path, taken), m.model, dict(m.meta), m.operator, str(m.path))
        elif isinstance(m, (str, Path)) and not is_mbdlprune_file(m):
            plain.append((i, Path(m)))
            out.append(None)
            continue
        elif isinstance(m, (str, Path)):
            lm = load_model(m, arch=arch, device="cpu", unsafe_pickle=unsafe_pickle)
            bm = BenchModel(_label_for(m, taken), lm.model, dict(lm.meta), lm.operator, str(m))
        else:
            raise MbdlError(f"cannot benchmark a {type(m).__name__}", "pass model file paths")
        taken.add(bm.label)
        out.append(bm)
    for i, path in plain:
        out[i] = _plain_checkpoint_model(path, [b for b in out if b is not None], arch, unsafe_pickle, taken, key_map)
        taken.add(out[i].label)
    for i, (m, bm) in enumerate(zip(models, out)):
        if i == 0 and not isinstance(m, BenchModel):
            bm.role = "original"
    if len(out) < 1:
        raise MbdlError("no models to benchmark", "pass the original model and at least one pruned model")
    return out


def _plain_checkpoint_model(path: Path, described: Sequence[BenchModel], arch: str | None, unsafe_pickle: bool,
                            taken: set[str], key_map: Any = None) -> BenchModel:
    """Build a plain checkpoint with the architecture an mbdlprune file among the models records."""
    from .io import load_model

    ref = next((b for b in described if b.meta.get("arch")), None)
    if ref is None:
        raise MbdlError(f"{path.name} does not say which architecture it is, and no other model records one",
                        "pass a pruned .safetensors written by mbdlprune too, or run `mbdlprune convert` first")
    lm = load_model(path, arch=arch, unsafe_pickle=unsafe_pickle, like=ref.meta, key_map=key_map)
    meta = {"arch": lm.arch.to_dict(), "operator": (ref.meta or {}).get("operator")}
    return BenchModel(_label_for(path, taken), lm.model.eval(), meta, ref.operator, str(path))


# ------------------------------------------------------------------------------ solver settings


def is_deq(model) -> bool:
    return all(hasattr(model, k) for k in SOLVER_KEYS)


def common_solver_settings(models: Sequence[BenchModel], solver: str | None = None, tol: float | None = None,
                           max_iter: int | None = None) -> dict[str, Any] | None:
    """The solver settings every DEQ will run with: the first DEQ's, with overrides for all."""
    deqs = [m for m in models if is_deq(m.model)]
    if not deqs:
        if any(v is not None for v in (solver, tol, max_iter)):
            raise MbdlError("--solver/--tol/--max-iter apply to DEQ models, and none of these models is one",
                            "drop those options")
        return None
    ref = deqs[0].model
    settings = {"solver": ref.solver, "tol": float(ref.tol), "max_iter": int(ref.max_iter)}
    overridden = []
    for key, value in (("solver", solver), ("tol", tol), ("max_iter", max_iter)):
        if value is not None:
            settings[key] = value
            overridden.append(key)
    if settings["tol"] is not None and not float(settings["tol"]) > 0:
        raise MbdlError(f"--tol must be positive, got {settings['tol']}", "use e.g. --tol 1e-4")
    if int(settings["max_iter"]) < 1:
        raise MbdlError(f"--max-iter must be >= 1, got {settings['max_iter']}", "use e.g. --max-iter 100")
    from .models.solvers import SOLVERS

    if settings["solver"] not in SOLVERS:
        raise MbdlError(f"unknown --solver {settings['solver']!r}", f"use one of: {', '.join(SOLVERS.names())}")
    settings["source"] = f"{deqs[0].label} (first DEQ)" + (f"; overridden for all: {', '.join(overridden)}" if overridden else "")
    settings["stored"] = {m.label: {k: getattr(m.model, k) for k in SOLVER_KEYS} for m in deqs}
    return settings


def apply_solver_settings(models: Sequence[BenchModel], settings: Mapping[str, Any] | None) -> None:
    if not settings:
        return
    for m in models:
        if is_deq(m.model):
            m.model.solver = settings["solver"]
            m.model.tol = float(settings["tol"])
            m.model.max_iter = int(settings["max_iter"])


# ------------------------------------------------------------------------------ operators
def _canonical(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def common_operator(models: Sequence[BenchModel], operator: Any = None):
    """The one operator all models run with; disagreeing recorded operators are an error."""
    from .operators import load_operator

    if operator is not None:
        if not (hasattr(operator, "A") and hasattr(operator, "A_adjoint")):
            operator = load_operator(operator)
        return operator, "given explicitly, used for every model"
    specs = [(m.label, (m.meta or {}).get("operator") or getattr(m.operator, "spec", None)) for m in models]
    known = [(lbl, s) for lbl, s in specs if s]
    missing = [lbl for lbl, s in specs if not s]
    if not known:
        if models[0].operator is not None:
            return models[0].operator, f"from {models[0].label}"
        raise MbdlError("none of the models records its operator", "pass --operator SPEC (TOML/JSON with an [operator] table)")
    if missing and models[0].operator is None:
        raise MbdlError(f"{', '.join(missing)} records no operator", "pass --operator SPEC to use one operator for all models")
    ref_label, ref = known[0]
    for lbl, s in known[1:]:
        if _canonical(s) != _canonical(ref):
            diff = _spec_difference(ref, s)
            raise MbdlError(
                f"{lbl} was built for a different operator than {ref_label} ({diff})",
                "benchmark models of the same operator, or pass --operator to run all with one",
            )
    op = next((m.operator for m in models if m.operator is not None), None)
    if op is None:  # specs recorded in files are only rebuilt by the loader, from the file's own data
        raise MbdlError(f"no operator object was loaded with {ref_label}", "pass --operator SPEC to use one operator for all models")
    return op, f"recorded in {ref_label}" + (" (identical in all models)" if len(known) > 1 else "")


def _spec_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    for k in keys:
        if _canonical(a.get(k)) != _canonical(b.get(k)):
            return f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
    return "specs differ"


def lineage_notes(entries: Sequence[BenchModel]) -> list[str]:
    """Notes for models that do not descend from the first one (other architecture or parent)."""
    from .io import sha256_file

    notes = []
    ref = entries[0]
    ref_arch = ((ref.meta or {}).get("arch") or {}).get("name")
    ref_sha = None
    if ref.path and Path(ref.path).is_file():
        try:
            ref_sha = sha256_file(ref.path)
        except OSError:
            ref_sha = None
    for e in entries[1:]:
        arch = ((e.meta or {}).get("arch") or {}).get("name")
        if ref_arch and arch and arch != ref_arch:
            notes.append(f"{e.label} is a {arch}, the reference {ref.label} a {ref_arch}: this compares different architectures")
            continue
        parent = (e.meta or {}).get("parent_sha256")
        if ref_sha and parent and e.role == "pruned" and parent != ref_sha:
            notes.append(f"{e.label} was not pruned from {ref.label} (its parent's sha256 differs)")
    return notes


# ------------------------------------------------------------------------------ data
@dataclass
class EvalData:
    """Ground-truth evaluation images and where they came from."""

    images: Any  # (N, C, H, W) tensor
    source: str
    hashes: list[str]
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. slices dropped for NaN/Inf or all-zero values


def tensor_sha256(t) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def load_eval_data(data: Any, op, max_images: int | None = None, fit: str = "error") -> EvalData:
    """Evaluation images from a tensor (N, C, H, W), or from volume files via :mod:`mbdlprune.data`."""
    import torch

    if isinstance(data, EvalData):
        ev = data
    elif torch.is_tensor(data):
        imgs = data.detach().float()
        if imgs.dim() == 3:
            imgs = imgs[:, None]
        ev = EvalData(imgs, f"tensor {tuple(imgs.shape)}", [tensor_sha256(imgs)])
    elif isinstance(data, (str, Path)) or (isinstance(data, (list, tuple)) and data and all(isinstance(d, (str, Path)) for d in data)):
        ev = _load_volumes(data, op, fit)
    else:
        raise DataError(f"cannot use {type(data).__name__} as evaluation data", "pass a NIfTI/HDF5 file or folder (--data PATH)")
    if ev.images.dim() != 4 or ev.images.shape[0] == 0:
        raise DataError(f"evaluation data has shape {tuple(ev.images.shape)}", "give at least one image (N, C, H, W)")
    if tuple(ev.images.shape[1:]) != tuple(op.image_shape):
        raise DataError(
            f"evaluation images are {tuple(ev.images.shape[1:])}, the operator takes {tuple(op.image_shape)}",
            "set the operator's image_size/channels to the data, or resample the data",
        )
    if max_images is not None and ev.images.shape[0] > max_images:
        ev = EvalData(ev.images[:max_images], ev.source + f" (first {max_images} images)", ev.hashes, ev.files, ev.notes)
    return ev


def _load_volumes(data: Any, op, fit: str = "error") -> EvalData:
    import torch

    try:
        from . import data as D
    except ImportError as e:  # pragma: no cover - the data module ships with the package
        raise DataError(f"reading volume files needs mbdlprune.data ({e})", "pass images as a tensor") from None
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    volumes = []
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"evaluation data {str(p)!r} does not exist", "check --data")
        volumes.extend(D.read_volumes(p))
    if not volumes:
        raise DataError(f"no volumes found in {', '.join(map(str, paths))}", "point --data at NIfTI or HDF5 files")
    kinds = {v.kind for v in volumes}
    if kinds != {"image"}:
        raise DataError("evaluation data must be images (ground truth), not k-space",
                        "pass image files (NIfTI, NumPy, fastMRI reconstruction_rss) as --data")
    imgs = torch.cat([D.slices_to_images(v, op, fit=fit) for v in volumes]).float()
    hashes = sorted({v.sha256 for v in volumes if getattr(v, "sha256", None)})
    files = sorted({str(getattr(v, "path", "")) for v in volumes})
    return EvalData(imgs, ", ".join(map(str, paths)), hashes, files, D.volume_notes(volumes))


def simulate_measurements(images, op, seed: int = 0):
    """y = A x + noise with a fixed seed (noise drawn on the CPU, so every device sees the same y)."""
    import torch

    try:
        from .data import simulate
    except ImportError:
        simulate = None
    if simulate is not None:
        return simulate(images, op, seed)
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return op.measure(images, generator=g)


# ------------------------------------------------------------------------------ fine-tune records
_HEX = set("0123456789abcdef")


def _is_sha256(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and set(s.lower()) <= _HEX


def _hashes_in(obj: Any, found: set[str]) -> None:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if _is_sha256(k):
                found.add(str(k).lower())
            _hashes_in(v, found)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _hashes_in(v, found)
    elif _is_sha256(obj):
        found.add(obj.lower())


#: parts of a fine-tune record's ``data`` that are not training data (eval files it was told to avoid)
_NOT_TRAINING = ("eval_files", "eval", "evaluation")


def training_hashes(record: Any) -> set[str]:
    """sha256 of every file a fine-tune record says it trained or validated on.

    Reads ``record["data"]`` (``train`` / ``val`` file tables) except the evaluation files
    the run was told to avoid, plus any ``*_hashes`` lists at the top level.
    """
    found: set[str] = set()
    if not isinstance(record, Mapping):
        return found
    data = record.get("data")
    if isinstance(data, Mapping):
        for k, v in data.items():
            if k not in _NOT_TRAINING:
                _hashes_in(v, found)
    elif data is not None:
        _hashes_in(data, found)
    for k, v in record.items():
        if k.endswith("hashes") and not k.startswith("eval"):
            _hashes_in(v, found)
    return found


def _finetune_records(meta: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = []
    for key in ("finetune", "finetune_previous"):
        rec = (meta or {}).get(key)
        while isinstance(rec, Mapping):
            out.append(rec)
            rec = rec.get("previous") if isinstance(rec.get("previous"), Mapping) else None
    return out


def finetune_summary(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """Mode, epochs and data of a model's fine-tune record, for reports (None if not fine-tuned)."""
    rec = (meta or {}).get("finetune")
    if not rec:
        return None
    cfg = rec.get("config") if isinstance(rec.get("config"), Mapping) else {}
    out = {k: rec.get(k, cfg.get(k)) for k in ("mode", "epochs", "lr", "batch_size", "loss")}
    data = rec.get("data") if isinstance(rec.get("data"), Mapping) else {}
    train = data.get("train") if isinstance(data.get("train"), Mapping) else {}
    out["train_slices"] = train.get("slices")
    out["train_files"] = len(train.get("files") or {})
    out["validation"] = (rec.get("validation") or {}).get("metric") if isinstance(rec.get("validation"), Mapping) else None
    out["training_hashes"] = len(training_hashes(rec))
    return {k: v for k, v in out.items() if v is not None}


def check_finetune_overlap(models: Sequence[BenchModel], eval_hashes: Iterable[str]) -> None:
    """Refuse a model fine-tuned (trained or validated) on any of the evaluation files."""
    ev = {h.lower() for h in eval_hashes}
    for m in models:
        for rec in _finetune_records(m.meta):
            overlap = training_hashes(rec) & ev
            if overlap:
                raise DataError(
                    f"{m.label} was fine-tuned on {len(overlap)} of the evaluation files (sha256 {sorted(overlap)[0][:12]}…)",
                    "evaluate on files the model never trained or validated on",
                )


# ------------------------------------------------------------------------------ costs and quality
class _CostCounter:
    """Counts prior calls and conv/linear MACs inside each prior during real reconstructions."""

    def __init__(self, model):
        from torch import nn

        # models without prior_paths() (user code) are counted as one "prior": the whole model
        self.paths = list(model.prior_paths()) if hasattr(model, "prior_paths") else [""]
        self.calls = {p: 0 for p in self.paths}
        self.macs = {p: 0 for p in self.paths}
        self.params = {}
        self.handles = []
        for p in self.paths:
            prior = model.get_submodule(p)
            self.params[p] = sum(t.numel() for t in prior.parameters())
            self.handles.append(prior.register_forward_pre_hook(self._call_hook(p)))
            for m in prior.modules():
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                    self.handles.append(m.register_forward_hook(self._mac_hook(p)))

    def _call_hook(self, path):
        def hook(module, args):
            self.calls[path] += 1

        return hook

    def _mac_hook(self, path):
        from torch import nn

        def hook(m, args, out):
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                k = math.prod(m.kernel_size)
                self.macs[path] += args[0].numel() * (m.out_channels // m.groups) * k
            elif isinstance(m, nn.modules.conv._ConvNd):
                k = math.prod(m.kernel_size)
                self.macs[path] += out.numel() * (m.in_channels // m.groups) * k
            else:
                self.macs[path] += out.numel() * m.in_features

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def reconstruct_and_score(bm: BenchModel, y, images, op, device: str, batch_size: int, metric) -> dict[str, Any]:
    """Reconstruct every measurement (batched), score against ``images``, count prior costs."""
    import torch

    from .metrics import compute_metrics

    counter = _CostCounter(bm.model)
    psnrs: list[float] = []
    ssims: list[float] = []
    its: list[float] = []
    res: list[float] = []
    conv: list[bool] = []
    example = None
    batches = 0
    try:
        with torch.inference_mode():
            for s in range(0, y.shape[0], batch_size):
                yb = y[s:s + batch_size].to(device)
                xh = bm.model(yb, op)
                batches += 1
                info = getattr(bm.model, "last_info", None)
                if isinstance(info, Mapping) and "residual" in info:
                    its.append(float(info.get("iterations", math.nan)))
                    res.append(float(info.get("residual", math.nan)))
                    conv.append(bool(info.get("converged")))
                xh = xh.float().cpu()
                if example is None:
                    example = xh[:1].clone()
                m = compute_metrics(xh, images[s:s + batch_size], metric)
                psnrs += [float(v) for v in m["psnr"]]
                ssims += [float(v) for v in m["ssim"]]
    finally:
        counter.remove()
    n = y.shape[0]
    priors = {}
    for p in counter.paths:
        calls = counter.calls[p] / batches if batches else 0.0
        per_recon = counter.macs[p] / n if n else 0.0
        priors[p or "(whole model)"] = {
            "params": counter.params[p],
            "calls_per_reconstruction": calls,
            "macs_per_call": per_recon / calls if calls else 0.0,
            "macs_per_reconstruction": per_recon,
        }
    deq = None
    if its:
        deq = {
            "iterations_mean": statistics.fmean(its),
            "iterations_max": max(its),
            "residual_mean": statistics.fmean(res),
            "residual_max": max(res),
            "converged_fraction": statistics.fmean(conv),
        }
    return {"psnr": psnrs, "ssim": ssims, "priors": priors, "deq": deq, "example": example}


# ------------------------------------------------------------------------------ bench
def bench(
    models: Sequence[Any],
    data: Any,
    operator: Any = None,
    device: str = "auto",
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    batch_size: int = 1,
    metric: str = "plain",
    seed: int = 0,
    max_images: int | None = None,
    fit: str = "error",
    arch: str | None = None,
    min_speedup: float | None = None,
    max_psnr_drop: float | None = None,
    control: bool | Mapping[str, Any] = False,
    control_out: str | Path | None = None,
    interleave: bool = True,
    threads: int | None = None,
    progress=None,
    control_data: Any = None,
    force: bool = False,
    key_map: Any = None,
    unsafe_pickle: bool = False,
) -> BenchReport:
    """Benchmark ``models`` (first = original) side by side on ``data``; see the module docstring.

    ``models``: file paths, :class:`io.LoadedModel` or :class:`BenchModel` objects.
    ``data``: evaluation volumes (file/folder, read with :mod:`mbdlprune.data`) or an image
    tensor (N, C, H, W). ``threads``: torch intra-op threads for this run (restored afterwards).
    ``control``: also fine-tune the original with the pruned model's
    fine-tune settings (True) or with the given settings (a dict for
    :func:`mbdlprune.finetune.finetune`), and bench it as role "control"; with True,
    ``control_data`` gives the fine-tuning files (matched by sha256 to the record's).
    ``force``: the control model may replace an existing ``control_out``. ``key_map`` and
    ``unsafe_pickle`` apply to plain checkpoints among ``models`` (the original, typically).
    """
    import torch

    check_bench_options(threads=threads, batch_size=batch_size, warmup=warmup, repeats=repeats, max_images=max_images,
                        seed=seed, tol=tol, max_iter=max_iter, min_speedup=min_speedup, max_psnr_drop=max_psnr_drop)
    before_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _bench(models, data, operator, device, solver, tol, max_iter, warmup, repeats, batch_size, metric, seed,
                      max_images, fit, arch, min_speedup, max_psnr_drop, control, control_out, interleave, progress,
                      control_data, force, key_map, unsafe_pickle)
    finally:
        torch.set_num_threads(before_threads)


def _bench(models, data, operator, device, solver, tol, max_iter, warmup, repeats, batch_size, metric, seed,
           max_images, fit, arch, min_speedup, max_psnr_drop, control, control_out, interleave, progress,
           control_data=None, force=False, key_map=None, unsafe_pickle=False) -> BenchReport:
    import torch

    from .metrics import get_definition

    say = progress or (lambda msg: None)
    metric_def = get_definition(metric)
    env = device_info(device)
    dev = env["device"]
    entries = load_bench_models(models, arch=arch, unsafe_pickle=unsafe_pickle, key_map=key_map)
    if control:
        if control_out is not None:
            from .io import check_output_path

            check_output_path(control_out, force, inputs=[e.path for e in entries if e.path])
        entries.append(_control_model(entries, control, control_out, arch, say, control_data, force))
    op, op_source = common_operator(entries, operator)
    op = op.to(dev)
    solver_settings = common_solver_settings(entries, solver, tol, max_iter)
    apply_solver_settings(entries, solver_settings)
    ev = load_eval_data(data, op, max_images, fit)
    check_finetune_overlap(entries, ev.hashes)
    notes: list[str] = []
    if env["note"]:
        notes.append(env["note"])
    notes += list(ev.notes)
    notes += lineage_notes(entries)
    if not dev.startswith("cuda") and busy_note(env):
        notes.append(busy_note(env))
    for e in entries:
        e.model.eval().to(device=dev, dtype=torch.float32)
    say(f"simulating measurements for {ev.images.shape[0]} images (seed {seed})")
    y = simulate_measurements(ev.images, op.to("cpu"), seed)
    op = op.to(dev)

    # quality and costs (also a first warm-up)
    scored = []
    for e in entries:
        say(f"reconstructing with {e.label}")
        scored.append(reconstruct_and_score(e, y, ev.images, op, dev, batch_size, metric_def))
    say(f"timing {len(entries)} models: {warmup} warm-up + {repeats} interleaved runs, batch {batch_size}")
    timings = time_models([e.model for e in entries], y, op, dev, warmup, repeats, batch_size, interleave)

    results: list[ModelResult] = []
    for e, sc, tm in zip(entries, scored, timings):
        priors = sc["priors"]
        prior_macs = float(sum(p["macs_per_call"] for p in priors.values()))
        calls = float(sum(p["calls_per_reconstruction"] for p in priors.values()))
        recon = float(sum(p["macs_per_reconstruction"] for p in priors.values()))
        pm, ps = _stats(sc["psnr"])
        sm, ss = _stats(sc["ssim"])
        deq = sc["deq"]
        if deq is not None and tm.iterations_mean is not None:
            deq = {**deq, "timed_iterations_mean": tm.iterations_mean, "timed_residual_final": tm.residual_final}
        pr = (e.meta or {}).get("pruning")
        results.append(ModelResult(
            label=e.label, role=e.role, path=e.path, arch=((e.meta or {}).get("arch") or {}).get("name"),
            pruning={"ratio": pr.get("ratio"), "importance": pr.get("importance"), "round_to": pr.get("round_to")} if pr else None,
            finetune=finetune_summary(e.meta), params=sum(p.numel() for p in e.model.parameters()),
            prior_params=int(sum(p["params"] for p in priors.values())), prior_macs=prior_macs,
            prior_calls_per_reconstruction=calls, macs_per_reconstruction=recon, priors=priors, timing=tm,
            psnr=sc["psnr"], ssim=sc["ssim"], psnr_mean=pm, psnr_std=ps, ssim_mean=sm, ssim_std=ss, deq=deq,
        ))
    ref = results[0]
    for r in results:
        r.speedup = ref.timing.median_ms / r.timing.median_ms if r.timing.median_ms > 0 else None
        r.prior_macs_reduction = ref.prior_macs / r.prior_macs if r.prior_macs else None
        r.reconstruction_macs_reduction = ref.macs_per_reconstruction / r.macs_per_reconstruction if r.macs_per_reconstruction else None
        if r.speedup is not None and r.prior_macs_reduction:
            r.speedup_per_macs_reduction = r.speedup / r.prior_macs_reduction
        r.timed_calls = _timed_calls(r)
        if r.timed_calls and ref.timed_calls and r.timing.median_ms > 0:
            r.per_call_speedup = (ref.timing.median_ms / ref.timed_calls) / (r.timing.median_ms / r.timed_calls)
            if r.prior_macs_reduction:
                r.per_call_speedup_per_macs_reduction = r.per_call_speedup / r.prior_macs_reduction
        r.psnr_drop = ref.psnr_mean - r.psnr_mean
        r.ssim_drop = ref.ssim_mean - r.ssim_mean
        diffs = [a - b for a, b in zip(ref.psnr, r.psnr) if math.isfinite(a) and math.isfinite(b)]
        r.psnr_drop_paired_std = statistics.pstdev(diffs) if len(diffs) > 1 else None
    ctrl = next((r for r in results if r.role == "control"), None)
    if ctrl is not None:
        for r in results:
            if r.role == "pruned":
                r.psnr_drop_vs_control = ctrl.psnr_mean - r.psnr_mean
                notes.append(f"control: fine-tuning the original alone changes PSNR by {-ctrl.psnr_drop:+.2f} dB; "
                             f"{r.label} is {-r.psnr_drop_vs_control:+.2f} dB against that control")
    from .metrics import nonfinite_note

    for r in results:
        note = nonfinite_note(r.psnr, f"reconstructions of {r.label}") if r.psnr else None
        if note:
            notes.append(note)
        if r.deq and r.deq.get("converged_fraction", 1.0) < 1.0:
            notes.append(f"{r.label}: the DEQ solver stopped at max_iter before reaching tol on "
                         f"{(1 - r.deq['converged_fraction']) * 100:.0f}% of the batches")
    gates = evaluate_gates(results, min_speedup, max_psnr_drop)
    report = BenchReport(
        models=results,
        environment=env,
        settings={
            "warmup": warmup, "repeats": repeats, "batch_size": batch_size, "dtype": "float32", "seed": seed,
            "interleaved": interleave, "timing_method": timings[0].method if timings else "",
            "min_speedup": min_speedup, "max_psnr_drop": max_psnr_drop,
        },
        solver=solver_settings,
        operator={"kind": getattr(op, "kind", type(op).__name__), "image_shape": list(op.image_shape),
                  "spec": getattr(op, "spec", None), "source": op_source},
        data={"source": ev.source, "n_images": int(ev.images.shape[0]), "seed": seed, "sha256": ev.hashes, "files": ev.files},
        metric=metric_def.to_dict(),
        gates=gates,
        notes=notes,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    report.examples["__truth__"] = ev.images[:1].clone()
    for e, sc in zip(entries, scored):
        report.examples[e.label] = sc["example"]
    return report


def check_bench_options(**values: Any) -> None:
    """Refuse, in one line and before any work, bench options no benchmark can run with."""
    from .config import expect_number

    rules = {  # option: (integer, minimum, allow None)
        "threads": (True, 1, True), "batch_size": (True, 1, False), "warmup": (True, 0, False),
        "repeats": (True, 1, False), "max_images": (True, 1, True), "seed": (True, 0, False),
        "max_iter": (True, 1, True), "tol": (False, None, True), "min_speedup": (False, None, True),
        "max_psnr_drop": (False, None, True),
    }
    for key, value in values.items():
        integer, minimum, optional = rules[key]
        if value is None and optional:
            continue
        expect_number(value, f"--{key.replace('_', '-')}", "bench", integer=integer, minimum=minimum)
    for key in ("tol", "min_speedup"):
        if values.get(key) is not None and not values[key] > 0:
            raise MbdlError(f"--{key.replace('_', '-')} must be positive, got {values[key]}", f"set --{key.replace('_', '-')} above 0")


def run_finetune(path: str | Path, settings: Mapping[str, Any], out: str | Path | None, arch: str | None = None,
                 force: bool = False, eval_data: Any = None):
    """Call :func:`mbdlprune.finetune.finetune` with ``settings`` (``data`` included); returns its result."""
    try:
        from .finetune import finetune
    except ImportError as e:  # pragma: no cover - ships with the package
        raise MbdlError(f"fine-tuning needs mbdlprune.finetune ({e})", "install the full package") from None
    kwargs = dict(settings)
    if "data" not in kwargs or kwargs["data"] is None:
        raise MbdlError("fine-tuning needs training data", "give data = PATH in the fine-tune settings")
    if arch is not None:
        kwargs.setdefault("arch", arch)
    if eval_data is not None and not _is_tensor(eval_data):
        kwargs.setdefault("eval_data", eval_data)
    return finetune(path, out=out, force=force, **kwargs)


def _is_tensor(x: Any) -> bool:
    try:
        import torch

        return torch.is_tensor(x)
    except ImportError:  # pragma: no cover
        return False


def ensure_model_file(bm: BenchModel, folder: str | Path, force: bool = False) -> str:
    """A path to an mbdlprune file holding ``bm`` (writes one into ``folder`` when needed)."""
    from .io import is_mbdlprune_file, save_model

    if bm.path and str(bm.path).endswith(".safetensors") and is_mbdlprune_file(bm.path):
        return str(bm.path)
    if not (bm.meta or {}).get("arch"):
        raise MbdlError(f"{bm.label} has no architecture record to save it with", "pass the model as an mbdlprune file")
    out = Path(folder) / f"{bm.label.replace('/', '_')}.safetensors"
    meta = {k: v for k, v in bm.meta.items() if k not in ("format_version",)}
    if bm.operator is not None and getattr(bm.operator, "spec", None):
        meta["operator"] = bm.operator.spec
    save_model(out, bm.model, meta, force=force, operator=bm.operator)
    return str(out)


def control_settings(entries: Sequence[BenchModel], data: Any = None) -> dict[str, Any]:
    """The fine-tune settings of the first fine-tuned model: same mode and budget, on the same data.

    The data files are the caller's (``data``, i.e. ``--control-data``); a path recorded in a
    model file is never opened. Each file the record names must be among them (same sha256).
    """
    rec = next(((e.meta or {}).get("finetune") for e in entries[1:] if (e.meta or {}).get("finetune")), None)
    if not rec:
        raise MbdlError("--control needs a fine-tuned pruned model to copy the budget from",
                        "fine-tune a pruned model first (mbdlprune finetune), then bench it with --control")
    if data is None:
        raise MbdlError("--control needs the data the pruned model was fine-tuned on",
                        "pass --control-data PATH (the files given to finetune --data and --val-data)")
    return settings_from_record(rec, data)


def _control_model(entries: list[BenchModel], control: bool | Mapping[str, Any], out: str | Path | None, arch, say,
                   control_data: Any = None, force: bool = False) -> BenchModel:
    """Fine-tune the original with the same data and budget as the fine-tuned pruned model."""
    import tempfile

    from .io import load_model

    original = entries[0]
    settings = dict(control) if isinstance(control, Mapping) else control_settings(entries, control_data)
    folder = Path(out).parent if out is not None else Path(tempfile.mkdtemp(prefix="mbdlprune-control-"))
    out = Path(out) if out is not None else folder / "control.safetensors"
    src = ensure_model_file(original, folder, force=force)
    if settings.get("mode", "").startswith("distill") or "teacher" in settings:
        settings.setdefault("teacher", src)
    say(f"fine-tuning the original as a control ({settings.get('mode')}, {settings.get('epochs')} epochs)")
    result = run_finetune(src, settings, out, arch=arch, force=force)
    path = getattr(result, "out", None) or out
    lm = load_model(path, arch=arch)
    return BenchModel(f"{original.label}+finetune (control)", lm.model, dict(lm.meta), lm.operator, str(path), "control")


def settings_from_record(rec: Mapping[str, Any], data: Any) -> dict[str, Any]:
    """Fine-tune settings recorded by the fine-tune step, on the caller's copies of its data files.

    ``data``: files or folders given by the caller. The record's training and validation files
    are matched to them by sha256, so the control trains on exactly the same data.
    """
    from .data import list_data_files
    from .io import sha256_file

    cfg = dict(rec.get("config") or {}) if isinstance(rec.get("config"), Mapping) else {}
    if not cfg:
        cfg = {k: rec[k] for k in ("mode", "epochs", "lr", "batch_size", "seed", "loss") if k in rec}
    cfg.pop("device", None)
    recorded = rec.get("data") if isinstance(rec.get("data"), Mapping) else {}

    def files_of(part: str) -> dict[str, str]:
        table = recorded.get(part) if isinstance(recorded.get(part), Mapping) else {}
        files = table.get("files")
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, Mapping) else {}

    train, val = files_of("train"), files_of("val")
    if not train:
        raise MbdlError("the fine-tune record does not list its training files", "give the control's settings explicitly")
    given = {sha256_file(p): str(p) for p in list_data_files(data)}
    chosen: dict[str, list[str]] = {"train": [], "val": []}
    for part, files in (("train", train), ("val", val)):
        for name, digest in files.items():
            if digest not in given:
                raise DataError(f"--control-data lacks the {part} file {Path(name).name} (sha256 {digest[:12]}…) the model was fine-tuned on",
                                "pass --control-data with the same files given to finetune --data/--val-data")
            chosen[part].append(given[digest])
    out: dict[str, Any] = {**cfg, "data": sorted(chosen["train"])}
    split = isinstance(recorded.get("val_source"), str) and recorded["val_source"].startswith("split by file")
    if chosen["val"]:
        if split:
            out["data"] = sorted(chosen["train"] + chosen["val"])  # the same split by file is drawn again
        else:
            out["val_data"] = sorted(chosen["val"])
    return out
