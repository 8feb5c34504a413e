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
import math
import statistics
from typing import Any, Sequence

from ..errors import MbdlError
from .costs import reconstruct_and_score
from .evaldata import load_eval_data, simulate_measurements
from .fairness import common_operator, common_solver_settings, lineage_notes, solver_settings_applied
from .config import BenchConfig
from .records import check_finetune_overlap, finetune_summary
from .report import BenchReport, ModelResult, _stats, _timed_calls, evaluate_gates
from .timing import busy_note, device_info, time_models

def compare(models: Sequence[Any], data: Any, config: BenchConfig | None = None, operator: Any = None,
            progress=None) -> BenchReport:
    """Benchmark built ``models`` (first = the original) side by side on ``data``; see the module docstring.

    ``models``: :class:`~mbdlprune.io.LoadedModel` objects (built already: this function neither
    loads nor trains; :func:`mbdlprune.bench` does both). ``data``: evaluation volumes (files or
    folders, read with :mod:`mbdlprune.data`), an :class:`EvalData` or an image tensor
    (N, C, H, W). ``operator``: one operator for every model (default: the models' own, which
    must agree). The models go back to their devices, and DEQs to their solver settings, afterwards.
    """
    import torch

    cfg = config or BenchConfig()
    cfg.validate()
    say = progress or (lambda msg: None)
    entries = list(models)
    if not entries:
        raise MbdlError("no models to benchmark", "pass the original model and at least one pruned model")
    before_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    env = device_info(cfg.device)
    dev = env["device"]
    op, op_source = common_operator(entries, operator)
    op = op.to(dev)
    solver_settings = common_solver_settings(entries, cfg.solver, cfg.tol, cfg.max_iter, cfg.check_every)
    if cfg.warm_start:
        from .warmstart import check_warm_start

        check_warm_start(entries)
    devices = [_device_of(e.model) for e in entries]
    try:
        with solver_settings_applied(entries, solver_settings):
            return _measure(entries, data, op, op_source, dev, env, solver_settings, cfg, say)
    finally:  # the caller's models go back to their devices, torch to its thread count
        for e, d in zip(entries, devices):
            e.model.to(d)
        torch.set_num_threads(before_threads)


def _fast_timings(entries, y, op, dev, cfg: BenchConfig, notes: list[str], say, score=None, extra=()):
    """Every model timed again on the fast inference path (compiled / channels-last / bf16 priors),
    or Nones; with bf16 also ``score(entry)`` of each model on that path (its outputs differ)."""
    n = len(entries)
    if not (cfg.compile or cfg.channels_last or cfg.bf16):
        return [None] * n, [None] * n, [None] * n
    from .fastpath import fast_path, first_calls, native_bf16
    from .timing import _timing_batch

    if cfg.bf16 and not native_bf16(dev):
        notes.append(f"{dev} has no native bfloat16 kernels (CPU: AMX or AVX512-BF16; CUDA: Ampere or later): "
                     "the bf16 path is emulated there and is expected to be slower")
    models = [e.model for e in entries]
    scores = [None] * n
    with fast_path(models, compile=cfg.compile, channels_last=cfg.channels_last, bf16=cfg.bf16, device=dev,
                   notes=notes, extra_paths=extra) as records:
        if cfg.compile:
            say(f"compiling the priors of {n} models (timed apart)")
            if not first_calls(models, _timing_batch(y, cfg.batch_size).to(dev), op, records, dev, notes):
                return [None] * n, [None] * n, [None] * n
        if cfg.bf16 and score is not None:
            say("scoring the bf16 path")
            scores = [score(e) for e in entries]
        say("timing the fast inference path")
        timings = time_models(models, y, op, dev, cfg.warmup, cfg.repeats, cfg.batch_size, cfg.interleave)
    return timings, records, scores


def _quality_stats(scores: dict[str, Any], metric_def) -> tuple[tuple[float, float], tuple[float, float]]:
    """(mean, std) of PSNR and of SSIM: over the volumes' scores where the metric is per volume
    (fastMRI reports the mean of the volumes' scores), else over the images'."""
    vols = scores.get("volumes")
    per_volume = bool(vols) and metric_def.per_volume
    return tuple(_stats([v[k] for v in vols] if per_volume else scores[k]) for k in ("psnr", "ssim"))


