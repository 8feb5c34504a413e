"""The performance frontier of pruning, in one run: per model and ratio, widths, MACs, speedups, DEQ iterations, PSNR.

    python benchmarks/frontier.py --quick --threads 1
    python benchmarks/frontier.py --threads 1 --json frontier.json            # paper sizes (slow on a CPU)
    python benchmarks/frontier.py --compile --ratios 0.3,0.5 --devices cuda
    python benchmarks/frontier.py --cases deq-paper,varnet-paper --compile --channels-last --prune-sensitivity
    python benchmarks/frontier.py --finetune --cases deq,unrolled --ratios 0.5,0.625,0.75   # the demo's frontier

Models, each pruned at every ``--ratios`` (default 0.3,0.5,0.7; L1, uniform, ``--round-to``):

* the shipped examples (``mbdlprune.examples``): ``deq`` and ``unrolled`` on their shipped
  evaluation slices (``example_path("eval")``), ``varnet`` (when this installation ships it) on
  the raw multi-coil k-space made from them (``raw_example_data``); trained, so the PSNR drop
  (no fine-tuning) is real;
* paper-size models with random weights (timing only: no PSNR): DEQ-EDSR (n_feats 64, n_blocks 13)
  at 256 x 256 and a 12-cascade E2E-VarNet (chans 18, pools 4) at 320 x 320, multi-coil MRI
  (uniform mask, R = 6, 8 coils). ``--quick`` runs them at 64 x 64 (widths unchanged) with fewer
  runs and images, to finish in about a minute on a CPU.

Per case and device, the original and all its pruned copies are benchmarked side by side in one
``mbdlprune.bench`` run (interleaved timing rounds, identical solver settings, the same
measurements). A trained DEQ keeps its stored tol and max_iter (applied to every model); a
random-weight DEQ runs a fixed ``--iterations`` (tol 1e-30), as benchmarks/speed_vs_ratio.py does.
Columns:

* ``widths``: ``before→after`` when pruning changed one width, else the widths kept (the JSON has
  every [before, after] pair); ``removed``: the fraction of prior channels removed (achieved, after
  rounding to ``--round-to``: default 4 for the 32-wide shipped examples, where the pruner's 16
  would give every ratio the same width, and the pruner's 16 for the paper-size models);
* ``MACs↓``: prior-MACs reduction;
* ``speedup`` (eager) with its interval [original p10 / model p90, original p90 / model p10];
* ``real/MACs`` = speedup / MACs↓ (1.0: every removed MAC became time saved) and ``call/MACs``,
  the same per prior call (per DEQ iteration), which leaves out changes in the iteration count;
* ``iters``: prior calls per reconstruction (DEQ: solver iterations, measured; unrolled: steps);
* ``PSNR drop`` (dB), trained models only: without fine-tuning, or with ``--finetune`` after the
  demo's fine-tuning of each pruned copy (``mbdlprune.workflows.demo.finetune_settings``: distill
  from the original on the shipped fine-tuning slices, best epoch on the validation slices), so
  the ``●`` row, the fastest within ``--max-psnr-drop`` (0.1 dB), is the point the demo runs;
* with ``--compile`` and/or ``--channels-last``: the same ``mbdlprune.bench`` run also times
  every model on bench's fast inference path (its prior(s) compiled with ``torch.compile``, in
  channels-last format, or both; ``docs/bench.md``): ``f.speedup`` = fast original / fast pruned,
  ``f.real/MACs`` = f.speedup / MACs↓, ``f/eager`` = the model's eager / fast time, and the
  compile time (each model's first call) reported on its own (10-60 s per model on a 2-core VM);
  where compilation fails, bench's note says so and only eager timings are given;
* with ``--prune-sensitivity`` (E2E-VarNet cases): the sensitivity U-Net is pruned besides the
  cascades, and bench counts its MACs (and puts it on the fast path) for every model, the
  original included, so MACs↓ and real/MACs cover every network that runs;
* with ``--warm-start`` (trained DEQ cases): the same run also benches warm starts across slices
  (``bench --warm-start``, ``docs/bench.md``): ``warm gain`` = the model's cold / warm time on the
  same slices (the solver's gain), ``w.speedup`` = warm original / warm pruned (pruning's gain with
  both warm), ``w/cold orig`` = cold original / warm pruned, ``w.iters`` and ``w.drop`` (PSNR).

Devices: the CPU, and CUDA too when ``torch.cuda.is_available()`` (``--devices`` chooses).
``--json OUT`` writes every row and the context of each run.

Real output (``python benchmarks/frontier.py --quick --threads 1 --cases deq``: 19 s on a 2-core
Xeon VM; torch 2.13.0 CPU)::

    deq (shipped, trained), round_to 4, on cpu: cpu (Intel(R) Xeon(R) Processor), torch 2.13.0+cpu, 1 threads, ...
    DEQ solver for every model: anderson, tol 0.001, max_iter 50 (from deq_edsr_mri4x (first DEQ))
    ratio model                      widths       removed  MACs↓    speedup [p10–p90] real/MACs call/MACs  iters       ms PSNR drop
    0     deq_edsr_mri4x             original       0.000  1.00x      1.00x [0.6–1.5]      1.00      1.00   20.0    911.3         —
    0.3   deq_edsr_mri4x-r0.3        32→24          0.248  1.77x      2.90x [1.8–3.7]      1.64      0.65    7.5    314.8     +4.48
    0.5   deq_edsr_mri4x-r0.5        32→16          0.497  3.95x     7.29x [4.3–10.5]      1.85      0.74    8.0    125.0     +5.49
    0.7   deq_edsr_mri4x-r0.7        32→8           0.745 15.37x   27.53x [14.3–35.8]      1.79      0.36    4.5     33.1     +8.42

(the DEQ's realised speedup exceeds the MACs reduction because the pruned, not fine-tuned DEQ
stops after far fewer solver iterations, 8 instead of 20; ``call/MACs`` is the per-iteration figure;
``removed`` is what rounding to multiples of 4 achieved, 0.248 where 0.3 was asked. With
``--finetune`` the pruned copies are fine-tuned first: docs/quickstart.md has that table.)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

import mbdlprune
from mbdlprune import examples
from mbdlprune.api import prune_model
from mbdlprune.errors import MbdlError
from mbdlprune.io import LoadedModel
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator
from mbdlprune.workflows.chain import load_original
from mbdlprune.workflows.sweep import speedup_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed_vs_ratio import smooth_images  # noqa: E402  (the benchmarks' shared test images)

PAPER_DEQ = {"n_feats": 64, "n_blocks": 13, "gamma": 5.0, "alpha": 0.2, "solver": "anderson"}
PAPER_VARNET = {"num_cascades": 12, "chans": 18, "pools": 4, "sens_chans": 8, "sens_pools": 4}


# ------------------------------------------------------------------------------ inputs
def mri_operator(size: int, coils: int = 8):
    return load_operator({"kind": "mri", "image_size": [size, size], "acceleration": 6, "mask": "uniform",
                          "coils": coils, "noise_sigma": 0.01})


def paper_case(case: str, arch: str, arch_args: dict, size: int, args, title: str, bench: dict) -> dict:
    """A paper-size model with random weights (timing only) on smooth images of ``size``."""
    op = mri_operator(size)
    torch.manual_seed(args.seed)
    model, spec = build_arch(arch, dict(arch_args))
    meta = {"arch": spec.to_dict(), "operator": op.spec, "pruning": None}
    return {"case": case, "title": title,
            "original": LoadedModel(model.eval(), meta, op, arch=spec, label=f"{arch}-paper", role="original"),
            "data": smooth_images(1, size, args.seed), "trained": False, "bench": bench, "round_to": args.round_to}


def width_pairs(meta) -> list[list[int]]:
    """The distinct [before, after] channel widths of the layers pruning changed."""
    rec = (meta or {}).get("pruning") or {}
    pairs = {(int(w[0]), int(w[1])) for p in (rec.get("priors") or {}).values() for w in (p.get("widths") or {}).values()}
    return [list(p) for p in sorted(pairs) if p[0] != p[1]]


def removed(meta) -> float:
    """The fraction of prior channels pruning removed (what was achieved, not requested)."""
    from mbdlprune.pruning import removed_fraction

    rec = (meta or {}).get("pruning")
    if not rec:
        return 0.0
    return removed_fraction(pair for prior in (rec.get("priors") or {}).values() for pair in (prior.get("widths") or {}).values())


def widths_text(pairs: list[list[int]]) -> str:
    """``32→8``; several widths: the kept ones, ``16,32,48``."""
    if not pairs:
        return "original"
    if len(pairs) == 1:
        return f"{pairs[0][0]}→{pairs[0][1]}"
    return ",".join(str(a) for a in sorted({p[1] for p in pairs}))


# ------------------------------------------------------------------------------ cases
def cases(args) -> list[dict]:
    """What to benchmark: name, original (LoadedModel), eval data, whether trained, bench options."""
    out = []
    quick = args.quick
    for name in ("deq", "unrolled", "varnet"):
        if name not in examples.EXAMPLES or name not in args.cases:
            continue
        original = load_original(examples.example_path(name))  # label: the file's stem; role: original
        if name in examples.RAW_MODEL_EXAMPLES:
            folder = Path(args.tmp) / "raw"
            folder.mkdir(exist_ok=True)
            files = examples.raw_example_data(folder)
        else:
            files = {k: examples.example_path(k) for k in ("eval", "finetune", "finetune-val")}
        out.append({"case": name, "title": f"{name} (shipped, trained)", "original": original, "data": str(files["eval"]),
                    "finetune_data": files, "trained": True, "bench": {"max_images": 2 if quick else None},
                    "round_to": args.round_to if args.round_to is not None else 4})
    size_deq, size_varnet = (64, 64) if quick else (256, 320)
    if "deq-paper" in args.cases:
        out.append(paper_case("deq-paper", "deq-edsr", PAPER_DEQ, size_deq, args,
                              f"DEQ-EDSR 64 feats x 13 blocks, {size_deq}x{size_deq}, random weights, "
                              f"{args.iterations} fixed iterations", {"tol": 1e-30, "max_iter": args.iterations}))
    if "varnet-paper" in args.cases:
        out.append(paper_case("varnet-paper", "e2e-varnet", PAPER_VARNET, size_varnet, args,
                              f"E2E-VarNet 12 cascades, chans 18, pools 4, {size_varnet}x{size_varnet}, random weights", {}))
    return out


def prune_extra(case: dict, args) -> dict:
    """``--prune-sensitivity``: an E2E-VarNet's sensitivity U-Net is pruned besides its cascades
    (bench then counts, and puts on the fast path, that network for every model alike)."""
    o = case["original"]
    return {"prune_sensitivity": True} if args.prune_sensitivity and getattr(o.model, "sens_net", None) is not None else {}


def pruned_copies(case: dict, ratios: list[float], args) -> list[LoadedModel]:
    """The original and its pruned copies; with ``--finetune``, a trained example's copies are
    fine-tuned the way the demo fine-tunes (:func:`mbdlprune.workflows.demo.finetune_settings`)."""
    o = case["original"]
    round_to = case["round_to"]
    entries = [o]
    tune = args.finetune and case["trained"]
    extra = prune_extra(case, args)
    for r in ratios:
        label = f"{o.label}-r{r:g}"
        if tune:
            entries.append(finetuned_copy(case, r, label, args))
            continue
        res = prune_model(copy.deepcopy(o.model), o.arch, o.operator, ratio=r, round_to=round_to, allow_partial=True, **extra)
        entries.append(LoadedModel(res.model, res.meta, o.operator, arch=o.arch, label=label, role="pruned"))
    return entries


def finetuned_copy(case: dict, ratio: float, label: str, args) -> LoadedModel:
    """Prune at ``ratio`` and fine-tune with the demo's settings (files in the run's temporary folder)."""
    from mbdlprune.workflows.chain import prune_and_finetune
    from mbdlprune.workflows.demo import DemoSettings, finetune_settings

    o = case["original"]
    folder = Path(args.tmp) / f"{case['case']}-r{ratio:g}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = prune_and_finetune(
        o, {"ratio": ratio, "round_to": case["round_to"], "allow_partial": True, **prune_extra(case, args)}, label=label,
        finetuned_label=f"{label}-ft", pruned_out=folder / "pruned.safetensors",
        finetune=finetune_settings(DemoSettings(), case["finetune_data"], o.path, name=case["case"]),
        finetuned_out=folder / "ft.safetensors",
        eval_data=case["data"])
    print(f"  {label}: pruned and fine-tuned in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return step.model


def run_case(case: dict, entries: list[LoadedModel], device: str, args) -> dict:
    """Bench the original and its pruned copies in one interleaved run; with ``--compile`` or
    ``--channels-last`` the same run also times every model on bench's fast inference path."""
    ratios = [0.0] + args.ratios
    say = (lambda m: print(f"  {m}", file=sys.stderr)) if args.verbose else None
    from mbdlprune.models.protocol import is_deq

    warm = bool(args.warm_start and case["trained"] and is_deq(entries[0].model))  # random weights: fixed iterations
    opts = {"warmup": args.warmup, "repeats": args.repeats, "threads": args.threads, "seed": args.seed,
            "compile": args.compile, "channels_last": args.channels_last, "warm_start": warm, **case["bench"]}
    t0 = time.perf_counter()
    rep = mbdlprune.bench(entries, case["data"], device=device, progress=say, **opts)
    seconds = time.perf_counter() - t0
    ref = rep.models[0]
    rows = []
    for r, e, m in zip(ratios, entries, rep.models):
        lo, hi = speedup_interval(ref.timing, m.timing)
        row = {
            "case": case["case"], "device": rep.environment["device"], "device_name": rep.environment["name"],
            "ratio": r, "model": m.label, "widths": width_pairs(e.meta), "params": m.params,
            "channels_removed": removed(e.meta),
            "prior_macs_reduction": m.prior_macs_reduction, "speedup": m.speedup, "speedup_interval": [lo, hi],
            "realised_per_macs": m.speedup_per_macs_reduction,
            "per_call_realised_per_macs": m.per_call_speedup_per_macs_reduction,
            "iterations": (m.deq or {}).get("iterations_mean") if m.deq else m.prior_calls_per_reconstruction,
            "timed_iterations": m.timing.iterations_mean, "median_ms": m.timing.median_ms,
            "psnr": m.psnr_mean if case["trained"] else None,
            "psnr_drop": m.psnr_drop if case["trained"] and r else None,
            "trained": case["trained"], "finetuned": bool(r and args.finetune and case["trained"]),
        }
        if m.fast_timing is not None:  # quality is scored on the eager models, once
            row["fast_median_ms"] = m.fast_timing.median_ms
            row["fast_speedup"] = m.fast_speedup
            row["fast_over_eager"] = m.timing.median_ms / m.fast_timing.median_ms
            row["fast_realised_per_macs"] = (m.fast_speedup / m.prior_macs_reduction
                                                 if m.fast_speedup and m.prior_macs_reduction else None)
            row["compile_s"] = (m.fast_path or {}).get("compile_s")
        if m.warm_start:  # the solver's gain apart from pruning's (bench --warm-start)
            w = m.warm_start
            row.update({"warm_start_gain": w["warm_start_gain"], "warm_speedup": w["speedup_warm"],
                        "warm_vs_cold_original": w["speedup_vs_cold_original"],
                        "warm_iterations": w["warm_iterations_mean"], "warm_psnr_drop": w["psnr_drop"] if r else None})
        rows.append(row)
    mark_best(rows, args.max_psnr_drop)
    bench_notes = list(rep.notes)
    if case["bench"].get("tol") == 1e-30:  # fixed iterations on purpose: one note instead of one per model
        bench_notes = [x for x in bench_notes if "stopped at max_iter before reaching tol" not in x]
        bench_notes.append(f"every DEQ solve runs exactly {case['bench']['max_iter']} iterations (tol 1e-30, on purpose)")
    return {"case": case["case"], "title": case["title"], "device": rep.environment["device"], "round_to": case["round_to"],
            "fast_path": fast_path_text(args), "pruned_networks": "cascades + sensitivity U-Net" if prune_extra(case, args) else None,
            "context": rep.context_line(), "solver": rep.solver_line(), "notes": bench_notes,
            "seconds": seconds, "rows": rows, "max_psnr_drop": args.max_psnr_drop}


