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
"""

from .config import (DEFAULT_ROUND_TO, FIXED, _fraction, IMPORTANCES, _is_int, LAYER_TYPES, PruneConfig, SHORTFALL_TOLERANCE, TRACE_SIDE)  # noqa: F401
from .discovery import (candidate_prior_names, cheap_solver, find_priors, _has_conv, _identity, meta_copy, PriorSite, _probe_calls, _record_calls, SHAPE_KEEPING_NORMS, _zeros_like_meta)  # noqa: F401
from .guards import (check_finite_weights, check_patterns, grads_enabled, join_name, _layer_matches, norm_parametrizations_removed, output_layers, _own_class, _suggest)  # noqa: F401
from .costs import (count_macs, count_params, layer_widths, shape_and_macs, trace_inputs)  # noqa: F401
from .groups import (_block_indices, _channel_groups, _cut_broadcasts, _global_targets, GroupPlan, kept_width, make_importance, prune_groups, _sync_parameterless_norms, _taylor_backward)  # noqa: F401
from .achieved import (achieved_ratios, fixed_layers, held_back_error, HELD_FIXES, _reason, removed_fraction, _requested_and_held, requested_fraction, shortfall)  # noqa: F401
from .core import (prune_priors, prune_site)  # noqa: F401