def _device_of(model):
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _measure(entries, data, op, op_source, dev, env, solver_settings, cfg: BenchConfig, say) -> BenchReport:
    """Score, count and time the models (settings already applied) and build the report."""
    import torch

    from ..metrics import get_definition
    from .costs import _CostCounter, pruned_networks, pruned_networks_note
    from .rawdata import is_raw_data, load_raw_eval, score_raw

    warmup, repeats, batch_size, seed = cfg.warmup, cfg.repeats, cfg.batch_size, cfg.seed
    min_speedup, max_psnr_drop, interleave = cfg.min_speedup, cfg.max_psnr_drop, cfg.interleave
    raw = is_raw_data(data)
    metric_def = get_definition(cfg.metric_for(raw))
    if raw:  # real measurements: the fastMRI protocol (mask per file, RSS target, crop)
        rev = load_raw_eval(data, op, entries, scale=cfg.kspace_scale, coil_maps=cfg.coil_maps,
                            max_images=cfg.max_images, say=say)
        hashes, data_notes, data_record = rev.hashes, rev.notes, rev.record(seed)
    else:
        ev = load_eval_data(data, op, cfg.max_images, cfg.fit)
        hashes, data_notes = ev.hashes, ev.notes
        data_record = {"source": ev.source, "kind": "images", "n_images": int(ev.images.shape[0]), "seed": seed,
                       "sha256": ev.hashes, "files": ev.files}
    check_finetune_overlap(entries, hashes)
    if cfg.warm_start:  # the volume to time warm starts on, refused before any work when there is none
        from .warmstart import raw_sequence, sequence_starts

        warm_timed = (raw_sequence(rev, batch_size, cfg.warm_batches) if raw  # (y, op) batches
                      else sequence_starts(ev.volume_index, len(ev.images), batch_size, cfg.warm_batches))  # starts
    notes: list[str] = []
    if env["note"]:
        notes.append(env["note"])
    notes += list(data_notes)
    notes += lineage_notes(entries)
    if not dev.startswith("cuda") and busy_note(env):
        notes.append(busy_note(env))
    for e in entries:
        e.model.eval().to(device=dev, dtype=torch.float32)
    extra = pruned_networks(entries)  # networks pruned besides the models' own priors: counted for all
    if extra:
        notes.append(pruned_networks_note(entries, extra))

    def counter(model):
        return _CostCounter(model, extra)

    scored = []
    if raw:
        for e in entries:
            say(f"reconstructing {rev.n_images} slices of {len(rev.volumes)} volume(s) with {e.label}")
            scored.append(score_raw(e, rev, dev, batch_size, metric_def, counter))
        y, op = rev.timing_input(batch_size)
        op = op.to(dev)
        truth = scored[0]["truth"]
    else:
        say(f"simulating measurements for {ev.images.shape[0]} images (seed {seed})")
        y = simulate_measurements(ev.images, op.to("cpu"), seed)
        op = op.to(dev)
        # quality and costs (also a first warm-up)
        for e in entries:
            say(f"reconstructing with {e.label}")
            scored.append(reconstruct_and_score(e, y, ev.images, op, dev, batch_size, metric_def, counter))
        truth = ev.images[:1].clone()
    say(f"timing {len(entries)} models: {warmup} warm-up + {repeats} interleaved runs, batch {batch_size}")
    timings = time_models([e.model for e in entries], y, op, dev, warmup, repeats, batch_size, interleave)
    from .costs import NoCosts

    # quality again, its costs already counted eagerly: on the fast path (bf16), or warm-started
    if raw:
        def score(e, warm=False):
            return score_raw(e, rev, dev, batch_size, metric_def, NoCosts, warm=warm)
    else:
        def score(e, warm=False):
            return reconstruct_and_score(e, y, ev.images, op, dev, batch_size, metric_def, NoCosts, warm=warm,
                                         volume_index=ev.volume_index)
    fast_timings, fast_records, fast_scores = _fast_timings(entries, y, op, dev, cfg, notes, say, score, extra)
    if cfg.warm_start:
        from .warmstart import image_sequence, time_passes

        say("warm starts: reconstructing every volume in slice order, each solve from the previous slice's fixed point")
        warm_scores = [score(e, warm=True) for e in entries]
        if not raw:
            warm_timed = image_sequence(y, op, warm_timed, batch_size)
        say(f"timing cold and warm passes over {len(warm_timed) - 1} batches of one volume")
        warm_passes = time_passes([e.model for e in entries], warm_timed, dev, repeats, interleave)

    results: list[ModelResult] = []
    for e, sc, tm in zip(entries, scored, timings):
        priors = sc["priors"]
        prior_macs = float(sum(p["macs_per_call"] for p in priors.values()))
        calls = float(sum(p["calls_per_reconstruction"] for p in priors.values()))
        recon = float(sum(p["macs_per_reconstruction"] for p in priors.values()))
        vols = sc.get("volumes")
        (pm, ps), (sm, ss) = _quality_stats(sc, metric_def)
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
            volumes=vols,
        ))
    for r, ft, fr, fs in zip(results, fast_timings, fast_records, fast_scores):
        r.fast_timing, r.fast_path = ft, fr
        if fs is not None:
            (r.fast_psnr_mean, _), (r.fast_ssim_mean, _) = _quality_stats(fs, metric_def)
    if cfg.warm_start:
        from .warmstart import combine

        combine(results, warm_passes, [(q[0][0], q[1][0]) for q in (_quality_stats(w, metric_def) for w in warm_scores)])
    ref = results[0]
    for r in results:
        if r.fast_timing is not None and ref.fast_timing is not None and r.fast_timing.median_ms > 0:
            r.fast_speedup = ref.fast_timing.median_ms / r.fast_timing.median_ms
            r.fast_speedup_vs_eager_original = ref.timing.median_ms / r.fast_timing.median_ms
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
    from ..metrics import nonfinite_note

    for r in results:
        note = nonfinite_note(r.psnr, f"reconstructions of {r.label}") if r.psnr else None
        if note:
            notes.append(note)
        ft = r.fast_timing
        cap = (solver_settings or {}).get("max_iter")
        if cfg.bf16 and r.deq and ft is not None and cap and ft.iterations_mean is not None and ft.iterations_mean >= cap:
            notes.append(f"{r.label}: on the bf16 path the DEQ solver ran to max_iter ({cap}) without reaching tol: "
                         "bf16 rounding in the prior keeps the residual above it; compare at a looser --tol")
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
            "fast_path": {"compile": cfg.compile, "channels_last": cfg.channels_last, "bf16": cfg.bf16},
            "warm_start": cfg.warm_start,
        },
        solver=solver_settings,
        operator={"kind": getattr(op, "kind", type(op).__name__), "image_shape": list(op.image_shape),
                  "spec": getattr(op, "spec", None), "source": op_source},
        data=data_record,
        metric=metric_def.to_dict(),
        gates=gates,
        notes=notes,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    report.examples["__truth__"] = truth
    for e, sc in zip(entries, scored):
        report.examples[e.label] = sc["example"]
    return report
