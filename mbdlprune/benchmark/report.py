"""Bench results and the report: per-model figures, gates, Rich table, JSON, Markdown, figure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import json_safe
from ..render import fmt, si
from ..models.protocol import SOLVER_KEYS
from .timing import TimingResult

SCHEMA_VERSION = 1


@dataclass
class ModelResult:
    """Everything measured about one model."""

    label: str
    role: str
    path: str | None
    arch: str | None
    pruning: dict[str, Any] | None
    finetune: dict[str, Any] | None
    params: int
    prior_params: int
    prior_macs: float  # one evaluation of each prior, per image
    prior_calls_per_reconstruction: float
    macs_per_reconstruction: float
    priors: dict[str, dict[str, Any]]
    timing: TimingResult
    psnr: list[float]
    ssim: list[float]
    psnr_mean: float
    psnr_std: float
    ssim_mean: float
    ssim_std: float
    deq: dict[str, Any] | None = None
    speedup: float | None = None
    prior_macs_reduction: float | None = None
    reconstruction_macs_reduction: float | None = None
    speedup_per_macs_reduction: float | None = None
    timed_calls: float | None = None  # prior calls per reconstruction in the timed runs
    per_call_speedup: float | None = None  # speedup of the time per prior call (per DEQ iteration)
    per_call_speedup_per_macs_reduction: float | None = None
    psnr_drop: float | None = None
    psnr_drop_paired_std: float | None = None
    ssim_drop: float | None = None
    psnr_drop_vs_control: float | None = None
    volumes: list[dict[str, Any]] | None = None  # raw k-space: per-volume scores (fastMRI's)
    #: the fast inference path (compiled / channels-last priors), timed in the same run
    fast_timing: TimingResult | None = None
    fast_speedup: float | None = None  # fast vs the original on the fast path: the fair comparison
    fast_speedup_vs_eager_original: float | None = None  # what a user adopting both gets
    fast_path: dict[str, Any] | None = None  # what was applied, and compile_s
    #: quality on the fast path, scored when its outputs differ from the eager ones (bf16)
    fast_psnr_mean: float | None = None
    fast_ssim_mean: float | None = None
    #: warm starts across slices (``--warm-start``): cold and warm passes, gains kept apart
    warm_start: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("timing", "fast_timing")}
        d["timing"] = self.timing.to_dict()
        d["fast_timing"] = self.fast_timing.to_dict() if self.fast_timing is not None else None
        return d


def _timed_calls(r: "ModelResult") -> float | None:
    """Prior calls per reconstruction during the timed runs (DEQ: the timed iterations)."""
    calls = r.prior_calls_per_reconstruction or None
    if r.timing.iterations_mean is not None and r.deq and r.deq.get("iterations_mean"):
        per_iter = (calls or r.deq["iterations_mean"]) / r.deq["iterations_mean"]
        return r.timing.iterations_mean * per_iter
    return calls


def _stats(values: list[float]) -> tuple[float, float]:
    from ..metrics import finite_mean_std

    return finite_mean_std(values)


# ------------------------------------------------------------------------------ gates
@dataclass
class GateResult:
    name: str
    model: str
    threshold: float
    value: float
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_gates(results: Sequence[ModelResult], min_speedup: float | None = None,
                   max_psnr_drop: float | None = None) -> list[GateResult]:
    """Gates apply to every pruned model (not the original, not a control)."""
    gates: list[GateResult] = []
    pruned = [r for r in results if r.role == "pruned"]
    for r in pruned:
        if min_speedup is not None:
            v = r.speedup if r.speedup is not None else math.nan
            ok = v >= min_speedup
            msg = (f"min-speedup gate {'passed' if ok else 'failed'}: {r.label} has a speedup of {v:.3f}x over the original, "
                   f"needs >= {min_speedup:.3f}x" + ("" if ok else f" ({min_speedup - v:.3f}x short)"))
            gates.append(GateResult("min_speedup", r.label, float(min_speedup), float(v), bool(ok), msg))
        if max_psnr_drop is not None:
            v = r.psnr_drop if r.psnr_drop is not None else math.nan
            ok = v <= max_psnr_drop
            msg = (f"max-psnr-drop gate {'passed' if ok else 'failed'}: {r.label} loses {v:.3f} dB PSNR, "
                   f"allowed <= {max_psnr_drop:.3f} dB" + ("" if ok else f" ({v - max_psnr_drop:.3f} dB over)"))
            gates.append(GateResult("max_psnr_drop", r.label, float(max_psnr_drop), float(v), bool(ok), msg))
    return gates


# ------------------------------------------------------------------------------ report
#: the report's JSON-safe copy is the project's one helper


@dataclass
class BenchReport:
    """The result of :func:`bench`: render with :meth:`table`, :meth:`to_dict`, :meth:`markdown`, :meth:`figure`."""

    models: list[ModelResult]
    environment: dict[str, Any]
    settings: dict[str, Any]
    solver: dict[str, Any] | None
    operator: dict[str, Any]
    data: dict[str, Any]
    metric: dict[str, Any]
    gates: list[GateResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    examples: dict[str, Any] = field(default_factory=dict, repr=False)  # label -> (1,C,H,W) recon; "__truth__"

    # -- gates
    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def gate_line(self) -> str:
        """One line: the first failed gate and by how much, or that all passed."""
        failed = self.failed_gates
        if failed:
            more = f" (+{len(failed) - 1} more failed)" if len(failed) > 1 else ""
            return failed[0].message + more
        if self.gates:
            return f"all {len(self.gates)} gates passed"
        return "no gates set"

    def exit_code(self) -> int:
        return 0 if self.passed else 1

    # -- JSON
    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "environment": self.environment,
            "settings": self.settings,
            "solver": self.solver,
            "operator": self.operator,
            "data": self.data,
            "metric": self.metric,
            "models": [m.to_dict() for m in self.models],
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
            "notes": self.notes,
        })

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def write_json(self, path: str | Path, force: bool = False) -> Path:
        from ..io import write_text

        return write_text(path, self.to_json() + "\n", force=force)

    # -- text
    def data_line(self) -> str:
        """Where the evaluation data came from and how the measurements were made."""
        d = self.data
        if d.get("kind") == "raw k-space":
            p = d.get("protocol") or {}
            mask = p.get("mask")
            how = (f"{mask} mask at R = {p.get('acceleration'):g}" if isinstance(p.get("acceleration"), (int, float))
                   else f"{mask} mask")
            return (f"{d['source']} — raw k-space, {d['n_images']} slices of {d.get('volumes')} volume(s); {how}, "
                    f"{'seeded per file as fastMRI' if p.get('mask_seed') else 'the same for every file'}, no noise; "
                    f"k-space scale {p.get('kspace_scale')}; coil maps: {p.get('coil_maps')}; outputs cropped to the target")
        return f"{d['source']} — {d['n_images']} images, measurement seed {d['seed']}"

    def context_line(self) -> str:
        e, s = self.environment, self.settings
        return (f"{e['device']} ({e['name']}), torch {e['torch']}, {e['torch_threads']} threads, {s['dtype']}, "
                f"batch {s['batch_size']}, {s['warmup']} warm-up + {s['repeats']} timed runs")

    def solver_line(self) -> str | None:
        if not self.solver:
            return None
        s = self.solver
        every = f", residual read every {s['check_every']} iterations" if s.get("check_every") else ""
        return (f"DEQ solver for every model: {s['solver']}, tol {s['tol']:g}, max_iter {s['max_iter']}{every} "
                f"(from {s['source']})")

    SPEED_HEADERS = ["model", "role", "params", "prior MACs", "prior calls/recon", "MACs/recon",
                     "median ms [p10–p90]", "img/s", "work mem MB", "speedup", "prior MACs ↓", "speedup / MACs ↓",
                     "per-call speedup", "per-call speedup / MACs ↓"]
    QUALITY_HEADERS = ["model", "PSNR dB", "PSNR drop", "SSIM", "SSIM drop", "DEQ iters", "DEQ resid."]

    def _speed_rows(self) -> list[list[str]]:
        rows = []
        for m in self.models:
            t = m.timing
            ft = m.finetune
            rows.append([
                m.label,
                m.role + (f" ({ft.get('mode')}, {ft.get('epochs')} ep)" if ft else ""),
                si(m.params),
                si(m.prior_macs),
                fmt(m.prior_calls_per_reconstruction, ".1f"),
                si(m.macs_per_reconstruction),
                f"{fmt(t.median_ms, '.2f')} [{fmt(t.p10_ms, '.2f')}–{fmt(t.p90_ms, '.2f')}]",
                fmt(t.throughput, ".1f"),
                fmt(t.peak_extra_memory_mb, ".1f"),
                fmt(m.speedup, ".2f") + ("x" if m.speedup is not None else ""),
                fmt(m.prior_macs_reduction, ".2f") + ("x" if m.prior_macs_reduction is not None else ""),
                fmt(m.speedup_per_macs_reduction, ".2f"),
                fmt(m.per_call_speedup, ".2f") + ("x" if m.per_call_speedup is not None else ""),
                fmt(m.per_call_speedup_per_macs_reduction, ".2f"),
            ])
        return rows

    def _quality_rows(self) -> list[list[str]]:
        rows = []
        for m in self.models:
            first = m.role == "original"
            rows.append([
                m.label,
                f"{fmt(m.psnr_mean)} ± {fmt(m.psnr_std)}",
                "—" if first else fmt(m.psnr_drop, "+.2f"),
                f"{fmt(m.ssim_mean, '.4f')} ± {fmt(m.ssim_std, '.4f')}",
                "—" if first else fmt(m.ssim_drop, "+.4f"),
                fmt(m.deq.get("iterations_mean"), ".1f") if m.deq else "—",
                fmt(m.deq.get("residual_max"), ".1e") if m.deq else "—",
            ])
        return rows

    def table(self):
        """A Rich renderable: a speed/cost table, a quality table and the context lines."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        keep = [0, 1, 2, 3, 4, 6, 9, 10, 11, 13]  # the full set goes to Markdown and JSON
        short = {"prior calls/recon": "calls", "median ms [p10–p90]": "ms median [p10–p90]", "speedup / MACs ↓": "speedup/MACs↓",
                 "per-call speedup / MACs ↓": "per-call/MACs↓"}
        speed = Table(title="speed and cost", title_justify="left")
        for i in keep:
            h = self.SPEED_HEADERS[i]
            speed.add_column(short.get(h, h), justify="left" if h in ("model", "role") else "right", no_wrap=True)
        for row in self._speed_rows():
            speed.add_row(*[row[i] for i in keep])
        quality = Table(title="quality", title_justify="left")
        for h in self.QUALITY_HEADERS:
            quality.add_column(h, justify="left" if h == "model" else "right", no_wrap=True)
        for row in self._quality_rows():
            quality.add_row(*row)
        lines = [Text(self.context_line())]
        if self.solver_line():
            lines.append(Text(self.solver_line()))
        lines.append(Text(f"metric: {self.metric['description']}"))
        lines.append(Text(f"data: {self.data_line()}"))
        for n in self.notes:
            lines.append(Text("note: " + n, style="yellow"))
        for g in self.gates:
            lines.append(Text(g.message, style="green" if g.passed else "bold red"))
        parts = [speed, quality]
        if self._fast_rows():
            fast = Table(title=f"fast inference path ({self.fast_path_name()})", title_justify="left")
            for h in self.fast_headers():
                fast.add_column(h, justify="left" if h == "model" else "right", no_wrap=True)
            for row in self._fast_rows():
                fast.add_row(*row)
            parts.append(fast)
        from .warmstart import warm_table

        warm = warm_table(self.models)
        if warm is not None:
            parts.append(warm)
        return Group(*parts, *lines)

    FAST_HEADERS = ("model", "eager ms", "fast ms [p10–p90]", "fast/eager", "speedup (both fast)",
                    "vs eager original", "compile s")

    def fast_path_name(self) -> str:
        fp = (self.settings or {}).get("fast_path") or {}
        return " + ".join(k.replace("_", "-") for k in ("compile", "channels_last", "bf16") if fp.get(k)) or "none"

    def _fast_scored(self) -> bool:
        return any(m.fast_psnr_mean is not None for m in self.models)

    def fast_headers(self) -> tuple[str, ...]:
        """The fast table's columns: with a scored fast path (bf16), its PSNR and DEQ iterations too."""
        return self.FAST_HEADERS + (("fast PSNR dB", "fast iters") if self._fast_scored() else ())

    def _fast_rows(self) -> list[list[str]]:
        rows = []
        scored = self._fast_scored()
        for m in self.models:
            t = m.fast_timing
            if t is None:
                continue
            row = [m.label, fmt(m.timing.median_ms, ".2f"), f"{fmt(t.median_ms, '.2f')} [{fmt(t.p10_ms, '.2f')}–{fmt(t.p90_ms, '.2f')}]",
                   fmt(m.timing.median_ms / t.median_ms if t.median_ms else None, ".2f") + "x",
                   fmt(m.fast_speedup, ".2f") + "x", fmt(m.fast_speedup_vs_eager_original, ".2f") + "x",
                   fmt((m.fast_path or {}).get("compile_s"), ".1f")]
            if scored:
                row += [fmt(m.fast_psnr_mean, ".2f"), fmt(t.iterations_mean, ".1f") if t.iterations_mean is not None else "—"]
            rows.append(row)
        return rows

    def print(self, console=None) -> None:
        from rich.console import Console

        (console or Console()).print(self.table())


    def render(self, console=None) -> None:
        """The report's tables and notes, for people (the same as :meth:`print`)."""
        self.print(console)
    def markdown(self) -> str:
        """A Markdown summary (e.g. for a CI pull-request comment)."""
        out = ["## mbdlprune bench", ""]
        if self.gates:
            status = "✅ all gates passed" if self.passed else "❌ " + self.gate_line()
            out += [f"**{status}**", ""]
        tables = [(None, self.SPEED_HEADERS, self._speed_rows()), (None, self.QUALITY_HEADERS, self._quality_rows())]
        if self._fast_rows():
            tables.append((f"Fast inference path ({self.fast_path_name()}); compile time apart", self.fast_headers(),
                           self._fast_rows()))
        from .warmstart import warm_markdown

        tables += warm_markdown(self.models)
        for title, headers, rows in tables:
            if title:
                out += [f"**{title}**", ""]
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "|".join("---" if h in ("model", "role") else "---:" for h in headers) + "|")
            for row in rows:
                out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
            out.append("")
        out.append(f"- **Device:** {self.context_line()}")
        if self.solver_line():
            out.append(f"- **Solver:** {self.solver_line()}")
            stored = self.solver.get("stored") or {}
            diffs = [f"{k}: {v}" for k, v in stored.items()
                     if any(v.get(x) != self.solver.get(x) for x in SOLVER_KEYS)]
            if diffs:
                out.append(f"- **Stored solver settings overridden:** {'; '.join(diffs)}")
        out.append(f"- **Operator:** {self.operator.get('kind')} {self.operator.get('image_shape')} ({self.operator.get('source')})")
        out.append(f"- **Data:** {self.data_line()}")
        out.append(f"- **Metric:** {self.metric['description']}")
        out.append(f"- **Timing:** {self.settings['timing_method']}, median over interleaved runs; "
                   f"memory = {self.models[0].timing.memory_kind} above the pre-call level")
        for m in self.models:
            if m.finetune:
                out.append(f"- **Fine-tuned:** {m.label}: mode {m.finetune.get('mode')}, {m.finetune.get('epochs')} epochs")
        for n in self.notes:
            out.append(f"- **Note:** {n}")
        if self.gates:
            out.append("")
            out.append("### Gates")
            for g in self.gates:
                out.append(f"- {'✅' if g.passed else '❌'} {g.message}")
        return "\n".join(out) + "\n"

    def write_markdown(self, path: str | Path, force: bool = False) -> Path:
        from ..io import write_text

        return write_text(path, self.markdown(), force=force)

    # -- figure
    def figure(self, path: str | Path, force: bool = False) -> Path:
        """Reconstructions, error maps and speed-vs-PSNR in one PNG (needs matplotlib)."""
        from ..metrics import magnitude
        from ..render import require_matplotlib

        plt = require_matplotlib()

        truth = self.examples.get("__truth__")
        n = len(self.models)
        fig = plt.figure(figsize=(3.0 * (n + 1) + 4.5, 6.4), constrained_layout=True)
        gs = fig.add_gridspec(2, n + 2)
        if truth is not None:
            t = magnitude(truth)[0, 0].numpy()
            vmax = float(t.max()) or 1.0
            ax = fig.add_subplot(gs[0, 0])
            ax.imshow(t, cmap="gray", vmin=0, vmax=vmax)
            ax.set_title("ground truth", fontsize=9)
            ax.axis("off")
            emax = None
            errs = {}
            for m in self.models:
                rec = self.examples.get(m.label)
                if rec is not None:
                    errs[m.label] = abs(magnitude(rec)[0, 0].numpy() - t)
            if errs:
                emax = max(float(e.max()) for e in errs.values()) or 1.0
            for i, m in enumerate(self.models):
                rec = self.examples.get(m.label)
                if rec is None:
                    continue
                ax = fig.add_subplot(gs[0, i + 1])
                ax.imshow(magnitude(rec)[0, 0].numpy(), cmap="gray", vmin=0, vmax=vmax)
                ax.set_title(f"{m.label}\n{m.psnr[0]:.2f} dB", fontsize=8)
                ax.axis("off")
                ax = fig.add_subplot(gs[1, i + 1])
                ax.imshow(errs[m.label], cmap="magma", vmin=0, vmax=emax)
                ax.set_title("|error|", fontsize=8)
                ax.axis("off")
        ax = fig.add_subplot(gs[:, n + 1])
        for m in self.models:
            ax.errorbar(m.timing.median_ms, m.psnr_mean, yerr=m.psnr_std if math.isfinite(m.psnr_std) else None,
                        xerr=[[m.timing.median_ms - m.timing.p10_ms], [m.timing.p90_ms - m.timing.median_ms]],
                        fmt="o", capsize=3, label=m.label)
        ax.set_xlabel("median latency per batch (ms)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title("speed vs PSNR", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.suptitle(self.context_line() + (("\n" + self.solver_line()) if self.solver_line() else ""), fontsize=8)
        from ..io import write_file

        try:
            return write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), force=force)
        finally:
            plt.close(fig)


