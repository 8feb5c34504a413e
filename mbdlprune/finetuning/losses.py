"""Fine-tuning losses, all with one signature: ``loss(x_net, x, y, op, model) -> Tensor``.

``x_net`` is the network's reconstruction of the measurements ``y`` through operator ``op``;
``x`` is the ground truth or ``None``; ``model`` is the network itself (the equivariance term
runs it a second time). Two keyword-only extras: ``batch`` (the loader's dict, where a cached
teacher output ``batch["teacher"]`` may sit) and ``generator`` (a ``torch.Generator`` for the
random transforms, so a run is reproducible and resumable).

Losses that need no ground truth (``distill``, ``mc``, ``equivariance``) never read ``x``.

Terms (registry names)
  * ``supervised`` — pixel loss between ``x_net`` and ``x`` (``pixel`` = l1, l2, smoothl1 or
    ssim, i.e. 1 − SSIM on magnitudes). ``l1``, ``l2``, ``smoothl1`` and ``ssim`` are the same
    term with that pixel loss.
  * ``distill`` — pixel loss between ``x_net`` and the teacher's output (no ground truth).
  * ``mc`` — measurement consistency ‖A x̂ − y‖ (L1 by default).
  * ``equivariance`` — robust equivariant imaging: T a random rotation/flip keeping the image
    size, y_T = A(T x̂) (+ the operator's noise), loss MSE(model(y_T), T x̂) with T x̂ detached.
  * ``jacobian`` — DEQ only: a Hutchinson estimate of ‖J_f(x*)‖_F² / dim, J_f the Jacobian of
    one DEQ iteration f(x) = ``model.step(x, y, op)`` at the fixed point x*: ‖εᵀJ_f‖² / dim with
    one probe ε ~ N(0, I) (a vector-Jacobian product kept in the graph). Penalising it keeps
    the iteration contractive, so the solver needs few iterations (Jacobian regularisation of
    deep equilibrium models, Bai, Koltun and Kolter, 2021). Never reads ``x`` or ``x_net``.
  * ``self-supervised`` — shorthand for ``mc`` + ``equivariance`` with the same weight.

Any term combines with any mode through the weights, e.g.
``build_mode_loss("distill", {"jacobian": 0.05})``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..registry import Registry

PIXEL_LOSSES = ("l1", "l2", "smoothl1", "ssim")


# ----------------------------------------------------------------------------- pixels
def _ssim_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    from ..metric_primitives import magnitude, ssim

    ma, mb = magnitude(a), magnitude(b)
    h, w = ma.shape[-2:]
    window = min(11, min(h, w) - (1 - min(h, w) % 2))
    return 1.0 - ssim(ma, mb, window=window).mean()


def pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel loss function ``f(prediction, target)`` called ``name``."""
    table = {"l1": F.l1_loss, "l2": F.mse_loss, "smoothl1": F.smooth_l1_loss, "ssim": _ssim_loss}
    if name not in table:
        raise ConfigError(f"unknown pixel loss {name!r}", f"use one of: {', '.join(PIXEL_LOSSES)}")
    return table[name]


# ----------------------------------------------------------------------------- terms
class Loss:
    """Base class: a callable ``loss(x_net, x, y, op, model, *, batch=None, generator=None)``."""

    name = "loss"
    needs_ground_truth = False
    needs_teacher = False
    #: reads state the model kept from the forward that made ``x_net`` (run before other terms)
    uses_forward_state = False

    def __call__(self, x_net, x, y, op, model, *, batch: Mapping[str, Any] | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def check_model(self, model) -> None:
        """Raise ConfigError when this term cannot apply to ``model`` (default: every model is fine)."""


def match_target(x_net, x):
    """``x_net`` as the target ``x`` is stored: itself, or, when ``x`` is a one-channel image smaller
    than the output (raw k-space: the RSS target of the recon size), the output's magnitude
    centre-cropped to it (fastMRI's crop: from (H - h) // 2)."""
    if x is None or x.shape == x_net.shape or x.dim() != 4 or x.shape[1] != 1:
        return x_net
    h, w = x.shape[-2:]
    mag = x_net.square().sum(1, keepdim=True).clamp_min(1e-24).sqrt() if x_net.shape[1] == 2 else x_net.abs()
    top, left = (mag.shape[-2] - h) // 2, (mag.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise DataError(f"the target ({h}x{w}) is larger than the reconstruction ({mag.shape[-2]}x{mag.shape[-1]})",
                        "check the data's reconstruction size")
    return mag[..., top:top + h, left:left + w]


