"""Structured channel pruning of the prior CNN(s) inside an MBDL model, with torch-pruning.

Three separate steps: find the priors and their real inputs (:func:`find_priors`), prune each
prior group by group on torch-pruning's dependency graph (:func:`prune_groups`), then verify
(:func:`prune_priors`). Every silent failure mode of torch-pruning is guarded: inputs go as a
tuple, gradients are enabled on every parameter while tracing, image-producing convs are
ignored, norm parametrizations are removed and restored, and the result is checked
(parameters dropped, shapes unchanged).

The kept width of each group of coupled channels is computed here, not by torch-pruning's
rounding: the multiple of ``round_to`` and of every channel-group constraint in the group
(GroupNorm groups, grouped convs) nearest the requested removal (:func:`kept_width`). After
pruning, every layer's achieved removal is compared with the request; a layer held back beyond
the rounding (channel groups, --ignore, the maximum ratio, a width under one multiple) fails
the prune in one line naming it and the reason, unless ``allow_partial`` (:func:`shortfall`).
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
#: A layer may remove up to this fraction of its width less than asked, beyond what rounding
#: allows, before the prune counts as held back (see :func:`shortfall`).
SHORTFALL_TOLERANCE = 0.02


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
    allow_partial: bool = False

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
        if not isinstance(self.allow_partial, bool):
            raise ConfigError(f"allow_partial must be true or false, got {self.allow_partial!r}", "pass --allow-partial or leave it out")
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
    from .models.protocol import SolverSettings, is_deq, solver_settings

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


def prune_groups(prior: nn.Module, inputs: tuple, cfg: PruneConfig, fixed: dict[nn.Module, str], prefix: str):
    """Prune ``prior`` in place, one dependency group at a time; return (history, plans).

    The dependency graph is torch-pruning's (``DependencyGraph.get_all_groups``), the scores its
    importances applied to each group, the cut its ``group.prune``. The kept width of every group
    is computed here: the multiple of ``round_to`` and of every channel-group constraint in the
    group (:func:`kept_width`) nearest the requested removal; each channel group loses the same
    positions. ``fixed`` maps layers that keep every channel (image layers, --ignore, one-channel
    layers) to the reason; a group holding one of them is not pruned.
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
    round_to = cfg.round_to if cfg.round_to and cfg.round_to > 1 else 1
    steps = cfg.iterative_steps
    plans: dict[nn.Module, GroupPlan] = {}
    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    for step in range(1, steps + 1):
        if cfg.importance == "taylor":
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
        for plan, _group, root, fn, width, step_ratio, dim_imp in scored:
            floor = plan.width0 * (1 - cfg.max_layer_ratio)
            target = plan.step_target if plan.is_global else plan.width0 * (1 - step_ratio)
            kept = kept_width(target, width, plan.multiple, floor)
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


#: Layers that keep every channel, and what the report says about them and about layers coupled to them.
FIXED = {
    "image": ("image layer", "coupled to the image layer"),
    "ignore": ("--ignore", "coupled to --ignore"),
    "one-channel": ("one channel", "coupled to the one-channel layer"),
}


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