def mark_best(rows: list[dict], max_drop: float) -> None:
    """``best``: the fastest pruned row of a trained case within ``max_drop`` dB of the original."""
    ok = [r for r in rows if r["ratio"] and r["psnr_drop"] is not None and r["psnr_drop"] <= max_drop
          and r["speedup"] is not None]
    best = max(ok, key=lambda r: r["speedup"], default=None)
    for r in rows:
        r["best"] = r is best


# ------------------------------------------------------------------------------ output
def _f(v, spec: str, suffix: str = "") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec) + suffix


def fast_path_text(args) -> str | None:
    """What the ``f.`` columns time: bench's fast inference path with these switches."""
    parts = (["compiled priors"] if args.compile else []) + (["channels-last"] if args.channels_last else [])
    return " + ".join(parts) or None


def print_run(run: dict, compiled: bool) -> None:
    rt = run["round_to"] if run["round_to"] is not None else "the pruner's"
    print(f"\n{run['title']}, round_to {rt}, on {run['device']}: {run['context']}  ({run['seconds']:.1f} s)")
    if run["solver"]:
        print(run["solver"])
    if run.get("pruned_networks"):
        print(f"pruned and counted: {run['pruned_networks']}")
    if compiled:
        print(f"f. columns: the fast path ({run['fast_path']}) for every model; f.speedup = fast original / fast model")
    hdr = (f"{'ratio':<5} {'model':<26} {'widths':<12} {'removed':>7} {'MACs↓':>6} {'speedup [p10–p90]':>20} {'real/MACs':>9} "
           f"{'call/MACs':>9} {'iters':>6} {'ms':>8} {'PSNR drop':>9}")
    if compiled:
        hdr += f" {'f.speedup':>9} {'f.real/MACs':>11} {'f/eager':>7} {'compile s':>9}"
    warm = any("warm_start_gain" in r for r in run["rows"])
    if warm:
        hdr += f" {'warm gain':>9} {'w.speedup':>9} {'w/cold orig':>11} {'w.iters':>7} {'w.drop':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in run["rows"]:
        w = widths_text(r["widths"])
        w = w if len(w) <= 12 else w[:11] + "…"
        lo, hi = r["speedup_interval"]
        sp = f"{_f(r['speedup'], '.2f', 'x')} [{lo:.1f}–{hi:.1f}]"
        line = (f"{r['ratio']:<5g} {r['model'][:26]:<26} {w:<12} {_f(r['channels_removed'], '.3f'):>7} "
                f"{_f(r['prior_macs_reduction'], '.2f', 'x'):>6} "
                f"{sp:>20} {_f(r['realised_per_macs'], '.2f'):>9} {_f(r['per_call_realised_per_macs'], '.2f'):>9} "
                f"{_f(r['iterations'], '.1f'):>6} {_f(r['median_ms'], '.1f'):>8} "
                f"{('—' if not r['ratio'] else _f(r['psnr_drop'], '+.2f')) if r['trained'] else 'untrained':>9}"
                f"{' ●' if r.get('best') else '  '}")
        if compiled and "fast_speedup" in r:
            line += (f" {_f(r['fast_speedup'], '.2f', 'x'):>9} {_f(r['fast_realised_per_macs'], '.2f'):>11} "
                     f"{_f(r['fast_over_eager'], '.2f', 'x'):>7} "
                     f"{_f(r['compile_s'], '.1f'):>9}")
        if warm and "warm_start_gain" in r:
            line += (f" {_f(r['warm_start_gain'], '.2f', 'x'):>9} {_f(r['warm_speedup'], '.2f', 'x'):>9} "
                     f"{_f(r['warm_vs_cold_original'], '.2f', 'x'):>11} {_f(r['warm_iterations'], '.1f'):>7} "
                     f"{_f(r['warm_psnr_drop'], '+.2f'):>6}")
        print(line)
    best = [r for r in run["rows"] if r.get("best")]
    if best:
        what = "fine-tuned" if best[0]["finetuned"] else "not fine-tuned"
        print(f"● the fastest point within {run['max_psnr_drop']:g} dB of the original ({what}): ratio {best[0]['ratio']:g}, "
              f"{best[0]['speedup']:.2f}x, PSNR drop {best[0]['psnr_drop']:+.2f} dB")
    for note in run["notes"]:
        print(f"note: {note}")


