"""Layer signatures and their timing: what one conv/linear call costs on a device, measured.

A layer is described by a signature (:func:`layer_signature`: op, channels, kernel, stride,
padding, groups, input shape), the key of the widths cache. :func:`signature_macs` counts its
multiply-accumulates on the meta device; :func:`measure_many` times signatures on real tensors:
medians of :data:`REPEATS` runs after :data:`WARMUP` warm-up runs, the signatures timed in turn
(one run each per round), under ``torch.inference_mode`` (CUDA: events and synchronize),
float32, without moving the global random stream. No caching here (:mod:`.width_timer`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from typing import Any

import torch
from torch import nn

WARMUP = 3
REPEATS = 5


# -- layer signatures ---------------------------------------------------------------------------
def _ints(v) -> list[int]:
    return [int(i) for i in (v if isinstance(v, (tuple, list)) else (v,))]


def layer_signature(m: nn.Module, cin: int, cout: int, groups: int, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """What a layer's time depends on, at ``cin``/``cout`` channels and an input shaped ``shape``
    (channels included). None for a layer that cannot be timed so."""
    if isinstance(m, nn.Linear):
        return {"op": "linear", "in": cin, "out": cout, "bias": m.bias is not None, "shape": [*shape[:-1], cin]}
    if not isinstance(m, nn.modules.conv._ConvNd):
        return None
    nd = len(m.kernel_size)
    if nd not in (1, 2, 3) or len(shape) != nd + 2 or groups < 1 or cin % groups or cout % groups:
        return None
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    sig = {"op": f"conv_transpose{nd}d" if transposed else f"conv{nd}d", "in": cin, "out": cout,
           "kernel": _ints(m.kernel_size), "stride": _ints(m.stride),
           "padding": m.padding if isinstance(m.padding, str) else _ints(m.padding),
           "dilation": _ints(m.dilation), "groups": groups, "bias": m.bias is not None,
           "shape": [int(shape[0]), cin, *(int(s) for s in shape[2:])]}
    if transposed:
        sig["output_padding"] = _ints(m.output_padding)
    return sig


def signature_key(sig: dict[str, Any]) -> str:
    return json.dumps(sig, sort_keys=True, separators=(",", ":"))


def _tensors(sig: dict[str, Any], device, dtype=torch.float32, make=torch.randn):
    x = make(sig["shape"], device=device, dtype=dtype)
    if sig["op"] == "linear":
        w = make((sig["out"], sig["in"]), device=device, dtype=dtype)
    elif sig["op"].startswith("conv_transpose"):
        w = make((sig["in"], sig["out"] // sig["groups"], *sig["kernel"]), device=device, dtype=dtype)
    else:
        w = make((sig["out"], sig["in"] // sig["groups"], *sig["kernel"]), device=device, dtype=dtype)
    b = make((sig["out"],), device=device, dtype=dtype) if sig["bias"] else None
    return x, w, b


def _call(sig: dict[str, Any], x, w, b):
    op = sig["op"]
    if op == "linear":
        return torch.nn.functional.linear(x, w, b)
    fn = getattr(torch.nn.functional, op)
    kw = dict(stride=sig["stride"], padding=sig["padding"], dilation=sig["dilation"], groups=sig["groups"])
    if op.startswith("conv_transpose"):
        return fn(x, w, b, output_padding=sig["output_padding"], **kw)
    return fn(x, w, b, **kw)


_MACS: dict[str, int] = {}


def signature_macs(sig: dict[str, Any]) -> int:
    """Multiply-accumulates of one call (computed on the meta device: no compute)."""
    key = signature_key(sig)
    if key not in _MACS:
        _MACS[key] = _macs(sig)
    return _MACS[key]


def _macs(sig: dict[str, Any]) -> int:
    with torch.no_grad():
        out = _call(sig, *_tensors(sig, "meta", make=torch.empty))
    if sig["op"] == "linear":
        return int(out.numel() * sig["in"])
    k = math.prod(sig["kernel"])
    if sig["op"].startswith("conv_transpose"):
        return int(math.prod(sig["shape"]) * sig["out"] // sig["groups"] * k)
    return int(out.numel() * (sig["in"] // sig["groups"]) * k)


def measure_ms(sig: dict[str, Any], device: torch.device, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median milliseconds of one call of the layer ``sig`` on ``device`` (float32, inference mode)."""
    return measure_many([sig], device, warmup, repeats)[0]


#: Tensors of one interleaved round at most (bytes); more signatures are timed in several rounds.
ROUND_BYTES = 512 << 20


def _bytes(sig: dict[str, Any]) -> int:
    return 4 * (math.prod(sig["shape"]) * 3 + sig["in"] * sig["out"] * math.prod(sig.get("kernel", [1])))


def measure_many(sigs: list[dict[str, Any]], device: torch.device, warmup: int = WARMUP, repeats: int = REPEATS) -> list[float]:
    """Median milliseconds of each layer of ``sigs`` on ``device`` (float32, inference mode).

    The layers are timed in turn, one run each per round (after their warm-up runs), so that a
    burst of load from other processes slows every candidate alike instead of one of them.
    """
    out: list[float] = []
    chunk: list[dict[str, Any]] = []
    size = 0
    for sig in sigs:
        if chunk and size + _bytes(sig) > ROUND_BYTES:
            out += _interleaved(chunk, device, warmup, repeats)
            chunk, size = [], 0
        chunk.append(sig)
        size += _bytes(sig)
    if chunk:
        out += _interleaved(chunk, device, warmup, repeats)
    return out


def _interleaved(sigs: list[dict[str, Any]], device: torch.device, warmup: int, repeats: int) -> list[float]:
    gen_state = torch.random.get_rng_state()  # timing must not move the pruning's random stream
    cuda = device.type == "cuda"
    try:
        with torch.inference_mode():
            data = [_tensors(sig, device) for sig in sigs]
            for sig, args in zip(sigs, data):
                for _ in range(max(int(warmup), 0)):
                    _call(sig, *args)
            times: list[list[float]] = [[] for _ in sigs]
            if cuda:
                torch.cuda.synchronize(device)
            for _ in range(max(int(repeats), 1)):
                for i, (sig, args) in enumerate(zip(sigs, data)):
                    if cuda:
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        _call(sig, *args)
                        end.record()
                        torch.cuda.synchronize(device)
                        times[i].append(float(start.elapsed_time(end)))
                    else:
                        t0 = time.perf_counter()
                        _call(sig, *args)
                        times[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.random.set_rng_state(gen_state)
    return [float(statistics.median(t)) for t in times]
