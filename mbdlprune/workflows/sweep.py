"""Prune one checkpoint at several ratios and benchmark all of them side by side in one run.

The sweep answers "how much can I prune?": for each ratio it reports the realised speedup,
the prior-MACs reduction, their quotient (how much of the MACs saving turns into time), the
PSNR drop, and whether the model is on the speed/PSNR (Pareto) front. With
``max_psnr_drop`` it writes the fastest model within that budget; with ``figure`` it draws the
speed-vs-PSNR frontier (:mod:`.sweep_figure`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..benchmark import BenchReport
from ..render import fmt, si
from .chain import checkpoint_stem, load_original, prune_and_finetune  # noqa: F401  (checkpoint_stem: re-exported)
from .parallel import resolve_finetune_devices
from ..errors import MbdlError


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.2"`` or a list -> sorted unique ratios in (0, 1)."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise MbdlError(f"--ratios {text!r} is not a comma-separated list of numbers", "write e.g. --ratios 0.1,0.3,0.5") from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise MbdlError("no pruning ratios given", "write e.g. --ratios 0.1,0.3,0.5")
    for v in values:
        if not 0.0 < v < 1.0:
            raise MbdlError(f"pruning ratio {v} is outside (0, 1)", "give fractions of channels to remove, e.g. 0.3")
    return sorted(set(values))


def sweep_output_names(stem: str, ratios: Sequence[float], finetune: bool, best: bool) -> list[str]:
    """Every file a sweep writes into its output folder."""
    names = ["sweep.json", "sweep.md"] + [f"{stem}-r{r:g}.safetensors" for r in ratios]
    if finetune:
        names += [f"{stem}-r{r:g}-ft.safetensors" for r in ratios]
        from ..finetuning.state import state_path

        names += [state_path(f"{stem}-r{r:g}-ft.safetensors").name for r in ratios]
    if best:
        names.append("best.safetensors")
    return names


@dataclass
class SweepPoint:
    """One ratio of the sweep (the original has ratio 0)."""

    ratio: float
    label: str
    path: str | None
    achieved_channel_ratio: float | None
    params: int
    speedup: float | None
    prior_macs_reduction: float | None
    speedup_per_macs_reduction: float | None
    psnr_mean: float
    psnr_drop: float | None
    ssim_mean: float
    median_ms: float
    prior_calls: float | None = None
    per_call_speedup_per_macs_reduction: float | None = None
    on_front: bool = False
    within_budget: bool | None = None
    speedup_low: float | None = None  # original's p10 / this model's p90 (see speedup_interval)
    speedup_high: float | None = None  # original's p90 / this model's p10
    psnr_drop_paired_std: float | None = None
    #: with ``warm_start``: the bench's warm-start figures for this model (:mod:`mbdlprune.benchmark.warmstart`)
    warm_start: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SweepReport:
    """Points per ratio, the Pareto front, the chosen model and the full bench report."""

    points: list[SweepPoint]
    bench: BenchReport
    max_psnr_drop: float | None = None
    best: SweepPoint | None = None
    best_path: str | None = None
    out_dir: str | None = None
    finetune: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # what the sweep wrote: "sweep_json", "best", "figure", ...

    def to_dict(self) -> dict[str, Any]:
        from ..benchmark import SCHEMA_VERSION
        from ..config import json_safe

        return json_safe({
            "schema_version": SCHEMA_VERSION,
            "kind": "sweep",
            "points": [p.to_dict() for p in self.points],
            "front": [p.label for p in self.points if p.on_front],
            "max_psnr_drop": self.max_psnr_drop,
            "best": self.best.to_dict() if self.best else None,
            "best_path": self.best_path,
            "out_dir": self.out_dir,
            "finetune": {k: v for k, v in (self.finetune or {}).items() if k != "data"} or None,
            "notes": self.notes,
            "files": dict(self.files),
            "bench": self.bench.to_dict(),
        })

    def exit_code(self) -> int:
        """1 when a PSNR budget was set and no pruned model meets it."""
        return 1 if self.max_psnr_drop is not None and self.best is None else 0

    def summary_line(self) -> str:
        if self.max_psnr_drop is None:
            return f"{len(self.points) - 1} ratios benchmarked; front: {', '.join(p.label for p in self.points if p.on_front)}"
        if self.best is None:
            return f"no pruned model stays within a PSNR drop of {self.max_psnr_drop:g} dB"
        where = f" -> {self.best_path}" if self.best_path else ""
        return (f"fastest within {self.max_psnr_drop:g} dB: ratio {self.best.ratio:g} ({self.best.label}), "
                f"speedup {self.best.speedup:.2f}x, PSNR drop {self.best.psnr_drop:.2f} dB{where}")

    HEADERS = ["ratio", "model", "ch. removed", "params", "prior MACs ↓", "calls/recon", "speedup", "speedup/MACs↓",
               "per-call/MACs↓", "median ms", "PSNR dB", "PSNR drop", "SSIM", "front", "budget"]

    def _rows(self) -> list[list[str]]:
        rows = []
        for p in self.points:
            rows.append([
                f"{p.ratio:g}", p.label, fmt(p.achieved_channel_ratio, ".3f"), si(p.params),
                fmt(p.prior_macs_reduction, ".2f") + "x", fmt(p.prior_calls, ".1f"), fmt(p.speedup, ".2f") + "x",
                fmt(p.speedup_per_macs_reduction, ".2f"), fmt(p.per_call_speedup_per_macs_reduction, ".2f"),
                fmt(p.median_ms, ".2f"), fmt(p.psnr_mean),
                "—" if p.ratio == 0 else fmt(p.psnr_drop, "+.2f"), fmt(p.ssim_mean, ".4f"),
                "●" if p.on_front else "", {None: "", True: "yes", False: "no"}[p.within_budget],
            ])
        return rows

    def table(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(title="pruning sweep (one run, identical solver settings)", title_justify="left")
        for h in self.HEADERS:
            t.add_column(h, justify="left" if h == "model" else "right", no_wrap=True)
        for row in self._rows():
            t.add_row(*row)
        lines = [Text(self.bench.context_line())]
        if self.bench.solver_line():
            lines.append(Text(self.bench.solver_line()))
        for n in self.bench.notes + self.notes:
            lines.append(Text("note: " + n, style="yellow"))
        lines.append(Text(self.summary_line(), style="bold"))
        from ..benchmark.warmstart import warm_table

        warm = warm_table(self.bench.models)
        return Group(t, *([warm] if warm is not None else []), *lines)

    def print(self, console=None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())

    def markdown(self) -> str:
        out = ["## mbdlprune sweep", "", f"**{self.summary_line()}**", ""]
        out.append("| " + " | ".join(self.HEADERS) + " |")
        out.append("|" + "|".join("---" if h == "model" else "---:" for h in self.HEADERS) + "|")
        for row in self._rows():
            out.append("| " + " | ".join(row) + " |")
        from ..benchmark.warmstart import warm_markdown

        for title, headers, rows in warm_markdown(self.bench.models):
            out += ["", f"**{title}**", "", "| " + " | ".join(headers) + " |",
                    "|" + "|".join("---" if h == "model" else "---:" for h in headers) + "|"]
            out += ["| " + " | ".join(row) + " |" for row in rows]
        out += ["", f"- **Device:** {self.bench.context_line()}"]
        if self.bench.solver_line():
            out.append(f"- **Solver:** {self.bench.solver_line()}")
        out.append(f"- **Metric:** {self.bench.metric['description']}")
        for n in self.bench.notes + self.notes:
            out.append(f"- **Note:** {n}")
        return "\n".join(out) + "\n"


def pareto_front(points: Sequence[SweepPoint]) -> None:
    """Mark points no other point beats on both speed (higher) and PSNR (higher)."""
    for p in points:
        p.on_front = not any(
            (q.speedup or 0) >= (p.speedup or 0) and q.psnr_mean >= p.psnr_mean
            and ((q.speedup or 0) > (p.speedup or 0) or q.psnr_mean > p.psnr_mean)
            for q in points if q is not p
        )


def speedup_interval(ref, timing) -> tuple[float | None, float | None]:
    """The speedup's spread from two :class:`~mbdlprune.benchmark.timing.TimingResult`: the
    original's p10 over this model's p90 to the original's p90 over this model's p10 (the
    extremes of the two 10-90 % latency ranges; it always contains the median speedup)."""
    try:
        lo = ref.p10_ms / timing.p90_ms
        hi = ref.p90_ms / timing.p10_ms
    except (AttributeError, TypeError, ZeroDivisionError):
        return None, None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None, None
    return lo, hi


def _flat_paths(*values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, (list, tuple)) else [v])
    return out


def _achieved(meta: Mapping[str, Any] | None) -> float | None:
    from ..pruning import removed_fraction

    rec = (meta or {}).get("pruning")
    if not rec:
        return None
    return removed_fraction(pair for prior in (rec.get("priors") or {}).values() for pair in (prior.get("widths") or {}).values())


def sweep(
    checkpoint: str | Path,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    operator: Any = None,
    ratios: str | Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    finetune: Mapping[str, Any] | None = None,
    data: Any = None,
    eval_data: Any = None,
    max_psnr_drop: float | None = None,
    out_dir: str | Path | None = None,
    importance: str = "l1",
    round_to: int | str | None = None,
    prune_options: Mapping[str, Any] | None = None,
    device: str = "auto",
    solver: str | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    warmup: int = 10,
    repeats: int = 30,
    batch_size: int = 1,
    metric: str = "auto",
    seed: int = 0,
    max_images: int | None = None,
    fit: str = "error",
    threads: int | None = None,
    force: bool = False,
    unsafe_pickle: bool = False,
    progress=None,
    key_map: Any = None,
    kspace_scale: str = "auto",
    coil_maps: str = "acs",
    figure: str | Path | None = None,
    compile: bool = False,
    channels_last: bool = False,
    bf16: bool = False,
    finetune_devices: str | Sequence[str] | None = "auto",
    check_every: int | None = None,
    warm_start: bool = False,
    warm_batches: int = 8,
) -> SweepReport:
    """Prune ``checkpoint`` at each ratio, optionally fine-tune each, and bench them all at once.

    ``finetune``: settings for :func:`mbdlprune.finetuning.finetune` (``mode``, ``epochs``, ...;
    training files under ``data`` or the ``data`` argument); fine-tuning works on files, so it
    needs ``out_dir``. ``eval_data`` (required): evaluation images, never used for training.
    ``max_psnr_drop``: copy the fastest model within that PSNR drop to ``out_dir/best.safetensors``.
    ``figure``: write the speed-vs-PSNR frontier there as a PNG (needs matplotlib; refused before
    any work if it exists, unless ``force``); the report's ``files`` names everything written.
    ``finetune_devices``: fine-tune the points in parallel, one worker process per device
    (:mod:`.parallel`; ``auto``: every CUDA device when two or more are visible, ``none``: one
    after another); the bench then runs all models side by side on ``device`` as always.
    ``check_every``, ``warm_start``, ``warm_batches``: as in :class:`~mbdlprune.benchmark.BenchConfig`
    (with ``warm_start`` each point also carries its warm-start figures, and a table shows them).
    """
    from ..benchmark import BenchConfig, compare
    from ..io import prepare_output_dir, rollback_on_error, write_file, write_json, write_text

    say = progress or (lambda msg: None)
    ratio_list = parse_ratios(ratios)
    bcfg = BenchConfig(device=device, solver=solver, tol=tol, max_iter=max_iter, warmup=warmup, repeats=repeats,
                       batch_size=batch_size, metric=metric, seed=seed, max_images=max_images, fit=fit, threads=threads,
                       kspace_scale=kspace_scale, coil_maps=coil_maps, compile=compile, channels_last=channels_last, bf16=bf16,
                       check_every=check_every, warm_start=warm_start, warm_batches=warm_batches)
    bcfg.validate()
    if eval_data is None:
        raise MbdlError("a sweep needs evaluation data", "pass --eval-data PATH (images the models never trained on)")
    ft = dict(finetune or {})
    if ft:
        ft.setdefault("data", data)
        if ft.get("data") is None:
            raise MbdlError("fine-tuning in a sweep needs training data", "pass --data PATH (separate from --eval-data)")
        if out_dir is None:
            raise MbdlError("fine-tuning in a sweep writes models", "pass --out-dir FOLDER")
    workers = resolve_finetune_devices(finetune_devices) if ft and len(ratio_list) > 1 else []  # checked before any work
    out = Path(out_dir) if out_dir is not None else None
    names = sweep_output_names(checkpoint_stem(checkpoint), ratio_list, bool(ft), max_psnr_drop is not None)
    if out is not None:  # every name the sweep will write, refused before any work unless --force
        prepare_output_dir(out, names, force, create=False)
    rollback = list(names)
    if figure is not None:
        from ..io import check_output_path

        from ..render import require_matplotlib

        require_matplotlib()
        fig_path = Path(figure)
        in_out = out is not None and fig_path.parent.resolve() == out.resolve()
        if in_out:  # inside the output folder: removed again if the sweep fails
            if fig_path.name in names:
                raise MbdlError(f"--figure {str(fig_path)!r} is a file the sweep writes itself", "name the figure e.g. OUT_DIR/sweep.png")
            rollback.append(fig_path.name)
        if not in_out or out.is_dir():  # a folder the sweep creates was checked by prepare_output_dir
            check_output_path(fig_path, force, suffix=None, inputs=_flat_paths(checkpoint, operator, eval_data, data))

    with (rollback_on_error(out, rollback) if out is not None else contextlib.nullcontext()):  # a failed sweep leaves nothing
        original = load_original(checkpoint, arch, arch_args, operator, unsafe_pickle, key_map)
        op = original.operator
        if out is not None:
            from ..io import make_output_dir

            make_output_dir(out)
        entries = [original]
        stem = original.label
        opts = dict(prune_options or {})
        user_arch = arch if arch and ":" in arch else None

        def point(r: float) -> dict[str, Any]:
            """One ratio's label, pruning settings and files: the same in this process and in a worker."""
            label = f"{stem}-r{r:g}"
            return {"label": label, "prune": {"ratio": r, "importance": importance, "round_to": round_to, **opts},
                    "pruned_out": out / f"{label}.safetensors" if out is not None else None,
                    "finetuned_out": out / f"{label}-ft.safetensors" if ft else None,
                    "arch": user_arch, "eval_data": eval_data, "force": force}

        if workers:
            from .parallel import run_points

            say(f"fine-tuning {len(ratio_list)} points in parallel on {', '.join(workers)}")
            load = {"checkpoint": checkpoint, "arch": arch, "arch_args": arch_args, "operator": operator,
                    "unsafe_pickle": unsafe_pickle, "key_map": key_map}
            for res in run_points([{**point(r), "original": load, "finetune": ft} for r in ratio_list], workers, say):
                entries.append(_loaded(res["finetuned"], f"{res['label']}-ft", user_arch, op))
        else:
            for r in ratio_list:
                say(f"pruning at ratio {r:g}")
                pt = point(r)
                step = prune_and_finetune(original, pt.pop("prune"), finetune=ft or None, say=say, **pt)
                entries.append(step.model)
        report = compare(entries, eval_data, bcfg, operator=op, progress=progress)

        points = []
        ref_timing = report.models[0].timing
        for r, (e, m) in zip([0.0] + ratio_list, zip(entries, report.models)):
            lo, hi = speedup_interval(ref_timing, m.timing)
            points.append(SweepPoint(
                ratio=r, label=m.label, path=e.path, achieved_channel_ratio=_achieved(e.meta) if r else 0.0, params=m.params,
                speedup=m.speedup, prior_macs_reduction=m.prior_macs_reduction,
                speedup_per_macs_reduction=m.speedup_per_macs_reduction, psnr_mean=m.psnr_mean,
                psnr_drop=m.psnr_drop, ssim_mean=m.ssim_mean, median_ms=m.timing.median_ms,
                prior_calls=m.prior_calls_per_reconstruction,
                per_call_speedup_per_macs_reduction=m.per_call_speedup_per_macs_reduction,
                speedup_low=lo, speedup_high=hi, psnr_drop_paired_std=m.psnr_drop_paired_std,
                warm_start=m.warm_start,
            ))
        pareto_front(points)
        best = None
        if max_psnr_drop is not None:
            for p in points[1:]:
                p.within_budget = p.psnr_drop is not None and p.psnr_drop <= max_psnr_drop
            ok = [p for p in points[1:] if p.within_budget and p.speedup is not None]
            best = max(ok, key=lambda p: p.speedup) if ok else None
        sr = SweepReport(points, report, max_psnr_drop, best, None, str(out) if out else None, ft or None)
        slow = [p for p in points[1:] if p.per_call_speedup_per_macs_reduction is not None and p.per_call_speedup_per_macs_reduction < 0.8]
        if slow:
            sr.notes.append("time per prior call fell by less than 0.8x the prior-MACs reduction at ratio(s) "
                            + ", ".join(f"{p.ratio:g} ({p.per_call_speedup_per_macs_reduction:.2f})" for p in slow)
                            + ": operator cost, small images, a busy machine or channel widths the kernels run poorly (see round_to)")
        moved = [p for p in points[1:] if p.prior_calls and points[0].prior_calls and abs(p.prior_calls / points[0].prior_calls - 1) > 0.1]
        if moved:
            sr.notes.append("DEQ iterations changed with pruning ("
                            + ", ".join(f"ratio {p.ratio:g}: {p.prior_calls:.1f}" for p in moved)
                            + f" vs {points[0].prior_calls:.1f}): the whole-reconstruction speedup includes that change; "
                            "per-call/MACs↓ compares the time per iteration")
        if best is not None and out is not None:
            target = out / "best.safetensors"
            if best.path:
                write_file(target, lambda tmp: shutil.copyfile(best.path, tmp), force=force)
            else:
                _save(target, entries[points.index(best)], force)
            sr.best_path = str(target)
            sr.files["best"] = str(target)
        for p in points[1:]:
            if p.path:
                sr.files[p.label] = str(p.path)
        if figure is not None:
            from .sweep_figure import write_frontier_figure

            sr.files["figure"] = str(write_frontier_figure(sr, figure, force=force))
        if out is not None:
            sr.files["sweep_json"] = str(out / "sweep.json")
            sr.files["sweep_md"] = str(out / "sweep.md")
            write_json(out / "sweep.json", sr.to_dict(), force=force)
            write_text(out / "sweep.md", sr.markdown(), force=force)
        return sr


def _loaded(path: str, label: str, arch: str | None, operator: Any):
    """A point fine-tuned by a worker, as the chain would have returned it: the written file,
    rebuilt, with the original's operator, role "pruned"."""
    from ..io import LoadedModel, load_model

    lm = load_model(path, arch=arch)
    return LoadedModel(lm.model, dict(lm.meta), operator, path, arch=lm.arch, file_meta=lm.file_meta, label=label, role="pruned")


def _save(path: Path, bm, force: bool) -> str:
    from ..io import save_model

    meta = {k: v for k, v in (bm.meta or {}).items() if k != "format_version"}
    return str(save_model(path, bm.model, meta, force=force, operator=bm.operator))

