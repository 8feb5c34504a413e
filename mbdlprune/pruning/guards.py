"""Guards against torch-pruning's silent failure modes: gradients enabled, norm parametrizations removed and restored, image-producing layers kept, patterns that match nothing, non-finite weights."""

from __future__ import annotations

import difflib
import fnmatch
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import PruningError
from .config import LAYER_TYPES, PruneConfig
from .discovery import PriorSite



# -- guards ------------------------------------------------------------------------------------
@contextmanager
def grads_enabled(module: nn.Module) -> Iterator[None]:
    """A frozen checkpoint traces nothing: enable grad on every parameter, then restore."""
    # pruning replaces Parameter objects, so flags are restored by name
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    for p in module.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for n, p in module.named_parameters():
            p.requires_grad_(flags.get(n, True))


@contextmanager
def norm_parametrizations_removed(module: nn.Module) -> Iterator[None]:
    """Fold weight/spectral-norm parametrizations (new and legacy) into plain weights; restore after."""
    from torch.nn.utils import parametrizations, parametrize

    restore: list[Callable[[], Any]] = []
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            _own_class(m)
            for pname in list(m.parametrizations.keys()):
                kinds = [type(p).__name__ for p in m.parametrizations[pname]]
                wn_dim = next((getattr(p, "dim", 0) for p in m.parametrizations[pname]), 0)
                parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
                if "_WeightNorm" in kinds:
                    restore.append(lambda m=m, n=pname, d=wn_dim: parametrizations.weight_norm(m, n, dim=d))
                elif "_SpectralNorm" in kinds:
                    restore.append(lambda m=m, n=pname: parametrizations.spectral_norm(m, n))
                else:
                    raise PruningError(f"parametrization {kinds} on {type(m).__name__}.{pname} cannot be pruned", "remove it before pruning")
        for key, hook in list(m._forward_pre_hooks.items()):
            hname = type(hook).__name__
            if hname == "WeightNorm":
                torch.nn.utils.remove_weight_norm(m, hook.name)
                restore.append(lambda m=m, n=hook.name, d=hook.dim: torch.nn.utils.weight_norm(m, n, dim=d))
            elif hname == "SpectralNorm":
                torch.nn.utils.remove_spectral_norm(m, hook.name)
                restore.append(lambda m=m, n=hook.name: torch.nn.utils.spectral_norm(m, n))
    try:
        yield
    finally:
        for fn in restore:
            fn()


def _own_class(m: nn.Module) -> None:
    """Give a parametrized module a class of its own before its parametrizations are removed.

    torch makes one ``Parametrized*`` class per module, but a deep copy shares it with the
    original, and removing a parametrization deletes the property from that class: pruning a
    copy would break the original's weights (a sweep prunes copies of one model).
    """
    cls = type(m)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    m.__class__ = type(cls.__name__, cls.__bases__, namespace)


def output_layers(model: nn.Module, prior: nn.Module, out_channels: int) -> list[nn.Module]:
    """Layers that produce image channels: the model's declaration plus any conv of that width."""
    declared = []
    for owner in (prior, model):
        if hasattr(owner, "output_layers"):
            declared += list(owner.output_layers())
    auto = [m for m in prior.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == out_channels]
    auto += [m for m in prior.modules() if isinstance(m, nn.Linear) and m.out_features == out_channels]
    inside = {id(m) for m in prior.modules()}
    return [m for m in {id(m): m for m in declared + auto}.values() if id(m) in inside]


def join_name(prefix: str, name: str) -> str:
    """Dotted name of ``name`` inside the submodule ``prefix`` ("" is the root)."""
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _layer_matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def _suggest(pattern: str, names: list[str], n: int = 4) -> str:
    close = difflib.get_close_matches(pattern, names, n=n, cutoff=0.5)
    picks = (close + [m for m in names if m not in close])[:n]
    more = "" if len(names) <= len(picks) else ", ..."
    return ", ".join(picks) + more


def check_patterns(sites: list[PriorSite], cfg: PruneConfig) -> None:
    """Every ``--layer-ratio`` and ``--ignore`` pattern must match something: a typo would
    otherwise prune at the default ratio, or prune a layer meant to be kept, without a word."""
    layers = [join_name(s.name, n) for s in sites for n, m in s.module.named_modules() if isinstance(m, LAYER_TYPES)]
    modules = [join_name(s.name, n) for s in sites for n, _ in s.module.named_modules() if n]
    for pat in cfg.layer_ratios:
        if not any(_layer_matches(n, [pat]) for n in layers):
            raise PruningError(f"--layer-ratio pattern {pat!r} matches no conv/linear layer of the prior(s)",
                               f"use a layer name or glob such as {_suggest(pat, layers)} (see `mbdlprune inspect --json`)")
    for pat in cfg.ignore:
        if not any(_layer_matches(n, [pat]) for n in modules):
            raise PruningError(f"--ignore pattern {pat!r} matches no module of the prior(s)",
                               f"use a module name or glob such as {_suggest(pat, layers or modules)} (see `mbdlprune inspect --json`)")


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a model with NaN/Inf in a parameter or buffer: importances and pruning would be garbage."""
    from ..io.checkpoint import first_nonfinite

    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        bad = first_nonfinite(items)
        if bad is not None:
            raise PruningError(f"{kind} {bad[0]!r} of the model holds {bad[1]} NaN/Inf value(s)",
                               "the checkpoint is damaged or its training diverged; prune a healthy checkpoint")
