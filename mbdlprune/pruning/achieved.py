"""Requested versus achieved removal, per layer and per prior; layers held back beyond the rounding fail in one line unless allow_partial."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import PruningError
from .config import FIXED, LAYER_TYPES, PruneConfig, SHORTFALL_TOLERANCE
from .discovery import PriorSite
from .groups import GroupPlan, kept_width
from .guards import join_name, _layer_matches, output_layers





def fixed_layers(model: nn.Module, site: PriorSite, image_channels: int, cfg: PruneConfig) -> dict[nn.Module, str]:
    """Layers of ``site`` that keep all their channels, with the tag of :data:`FIXED` saying why."""
    prior = site.module
    fixed = {m: "image" for m in output_layers(model, prior, image_channels)}
    for n, m in prior.named_modules():
        if n and _layer_matches(join_name(site.name, n), cfg.ignore):
            for sub in m.modules():
                fixed.setdefault(sub, "ignore")
    for m in prior.modules():  # a gate broadcast over the channels: torch-pruning refuses width-1 layers
        width = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features if isinstance(m, nn.Linear) else None
        if width == 1:
            fixed.setdefault(m, "one-channel")
    return fixed


def shortfall(before: int, after: int, requested: float | None, round_to: int | None, multiple: int | None = None) -> bool:
    """True when a layer kept more channels than ``requested`` asks, beyond what rounding allows.

    ``multiple`` is the step the layer's group is rounded to (``round_to`` and its channel
    groups; default ``round_to``). Rounding to the nearest multiple may keep up to half a step
    more than asked. The layer falls short when it could not keep a multiple (narrower than
    one step), keeps more than half a step above the request (held at one step, by --ignore,
    by an image layer or by the maximum ratio), or is left whole while the request lies half a
    ``round_to`` step or more below its width. Differences up to
    :data:`SHORTFALL_TOLERANCE` of the width never count.
    """
    if requested is None or requested <= 0 or before <= 0:
        return False
    if requested - (1.0 - after / before) <= SHORTFALL_TOLERANCE + 1e-9:
        return False
    rstep = round_to if round_to and round_to > 1 else 1
    step = multiple if multiple and multiple > 1 else rstep
    target = before * (1.0 - requested)
    return (after % step != 0 or after - target > step / 2 + 1e-9
            or (after == before and before - target >= rstep / 2 - 1e-9))


def _reason(plan: GroupPlan, cfg: PruneConfig) -> tuple[str, str]:
    """(category, words) for why ``plan``'s group kept more than asked."""
    if plan.blocked:
        return (plan.block_tag or "blocked", plan.blocked)
    round_to = cfg.round_to if cfg.round_to and cfg.round_to > 1 else 1
    t, w = plan.width0 * (1 - min(plan.ratio, 1.0)), plan.width0
    with_floor = kept_width(t, w, plan.multiple, w * (1 - cfg.max_layer_ratio))
    no_floor = kept_width(t, w, plan.multiple)
    if with_floor > no_floor:
        return ("max-ratio", f"maximum layer ratio {cfg.max_layer_ratio:g}")
    if no_floor > kept_width(t, w, round_to):
        return ("channel-groups", f"channel groups ({', '.join(plan.constraints)}): widths multiple of {plan.multiple}")
    if w < round_to:
        return ("rounding", f"--round-to {round_to} is wider than the layer")
    return ("rounding", f"--round-to {round_to}: at least {round_to} channels stay" if t < round_to else f"--round-to {round_to}")


