"""Structured channel pruning of the prior CNN(s) inside an MBDL model, with torch-pruning.

Three separate steps, as in Torch-Pruning: find the priors and their real inputs
(:func:`find_priors`), build the dependency graph and score channels (:func:`make_pruner`),
then prune and verify (:func:`prune_priors`). Every silent failure mode of torch-pruning is
guarded: inputs go as a tuple, gradients are enabled on every parameter while tracing,
image-producing convs are ignored, norm parametrizations are removed and restored, and the
result is checked (parameters dropped, shapes unchanged).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import numbers
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import ConfigError, MbdlError, PruningError

IMPORTANCES = ("l1", "l2", "taylor", "lamp", "random")
#: Default width multiple. oneDNN's AVX-512 convolution kernels (16 floats per vector) ran
#: widths 16/32/48/64 at 42-49 GMAC/s on the reference CPU but 20/24 at 25-35, and CUDA tensor
#: cores want multiples of 8; widths like 20, 42, 44 ran no faster than the unpruned model.
DEFAULT_ROUND_TO = 16
LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
#: Largest side of the input used to trace a fully convolutional prior (see trace_inputs).
TRACE_SIDE = 64


@dataclass
class PruneConfig:
    """What to prune and how; mirrors the ``prune`` command's options."""

    ratio: float = 0.5
    importance: str = "l1"
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int | None = DEFAULT_ROUND_TO
    layer_ratios: dict[str, float] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    priors: list[str] | None = None
    max_layer_ratio: float = 0.9
    seed: int = 0

    def validate(self) -> None:
        """Refuse, in one line, options that are not what pruning can do (NaN included: ``nan < 0`` is False)."""
        _fraction(self.ratio, "--ratio", "(0, 1)", lambda r: 0.0 < r < 1.0,
                  "give the fraction of channels to remove, e.g. --ratio 0.5")
        if not isinstance(self.importance, str) or self.importance not in IMPORTANCES:
            raise ConfigError(f"unknown --importance {self.importance!r}", f"use one of: {', '.join(IMPORTANCES)}")
        if not _is_int(self.iterative_steps) or self.iterative_steps < 1:
            raise ConfigError(f"--iterative-steps must be an integer >= 1, got {self.iterative_steps!r}", "use e.g. --iterative-steps 1")
        if self.round_to is not None and (not _is_int(self.round_to) or self.round_to < 1):
            raise ConfigError(f"--round-to must be an integer >= 1, got {self.round_to!r}", "use 1 to disable rounding, or 8/16")
        _fraction(self.max_layer_ratio, "max_layer_ratio", "(0, 1]", lambda r: 0.0 < r <= 1.0, "use e.g. 0.9")
        if not isinstance(self.global_pruning, bool):
            raise ConfigError(f"global_pruning must be true or false, got {self.global_pruning!r}", "pass --global or leave it out")
        if not _is_int(self.seed):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}", "use e.g. --seed 0")
        if not isinstance(self.layer_ratios, dict):
            raise ConfigError("layer_ratios must map layer patterns to ratios", "write e.g. --layer-ratio 'prior.body.*=0.3'")
        for name, r in self.layer_ratios.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"layer ratio pattern {name!r} is not a module name or glob", "write e.g. --layer-ratio 'prior.body.*=0.3'")
            _fraction(r, f"layer ratio for {name!r}", "[0, 1)", lambda v: 0.0 <= v < 1.0, "fix the per-layer ratio, e.g. 0.3")
        for label, items in (("--ignore", self.ignore), ("--prior", self.priors or [])):
            if isinstance(items, str) or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{label} must be a list of module names, got {items!r}", f"pass {label} NAME once per module")
        for pat in self.ignore:
            if not pat:
                raise ConfigError("--ignore '' names no module", "pass a module name or glob, e.g. --ignore 'prior.tail'")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fraction(v: Any, label: str, interval: str, ok: Callable[[float], bool], fix: str) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ConfigError(f"{label} must be a number in {interval}, got {v!r}", fix)
    if not math.isfinite(v):
        raise ConfigError(f"{label} must be a finite number in {interval}, got {v!r}", fix)
    if not ok(float(v)):
        raise ConfigError(f"{label} {v} is outside {interval}", fix)


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
    old = getattr(model, "max_iter", None)
    if isinstance(old, int):
        model.max_iter = min(old, max_iter)
    try:
        yield
    finally:
        if isinstance(old, int):
            model.max_iter = old


