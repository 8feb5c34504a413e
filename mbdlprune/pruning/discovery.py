"""Finding the priors of a model and their real inputs, with meta-device probes (no full-size convolution)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import MbdlError



# -- discovering priors ------------------------------------------------------------------------
@dataclass
class PriorSite:
    """One prunable prior: its dotted name, module, recorded inputs and calls per forward."""

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    calls: int = 0


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(s, nn.modules.conv._ConvNd) for s in m.modules())


def candidate_prior_names(model: nn.Module) -> list[str]:
    """Conv-bearing submodules (not the root), outermost first."""
    return [n for n, m in model.named_modules() if n and _has_conv(m) and not isinstance(m, (nn.ModuleList, nn.ModuleDict))]


@contextmanager
def _record_calls(model: nn.Module, names: list[str]) -> Iterator[dict[str, list]]:
    """Record the first inputs and the call count of each named submodule during a forward."""
    seen: dict[str, list] = {}
    handles = []
    for name in names:
        mod = model.get_submodule(name)

        def hook(_m, args, _name=name):
            entry = seen.setdefault(_name, [None, 0])
            if entry[0] is None:
                entry[0] = tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
            entry[1] += 1

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@contextmanager
def cheap_solver(model: nn.Module, max_iter: int = 1) -> Iterator[None]:
    """Cap a DEQ's iterations while tracing and checking: one call of each prior is all they need."""
    from ..models.protocol import SolverSettings, is_deq, solver_settings

    if not (is_deq(model) and isinstance(model.max_iter, int)):
        yield
        return
    with solver_settings(model, SolverSettings(max_iter=min(model.max_iter, max_iter))):
        yield


def _zeros_like_meta(out, like: torch.Tensor):
    """Real zero tensors shaped like a meta-device output (tensor, tuple or list)."""
    if torch.is_tensor(out):
        return torch.zeros(out.shape, dtype=out.dtype, device=like.device)
    if isinstance(out, (tuple, list)):
        return type(out)(_zeros_like_meta(o, like) for o in out)
    raise TypeError(f"cannot probe a module returning {type(out).__name__}")


#: Layers that keep their input's shape and cost no MACs: on the meta device they are skipped.
SHAPE_KEEPING_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _identity(x, *args, **kwargs):
    return x


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device (shapes, no data) whose norm layers pass their input
    through: only shapes are computed there, and norms' meta kernels cost as much as real convs."""
    import copy

    meta = copy.deepcopy(module).to("meta")
    for m in meta.modules():
        if isinstance(m, SHAPE_KEEPING_NORMS):
            m.forward = _identity
    return meta


@contextmanager
def _probe_calls(model: nn.Module, names: list[str]) -> Iterator[dict[str, list]]:
    """Like :func:`_record_calls`, but each named module is replaced by a probe that records its
    inputs and returns zeros of the right shape (computed on the meta device): finding the
    priors then costs no convolution at full image size."""
    seen: dict[str, list] = {}
    patched = []
    for name in names:
        mod = model.get_submodule(name)
        meta_mod = meta_copy(mod)

        def probe(*args, _name=name, _meta=meta_mod, **kwargs):
            entry = seen.setdefault(_name, [None, 0])
            if entry[0] is None:
                entry[0] = tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args)
            entry[1] += 1
            to_meta = lambda a: a.to("meta") if torch.is_tensor(a) else a  # noqa: E731
            out = _meta(*map(to_meta, args), **{k: to_meta(v) for k, v in kwargs.items()})
            like = next(a for a in args if torch.is_tensor(a))
            return _zeros_like_meta(out, like)

        mod.forward = probe
        patched.append(mod)
    try:
        yield seen
    finally:
        for mod in patched:
            del mod.forward


def resolve_prior_names(model: nn.Module, names: list[str] | None) -> list[str] | None:
    """The priors ``--prior`` names: dotted names or globs over submodule names; ``+NAME`` adds to
    the model's own ``prior_paths()`` instead of replacing them (e.g. ``+sens_net.norm_unet.unet``
    prunes an E2E-VarNet's sensitivity U-Net besides its cascades). None: the model's default.
    """
    import fnmatch

    default = list(model.prior_paths()) if hasattr(model, "prior_paths") else None
    if names is None:
        return default
    out: list[str] = [*default] if default and any(n.startswith("+") for n in names) else []
    modules = [n for n, _ in model.named_modules() if n]
    for raw in names:
        n = raw[1:] if raw.startswith("+") else raw
        if any(ch in n for ch in "*?["):
            hits = [m for m in modules if fnmatch.fnmatchcase(m, n)]
            if not hits:
                raise MbdlError(f"--prior {raw!r} matches no submodule of the model",
                                f"choose among: {', '.join(candidate_prior_names(model)[:8])}")
        else:
            hits = [n]
        if len(hits) > 1:  # a glob: its outermost matches (a module inside another match is part of it)
            hits = [h for h in hits if not any(h.startswith(o + ".") for o in hits if o != h)]
        out += [h for h in hits if h not in out]
    return out


def find_priors(model: nn.Module, inputs: tuple, names: list[str] | None = None) -> tuple[list[PriorSite], Any]:
    """Locate the prior(s): given names (see :func:`resolve_prior_names`), the model's
    ``prior_paths()``, or auto-discovery.

    Auto-discovery keeps the outermost conv-bearing submodules that the forward really calls.
    A module called several times (a prior shared across iterations) appears once. Returns
    the sites and the model's output on ``inputs`` (DEQ iterations capped; computed with the
    priors probed, so only its shape is meaningful).
    """
    names = resolve_prior_names(model, names)
    explicit = names is not None
    cands = list(names) if explicit else candidate_prior_names(model)
    for n in cands:
        try:
            model.get_submodule(n)
        except AttributeError:
            raise MbdlError(f"--prior {n!r} is not a submodule of the model", f"choose among: {', '.join(candidate_prior_names(model)[:8])}") from None
    try:
        with torch.no_grad(), cheap_solver(model), _probe_calls(model, cands) as seen:
            out = model(*inputs)
    except Exception:  # a layer without a meta kernel, or code that needs real prior outputs
        with torch.no_grad(), cheap_solver(model), _record_calls(model, cands) as seen:
            out = model(*inputs)
    called = [n for n in cands if n in seen]
    if explicit:
        missing = [n for n in cands if n not in seen]
        if missing:
            raise MbdlError(f"prior {missing[0]!r} is never called by the model's forward", "name a submodule the forward uses (see `mbdlprune inspect`)")
    else:  # outermost only
        called = [n for n in called if not any(n.startswith(o + ".") for o in called if o != n)]
    sites, ids = [], set()
    for n in called:
        mod = model.get_submodule(n)
        if id(mod) in ids:
            continue
        ids.add(id(mod))
        args, calls = seen[n]
        sites.append(PriorSite(n, mod, args, calls))
    if not sites:
        raise MbdlError("no prior CNN with convolutions is called by the model", "pass --prior dotted.name of the CNN to prune")
    return sites, out