def _requested_and_held(prefix, before, after, plans, fixed, names, cfg):
    """Per layer: the removal asked (None: the layer is in no group), a note, and the layers held back."""
    layer_plan: dict[str, tuple[int, GroupPlan]] = {}
    for plan in plans:
        for name, share in plan.layers.items():
            if name not in layer_plan or share > layer_plan[name][0]:
                layer_plan[name] = (share, plan)
    fixed_names = {names[m]: tag for m, tag in fixed.items() if m in names and isinstance(m, LAYER_TYPES)}
    requested: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    held: dict[str, dict[str, Any]] = {}
    for name, b in before.items():
        a = after.get(name, 0)
        if name in fixed_names:
            requested[name], notes[name] = 0.0, FIXED[fixed_names[name]][0]
            continue
        if name not in layer_plan:
            requested[name], notes[name] = None, "not in the traced graph"
            continue
        plan = layer_plan[name][1]
        requested[name] = round(float(plan.ratio), 6)
        if plan.blocked:
            notes[name] = plan.blocked
        if cfg.global_pruning and plan.is_global:
            continue  # --global: widths are uneven by design; the prior as a whole is checked
        if shortfall(b, a, plan.ratio, cfg.round_to, plan.multiple):
            cat, why = _reason(plan, cfg)
            notes[name] = why
            held[join_name(prefix, name)] = {"before": b, "after": a, "asked": round(b * (1 - plan.ratio), 2),
                                             "category": cat, "reason": why}
    if cfg.global_pruning:
        widths = {k: [before[k], after.get(k, 0)] for k in before}
        glob = {k: v for k, v in widths.items() if k in layer_plan and layer_plan[k][1].is_global and k not in fixed_names}
        req = requested_fraction(glob, {k: requested[k] for k in glob})
        got = removed_fraction(glob.values()) or 0.0
        step = cfg.round_to if cfg.round_to and cfg.round_to > 1 else 1
        total = sum(b for b, _ in glob.values())
        allowance = SHORTFALL_TOLERANCE + (step / 2 * len(glob) / total if total else 0.0)
        if req is not None and req - got > allowance:
            for k in glob:
                plan = layer_plan[k][1]
                if plan.blocked or widths[k][0] == widths[k][1]:
                    cat, why = _reason(plan, cfg) if plan.blocked else ("rounding", f"--global ranking and --round-to {step} kept it whole")
                    held[join_name(prefix, k)] = {"before": widths[k][0], "after": widths[k][1], "asked": None,
                                                  "category": cat, "reason": why}
            if not any(join_name(prefix, k) in held for k in glob):
                held[prefix or "(prior)"] = {"before": total, "after": sum(a for _, a in glob.values()), "asked": round(total * (1 - req), 2),
                                             "category": "rounding", "reason": f"--global ranking removed {got:.0%} of {req:.0%}"}
    return requested, notes, held


def requested_fraction(widths: dict[str, list[int]], requested: dict[str, float | None]) -> float | None:
    """Channel-weighted removal asked over the layers of ``widths`` (layers in no group count as 0)."""
    total = sum(b for b, _ in widths.values())
    if not total:
        return None
    return round(sum(b * (requested.get(k) or 0.0) for k, (b, _) in widths.items()) / total, 4)


#: Categories of held-back layers and what to do about each.
HELD_FIXES = {
    "rounding": "lower --round-to (8, or 1 for exact widths)",
    "channel-groups": "lower --round-to or --ignore those layers (GroupNorm and grouped convs keep whole groups)",
    "max-ratio": "ask at most the maximum layer ratio",
    "ignore": "--ignore the whole coupled group, or drop the --ignore that holds it",
    "image": "--ignore those layers (they share channels with the image output)",
    "one-channel": "--ignore those layers",
    "blocked": "--ignore those layers",
}


