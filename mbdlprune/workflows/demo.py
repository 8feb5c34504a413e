"""``mbdlprune demo``: prune -> fine-tune -> bench on the example models shipped with the package.

For each example model (``deq``, ``unrolled``): prune the prior at the example's ratio
(:data:`PRUNING`; DepGraph, group L1, uniform per layer), fine-tune the pruned model by
distillation from the unpruned original (plus a supervised term where it helps,
:data:`FINETUNE_WEIGHTS`) on the shipped fine-tuning slices (training-distribution slices with
ground truth, never the evaluation slices), then bench original vs pruned vs pruned +
fine-tuned on the held-out evaluation slices with the same measurements and identical DEQ
solver settings. Every file goes into one output folder.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import MbdlError

DEFAULT_OUT = "mbdlprune-demo"
MODEL_CHOICES = ("default", "deq", "unrolled", "varnet", "all")
#: what ``--model default`` runs: the two single-coil examples, about 3 minutes on 2 idle CPU cores;
#: the multi-coil varnet (raw k-space) adds about 2 more, so it runs when asked (``varnet``, ``all``)
DEFAULT_MODELS = ("deq", "unrolled")
ALL_MODELS = ("deq", "unrolled", "varnet")
#: Each example's pruning: its fastest point within 0.1 dB PSNR of the original after the demo's
#: fine-tuning, read off ``benchmarks/frontier.py --finetune`` (the table in docs/quickstart.md).
#: The 32-wide DEQ keeps 12 channels
#: (a multiple of 16 would allow only 16); the varnet's layers are 12-48 wide, so a multiple of 2
#: halves them exactly (16 would leave nothing to prune).
PRUNING: dict[str, dict[str, Any]] = {
    "deq": {"ratio": 0.625, "round_to": 4},
    "unrolled": {"ratio": 0.5},
    "varnet": {"ratio": 0.5, "round_to": 2},
}
#: Loss terms each example's fine-tuning adds to the distillation (the fine-tuning slices have
#: ground truth). Measured in one interleaved bench at the examples' ratios: the unrolled model
#: loses 0.08 dB with distillation alone and 0.00 dB with a supervised L1 term; the DEQ scores
#: the same either way (28.52 and 28.50 dB) but the supervised term costs it iterations (18.8
#: against 17.6), so it distils alone; the varnet gains 0.6 dB with the term.
FINETUNE_WEIGHTS: dict[str, dict[str, float]] = {
    "deq": {},
    "unrolled": {"supervised": 1.0},
    "varnet": {"supervised": 1.0},
}
LABELS = {"deq": "DEQ (deq-edsr)", "unrolled": "unrolled (5 x shared DnCNN)",
          "varnet": "E2E-VarNet (multi-coil raw k-space, fastMRI protocol)"}


@dataclass
class DemoSettings:
    """Budgets of one demo run (the defaults take about 3 minutes on 2 CPU cores, the DEQ's
    warm-start bench included)."""

    #: pruning ratio of every example (None: each example's own, :data:`PRUNING`)
    ratio: float | None = None
    mode: str = "distill"
    epochs: int = 20
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    loss: str = "l1"
    #: loss terms added to the mode's for every example (FinetuneConfig.weights); None: each
    #: example's own (:data:`FINETUNE_WEIGHTS`)
    weights: dict[str, float] | None = None
    batch_size: int = 1
    #: use only the first N fine-tuning slices (None: all of them)
    finetune_slices: int | None = None
    #: validate on the shipped fine-tuning validation slices and keep the best epoch
    validate: bool = True
    warmup: int = 3
    repeats: int = 10
    #: evaluation slices used by the bench (None: all of them)
    max_images: int | None = None
    #: DEQ examples: also bench warm starts across slices, reported apart from pruning, timed
    #: on this many slices of the evaluation volume
    warm_start: bool = True
    warm_batches: int = 4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: tiny budgets for smoke tests: seconds, not minutes; the numbers mean little
QUICK = DemoSettings(epochs=1, finetune_slices=2, validate=False, warmup=0, repeats=1, max_images=2)


@dataclass
class DemoModelResult:
    """What the demo did with one example model."""

    name: str
    original: Path
    pruned: Path
    finetuned: Path
    prune: dict[str, Any]
    finetune: dict[str, Any]
    report: Any  # mbdlprune.benchmark.BenchReport
    files: dict[str, Path]
    seconds: dict[str, float]

    def summary(self) -> dict[str, Any]:
        models = {m.label: m for m in self.report.models}
        orig, pruned, ft = (models[k] for k in ("original", "pruned", "pruned+finetuned"))

        def row(m):
            d = {"params": m.params, "median_ms": m.timing.median_ms, "speedup": m.speedup,
                 "prior_macs_reduction": m.prior_macs_reduction, "psnr": m.psnr_mean, "ssim": m.ssim_mean}
            if m.deq:
                d["deq_iterations_mean"] = m.deq.get("iterations_mean")
                d["deq_residual_max"] = m.deq.get("residual_max")
            if m.warm_start:
                w = m.warm_start
                d["warm_start"] = {k: w[k] for k in ("warm_ms", "warm_start_gain", "speedup_warm",
                                                     "speedup_vs_cold_original", "warm_iterations_mean", "psnr_mean")}
            return d

        return {"original": row(orig), "pruned": row(pruned), "pruned+finetuned": row(ft)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "original": str(self.original),
            "files": {k: str(v) for k, v in self.files.items()},
            "prune": self.prune,
            "finetune": self.finetune,
            "summary": self.summary(),
            "bench": self.report.to_dict(),
            "seconds": self.seconds,
        }


@dataclass
class DemoResult:
    """Every model's result, the output folder, and the wall time."""

    out: Path
    models: list[DemoModelResult]
    settings: DemoSettings
    wall_time_s: float
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "wall_time_s": self.wall_time_s,
            "settings": self.settings.to_dict(),
            "models": [m.to_dict() for m in self.models],
            "files": {k: str(v) for k, v in self.files.items()},
        }

    def summary_table(self):
        """A Rich table: one row per model version, speed and quality side by side."""
        from rich.table import Table

        t = Table(title="mbdlprune demo: original vs pruned vs pruned + fine-tuned (held-out slices)", title_justify="left")
        for col, just in (("model", "left"), ("version", "left"), ("params", "right"), ("ms / image", "right"),
                          ("speedup", "right"), ("PSNR dB", "right"), ("SSIM", "right"), ("DEQ iters", "right")):
            t.add_column(col, justify=just, no_wrap=True)
        for m in self.models:
            s = m.summary()
            for i, (version, r) in enumerate(s.items()):
                t.add_row(
                    LABELS.get(m.name, m.name) if i == 0 else "",
                    version,
                    f"{r['params'] / 1e3:.1f}k",
                    f"{r['median_ms']:.1f}",
                    f"{r['speedup']:.2f}x" if r.get("speedup") else "—",
                    f"{r['psnr']:.2f}",
                    f"{r['ssim']:.4f}",
                    f"{r['deq_iterations_mean']:.1f}" if r.get("deq_iterations_mean") is not None else "—",
                )
            if m is not self.models[-1]:
                t.add_section()
        return t

    def warm_start_lines(self) -> list[str]:
        """One line per DEQ example: what warm starts across slices add, apart from pruning."""
        lines = []
        for m in self.models:
            s = m.summary()
            w0, w = s["original"].get("warm_start"), s["pruned+finetuned"].get("warm_start")
            if not (w0 and w):
                continue
            lines.append(
                f"{LABELS.get(m.name, m.name)}, warm starts across slices (each solve from the previous slice's fixed "
                f"point, every model alike, timed on the same slices): the original {w0['warm_start_gain']:.2f}x faster "
                f"than cold ({w0['warm_iterations_mean']:.1f} iterations); pruned + fine-tuned "
                f"{w['speedup_warm']:.2f}x faster than the original with both warm, "
                f"{w['speedup_vs_cold_original']:.2f}x faster than the cold original, at {w['psnr_mean']:.2f} dB")
        return lines


