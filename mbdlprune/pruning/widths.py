"""``round_to="auto"``: kept widths chosen by timing the prior's real layer shapes on the device.

For every group of coupled channels, the convolutions (and linear layers) whose input or output
channels the group sets are timed at the input size they really see (each prior's recorded
input, followed through the layers on the meta device), at candidate kept widths up to what the
requested ratio allows (never more: the removal is at least the request). The group keeps the
candidate the device runs most efficiently: the fewest milliseconds per multiply-accumulate
(the highest GMAC/s), ties within :data:`TIE` going to the wider width. Candidates lie between
:data:`MIN_KEEP` of the allowed width and the allowed width: the lowest time alone always
picks the narrowest width (fewer channels, fewer MACs), which would remove far more than asked.

Timings are medians of :data:`REPEATS` runs after :data:`WARMUP` warm-up runs, a group's
candidates timed in turn (layer signatures, MACs and the measurement: :mod:`.layer_timing`),
cached as JSON per device name, dtype, torch version and layer signature in
``$XDG_CACHE_HOME/mbdlprune/widths``; a cache file is untrusted input, ignored with a note and
rewritten when it fails any check (:class:`WidthTimer`: :mod:`.width_timer`). This module
follows the real input shapes and chooses the widths; it re-exports the other two's names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .layer_timing import (REPEATS, ROUND_BYTES, WARMUP, layer_signature, measure_many, measure_ms, signature_key,
                           signature_macs)
from .width_timer import (CACHE_FORMAT, CACHE_VERSION, MAX_CACHE_BYTES, MAX_CACHE_ENTRIES, WidthTimer, default_cache_dir,
                          device_info, resolve_device)

__all__ = [
    # this module
    "MAX_CANDIDATES", "MIN_KEEP", "PASSES", "TIE", "WidthGroup", "candidate_widths", "choose_width", "choose_widths",
    "layer_input_shapes",
    # .layer_timing
    "REPEATS", "ROUND_BYTES", "WARMUP", "layer_signature", "measure_many", "measure_ms", "signature_key", "signature_macs",
    # .width_timer
    "CACHE_FORMAT", "CACHE_VERSION", "MAX_CACHE_BYTES", "MAX_CACHE_ENTRIES", "WidthTimer", "default_cache_dir",
    "device_info", "resolve_device",
]

#: Candidates per group at most (multiples of 32, 16 and 8 in the range are always among them).
MAX_CANDIDATES = 12
#: Two widths whose milliseconds per MAC differ by less than this fraction are a tie: the wider wins.
TIE = 0.03
#: Candidates are no narrower than this fraction of the width the ratio allows.
MIN_KEEP = 0.75
#: Coordinate passes over the groups (each group's choice depends on its neighbours' widths).
PASSES = 3


# -- real input shapes --------------------------------------------------------------------------
def layer_input_shapes(prior: nn.Module, inputs: tuple) -> dict[nn.Module, list[tuple[int, ...]]]:
    """The input shape of every call of each conv/linear layer of ``prior`` on ``inputs`` (the
    prior's real input), followed on the meta device; on real tensors where a layer has no meta kernel."""
    from .discovery import meta_copy

    names = {n: m for n, m in prior.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}

    def run(module, args):
        seen: dict[str, list] = {}
        hs = []
        for n, m in module.named_modules():
            if n in names or (n == "" and "" in names):
                hs.append(m.register_forward_pre_hook(
                    lambda _m, a, _n=n: seen.setdefault(_n, []).append(tuple(int(s) for s in a[0].shape))))
        try:
            with torch.no_grad():
                module(*args)
        finally:
            for h in hs:
                h.remove()
        return seen

    try:
        seen = run(meta_copy(prior), tuple(t.to("meta") if torch.is_tensor(t) else t for t in inputs))
    except Exception:  # a layer without a meta kernel: follow the real tensors
        seen = run(prior, inputs)
    return {names[n]: shapes for n, shapes in seen.items() if n in names}


# -- candidates and the choice ------------------------------------------------------------------
def candidate_widths(lo: int, hi: int, multiple: int = 1, max_n: int = MAX_CANDIDATES) -> list[int]:
    """Widths from ``lo`` to ``hi`` in steps of ``multiple`` (ascending), at most ``max_n``: the
    widest first, then multiples of 32, 16, 8, 4, 2, then the others, widest first in each tier."""
    multiple = max(int(multiple), 1)
    lo = multiple * max(1, math.ceil(lo / multiple - 1e-9))
    all_ = list(range(lo, hi + 1, multiple))
    if len(all_) <= max_n:
        return all_
    picked: list[int] = [all_[-1]]
    for tier in (32, 16, 8, 4, 2, 1):
        for w in reversed(all_):
            if len(picked) >= max_n:
                break
            if w % tier == 0 and w not in picked:
                picked.append(w)
    return sorted(picked)


def choose_width(candidates: list[int], ms: list[float], macs: list[int], tie: float = TIE) -> int:
    """The candidate with the fewest milliseconds per MAC (the device's best GMAC/s); candidates
    within ``tie`` of the best are ties, and the widest of them wins (more capacity for the time)."""
    if not candidates:
        raise ValueError("no candidate widths")
    cost = [m / c if c > 0 else math.inf for m, c in zip(ms, macs)]
    best = min(cost)
    if not math.isfinite(best):  # nothing measurable: keep the widest allowed
        return max(candidates)
    return max(w for w, c in zip(candidates, cost) if c <= best * (1 + tie) + 1e-15)


@dataclass
class WidthGroup:
    """One group to choose a width for: its current width, the widths allowed and the layers it sets."""

    key: Any  # the GroupPlan
    width: int
    candidates: list[int]
    touches: list[tuple[nn.Module, str, int]]  # (layer, "in" | "out", channels of the group it holds)
    table: dict[str, Any] = field(default_factory=dict)


def choose_widths(groups: list[WidthGroup], shapes: dict[nn.Module, list[tuple[int, ...]]], timer: WidthTimer,
                  names: dict[nn.Module, str] | None = None, passes: int = PASSES, tie: float = TIE) -> list[int]:
    """The kept width of each group (in order), by measurement; each group's ``table`` records the timings.

    A layer's other channel dimension follows the width chosen so far for the group that sets
    it (first: the widest allowed), and the groups are visited again until no choice changes.
    """
    names = names or {}
    chosen = {id(g): max(g.candidates) for g in groups}
    by_layer: dict[int, list[tuple[WidthGroup, str, int]]] = {}
    for g in groups:
        for m, axis, k in g.touches:
            by_layer.setdefault(id(m), []).append((g, axis, k))

    def dims(m: nn.Module, override: tuple[WidthGroup, int] | None):
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        cin = int(m.in_channels if is_conv else m.in_features)
        cout = int(m.out_channels if is_conv else m.out_features)
        depthwise = is_conv and m.groups > 1 and m.groups == m.in_channels == m.out_channels
        new = {"in": cin, "out": cout}
        for g, axis, k in by_layer.get(id(m), []):
            w = override[1] if override is not None and g is override[0] else chosen[id(g)]
            new[axis] -= int(round((g.width - w) * k / g.width)) if g.width else 0
        if depthwise:
            c = min(new["in"], new["out"])
            return c, c, c
        return new["in"], new["out"], int(m.groups) if is_conv else 1

    def layer_sigs(g: WidthGroup, w: int) -> tuple[list[dict[str, Any]], list[str]]:
        sigs, timed = [], []
        for m, _axis, _k in g.touches:
            cin, cout, groups = dims(m, (g, w))
            for shape in shapes.get(m, []):
                sig = layer_signature(m, cin, cout, groups, shape)
                if sig is None or cin < 1 or cout < 1:
                    continue
                sigs.append(sig)
                if names.get(m, type(m).__name__) not in timed:
                    timed.append(names.get(m, type(m).__name__))
        return sigs, timed

    def costs(g: WidthGroup) -> list[tuple[float, int, list[str]]]:
        per = [layer_sigs(g, w) for w in g.candidates]
        ms = timer.ms_many([sig for sigs, _ in per for sig in sigs])  # every candidate's layers, interleaved
        rows, i = [], 0
        for sigs, timed in per:
            rows.append((float(sum(ms[i:i + len(sigs)])), sum(signature_macs(sig) for sig in sigs), timed))
            i += len(sigs)
        return rows

    for _ in range(max(int(passes), 1)):
        changed = False
        for g in groups:
            rows = costs(g)
            pick = choose_width(g.candidates, [r[0] for r in rows], [r[1] for r in rows], tie)
            if not any(r[1] for r in rows):
                pick = max(g.candidates)
            g.table = {"candidates": list(g.candidates), "ms": [round(r[0], 4) for r in rows],
                       "gmac_per_s": [round(r[1] / r[0] / 1e6, 2) if r[0] > 0 else None for r in rows],
                       "layers": rows[-1][2] if rows else [], "chosen": pick}
            if pick != chosen[id(g)]:
                chosen[id(g)], changed = pick, True
        if not changed:
            break
    return [chosen[id(g)] for g in groups]