ALL_CASES = ("deq", "unrolled", "varnet", "deq-paper", "varnet-paper")


def round_to_arg(value: str):
    """``--round-to``: an integer >= 1 or ``auto``, as ``prune --round-to`` takes it."""
    from mbdlprune.pruning.config import is_auto, parse_round_to

    v = parse_round_to(value)
    if not (is_auto(v) or (isinstance(v, int) and v >= 1)):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or auto, got {value!r}")
    return v


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.3,0.5,0.7", type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                    help="comma-separated fractions of channels to remove (default 0.3,0.5,0.7)")
    ap.add_argument("--cases", default=",".join(ALL_CASES), type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
                    help=f"which models, comma-separated, of {', '.join(ALL_CASES)} (varnet: when shipped)")
    ap.add_argument("--quick", action="store_true", help="paper-size models at 64x64, 2 eval images, 1+5 runs: about a minute on a CPU")
    ap.add_argument("--devices", default=None, help="comma-separated, e.g. cpu,cuda (default: cpu, and cuda when available)")
    ap.add_argument("--compile", action="store_true", help="also time each model with its prior(s) through torch.compile")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time each model with its prior(s) in channels-last format (with --compile: both, in one fast path)")
    ap.add_argument("--prune-sensitivity", action="store_true",
                    help="E2E-VarNet cases: prune the sensitivity U-Net besides the cascades (prune --prune-sensitivity); "
                         "bench counts its MACs for every model")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs per model (default 3; --quick 1)")
    ap.add_argument("--repeats", type=int, default=None, help="timed interleaved runs (default 20; --quick 5)")
    ap.add_argument("--iterations", type=int, default=None, help="random-weight DEQ: fixed iteration count (default 10; --quick 3)")
    ap.add_argument("--round-to", type=round_to_arg, default=None,
                    help="width multiple, or auto (widths chosen by timing on this machine; docs/pruning.md); default: "
                         "4 for the 32-wide shipped examples, so that the ratios differ; the pruner's 16 for the paper-size models")
    ap.add_argument("--finetune", action="store_true",
                    help="fine-tune every pruned copy of a shipped example the way the demo does (about a minute each "
                         "on 2 CPU cores), so PSNR drop is after fine-tuning")
    ap.add_argument("--max-psnr-drop", type=float, default=0.1,
                    help="mark (●) the fastest point within this PSNR drop in dB (default 0.1)")
    ap.add_argument("--warm-start", action="store_true",
                    help="trained DEQ cases: also bench warm starts across slices (bench --warm-start): the solver's gain "
                         "(warm gain), pruning's with both warm (w.speedup), and warm pruned vs cold original")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1: steadier on a shared CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write every row (and each run's context) as JSON to this file")
    ap.add_argument("--verbose", action="store_true", help="bench's progress messages on stderr")
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 20)
    args.iterations = args.iterations if args.iterations is not None else (3 if args.quick else 10)
    unknown = [c for c in args.cases if c not in ALL_CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; use {', '.join(ALL_CASES)}")
    if args.devices:
        args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    else:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    if args.compile:  # many priors (12 cascades x widths) would otherwise exceed dynamo's recompile cache
        from torch import _dynamo

        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mbdlprune-frontier-") as tmp:
        args.tmp = tmp
        if "varnet" in args.cases and "varnet" not in examples.EXAMPLES:
            print("note: this installation ships no varnet example; skipped", file=sys.stderr)
        try:
            for case in cases(args):
                entries = pruned_copies(case, args.ratios, args)
                for dev in args.devices:
                    run = run_case(case, entries, dev, args)
                    print_run(run, bool(fast_path_text(args)))
                    runs.append(run)
        except MbdlError as e:  # a user error (a device that is not there, a ratio out of range): one line
            print(f"error: {e}", file=sys.stderr)
            return 2
    total = time.perf_counter() - t0
    print(f"\n{len(runs)} runs in {total:.0f} s")
    if args.json:
        from mbdlprune.config import json_safe

        payload = {"argv": sys.argv[1:], "ratios": args.ratios, "quick": args.quick, "seconds": total,
                   "torch": torch.__version__, "runs": runs}
        from mbdlprune.io import write_text

        write_text(args.json, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n", force=True)  # atomic
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