def prune_site(model: nn.Module, site: PriorSite, cfg: PruneConfig) -> dict[str, Any]:
    """Prune one prior in place; return its record (widths requested and achieved, params, MACs, history)."""
    prior, inputs = site.module, tuple(site.inputs)
    if not inputs or not torch.is_tensor(inputs[0]):
        raise PruningError(f"prior {site.name!r} is not called with a tensor", "pass --prior naming a CNN that takes an image tensor")
    was_training = prior.training
    prior.eval()
    ref_shape, before_macs = shape_and_macs(prior, inputs)
    trace, trace_shape = trace_inputs(prior, inputs, ref_shape)
    before_widths = layer_widths(prior)
    before_params = count_params(prior)
    fixed = fixed_layers(model, site, ref_shape[1], cfg)
    names = {m: n for n, m in prior.named_modules()}
    ignored = output_layers(model, prior, ref_shape[1])
    ignored += [m for n, m in prior.named_modules() if n and _layer_matches(join_name(site.name, n), cfg.ignore)]
    with norm_parametrizations_removed(prior), grads_enabled(prior):
        history, plans = prune_groups(prior, trace, cfg, fixed, site.name)
        prior.zero_grad(set_to_none=True)
    prior.train(was_training)
    with torch.no_grad(), _sync_parameterless_norms(prior):
        out = prior(*trace)
    out = out[0] if isinstance(out, (tuple, list)) else out
    after_shape, after_macs = shape_and_macs(prior, inputs)
    if tuple(out.shape) != trace_shape or after_shape != ref_shape:
        raise PruningError(f"pruning changed the output of {site.name!r} from {ref_shape} to {after_shape}", "add the layer that produces the image to --ignore")
    after_widths = layer_widths(prior)
    requested, notes, held = _requested_and_held(site.name, before_widths, after_widths, plans, fixed, names, cfg)
    widths = {k: [before_widths[k], after_widths.get(k, 0)] for k in before_widths}
    return {
        "calls_per_forward": site.calls,
        "input_shape": [list(t.shape) for t in inputs if torch.is_tensor(t)],
        "trace_shape": [list(t.shape) for t in trace if torch.is_tensor(t)],
        "params_before": before_params,
        "params_after": count_params(prior),
        "macs_before": before_macs,
        "macs_after": after_macs,
        "widths": widths,
        "requested": requested,
        "requested_channel_ratio": requested_fraction(widths, requested),
        "achieved_channel_ratio": removed_fraction(widths.values()) or 0.0,
        "notes": notes,
        "held_back": held,
        "ignored": sorted(join_name(site.name, n) for n, m in prior.named_modules() if any(m is i for i in ignored)),
        "history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
    }


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


def prune_priors(model: nn.Module, inputs: tuple, cfg: PruneConfig) -> dict[str, Any]:
    """Prune every prior of ``model`` (traced with ``inputs``) and verify the whole model.

    Returns the pruning record stored in checkpoints. Raises PruningError when nothing was
    removed, the model's output shape changed, or (unless ``cfg.allow_partial``) a layer kept
    more channels than the request and the rounding allow (see :func:`shortfall`).
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
        err = held_back_error({"ratio": cfg.ratio, "global": cfg.global_pruning, "priors": records}, removed_nothing=True)
        if err is not None:
            raise err
        raise PruningError(
            f"pruning removed no parameters at ratio {cfg.ratio}",
            "raise --ratio, lower --round-to, or check --ignore does not cover every layer",
        )
    try:  # the priors' own shapes were checked on their real inputs: probe them here (no prior compute)
        with torch.no_grad(), cheap_solver(model), _probe_calls(model, [s.name for s in sites]):
            out = model(*inputs)
    except Exception:
        with torch.no_grad(), cheap_solver(model):
            out = model(*inputs)
    if tuple(out.shape) != tuple(ref.shape):
        raise PruningError(f"the pruned model maps inputs to {tuple(out.shape)}, not {tuple(ref.shape)}", "report this model; add its output layers to --ignore")
    record = {
        "ratio": cfg.ratio,
        "importance": cfg.importance,
        "global": cfg.global_pruning,
        "iterative_steps": cfg.iterative_steps,
        "round_to": cfg.round_to,
        "layer_ratios": cfg.layer_ratios,
        "ignore": cfg.ignore,
        "max_layer_ratio": cfg.max_layer_ratio,
        "allow_partial": cfg.allow_partial,
        "seed": cfg.seed,
        "params_before": total_before,
        "params_after": total_after,
        "seconds": round(time.perf_counter() - t0, 3),
        "priors": records,
    }
    err = held_back_error(record)
    if err is not None and not cfg.allow_partial:
        raise err
    return record


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
