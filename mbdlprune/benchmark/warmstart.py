"""Warm starts across adjacent slices: each DEQ solve of a slice starts from the fixed point of the slice before it.

Adjacent slices of a volume look alike, so the previous slice's fixed point is a much better
first iterate than A^H y, and the solver stops sooner at the same tolerance. That gain belongs
to the solver, not to pruning: with ``bench --warm-start`` every DEQ gets warm starts alike, and
the report keeps the two gains apart (:func:`warm_rows`):

* ``warm-start gain``: one model, cold against warm, on the same slices (the solver's gain);
* ``speedup, both cold`` / ``both warm``: a pruned model against the original, each started
  the same way (the pruning gain);
* ``warm vs cold original``: what a user adopting both gets.

Quality: every volume is reconstructed in slice order, warm-started, and scored like the cold
pass. Timing: the slices of the first volume that has at least two batches (up to
``warm_batches`` + 1, default :data:`WARM_BATCHES` + 1), cold and warm, every model in each
round (rotating order). A warm pass solves its first batch cold and untimed (its fixed point starts the next), so both
passes time the same batches. With ``--batch-size B`` a batch starts from the previous batch's
fixed points row by row (slice s from slice s - B); a batch that spans two volumes runs cold.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

from ..errors import MbdlError
from ..models.protocol import accepts_warm_start, is_deq

#: timed batches per pass by default (after the untimed first one): ``BenchConfig.warm_batches``
WARM_BATCHES = 8


def check_warm_start(entries: Sequence[Any]) -> None:
    """Refuse ``--warm-start`` when no model is a DEQ, or a DEQ cannot take a starting iterate."""
    deqs = [e for e in entries if is_deq(e.model)]
    if not deqs:
        raise MbdlError("--warm-start applies to DEQ models, and none of these models is one", "drop --warm-start")
    lacking = [e.label for e in deqs if not accepts_warm_start(e.model)]
    if lacking:
        raise MbdlError(f"--warm-start: {', '.join(lacking)} takes no starting iterate (forward(y, op, x0=None)), "
                        "so the DEQs would not run alike", "drop --warm-start, or add an x0 argument to that model's forward")


class WarmChain:
    """Calls a model on consecutive batches, each DEQ solve started from the previous batch's output.

    :meth:`reset` at a volume boundary; models that take no ``x0`` (unrolled networks) are
    called plainly, so the same loop serves every model.
    """

    def __init__(self, model: Any, enabled: bool = True):
        self.model = model
        self.warm = bool(enabled) and accepts_warm_start(model)
        self.prev = None

    def reset(self) -> None:
        self.prev = None

    def __call__(self, y, op):
        if not self.warm:
            return self.model(y, op)
        x0 = self.prev[: y.shape[0]] if self.prev is not None and self.prev.shape[0] >= y.shape[0] else None
        out = self.model(y, op, x0=x0)
        self.prev = out
        return out


def batch_volume(volume_index: Sequence[int] | None, start: int, stop: int) -> int | None:
    """The volume of images ``start:stop``, or None when they span two (that batch runs cold)."""
    if volume_index is None:
        return 0
    vols = set(volume_index[start:stop])
    return next(iter(vols)) if len(vols) == 1 else None


def _too_short(batch_size: int) -> MbdlError:
    return MbdlError(f"--warm-start needs a volume of at least two batches of {batch_size} slices, and the evaluation "
                     "data has none", "evaluate on whole volumes, or lower --batch-size")


def sequence_starts(volume_index: Sequence[int] | None, n: int, batch_size: int,
                    warm_batches: int = WARM_BATCHES) -> list[int]:
    """Where the timed batches start: the first volume of at least two batches, in slice order
    (capped); an error in one line when no volume is long enough (checked before any work)."""
    idx = list(volume_index) if volume_index is not None else [0] * n
    for vol in dict.fromkeys(idx):
        rows = [i for i, v in enumerate(idx) if v == vol]
        first, last = rows[0], rows[-1] + 1  # a volume's slices are consecutive
        starts = list(range(first, last - batch_size + 1, batch_size))
        if len(starts) >= 2:
            return starts[:warm_batches + 1]
    raise _too_short(batch_size)


def image_sequence(y, op, starts: Sequence[int], batch_size: int) -> list[tuple[Any, Any]]:
    """The timed batches of simulated measurements (all with the one operator)."""
    return [(y[s:s + batch_size], op) for s in starts]


def raw_sequence(rev, batch_size: int, warm_batches: int = WARM_BATCHES) -> list[tuple[Any, Any]]:
    """The timed batches of raw k-space: the first volume of at least two full batches, with each batch's operator."""
    for v in rev.volumes:
        n = int(v.y.shape[0])
        starts = list(range(0, n - batch_size + 1, batch_size))
        if len(starts) >= 2:
            return [(v.y[s:s + batch_size], v.op.batch(s, s + batch_size)) for s in starts[:warm_batches + 1]]
    raise _too_short(batch_size)