class SupervisedLoss(Loss):
    """Pixel loss against the ground truth (a raw-k-space RSS target: on the cropped magnitude, :func:`match_target`)."""

    name = "supervised"
    needs_ground_truth = True

    def __init__(self, pixel: str = "smoothl1"):
        self.pixel = pixel
        self.fn = pixel_loss(pixel)

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        if x is None:
            raise DataError("supervised fine-tuning needs ground-truth images, and this data has measurements only",
                            "use --mode self-supervised (or distill with --teacher), or pass image files")
        return self.fn(match_target(x_net.float(), x.float()), x.float())

    def describe(self):
        return {"name": self.name, "pixel": self.pixel}


class DistillLoss(Loss):
    """Pixel loss against the teacher's reconstruction of the same measurements; never reads ``x``.

    The target is ``batch["teacher"]`` when the trainer cached it, else ``teacher(y, op)``.
    """

    name = "distill"
    needs_teacher = True

    def __init__(self, teacher: torch.nn.Module | None = None, pixel: str = "smoothl1"):
        self.teacher = teacher
        self.pixel = pixel
        self.fn = pixel_loss(pixel)

    def target(self, y, op, batch=None) -> torch.Tensor:
        if batch is not None and "teacher" in batch:
            return batch["teacher"]
        if self.teacher is None:
            raise ConfigError("distillation needs the original (unpruned) model as teacher", "pass --teacher ORIGINAL_CHECKPOINT")
        was = self.teacher.training
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(y, op)
        self.teacher.train(was)
        return out

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        target = self.target(y, op, batch).detach()
        return self.fn(x_net.float(), target.to(x_net.device).float())

    def describe(self):
        return {"name": self.name, "pixel": self.pixel}


class MeasurementConsistencyLoss(Loss):
    """‖A x̂ − y‖ with an L1 (default) or L2 (mean squared) norm; needs only measurements."""

    name = "mc"

    def __init__(self, norm: str = "l1"):
        if norm not in ("l1", "l2"):
            raise ConfigError(f"unknown measurement-consistency norm {norm!r}", "use l1 or l2")
        self.norm = norm

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        r = op.A(x_net.float()) - y.float()
        return r.abs().mean() if self.norm == "l1" else r.square().mean()

    def describe(self):
        return {"name": self.name, "norm": self.norm}


def _randint(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (1,), generator=generator).item())


def transforms_for(height: int, width: int) -> list[tuple[int, bool]]:
    """Non-identity (rot90 count k, flip W first) pairs that keep an H x W image H x W.

    Square images: the 7 non-identity rotations/reflections of the square. Otherwise only
    the 180° rotation and the two flips.
    """
    if height == width:
        return [(k, f) for f in (False, True) for k in range(4) if (k, f) != (0, False)]
    return [(2, False), (0, True), (2, True)]


def apply_transform(x: torch.Tensor, t: tuple[int, bool]) -> torch.Tensor:
    k, flip = t
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


class EquivarianceLoss(Loss):
    """Robust equivariant imaging: MSE(model(A(T x̂) [+ noise]), T x̂) with T x̂ detached.

    ``noise=True`` (default) measures T x̂ with ``op.measure`` (the operator's noise model,
    which adds nothing when its ``noise_sigma`` is 0); ``noise=False`` uses ``op.A``.
    """

    name = "equivariance"

    def __init__(self, noise: bool = True):
        self.noise = bool(noise)

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        h, w = x_net.shape[-2:]
        choices = transforms_for(h, w)
        t = choices[_randint(len(choices), generator)]
        tx = apply_transform(x_net.detach().float(), t)
        with torch.no_grad():
            y_t = op.measure(tx, generator) if self.noise else op.A(tx)
        x_t = model(y_t, op)
        return F.mse_loss(x_t.float(), tx)

    def describe(self):
        return {"name": self.name, "noise": self.noise}