# ----------------------------------------------------------------------------- folder
def prepare_out_dir(out: str | Path, force: bool) -> Path:
    """Create the output folder; refuse a non-empty one unless ``force``."""
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise MbdlError(f"{str(p)!r} exists and is not a folder", "choose another --out folder")
    if p.is_dir() and any(p.iterdir()) and not force:
        raise MbdlError(f"output folder {str(p)!r} is not empty", "pass --force to overwrite the demo's files in it, or choose another --out")
    p.mkdir(parents=True, exist_ok=True)
    return p


def _subset_slices(src: Path, n: int, dest: Path, force: bool = False) -> Path:
    """The first ``n`` slices of a shipped NIfTI file, written to ``dest`` (quick runs)."""
    import nibabel as nib
    import numpy as np

    import gzip

    from ..io import write_file

    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)[..., :n]
    blob = gzip.compress(nib.Nifti1Image(np.ascontiguousarray(data), img.affine).to_bytes())
    return write_file(dest, lambda tmp: Path(tmp).write_bytes(blob), force=force)


# ----------------------------------------------------------------------------- the run
def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    models: str | Sequence[str] = "default",
    force: bool = False,
    quick: bool = False,
    settings: DemoSettings | None = None,
    device: str = "cpu",
    say: Callable[[str], None] | None = None,
    progress: bool = False,
    status: Callable[[str], Any] | None = None,
) -> DemoResult:
    """Run the demo on the shipped examples and write everything into ``out``.

    ``models``: ``"default"`` (deq and unrolled), ``"deq"``, ``"unrolled"``, ``"varnet"`` (multi-coil
    raw k-space, the fastMRI protocol), ``"all"`` or a list of names. ``quick`` uses
    :data:`QUICK` budgets (a smoke test). ``say(msg)`` receives progress lines; ``progress``
    shows the fine-tuning progress bar; ``status(msg)`` may return a context manager that shows
    a spinner while a step runs (e.g. ``rich.console.Console.status``).
    """
    from ..examples import MODEL_EXAMPLES, RAW_MODEL_EXAMPLES, example_path

    t0 = time.perf_counter()
    names = _model_names(models)
    cfg = settings or (QUICK if quick else DemoSettings())
    say = say or (lambda msg: None)
    folder = prepare_out_dir(out, force)
    data = {
        "eval": example_path("eval"),
        "finetune": example_path("finetune"),
        "finetune-val": example_path("finetune-val"),
    }
    if cfg.finetune_slices is not None:
        sub = folder / "data"
        sub.mkdir(exist_ok=True)
        data["finetune"] = _subset_slices(data["finetune"], cfg.finetune_slices, sub / "finetune_subset.nii.gz", force)
    results = []
    for i, name in enumerate(names):
        if name not in (*MODEL_EXAMPLES, *RAW_MODEL_EXAMPLES):
            raise MbdlError(f"unknown demo model {name!r}", f"use --model {', '.join(MODEL_CHOICES)}")
        say(f"[{i + 1}/{len(names)}] {LABELS[name]}")
        model_data = _raw_data(folder, cfg, force, say) if name in RAW_MODEL_EXAMPLES else data
        results.append(_run_one(name, folder, model_data, cfg, device, say, progress, status, force))
    result = DemoResult(folder, results, cfg, time.perf_counter() - t0)
    summary = folder / "demo.json"
    from ..io import write_json

    result.files["summary"] = summary
    write_json(summary, result.to_dict(), force=force)
    return result