def time_passes(models: Sequence[Any], sequence: list[tuple[Any, Any]], device: str, repeats: int,
                interleave: bool = True) -> list[dict[str, Any]]:
    """Per model: per-batch times of cold and warm passes over ``sequence`` (see the module docstring).

    Rounds: enough that about ``repeats`` batches are timed per pass, and at least 3.
    """
    import torch

    from .timing import _Timer, _sync, percentile

    seq = [(y.to(device), op.to(device)) for y, op in sequence]
    timed = seq[1:]
    rounds = max(3, math.ceil(repeats / len(timed)))
    timer = _Timer(device)
    cold: list[list[float]] = [[] for _ in models]
    warm: list[list[float]] = [[] for _ in models]
    iters: list[dict[str, list[float]]] = [{"cold": [], "warm": []} for _ in models]

    def run(chain, batches, kind, i):
        for y, op in batches:
            chain(y, op)
            info = getattr(chain.model, "last_info", None)
            if isinstance(info, dict) and "iterations" in info:
                iters[i][kind].append(float(info["iterations"]))

    with torch.inference_mode():
        order = list(range(len(models)))
        for r in range(rounds):
            k = r % len(order) if interleave else 0
            for i in order[k:] + order[:k]:
                plain = WarmChain(models[i], enabled=False)
                cold[i].append(timer(lambda: run(plain, timed, "cold", i)) / len(timed))
                chain = WarmChain(models[i])
                chain(*seq[0])
                _sync(device)
                warm[i].append(timer(lambda: run(chain, timed, "warm", i)) / len(timed))
    out = []
    for i in range(len(models)):
        d: dict[str, Any] = {"timed_batches": len(timed), "rounds": rounds}
        for kind, s in (("cold", cold[i]), ("warm", warm[i])):
            d[f"{kind}_ms"] = statistics.median(s)
            d[f"{kind}_p10_ms"], d[f"{kind}_p90_ms"] = percentile(s, 0.1), percentile(s, 0.9)
            d[f"{kind}_samples_ms"] = [round(x, 4) for x in s]
            its = iters[i][kind]
            d[f"{kind}_iterations_mean"] = statistics.fmean(its) if its else None
        out.append(d)
    return out


def combine(results: Sequence[Any], passes: Sequence[dict[str, Any]], scores: Sequence[tuple[float, float]]) -> None:
    """Fill each result's ``warm_start`` from its timed passes and warm-started scores (first = the original)."""
    def ratio(a, b):
        return a / b if b and b > 0 else None

    ref, (ref_psnr, _) = passes[0], scores[0]
    for r, p, (psnr, ssim) in zip(results, passes, scores):
        r.warm_start = {
            **p,
            "warm_start_gain": ratio(p["cold_ms"], p["warm_ms"]),
            "speedup_cold": ratio(ref["cold_ms"], p["cold_ms"]),
            "speedup_warm": ratio(ref["warm_ms"], p["warm_ms"]),
            "speedup_vs_cold_original": ratio(ref["cold_ms"], p["warm_ms"]),
            "psnr_mean": psnr, "ssim_mean": ssim, "psnr_drop": ref_psnr - psnr,
            "psnr_change": psnr - r.psnr_mean,  # warm against this model's own cold PSNR
        }


WARM_HEADERS = ("model", "cold ms [p10–p90]", "warm ms [p10–p90]", "warm-start gain", "speedup, both cold",
                "speedup, both warm", "warm vs cold original", "cold iters", "warm iters", "warm PSNR dB", "warm PSNR drop")
#: the terminal table's short names for the columns (spreads go to Markdown and JSON)
WARM_SHORT = {"model": "model", "cold ms [p10–p90]": "cold ms", "warm ms [p10–p90]": "warm ms",
             "warm-start gain": "warm gain", "speedup, both cold": "both cold", "speedup, both warm": "both warm",
             "warm vs cold original": "vs cold orig.", "cold iters": "cold it", "warm iters": "warm it",
             "warm PSNR dB": "warm PSNR", "warm PSNR drop": "warm drop"}


def warm_rows(models: Sequence[Any], spread: bool = True) -> list[list[str]]:
    """The warm-start table's rows (empty without ``--warm-start``); ``spread``: p10–p90 with the medians."""
    from ..render import fmt

    def ms(w, kind):
        med = fmt(w[f"{kind}_ms"], ".2f")
        return f"{med} [{fmt(w[f'{kind}_p10_ms'], '.2f')}–{fmt(w[f'{kind}_p90_ms'], '.2f')}]" if spread else med

    rows = []
    for m in models:
        w = m.warm_start
        if not w:
            continue
        first = m.role == "original"
        rows.append([
            m.label, ms(w, "cold"), ms(w, "warm"),
            fmt(w["warm_start_gain"], ".2f") + "x",
            "—" if first else fmt(w["speedup_cold"], ".2f") + "x",
            "—" if first else fmt(w["speedup_warm"], ".2f") + "x",
            fmt(w["speedup_vs_cold_original"], ".2f") + "x",
            fmt(w["cold_iterations_mean"], ".1f") if w["cold_iterations_mean"] is not None else "—",
            fmt(w["warm_iterations_mean"], ".1f") if w["warm_iterations_mean"] is not None else "—",
            fmt(w["psnr_mean"], ".2f"),
            "—" if first else fmt(w["psnr_drop"], "+.2f"),
        ])
    return rows


TITLE = "warm starts across slices, ms per batch: the solver's gain, apart from pruning's"


def warm_table(models: Sequence[Any]):
    """The terminal table (Rich), or None without ``--warm-start``."""
    from rich.table import Table

    rows = warm_rows(models, spread=False)
    if not rows:
        return None
    table = Table(title=TITLE, title_justify="left")
    for h in WARM_SHORT.values():
        table.add_column(h, justify="left" if h == "model" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def warm_markdown(models: Sequence[Any]) -> list[tuple[str, Sequence[str], list[list[str]]]]:
    """The Markdown report's (title, headers, rows) for warm starts: one table, or none."""
    rows = warm_rows(models)
    return [(TITLE[0].upper() + TITLE[1:], WARM_HEADERS, rows)] if rows else []