def _unwrap(model):
    """The module inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


class JacobianLoss(Loss):
    """‖εᵀ J_f(x*)‖² / dim, ε ~ N(0, I): one-probe Hutchinson estimate of ‖J_f(x*)‖_F² / dim.

    f is one DEQ iteration ``model.step(x, y, op)`` and x* its fixed point, taken from the
    latest training forward on this ``y`` (:meth:`DEQ.fixed_point`) or solved again. The
    vector-Jacobian product keeps its graph, so the term has gradients on the prior's
    parameters (and on the DEQ's gamma and alpha). ``generator`` draws the probe.
    """

    name = "jacobian"
    uses_forward_state = True
    definition = ("||e^T J||^2 / dim, e ~ N(0, I) (one Hutchinson probe), J = df/dx at the fixed point x*, "
                  "f one DEQ iteration")

    def check_model(self, model) -> None:
        from ..models.deq import DEQ

        m = _unwrap(model)
        if not isinstance(m, DEQ):
            raise ConfigError(f"the jacobian loss needs a deep equilibrium (DEQ) model, and this is a {type(m).__name__}",
                              "drop the jacobian weight: it regularises the fixed-point iteration of DEQ models only")

    def _iteration_at_fixed_point(self, model, y, op):
        """(x*, f(x*)) with x* a leaf requiring grad and f one DEQ iteration, its graph kept."""
        self.check_model(model)
        deq = _unwrap(model)
        xs = deq.fixed_point(y, op).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            return xs, deq.step(xs, y, op)

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        xs, fx = self._iteration_at_fixed_point(model, y, op)
        with torch.enable_grad():
            eps = torch.randn(xs.shape, generator=generator, dtype=xs.dtype).to(xs.device)
            (vjp,) = torch.autograd.grad(fx, xs, eps.to(fx.dtype), create_graph=True)
        return vjp.float().pow(2).sum() / eps.numel()

    def describe(self):
        return {"name": self.name, "definition": self.definition}


class SpectralLoss(JacobianLoss):
    """max(0, σ − target)², σ ≈ ‖J_f(x*)‖₂ the largest singular value of one DEQ iteration's
    Jacobian at the fixed point, by a few power iterations on JᵀJ (vector-Jacobian products, and
    Jacobian-vector products by the double-backward trick); only the last product keeps its graph.

    Where the Frobenius term (``jacobian``) shrinks every direction alike, this one shrinks the
    slowest-contracting direction, which is what sets the solver's iteration count; ``target``
    (default 0.5) leaves a map that already contracts that fast alone. The power iteration's
    vector is carried from step to step, so ``iterations`` = 1 per step tracks σ cheaply.
    """

    name = "spectral"
    definition = ("max(0, sigma - target)^2, sigma = largest singular value of J = df/dx at the fixed point x* "
                  "(power iteration on J^T J), f one DEQ iteration")

    def __init__(self, target: float = 0.5, iterations: int = 1):
        self.target = float(target)
        self.iterations = int(iterations)
        self._v = None  # the power iteration's vector, carried from step to step (as spectral_norm does)

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        xs, fx = self._iteration_at_fixed_point(model, y, op)
        with torch.enable_grad():
            if self._v is not None and self._v.shape == xs.shape and self._v.device == xs.device:
                v = self._v
            else:
                v = torch.randn(xs.shape, generator=generator, dtype=xs.dtype).to(xs.device)
                v = v / v.norm().clamp_min(1e-12)
            for _ in range(self.iterations):
                w = torch.zeros_like(fx, requires_grad=True)
                (g,) = torch.autograd.grad(fx, xs, w, create_graph=True)  # g = J^T w, linear in w
                (jv,) = torch.autograd.grad(g, w, v, retain_graph=True)  # d(w . J v)/dw = J v
                (u,) = torch.autograd.grad(fx, xs, jv.detach(), retain_graph=True)  # J^T J v
                v = (u / u.norm().clamp_min(1e-12)).detach()
            w = torch.zeros_like(fx, requires_grad=True)
            (g,) = torch.autograd.grad(fx, xs, w, create_graph=True)
            (jv,) = torch.autograd.grad(g, w, v, create_graph=True)  # J v with its graph: sigma = |J v|
        self._v = v
        sigma = jv.float().norm()
        self.last_sigma = float(sigma.detach())
        return torch.relu(sigma - self.target).pow(2)

    def describe(self):
        return {"name": self.name, "definition": self.definition, "target": self.target, "iterations": self.iterations}


class CombinedLoss(Loss):
    """Weighted sum of terms; ``last`` holds each term's value from the latest call."""

    name = "combined"

    def __init__(self, terms: list[tuple[str, float, Loss]]):
        if not terms:
            raise ConfigError("the loss has no terms with a non-zero weight", "give at least one loss a positive weight")
        self.terms = terms
        self.last: dict[str, float] = {}

    @property
    def needs_ground_truth(self) -> bool:  # type: ignore[override]
        return any(t.needs_ground_truth for _, _, t in self.terms)

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return any(t.needs_teacher for _, _, t in self.terms)

    def check_model(self, model) -> None:
        for _, _, term in self.terms:
            term.check_model(model)

    def find(self, name: str) -> Loss | None:
        return next((t for n, _, t in self.terms if n == name), None)

    def __call__(self, x_net, x, y, op, model, *, batch=None, generator=None):
        total = None
        last = {}
        # terms that reuse the model's latest forward state (e.g. the DEQ fixed point) run before
        # terms that run the model again (equivariance); the sum is the same in any order
        for name, weight, term in sorted(self.terms, key=lambda t: not t[2].uses_forward_state):
            v = term(x_net, None if not term.needs_ground_truth else x, y, op, model, batch=batch, generator=generator)
            last[name] = float(v.detach())
            total = weight * v if total is None else total + weight * v
        self.last = {n: last[n] for n, _, _ in self.terms}
        return total

    def describe(self):
        return {"terms": [{**t.describe(), "weight": w} for _, w, t in self.terms]}

    def weights(self) -> dict[str, float]:
        return {n: w for n, w, _ in self.terms}


# ----------------------------------------------------------------------------- registries
#: loss name -> factory(**options) -> Loss
LOSSES: Registry[Callable[..., Loss]] = Registry("loss")
LOSSES.register("supervised", SupervisedLoss)
for _p in PIXEL_LOSSES:
    LOSSES.register(_p, (lambda p: (lambda: SupervisedLoss(pixel=p)))(_p))
LOSSES.register("distill", DistillLoss)
LOSSES.register("mc", MeasurementConsistencyLoss)
LOSSES.register("equivariance", EquivarianceLoss)
LOSSES.register("jacobian", JacobianLoss)
LOSSES.register("spectral", lambda spectral_target=0.5: SpectralLoss(target=spectral_target))
#: names that stand for several terms
SHORTHANDS = {"self-supervised": ("mc", "equivariance")}

from .modes import MODES  # noqa: E402  (fine-tuning mode -> default term weights; torch-free)


def loss_names() -> list[str]:
    return sorted([*LOSSES.names(), *SHORTHANDS])


def _build_term(name: str, options: Mapping[str, Any]) -> Loss:
    factory = LOSSES.get(name)
    params = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in options.items() if k in params and v is not None})