def _model_names(models: str | Sequence[str]) -> list[str]:
    if isinstance(models, str):
        if models not in MODEL_CHOICES:
            raise MbdlError(f"unknown demo model {models!r}", f"use --model {', '.join(MODEL_CHOICES)}")
        return list(ALL_MODELS) if models == "all" else list(DEFAULT_MODELS) if models == "default" else [models]
    return list(models)


def _val_change(fts: dict[str, Any]) -> str:
    if fts.get("val_metric") == "psnr":
        return f": validation PSNR {fts['before']:.2f} -> {fts['best']:.2f} dB (epoch {fts['best_epoch']})"
    return f": validation measurement consistency {fts['before']:.3g} -> {fts['best']:.3g} (epoch {fts['best_epoch']})"


def _raw_data(folder: Path, cfg: DemoSettings, force: bool, say) -> dict[str, Path]:
    """The raw multi-coil k-space of the shipped slices (fastMRI layout), written into the demo folder."""
    from ..examples import RAW_COILS, raw_example_data

    sub = folder / "data" / "raw"
    sub.mkdir(parents=True, exist_ok=True)
    say(f"  writing fastMRI-layout raw k-space ({RAW_COILS} coils, oversampled readout) from the shipped slices -> {sub}")
    return raw_example_data(sub, force=force)


def _spinner(status, msg: str):
    import contextlib

    return status(msg) if status is not None else contextlib.nullcontext()