def _zeros_like_meta(out, like: torch.Tensor):
    """Real zero tensors shaped like a meta-device output (tensor, tuple or list)."""
    if torch.is_tensor(out):
        return torch.zeros(out.shape, dtype=out.dtype, device=like.device)
    if isinstance(out, (tuple, list)):
        return type(out)(_zeros_like_meta(o, like) for o in out)
    raise TypeError(f"cannot probe a module returning {type(out).__name__}")


@contextmanager
def _probe_calls(model: nn.Module, names: list[str]) -> Iterator[dict[str, list]]:
    """Like :func:`_record_calls`, but each named module is replaced by a probe that records its
    inputs and returns zeros of the right shape (computed on the meta device): finding the
    priors then costs no convolution at full image size."""
    import copy

    seen: dict[str, list] = {}
    patched = []
    for name in names:
        mod = model.get_submodule(name)
        meta_mod = copy.deepcopy(mod).to("meta")

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


def find_priors(model: nn.Module, inputs: tuple, names: list[str] | None = None) -> tuple[list[PriorSite], Any]:
    """Locate the prior(s): given names, the model's ``prior_paths()``, or auto-discovery.

    Auto-discovery keeps the outermost conv-bearing submodules that the forward really calls.
    A module called several times (a prior shared across iterations) appears once. Returns
    the sites and the model's output on ``inputs`` (DEQ iterations capped; computed with the
    priors probed, so only its shape is meaningful).
    """
    if names is None and hasattr(model, "prior_paths"):
        names = list(model.prior_paths())
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
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t is None or not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta":
                continue
            if not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise PruningError(f"{kind} {name!r} of the model holds {bad} NaN/Inf value(s)",
                                   "the checkpoint is damaged or its training diverged; prune a healthy checkpoint")


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
def count_macs(module: nn.Module, inputs: tuple) -> int:
    """Multiply-accumulates of conv and linear layers for one call on ``inputs``."""
    total = [0]

    def conv_hook(m, args, out):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            total[0] += args[0].numel() * m.out_channels // m.groups * int(torch.tensor(m.kernel_size).prod())
        else:
            total[0] += out.numel() * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())

    def lin_hook(m, args, out):
        total[0] += out.numel() * m.in_features

    hs = []
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            hs.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hs.append(m.register_forward_hook(lin_hook))
    try:
        module(*inputs)
    finally:
        for h in hs:
            h.remove()
    return int(total[0])


# -- pruning -----------------------------------------------------------------------------------
def make_importance(name: str):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean")
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean")
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise MbdlError(f"unknown importance {name!r}", f"use one of: {', '.join(IMPORTANCES)}")


def make_pruner(prior: nn.Module, inputs: tuple, cfg: PruneConfig, ignored: list[nn.Module], prefix: str):
    """Build the dependency graph of one prior on its real input and set up the pruner."""
    import torch_pruning as tp

    ratio_dict = {}
    for n, m in prior.named_modules():
        full = join_name(prefix, n)
        for pat, r in cfg.layer_ratios.items():
            if isinstance(m, LAYER_TYPES) and _layer_matches(full, [pat]):
                ratio_dict[m] = r
    pruner = tp.pruner.MetaPruner(
        prior,
        example_inputs=tuple(inputs),
        importance=make_importance(cfg.importance),
        global_pruning=cfg.global_pruning,
        pruning_ratio=cfg.ratio,
        pruning_ratio_dict=ratio_dict or None,
        max_pruning_ratio=cfg.max_layer_ratio,
        iterative_steps=cfg.iterative_steps,
        round_to=cfg.round_to if cfg.round_to and cfg.round_to > 1 else None,
        ignored_layers=ignored,
    )
    pruner._round_to = _round_to_nearest  # torch-pruning rounds the kept width down; we round to nearest
    return pruner


def _round_to_nearest(n_pruned: int, current_channels: int, round_to: int) -> int:
    """Channels to prune so the kept width is the multiple of ``round_to`` nearest the request.

    Rounding down (torch-pruning's rule) turns 32 channels at ratio 0.3 (22 kept) into 16,
    the same model as ratio 0.5; the nearest multiple keeps 24. At least ``round_to`` stay.
    """
    kept = current_channels - n_pruned
    nearest = max(round_to, int(round(kept / round_to)) * round_to)
    return max(current_channels - min(nearest, current_channels), 0)


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


