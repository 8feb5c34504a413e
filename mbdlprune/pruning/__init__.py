"""Structured channel pruning of the prior CNN(s) inside an MBDL model, with torch-pruning.

Three separate steps: find the priors and their real inputs (:mod:`.discovery`), prune each
prior group by group on torch-pruning's dependency graph (:mod:`.groups`), then verify and
record (:mod:`.core`, :mod:`.achieved`). Every silent failure mode of torch-pruning is guarded
(:mod:`.guards`): inputs go as a tuple, gradients are enabled on every parameter while
tracing, image-producing convs are ignored, norm parametrizations are removed and restored,
and the result is checked (parameters dropped, shapes unchanged).

The kept width of each group of coupled channels is computed here, not by torch-pruning's
rounding: the multiple of ``round_to`` and of every channel-group constraint in the group
(GroupNorm groups, grouped convs) nearest the requested removal (:func:`kept_width`). After
pruning, every layer's achieved removal is compared with the request; a layer held back beyond
the rounding fails the prune in one line naming it and the reason, unless ``allow_partial``
(:func:`shortfall`).

``round_to="auto"`` chooses each group's width by timing its layers at their real input size on
the device (CUDA when available, else the CPU), among widths that keep no more than asked
(:mod:`.widths`).
"""

# Names load lazily: the submodules import torch, and the command line needs only the
# torch-free registries (:mod:`.importances`) to build its help.
_LAZY = {
    "HELD_FIXES": "achieved",
    "achieved_ratios": "achieved",
    "fixed_layers": "achieved",
    "held_back_error": "achieved",
    "removed_fraction": "achieved",
    "requested_fraction": "achieved",
    "shortfall": "achieved",
    "AUTO": "config",
    "DEFAULT_ROUND_TO": "config",
    "FIXED": "config",
    "LAYER_TYPES": "config",
    "PruneConfig": "config",
    "SHORTFALL_TOLERANCE": "config",
    "TRACE_SIDE": "config",
    "is_auto": "config",
    "parse_round_to": "config",
    "prune_priors": "core",
    "prune_site": "core",
    "count_macs": "costs",
    "count_params": "costs",
    "layer_widths": "costs",
    "shape_and_macs": "costs",
    "trace_inputs": "costs",
    "PriorSite": "discovery",
    "SHAPE_KEEPING_NORMS": "discovery",
    "candidate_prior_names": "discovery",
    "cheap_solver": "discovery",
    "find_priors": "discovery",
    "meta_copy": "discovery",
    "resolve_prior_names": "discovery",
    "GroupPlan": "groups",
    "kept_width": "groups",
    "make_importance": "groups",
    "prune_groups": "groups",
    "check_finite_weights": "guards",
    "check_patterns": "guards",
    "grads_enabled": "guards",
    "join_name": "guards",
    "norm_parametrizations_removed": "guards",
    "output_layers": "guards",
    "IMPORTANCES": "importances",
    "WidthTimer": "width_timer",
    "candidate_widths": "widths",
    "choose_width": "widths",
    "choose_widths": "widths",
    "default_cache_dir": "width_timer",
    "layer_input_shapes": "widths",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mbdlprune.pruning.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mbdlprune.pruning' has no attribute {name!r}")