def held_back_error(record: dict[str, Any], removed_nothing: bool = False) -> PruningError | None:
    """The one-line error for a pruning record whose layers fell short of the request (None: all met).

    ``removed_nothing``: nothing was pruned at all; the message says so and ``--allow-partial``
    is not offered (it cannot help).
    """
    held = {k: v for rec in record["priors"].values() for k, v in (rec.get("held_back") or {}).items()}
    if not held:
        return None
    by_reason: dict[str, list[str]] = {}
    cats: list[str] = []
    for layer, h in held.items():
        by_reason.setdefault(h["reason"], []).append(f"{layer} {h['after']}/{h['before']}")
        if h["category"] not in cats:
            cats.append(h["category"])
    parts = []
    for why, layers in list(by_reason.items())[:3]:
        more = f" +{len(layers) - 3} more" if len(layers) > 3 else ""
        parts.append(f"{', '.join(layers[:3])}{more} ({why})")
    more = f"; {len(by_reason) - 3} more reasons" if len(by_reason) > 3 else ""
    mode = " (--global)" if record.get("global") else ""
    what = "removed no parameters" if removed_nothing else f"held back {len(held)} layer(s)"
    problem = f"pruning at ratio {record['ratio']:g}{mode} {what}, kept/before channels: " + "; ".join(parts) + more
    fixes = "; or ".join(HELD_FIXES[c] for c in cats if c in HELD_FIXES)
    fix = fixes if removed_nothing else "pass --allow-partial to accept it, or " + fixes
    return PruningError(problem, fix)


def removed_fraction(pairs) -> float | None:
    """Fraction of output channels removed over ``(before, after)`` width pairs (None when empty)."""
    pairs = list(pairs)
    before = sum(b for b, _ in pairs)
    after = sum(a for _, a in pairs)
    return round(1.0 - after / before, 4) if before else None


def achieved_ratios(record: dict[str, Any]) -> dict[str, float]:
    """Fraction of output channels removed per layer (may exceed the request near norm groups)."""
    out = {}
    for prior, rec in record.get("priors", {}).items():
        for layer, (before, after) in rec["widths"].items():
            out[join_name(prior, layer)] = 1.0 - after / before if before else 0.0
    return out


#: A prior whose achieved removal falls this far (fraction of its channels) below the request
#: gets a note, even where rounding to the nearest multiple explains it.
ROUNDING_NOTE = 0.05


def rounding_notes(priors: dict[str, dict[str, Any]], round_to: Any) -> list[str]:
    """One line per kind of shortfall that rounding alone caused (not refused: the nearest
    multiple is the rule), naming the achieved and requested removal and a ``--round-to`` that
    comes within :data:`SHORTFALL_TOLERANCE` of the request, when one exists.

    ``priors``: :func:`mbdlprune.api.summarize`'s per-prior entries (with ``layers``).
    """
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to <= 1:
        return []  # exact widths, or widths chosen by timing (never less than asked)
    short: dict[tuple, list[str]] = {}
    for name, p in priors.items():
        req, ach = p.get("requested_channel_ratio"), p.get("achieved_channel_ratio")
        if req is None or ach is None or req - ach <= ROUNDING_NOTE:
            continue
        key = (round(req, 3), round(ach, 3), tuple(p["widths_before"]), tuple(p["widths_after"]))
        short.setdefault(key, []).append(name)
    notes = []
    for (req, ach, before, after), names in short.items():
        layers = [lay for n in names for lay in priors[n]["layers"].values() if lay.get("requested")]
        step = next((s for s in (8, 4, 2, 1) if s < round_to and all(
            abs((1 - kept_width(lay["before"] * (1 - lay["requested"]), lay["before"], s) / lay["before"])
                - lay["requested"]) <= SHORTFALL_TOLERANCE for lay in layers)), None)
        who = names[0] if len(names) == 1 else f"{len(names)} priors ({names[0]}, ...)"
        fix = f"--round-to {step} comes within {SHORTFALL_TOLERANCE:.0%} of the request" if step else \
            "a smaller --round-to comes closer"
        notes.append(f"{who}: {ach:.0%} of the channels removed where {req:.0%} was asked: widths are rounded to the "
                     f"nearest multiple of {round_to} ({list(before)} -> {list(after)}); {fix}, or --round-to auto "
                     "picks widths by timing them")
    return notes