def shape_and_macs(module: nn.Module, inputs: tuple) -> tuple[tuple[int, ...], int]:
    """Output shape and MACs of one call, on the meta device (no compute) when the layers allow."""
    import copy

    try:
        meta = copy.deepcopy(module).to("meta")
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


def prune_site(model: nn.Module, site: PriorSite, cfg: PruneConfig) -> dict[str, Any]:
    """Prune one prior in place; return its record (widths, params, MACs, history)."""
    prior, inputs = site.module, tuple(site.inputs)
    if not inputs or not torch.is_tensor(inputs[0]):
        raise PruningError(f"prior {site.name!r} is not called with a tensor", "pass --prior naming a CNN that takes an image tensor")
    was_training = prior.training
    prior.eval()
    ref_shape, before_macs = shape_and_macs(prior, inputs)
    trace, trace_shape = trace_inputs(prior, inputs, ref_shape)
    before_widths = layer_widths(prior)
    before_params = count_params(prior)
    ignored = output_layers(model, prior, ref_shape[1])
    ignored += [m for n, m in prior.named_modules() if n and _layer_matches(join_name(site.name, n), cfg.ignore)]
    with norm_parametrizations_removed(prior), grads_enabled(prior):
        pruner = make_pruner(prior, trace, cfg, ignored, site.name)
        for _ in range(cfg.iterative_steps):
            if cfg.importance == "taylor":
                _taylor_backward(prior, trace)
            pruner.step()
        history = pruner.pruning_history()
        prior.zero_grad(set_to_none=True)
    prior.train(was_training)
    with torch.no_grad(), _sync_parameterless_norms(prior):
        out = prior(*trace)
    out = out[0] if isinstance(out, (tuple, list)) else out
    after_shape, after_macs = shape_and_macs(prior, inputs)
    if tuple(out.shape) != trace_shape or after_shape != ref_shape:
        raise PruningError(f"pruning changed the output of {site.name!r} from {ref_shape} to {after_shape}", "add the layer that produces the image to --ignore")
    after_widths = layer_widths(prior)
    return {
        "calls_per_forward": site.calls,
        "input_shape": [list(t.shape) for t in inputs if torch.is_tensor(t)],
        "trace_shape": [list(t.shape) for t in trace if torch.is_tensor(t)],
        "params_before": before_params,
        "params_after": count_params(prior),
        "macs_before": before_macs,
        "macs_after": after_macs,
        "widths": {k: [before_widths[k], after_widths.get(k, 0)] for k in before_widths},
        "ignored": sorted(join_name(site.name, n) for n, m in prior.named_modules() if any(m is i for i in ignored)),
        "history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
    }


def prune_priors(model: nn.Module, inputs: tuple, cfg: PruneConfig) -> dict[str, Any]:
    """Prune every prior of ``model`` (traced with ``inputs``) and verify the whole model.

    Returns the pruning record stored in checkpoints. Raises PruningError when nothing was
    removed or the model's output shape changed.
    """
    cfg.validate()
    check_finite_weights(model)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    total_before = count_params(model)
    sites, ref = find_priors(model, inputs, cfg.priors)
    check_patterns(sites, cfg)
    records = {s.name: prune_site(model, s, cfg) for s in sites}
    total_after = count_params(model)
    if total_after >= total_before:
        raise PruningError(
            f"pruning removed no parameters at ratio {cfg.ratio}",
            "raise --ratio, lower --round-to, or check --ignore does not cover every layer",
        )
    with torch.no_grad(), cheap_solver(model):
        out = model(*inputs)
    if tuple(out.shape) != tuple(ref.shape):
        raise PruningError(f"the pruned model maps inputs to {tuple(out.shape)}, not {tuple(ref.shape)}", "report this model; add its output layers to --ignore")
    return {
        "ratio": cfg.ratio,
        "importance": cfg.importance,
        "global": cfg.global_pruning,
        "iterative_steps": cfg.iterative_steps,
        "round_to": cfg.round_to,
        "layer_ratios": cfg.layer_ratios,
        "ignore": cfg.ignore,
        "seed": cfg.seed,
        "params_before": total_before,
        "params_after": total_after,
        "seconds": round(time.perf_counter() - t0, 3),
        "priors": records,
    }


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
