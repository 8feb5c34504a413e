"""Parameters, widths and MACs of a prior, and the reduced inputs that trace a fully convolutional prior cheaply."""

from __future__ import annotations


import torch
from torch import nn

from .config import TRACE_SIDE
from .discovery import meta_copy



# -- measuring ---------------------------------------------------------------------------------
def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def layer_widths(module: nn.Module) -> dict[str, int]:
    """Output channels of every conv/linear layer, by name relative to ``module``."""
    out = {}
    for n, m in module.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[n] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[n] = int(m.out_features)
    return out


@torch.no_grad()
def layer_macs(m: nn.Module, args: tuple, out) -> int:
    """Multiply-accumulates of one call of a conv, transposed conv or linear layer (a forward hook's
    arguments): the one definition behind pruning's counts and the benchmark's."""
    import math

    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return args[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvNd):
        return out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    return out.numel() * m.in_features


def count_macs(module: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of conv and linear layers for one call on ``inputs``."""
    total = [0]

    def hook(m, args, out):
        total[0] += layer_macs(m, args, out)

    hs = []
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hs.append(m.register_forward_hook(hook))
    try:
        module(*inputs)
    finally:
        for h in hs:
            h.remove()
    return int(total[0])


def shape_and_macs(module: nn.Module, inputs: tuple) -> tuple[tuple[int, ...], int]:
    """Output shape and MACs of one call, on the meta device (no compute) when the layers allow."""
    try:
        meta = meta_copy(module)
        meta_in = tuple(t.to("meta") if torch.is_tensor(t) else t for t in inputs)
        macs = count_macs(meta, meta_in)
        out = meta(*meta_in)
    except Exception:  # a layer without a meta kernel: measure on real tensors instead
        macs = count_macs(module, inputs)
        with torch.no_grad():
            out = module(*inputs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return tuple(out.shape), macs


def trace_inputs(prior: nn.Module, inputs: tuple, full_out: tuple[int, ...]) -> tuple[tuple, tuple[int, ...]]:
    """Inputs to trace the dependency graph with: spatially reduced when the prior is fully convolutional.

    The graph and weight-based importances do not depend on the image size, and tracing a
    1 M-parameter prior at 320x320 costs seconds. A reduced copy is used only if the prior
    maps it to an output that scales like the full-size one; otherwise the real input is used.
    """
    x = inputs[0]
    if len(inputs) != 1 or x.dim() != 4 or max(x.shape[-2:]) <= TRACE_SIDE:
        return inputs, full_out
    h, w = (min(n, TRACE_SIDE) for n in x.shape[-2:])
    small = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    try:
        with torch.no_grad():
            out = prior(small)
    except Exception:  # not fully convolutional (e.g. a Linear on flattened features)
        return inputs, full_out
    out = out[0] if isinstance(out, (tuple, list)) else out
    scaled = tuple(full_out[:2]) == tuple(out.shape[:2]) and all(
        fo * si == so * fi for fo, fi, so, si in zip(full_out[2:], x.shape[2:], out.shape[2:], small.shape[2:]))
    return ((small,), tuple(out.shape)) if scaled else (inputs, full_out)
