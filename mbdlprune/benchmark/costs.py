"""Reconstruct, score and count: prior calls and MACs measured on the reconstructions actually run."""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from ..io.model_file import LoadedModel


def network_paths(model, extra: Sequence[str] = ()) -> list[str]:
    """The networks bench counts and puts on the fast path: the model's ``prior_paths()`` (a model
    without one, user code, is one network: ``""``, the whole model) and ``extra``
    (:func:`pruned_networks`)."""
    own = list(model.prior_paths()) if hasattr(model, "prior_paths") else [""]
    return own + [p for p in extra if p not in own]


def _nested(a: str, b: str) -> bool:
    """Whether one of two submodule paths lies inside the other (or they are the same)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def pruned_networks(entries) -> list[str]:
    """Networks besides the models' own priors that a model's pruning record names (e.g. an
    E2E-VarNet's sensitivity U-Net, pruned with ``--prior +sens_net.norm_unet.unet``), so that
    their calls and MACs are counted, and timed on the fast path, for every model alike: the
    pruned model's MACs would otherwise leave out a network that pruning made cheaper, and the
    original's the same network unpruned. Kept only where every model has the submodule and it
    neither holds nor sits inside a model's own prior (each conv is counted once)."""
    own = [p for e in entries for p in network_paths(e.model)]
    if "" in own:  # a model counted whole already counts every network in it
        return []
    out: list[str] = []
    for e in entries:
        for path in _recorded_priors(e):
            if not isinstance(path, str) or not path or path in out or any(_nested(path, o) for o in own):
                continue
            if any(_nested(path, o) for o in out) or not all(_has(x.model, path) for x in entries):
                continue
            out.append(path)
    return out


def pruned_networks_note(entries, extra: Sequence[str]) -> str:
    """The report's note for :func:`pruned_networks`: which networks, and whose records named them."""
    by = [e.label for e in entries if set(extra) & set(_recorded_priors(e))]
    return (f"prior costs (and the fast path) include {', '.join(extra)}: pruned by {', '.join(by)}, "
            "so counted for every model alike")


def _recorded_priors(entry) -> Mapping[str, Any]:
    """The priors an entry's pruning record names (empty for a model that was never pruned)."""
    return ((entry.meta or {}).get("pruning") or {}).get("priors") or {}


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


class _CostCounter:
    """Counts prior calls and conv/linear MACs inside each network of :func:`network_paths`
    during real reconstructions."""

    def __init__(self, model, extra: Sequence[str] = ()):
        from torch import nn

        self.paths = network_paths(model, extra)
        self.calls = {p: 0 for p in self.paths}
        self.macs = {p: 0 for p in self.paths}
        self.params = {}
        self.handles = []
        for p in self.paths:
            prior = model.get_submodule(p)
            self.params[p] = sum(t.numel() for t in prior.parameters())
            self.handles.append(prior.register_forward_pre_hook(self._call_hook(p)))
            for m in prior.modules():
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                    self.handles.append(m.register_forward_hook(self._mac_hook(p)))

    def _call_hook(self, path):
        def hook(module, args):
            self.calls[path] += 1

        return hook

    def _mac_hook(self, path):
        from ..pruning.costs import layer_macs

        def hook(m, args, out):
            self.macs[path] += layer_macs(m, args, out)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def summary(self, images: int, batches: int) -> dict[str, dict[str, Any]]:
        """Per prior: params, calls per reconstruction (per batch), MACs per call and per reconstruction (per image)."""
        priors = {}
        for p in self.paths:
            calls = self.calls[p] / batches if batches else 0.0
            per_recon = self.macs[p] / images if images else 0.0
            priors[p or "(whole model)"] = {
                "params": self.params[p],
                "calls_per_reconstruction": calls,
                "macs_per_call": per_recon / calls if calls else 0.0,
                "macs_per_reconstruction": per_recon,
            }
        return priors


def record_solver_info(model, its: list, res: list, conv: list) -> None:
    """Append a DEQ's iterations, final residual and convergence of its last call (``last_info``)."""
    info = getattr(model, "last_info", None)
    if isinstance(info, Mapping) and "residual" in info:
        its.append(float(info.get("iterations", math.nan)))
        res.append(float(info.get("residual", math.nan)))
        conv.append(bool(info.get("converged")))


def solver_summary(its: list, res: list, conv: list) -> dict[str, float] | None:
    """Mean/max iterations and residuals and the converged fraction of :func:`record_solver_info`'s lists (None without a DEQ)."""
    if not its:
        return None
    return {"iterations_mean": statistics.fmean(its), "iterations_max": max(its), "residual_mean": statistics.fmean(res),
            "residual_max": max(res), "converged_fraction": statistics.fmean(conv)}


class NoCosts:
    """A stand-in for :class:`_CostCounter` that counts nothing: scoring a model on the fast
    inference path, whose priors are wrapped or compiled (their costs were counted eagerly)."""

    def __init__(self, model, extra: Sequence[str] = ()):
        pass

    def remove(self) -> None:
        pass

    def summary(self, n_images: int, batches: int) -> dict[str, Any]:
        return {}


def reconstruct_and_score(bm: LoadedModel, y, images, op, device: str, batch_size: int, metric,
                          counter_cls=None, warm: bool = False, volume_index=None) -> dict[str, Any]:
    """Reconstruct every measurement (batched), score against ``images``, count prior costs
    (``counter_cls``: :class:`_CostCounter` by default, :class:`NoCosts` to count nothing).

    ``warm``: each DEQ solve starts from the previous batch's fixed point within a volume
    (``volume_index``: the volume of each image, None = one volume; see :mod:`.warmstart`).
    """
    import torch

    from ..metrics import compute_metrics
    from .warmstart import WarmChain, batch_volume

    counter = (counter_cls or _CostCounter)(bm.model)
    psnrs: list[float] = []
    ssims: list[float] = []
    its: list[float] = []
    res: list[float] = []
    conv: list[bool] = []
    example = None
    batches = 0
    chain, last = WarmChain(bm.model, warm), None
    try:
        with torch.inference_mode():
            for s in range(0, y.shape[0], batch_size):
                yb = y[s:s + batch_size].to(device)
                vol = batch_volume(volume_index, s, s + batch_size)
                if vol is None or vol != last:
                    chain.reset()
                last = vol
                xh = chain(yb, op)
                batches += 1
                record_solver_info(bm.model, its, res, conv)
                xh = xh.float().cpu()
                if example is None:
                    example = xh[:1].clone()
                m = compute_metrics(xh, images[s:s + batch_size], metric)
                psnrs += [float(v) for v in m["psnr"]]
                ssims += [float(v) for v in m["ssim"]]
    finally:
        counter.remove()
    priors = counter.summary(y.shape[0], batches)
    return {"psnr": psnrs, "ssim": ssims, "priors": priors, "deq": solver_summary(its, res, conv), "example": example}
