"""The figure of a sweep: the speed-vs-PSNR frontier, as plain numbers and drawn with matplotlib.

:func:`frontier_data` gives what is drawn (tested as numbers), :func:`frontier_figure` draws it,
:func:`write_frontier_figure` writes the PNG through the one writer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..render import require_matplotlib


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def frontier_data(report) -> dict[str, Any]:
    """What :func:`frontier_figure` draws, as plain numbers (x = speedup over the original, y = PSNR).

    ``points``: one dict per model with finite speedup and PSNR (the original at x = 1): ``label``,
    ``ratio``, ``text`` (the label drawn beside it), ``x``, ``y``, ``x_low``/``x_high`` (the
    speedup interval, :func:`speedup_interval`), ``y_err`` (std of the paired per-image PSNR drop,
    0 when absent), ``original``, ``on_front``, ``best``, ``within_budget``. ``front``: the [x, y]
    of the Pareto-front points, sorted by speed (the line joining them). ``best``: the chosen
    model's label (``max_psnr_drop``), ``budget_y``: the PSNR at that budget. ``left_out``: labels
    of models without a finite speedup or PSNR.
    """
    points, left_out = [], []
    best_label = report.best.label if report.best is not None else None
    for p in report.points:
        original = p.ratio == 0
        x = 1.0 if original else p.speedup
        if not (_finite(x) and _finite(p.psnr_mean)):
            left_out.append(p.label)
            continue
        lo = p.speedup_low if _finite(p.speedup_low) else x
        hi = p.speedup_high if _finite(p.speedup_high) else x
        points.append({
            "label": p.label, "ratio": p.ratio, "text": "original" if original else f"r={p.ratio:g}",
            "x": float(x), "y": float(p.psnr_mean), "x_low": float(min(lo, x)), "x_high": float(max(hi, x)),
            "y_err": float(p.psnr_drop_paired_std) if _finite(p.psnr_drop_paired_std) and not original else 0.0,
            "original": original, "on_front": bool(p.on_front), "best": p.label == best_label,
            "within_budget": p.within_budget,
        })
    front = sorted(([q["x"], q["y"]] for q in points if q["on_front"]), key=lambda xy: (xy[0], -xy[1]))
    ref = next((q for q in points if q["original"]), None)
    bench = report.bench
    subtitle = bench.context_line() + (("\n" + bench.solver_line()) if bench.solver_line() else "")
    return {
        "title": "pruning sweep: speed vs PSNR (one run, identical solver settings)",
        "subtitle": subtitle,
        "xlabel": "speedup over the original (x), error bars: p10-p90 latency of both",
        "ylabel": f"PSNR (dB, metric '{(bench.metric or {}).get('name', '?')}')"
                  + (", error bars: std of the paired drop" if any(q["y_err"] for q in points) else ""),
        "points": points,
        "front": front,
        "best": best_label if any(q["best"] for q in points) else None,
        "reference": {"x": 1.0, "y": ref["y"]} if ref else None,
        "max_psnr_drop": report.max_psnr_drop,
        "budget_y": ref["y"] - report.max_psnr_drop if ref and report.max_psnr_drop is not None else None,
        "left_out": left_out,
    }


def frontier_figure(data: Mapping[str, Any]):
    """Draw :func:`frontier_data` on a new matplotlib figure (returned; the caller closes it).

    Artists carry a ``gid``: ``points`` (one scatter of every point), ``front`` (the line through
    the Pareto front), ``best`` (the chosen point's ring), ``errorbars``, ``budget``, ``reference``.
    """
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 5.2), constrained_layout=True)
    pts = list(data["points"])
    if pts:
        xs = [q["x"] for q in pts]
        ys = [q["y"] for q in pts]
        eb = ax.errorbar(xs, ys, xerr=[[q["x"] - q["x_low"] for q in pts], [q["x_high"] - q["x"] for q in pts]],
                         yerr=[q["y_err"] for q in pts], fmt="none", ecolor="0.55", elinewidth=1, capsize=3, zorder=1)
        for artist in (*eb[1], *eb[2]):  # caps and bars
            artist.set_gid("errorbars")
        colors = ["black" if q["original"] else ("tab:blue" if q["on_front"] else "tab:gray") for q in pts]
        ax.scatter(xs, ys, c=colors, s=[70 if q["original"] else 40 for q in pts], zorder=3, gid="points",
                   marker="o", edgecolors="white", linewidths=0.6)
        span_x = (max(xs) - min(xs)) or 1.0
        span_y = (max(ys) - min(ys)) or 1.0
        for i, q in enumerate(pts):  # labels of points that nearly coincide are stacked, not overprinted
            near = sum(1 for o in pts[:i] if abs(o["x"] - q["x"]) < 0.05 * span_x and abs(o["y"] - q["y"]) < 0.05 * span_y)
            ax.annotate(q["text"], (q["x"], q["y"]), textcoords="offset points", xytext=(6, 5 + 11 * near), fontsize=8)
    if len(data["front"]) > 1:
        fx, fy = zip(*data["front"])
        ax.plot(fx, fy, "-", color="tab:blue", lw=1.4, zorder=2, gid="front", label="Pareto front")
    best = [q for q in pts if q["best"]]
    if best:
        ax.scatter([q["x"] for q in best], [q["y"] for q in best], s=260, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=4, gid="best", label=f"chosen: {best[0]['label']}")
    if data.get("reference"):
        ax.axvline(1.0, color="0.8", lw=1, zorder=0, gid="reference")
    if data.get("budget_y") is not None:
        ax.axhline(data["budget_y"], color="tab:red", ls="--", lw=1, zorder=0, gid="budget",
                   label=f"PSNR drop budget {data['max_psnr_drop']:g} dB")
    ax.set_xlabel(data["xlabel"], fontsize=9)
    ax.set_ylabel(data["ylabel"], fontsize=9)
    ax.set_title(data["title"], fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    note = data["subtitle"] + (f"\nnot drawn (no finite speedup or PSNR): {', '.join(data['left_out'])}" if data["left_out"] else "")
    fig.suptitle(note, fontsize=7)
    return fig


def write_frontier_figure(report, path: str | Path, force: bool = False) -> Path:
    """Draw the sweep's frontier and write it as a PNG through :func:`mbdlprune.io.write_file`."""
    from ..io import write_file

    plt = require_matplotlib()
    fig = frontier_figure(frontier_data(report))
    try:
        return write_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), force=force)
    finally:
        plt.close(fig)