def combine(weights: Mapping[str, float], **options: Any) -> CombinedLoss:
    """Build the weighted sum of the named terms, e.g. ``combine({"distill": 1.0, "self-supervised": 0.5})``.

    ``options`` go to the terms that take them: ``pixel`` (supervised/distill), ``teacher``
    (distill), ``norm`` (mc), ``noise`` (equivariance), ``spectral_target`` (spectral). Zero
    weights drop a term.
    """
    flat: dict[str, float] = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"loss weight for {name!r} must be a number, got {w!r}", 'write e.g. {"mc": 1.0}')
        if w < 0 or w != w:
            raise ConfigError(f"loss weight for {name!r} must be >= 0, got {w}", "use a non-negative weight")
        for part in SHORTHANDS.get(name, (name,)):
            if part not in LOSSES:
                raise ConfigError(f"unknown loss {name!r}", f"use one of: {', '.join(loss_names())}")
            flat[part] = flat.get(part, 0.0) + float(w)
    terms = [(n, w, _build_term(n, options)) for n, w in flat.items() if w > 0]
    return CombinedLoss(terms)


def mode_weights(mode: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The default term weights of ``mode`` updated by ``overrides`` (e.g. from ``--weights``)."""
    w = dict(MODES.get(mode))
    for name, value in (overrides or {}).items():
        parts = SHORTHANDS.get(name, (name,))
        for part in parts:
            if part not in LOSSES:
                raise ConfigError(f"unknown loss {name!r} in the weights", f"use one of: {', '.join(loss_names())}")
            w[part] = value
    return w


def build_mode_loss(mode: str, weights: Mapping[str, float] | None = None, **options: Any) -> CombinedLoss:
    """The loss of a fine-tuning mode (``MODES``) with optional weight overrides."""
    return combine(mode_weights(mode, weights), **options)