def finetune_settings(cfg: DemoSettings, data: dict[str, Path], teacher: str | Path, device: str = "cpu",
                      progress: bool = False, name: str | None = None) -> dict[str, Any]:
    """The demo's fine-tuning of example ``name`` (FinetuneConfig fields plus ``data``, ``val_data``
    and ``teacher``), as :func:`.chain.prune_and_finetune` takes it; ``data`` maps ``finetune`` and
    ``finetune-val`` to files (benchmarks/frontier.py fine-tunes its points the same way)."""
    weights = cfg.weights if cfg.weights is not None else FINETUNE_WEIGHTS.get(name or "", {})
    return {
        "data": str(data["finetune"]), "teacher": str(teacher),
        "val_data": str(data["finetune-val"]) if cfg.validate else None, "progress": progress, "mode": cfg.mode,
        "epochs": cfg.epochs, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "loss": cfg.loss,
        "weights": dict(weights), "batch_size": cfg.batch_size, "seed": cfg.seed, "device": device,
        "val_fraction": 0.0,
    }


def _run_one(name: str, folder: Path, data: dict[str, Path], cfg: DemoSettings, device: str,
             say: Callable[[str], None], progress: bool, status, force: bool = False) -> DemoModelResult:
    from ..benchmark import BenchConfig, compare
    from ..examples import example_path
    from ..models.protocol import is_deq
    from .chain import load_original, prune_and_finetune

    original_path = example_path(name)
    sub = folder / name
    sub.mkdir(exist_ok=True)
    pruned_path, ft_path = sub / "pruned.safetensors", sub / "pruned_finetuned.safetensors"
    original = load_original(original_path)
    original.label = "original"

    prune = {**PRUNING.get(name, {"ratio": 0.5}), "seed": cfg.seed}
    if cfg.ratio is not None:
        prune["ratio"] = cfg.ratio

    def pruned(res) -> None:
        rep = res.report
        say(f"  pruned at {prune['ratio']}: {rep['params_before']:,} -> {rep['params_after']:,} parameters "
            f"({time.perf_counter() - t:.1f} s) -> {pruned_path}")
        terms = "".join(f" + {k}" + (f" x{w:g}" if w != 1 else "") for k, w in finetune["weights"].items() if w)
        say(f"  fine-tuning ({cfg.mode} from the original{terms}, {cfg.loss} loss, {cfg.epochs} epoch(s), lr {cfg.lr:g}) on "
            f"{data['finetune'].name}" + (f", validating on {data['finetune-val'].name}" if cfg.validate else ""))

    finetune = finetune_settings(cfg, data, original_path, device, progress, name=name)
    t = time.perf_counter()
    say(f"  pruning the prior at ratio {prune['ratio']}"  # no spinner: the fine-tuning bar follows in the same call
        + (f", widths multiples of {prune['round_to']}" if "round_to" in prune else ""))
    step = prune_and_finetune(original, prune, label="pruned",
                              finetuned_label="pruned+finetuned", pruned_out=pruned_path, finetune=finetune,
                              finetuned_out=ft_path, eval_data=str(data["eval"]), force=force, on_pruned=pruned)
    seconds = dict(step.seconds)
    rep, ft = step.pruned.report, step.finetuned
    fts = ft.summary()
    best = fts.get("best")
    say(f"  fine-tuned in {seconds['finetune']:.1f} s" +
        (_val_change(fts) if best is not None and fts.get("before") is not None else "") + f" -> {ft_path}")
    for w in ft.warnings:
        say(f"  warning: {w}")

    t = time.perf_counter()
    say(f"  benchmarking on {data['eval'].name} ({cfg.warmup} warm-up + {cfg.repeats} timed runs per model)")
    with _spinner(status, f"{name}: benchmarking original vs pruned vs pruned+finetuned"):
        report = compare([original, step.pruned_model, step.model], str(data["eval"]),
                         BenchConfig(device=device, warmup=cfg.warmup, repeats=cfg.repeats, max_images=cfg.max_images,
                                     seed=cfg.seed, warm_start=cfg.warm_start and is_deq(original.model),
                                     warm_batches=cfg.warm_batches))
    seconds["bench"] = time.perf_counter() - t
    files = {"pruned": pruned_path, "pruned_finetuned": ft_path}
    files["bench_json"] = report.write_json(sub / "bench.json", force=force)
    files["bench_md"] = report.write_markdown(sub / "bench.md", force=force)
    try:
        files["figure"] = report.figure(sub / "bench.png", force=force)
    except MbdlError:  # matplotlib is optional
        pass
    say(f"  benchmarked in {seconds['bench']:.1f} s -> {sub / 'bench.json'}")
    return DemoModelResult(name, original_path, pruned_path, ft_path, rep, fts, report, files, seconds)
