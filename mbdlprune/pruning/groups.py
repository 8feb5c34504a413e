"""Pruning group by group on torch-pruning's public group API: the kept width of each group (nearest multiple of round_to and of its channel groups, or measured: round_to="auto"), importances, global thresholds."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import MbdlError
from .config import FIXED, LAYER_TYPES, PruneConfig, is_auto
from .importances import IMPORTANCES
from .guards import join_name, _layer_matches



# -- pruning -----------------------------------------------------------------------------------
def make_importance(name: str):
    """The torch-pruning importance object of a registered criterion (:data:`.importances.IMPORTANCES`)."""
    return IMPORTANCES.get(name).build()


def kept_width(target: float, width: int, multiple: int, floor: float = 0.0) -> int:
    """The width to keep: the multiple of ``multiple`` nearest ``target``, within ``[floor, width]``.

    At least one multiple stays, and never fewer than ``floor`` channels (the maximum ratio).
    A tie goes to the even number of multiples (72 at 16 keeps 64, not 80). When no multiple
    fits in the allowed range the layer keeps its ``width``: it cannot be pruned.
    """
    multiple = max(int(multiple), 1)
    lo = multiple * max(1, math.ceil(floor / multiple - 1e-9))
    hi = multiple * (width // multiple)
    if lo > hi:
        return width
    return min(max(multiple * int(round(target / multiple)), lo), hi)


@dataclass
class GroupPlan:
    """What pruning did with one group of coupled channels (named by its root layer) and why."""

    root: str
    layers: dict[str, int] = field(default_factory=dict)  # out-channel layers -> how many of the root's channels they hold
    ratio: float = 0.0  # the removal asked of this group
    width0: int = 0  # the root's width before pruning
    kept: int = 0  # the root's width after pruning
    target: float = 0.0  # width0 * (1 - ratio): what the ratio asks to keep
    multiple: int = 1  # kept widths are multiples of this (round_to and channel groups)
    channel_groups: int = 1
    constraints: list[str] = field(default_factory=list)  # the layers whose channel groups constrain the group
    blocked: str | None = None  # why the group was not pruned at all
    is_global: bool = False  # ranked with the prior's other groups (--global)
    step_target: float = 0.0  # --global: the width the global threshold leaves in this step
    block_tag: str | None = None  # the FIXED tag of the layer that blocks the group
    timing: dict | None = None  # round_to="auto": the widths timed, their milliseconds and the one chosen


def _channel_groups(dg, group, inside: set[int]) -> tuple[int, list[str]]:
    """Least common multiple of the channel groups of every layer in ``group`` (GroupNorm groups,
    grouped convs; depthwise convs shrink their groups with their channels and do not count)."""
    lcm, why = 1, []
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Module) or id(m) not in inside:
            continue
        if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None:
            continue
        g = pruner.get_out_channel_groups(m) if dg.is_out_channel_pruning_fn(dep.handler) else pruner.get_in_channel_groups(m)
        if isinstance(g, int) and g > 1:
            if lcm % g:
                lcm = lcm * g // math.gcd(lcm, g)
            label = f"GroupNorm({g})" if isinstance(m, nn.GroupNorm) else f"groups={g}"
            if label not in why:
                why.append(label)
    return lcm, why


def _cut_broadcasts(dg, one_channel: list[nn.Module]) -> None:
    """Decouple one-channel branches from the tensors they are broadcast against.

    ``x * sigmoid(gate(x))`` with a one-channel ``gate`` scales every channel of ``x`` by the
    same map; torch-pruning's graph couples the gate's single channel to ``x``'s channels as if
    the widths matched, so the group of ``x`` could never be pruned (a one-channel layer
    cannot shrink). Starting at each one-channel layer and following unary element-wise ops,
    the dependency between the branch and the first element-wise op with several inputs is
    dropped in both directions: pruning ``x`` then leaves the gate's output alone.
    """
    import torch_pruning as tp

    elementwise = tp.ops.OPTYPE.ELEMENTWISE
    for m in one_channel:
        node = dg.module2node.get(m)
        stack, seen = ([node] if node is not None else []), set()
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            for out in n.outputs:
                if out.type != elementwise:
                    continue
                if len(out.inputs) == 1:
                    stack.append(out)
                else:
                    n.dependencies = [d for d in n.dependencies if d.target is not out]
                    out.dependencies = [d for d in out.dependencies if d.target is not n]


def _block_indices(dim_imp: torch.Tensor, n_per_block: int, block: int, blocks: int) -> list[int]:
    """The ``n_per_block`` least important positions, repeated in every channel group."""
    order = torch.argsort(dim_imp, stable=True)[:n_per_block].tolist()
    return sorted(int(i) + b * block for b in range(blocks) for i in order)


def prune_groups(prior: nn.Module, inputs: tuple, cfg: PruneConfig, fixed: dict[nn.Module, str], prefix: str,
                 timer=None, shapes: dict | None = None):
    """Prune ``prior`` in place, one dependency group at a time; return (history, plans).

    The dependency graph is torch-pruning's (``DependencyGraph.get_all_groups``), the scores its
    importances applied to each group, the cut its ``group.prune``. The kept width of every group
    is computed here: the multiple of ``round_to`` and of every channel-group constraint in the
    group (:func:`kept_width`) nearest the requested removal; each channel group loses the same
    positions. ``fixed`` maps layers that keep every channel (image layers, --ignore, one-channel
    layers) to the reason; a group holding one of them is not pruned.

    ``round_to="auto"``: widths are multiples of the channel groups only, and in the last step
    each group keeps the width :func:`.widths.choose_widths` measures best with ``timer`` (a
    :class:`.width_timer.WidthTimer`) on the layers' real input ``shapes``
    (:func:`.widths.layer_input_shapes`), never more than the request allows.
    """
    import torch_pruning as tp

    names = {m: n for n, m in prior.named_modules()}
    inside = {id(m) for m in prior.modules()}
    fixed_ids = {id(m): (names.get(m, "?"), why) for m, why in fixed.items()}
    layer_ratio = {}
    for n, m in prior.named_modules():
        for pat, r in cfg.layer_ratios.items():
            if isinstance(m, LAYER_TYPES) and _layer_matches(join_name(prefix, n), [pat]):
                layer_ratio.setdefault(m, float(r))
    dg = tp.DependencyGraph().build_dependency(prior, example_inputs=tuple(inputs))
    _cut_broadcasts(dg, [m for m, tag in fixed.items() if tag == "one-channel"])
    importance = make_importance(cfg.importance)
    round_to = cfg.rounding()
    auto = is_auto(cfg.round_to)
    steps = cfg.iterative_steps
    plans: dict[nn.Module, GroupPlan] = {}
    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    for step in range(1, steps + 1):
        if IMPORTANCES.get(cfg.importance).needs_gradients:
            _taylor_backward(prior, inputs)
        scored = []
        for group in dg.get_all_groups(ignored_layers=[], root_module_types=roots):
            root, fn = group[0].dep.target.module, group[0].dep.handler
            width = dg.get_out_channels(root)
            outs = [(dep.target.module, len(idxs)) for dep, idxs in group
                    if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)]
            plan = plans.get(root)
            if plan is None:
                own = next((layer_ratio[m] for m, _ in outs if m in layer_ratio), None)
                ratio = float(cfg.ratio) if own is None else own
                plan = plans[root] = GroupPlan(names.get(root, "?"), ratio=ratio, width0=width, kept=width, multiple=round_to,
                                               target=width * (1 - ratio), is_global=cfg.global_pruning and own is None)
                plan.layers = {names[m]: n for m, n in outs if isinstance(m, LAYER_TYPES) and m in names}
            plan.kept = width
            held = next((fixed_ids[id(m)] for m, _ in outs if id(m) in fixed_ids), None)
            if held is not None:
                plan.blocked, plan.block_tag = f"{FIXED[held[1]][1]} {join_name(prefix, held[0])}", held[1]
                continue
            lcm, why = _channel_groups(dg, group, inside)
            plan.channel_groups, plan.constraints = lcm, why
            plan.multiple = round_to * lcm // math.gcd(round_to, lcm)
            if width % lcm:
                plan.blocked = f"channel groups ({', '.join(why)}) that do not divide its {width} channels"
                continue
            step_ratio = min(plan.ratio, 1.0) * step / steps
            if step_ratio <= 0:
                continue
            imp = importance(group)
            if imp is None:
                plan.blocked = "no importance score"
                continue
            imp = imp.detach().float().cpu()
            dim_imp = imp.view(lcm, -1).mean(0) if lcm > 1 else imp
            scored.append((plan, group, root, fn, width, step_ratio, dim_imp))
        _global_targets([s for s in scored if s[0].is_global], cfg.ratio * step / steps)
        measured = _measured_widths(scored, cfg, timer, shapes or {}, names, inside, dg) if auto and step == steps else {}
        for plan, _group, root, fn, width, step_ratio, dim_imp in scored:
            floor = plan.width0 * (1 - cfg.max_layer_ratio)
            target = plan.step_target if plan.is_global else plan.width0 * (1 - step_ratio)
            kept = measured[id(plan)] if id(plan) in measured else kept_width(target, width, plan.multiple, floor)
            n = width - kept
            if n <= 0:
                continue
            idxs = _block_indices(dim_imp, n // plan.channel_groups, width // plan.channel_groups, plan.channel_groups)
            pgroup = dg.get_pruning_group(root, fn, idxs)
            if not dg.check_pruning_group(pgroup):
                plan.blocked = "pruning would empty a layer"
                continue
            pgroup.prune()
            plan.kept = kept
    return dg.pruning_history(), list(plans.values())


def _measured_widths(scored: list, cfg: PruneConfig, timer, shapes: dict, names: dict, inside: set[int], dg) -> dict[int, int]:
    """round_to="auto": the kept width of each scored group (by ``id`` of its plan), by measurement.

    A group's allowed widths are the multiples of its channel groups from :data:`.widths.MIN_KEEP`
    of the widest the request allows (``width0 * (1 - ratio)`` rounded down: never more than
    asked) up to that width, and no fewer than the maximum ratio leaves. A group with no such
    width is rounded as with ``round_to=1`` (and checked like it).
    """
    from .widths import MIN_KEEP, WidthGroup, candidate_widths, choose_widths

    groups, targets = [], {}
    for plan, group, _root, _fn, width, step_ratio, _imp in scored:
        target = plan.step_target if plan.is_global else plan.width0 * (1 - step_ratio)
        m = plan.multiple
        hi = min(m * math.floor(target / m + 1e-9), m * (width // m))
        lo = m * max(1, math.ceil(plan.width0 * (1 - cfg.max_layer_ratio) / m - 1e-9))
        if hi < lo or hi >= width:
            continue
        touches: dict[tuple[int, str], tuple[nn.Module, str, int]] = {}
        for dep, idxs in group:
            mod = dep.target.module
            if not isinstance(mod, LAYER_TYPES) or id(mod) not in inside:
                continue
            axis = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in" if dg.is_in_channel_pruning_fn(dep.handler) else None
            if axis is not None:
                prev = touches.get((id(mod), axis))
                touches[(id(mod), axis)] = (mod, axis, max(len(idxs), prev[2] if prev else 0))
        cands = candidate_widths(max(lo, math.ceil(MIN_KEEP * hi - 1e-9)), hi, m)
        groups.append(WidthGroup(plan, width, cands, list(touches.values())))
        targets[id(plan)] = (round(float(target), 2), hi)
    if not groups:
        return {}
    if timer is None:
        from .width_timer import WidthTimer

        timer = WidthTimer()
    chosen = choose_widths(groups, shapes, timer, names)
    for g in groups:
        target, hi = targets[id(g.key)]
        g.key.timing = {"width": g.width, "target": target, "allowed": hi, **g.table}
    return {id(g.key): w for g, w in zip(groups, chosen)}


def _global_targets(scored: list, ratio: float) -> None:
    """Global ranking: one threshold over the importances of every group of a prior (as
    torch-pruning's global mode: each position of a channel-grouped layer is one unit), giving
    each group its own target width (``plan.step_target``), rounded later like any other."""
    if not scored:
        return
    units0 = sum(p.width0 // p.channel_groups for p, *_ in scored)
    concat = torch.cat([d for *_, d in scored])
    n_pruned = len(concat) - int(units0 * (1 - ratio))
    thres = torch.kthvalue(concat, n_pruned).values if 0 < n_pruned <= len(concat) else None
    for plan, _g, _r, _f, width, _s, dim_imp in scored:
        cut = int((dim_imp <= thres).sum()) if thres is not None else 0
        plan.step_target = width - cut * plan.channel_groups


@contextmanager
def _sync_parameterless_norms(module: nn.Module) -> Iterator[None]:
    """Set ``num_features`` of norms without parameters (torch-pruning cannot see them) from their input."""

    def hook(m, args):
        m.num_features = int(args[0].shape[1])

    hs = [m.register_forward_pre_hook(hook) for m in module.modules()
          if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is None and m.running_mean is None]
    try:
        yield
    finally:
        for h in hs:
            h.remove()


def _taylor_backward(prior: nn.Module, inputs: tuple) -> None:
    """Taylor importance needs gradients: use the prior's output energy on its traced input."""
    prior.zero_grad(set_to_none=True)
    out = prior(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.pow(2).mean().backward()
