"""The pruning step: each prior pruned, its record built and the whole model checked afterwards."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from ..errors import PruningError
from .achieved import fixed_layers, held_back_error, removed_fraction, _requested_and_held, requested_fraction
from .config import PruneConfig, is_auto
from .costs import count_params, layer_widths, shape_and_macs, trace_inputs
from .discovery import cheap_solver, find_priors, PriorSite, _probe_calls
from .groups import prune_groups, _sync_parameterless_norms
from .guards import check_finite_weights, check_patterns, grads_enabled, join_name, _layer_matches, norm_parametrizations_removed, output_layers



def prune_site(model: nn.Module, site: PriorSite, cfg: PruneConfig, timer=None) -> dict[str, Any]:
    """Prune one prior in place; return its record (widths requested and achieved, params, MACs, history).

    ``round_to="auto"``: ``timer`` (a :class:`.width_timer.WidthTimer`) times the prior's layers at
    the shapes its real input gives them; the record's ``widths_timing`` holds, per group (by
    its root layer), the candidate widths, their milliseconds and the width kept.
    """
    prior, inputs = site.module, tuple(site.inputs)
    if not inputs or not torch.is_tensor(inputs[0]):
        raise PruningError(f"prior {site.name!r} is not called with a tensor", "pass --prior naming a CNN that takes an image tensor")
    was_training = prior.training
    prior.eval()
    ref_shape, before_macs = shape_and_macs(prior, inputs)
    trace, trace_shape = trace_inputs(prior, inputs, ref_shape)
    before_widths = layer_widths(prior)
    before_params = count_params(prior)
    fixed = fixed_layers(model, site, ref_shape[1], cfg)
    names = {m: n for n, m in prior.named_modules()}
    ignored = output_layers(model, prior, ref_shape[1])
    ignored += [m for n, m in prior.named_modules() if n and _layer_matches(join_name(site.name, n), cfg.ignore)]
    auto = is_auto(cfg.round_to)
    shapes = None
    if auto:
        from .widths import layer_input_shapes

        shapes = layer_input_shapes(prior, inputs)
    with norm_parametrizations_removed(prior), grads_enabled(prior):
        history, plans = prune_groups(prior, trace, cfg, fixed, site.name, timer=timer, shapes=shapes)
        prior.zero_grad(set_to_none=True)
    prior.train(was_training)
    with torch.no_grad(), _sync_parameterless_norms(prior):
        out = prior(*trace)
    out = out[0] if isinstance(out, (tuple, list)) else out
    after_shape, after_macs = shape_and_macs(prior, inputs)
    if tuple(out.shape) != trace_shape or after_shape != ref_shape:
        raise PruningError(f"pruning changed the output of {site.name!r} from {ref_shape} to {after_shape}", "add the layer that produces the image to --ignore")
    after_widths = layer_widths(prior)
    # auto widths never keep more than asked: checked as exact widths (multiples of the channel groups)
    check_cfg = dataclasses.replace(cfg, round_to=1) if auto else cfg
    requested, notes, held = _requested_and_held(site.name, before_widths, after_widths, plans, fixed, names, check_cfg)
    widths = {k: [before_widths[k], after_widths.get(k, 0)] for k in before_widths}
    timing = {p.root: p.timing for p in plans if p.timing} if auto else None
    return {
        "calls_per_forward": site.calls,
        "input_shape": [list(t.shape) for t in inputs if torch.is_tensor(t)],
        "trace_shape": [list(t.shape) for t in trace if torch.is_tensor(t)],
        "params_before": before_params,
        "params_after": count_params(prior),
        "macs_before": before_macs,
        "macs_after": after_macs,
        "widths": widths,
        "requested": requested,
        "requested_channel_ratio": requested_fraction(widths, requested),
        "achieved_channel_ratio": removed_fraction(widths.values()) or 0.0,
        "notes": notes,
        "held_back": held,
        "ignored": sorted(join_name(site.name, n) for n, m in prior.named_modules() if any(m is i for i in ignored)),
        **({"widths_timing": timing} if auto else {}),
        "history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
    }


def prune_priors(model: nn.Module, inputs: tuple, cfg: PruneConfig, timer=None) -> dict[str, Any]:
    """Prune every prior of ``model`` (traced with ``inputs``) and verify the whole model.

    ``round_to="auto"``: widths are timed with ``timer`` (default: a
    :class:`.width_timer.WidthTimer` on CUDA when available, else the CPU, cached in the user cache
    folder); the record's ``widths_device`` says where and how.

    Returns the pruning record stored in checkpoints. Raises PruningError when nothing was
    removed, the model's output shape changed, or (unless ``cfg.allow_partial``) a layer kept
    more channels than the request and the rounding allow (see :func:`shortfall`).
    """
    cfg.validate()
    check_finite_weights(model)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    total_before = count_params(model)
    sites, ref = find_priors(model, inputs, cfg.priors)
    check_patterns(sites, cfg)
    auto = is_auto(cfg.round_to)
    if auto and timer is None:
        from .width_timer import WidthTimer

        timer = WidthTimer()
    try:
        records = {s.name: prune_site(model, s, cfg, timer) for s in sites}
    finally:
        if auto:
            timer.flush()  # the timings are kept even when the prune fails
    total_after = count_params(model)
    if total_after >= total_before:
        err = held_back_error({"ratio": cfg.ratio, "global": cfg.global_pruning, "priors": records}, removed_nothing=True)
        if err is not None:
            raise err
        raise PruningError(
            f"pruning removed no parameters at ratio {cfg.ratio}",
            "raise --ratio, lower --round-to, or check --ignore does not cover every layer",
        )
    try:  # the priors' own shapes were checked on their real inputs: probe them here (no prior compute)
        with torch.no_grad(), cheap_solver(model), _probe_calls(model, [s.name for s in sites]):
            out = model(*inputs)
    except Exception:  # a forward the meta probes cannot follow (e.g. shape-dependent code): run it for real,
        with torch.no_grad(), cheap_solver(model):  # where a genuine error surfaces and is not hidden
            out = model(*inputs)
    if tuple(out.shape) != tuple(ref.shape):
        raise PruningError(f"the pruned model maps inputs to {tuple(out.shape)}, not {tuple(ref.shape)}", "report this model; add its output layers to --ignore")
    record = {
        "ratio": cfg.ratio,
        "importance": cfg.importance,
        "global": cfg.global_pruning,
        "iterative_steps": cfg.iterative_steps,
        "round_to": cfg.round_to,
        "layer_ratios": cfg.layer_ratios,
        "ignore": cfg.ignore,
        "max_layer_ratio": cfg.max_layer_ratio,
        "allow_partial": cfg.allow_partial,
        "seed": cfg.seed,
        "params_before": total_before,
        "params_after": total_after,
        "seconds": round(time.perf_counter() - t0, 3),
        "priors": records,
    }
    if auto:
        from .widths import MIN_KEEP, TIE

        record["widths_device"] = {**timer.info, "measured": timer.measured, "from_cache": timer.from_cache,
                                   "cache": str(timer.cache_path) if timer.cache_path else None, "notes": list(timer.notes),
                                   "rule": f"fewest ms per MAC (ties within {TIE:.0%}: the wider) among widths "
                                           f"from {MIN_KEEP:g} x to 1 x the width the ratio allows"}
    err = held_back_error(record)
    if err is not None and not cfg.allow_partial:
        raise err
    return record
