"""Deep unrolled network: a fixed number of gradient steps, each followed by a CNN prior."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .registry import create_arch, default_args, list_archs, register_arch


class Unrolled(nn.Module):
    """x0 = A^H y; for k < steps: x = x - eta_k A^H (A x - y); x = prior_k(x).

    ``priors`` is one module (shared by every step, held at ``prior``) or a list of
    ``steps`` modules (held in the ModuleList ``priors``). ``step_sizes`` holds the
    learnable eta_k. Set ``checkpointing = True`` to recompute each step's activations
    in the backward pass instead of storing them (training only; a prior with batch
    norm then updates its running statistics twice per step).
    """

    def __init__(self, priors: nn.Module | list[nn.Module], steps: int = 8, shared: bool = True,
                 step_size: float = 1.0):
        super().__init__()
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}", "set steps to 1 or more")
        self.steps = int(steps)
        self.shared = bool(shared)
        if self.shared:
            if isinstance(priors, (list, tuple, nn.ModuleList)):
                if len(priors) != 1:
                    raise ValueError("a shared unrolled network takes exactly one prior")
                priors = priors[0]
            self.prior = priors
            first = priors
        else:
            if not isinstance(priors, (list, tuple, nn.ModuleList)) or len(priors) != self.steps:
                raise ValueError(f"an unshared unrolled network needs a list of {self.steps} priors")
            self.priors = nn.ModuleList(priors)
            first = self.priors[0]
        self.step_sizes = nn.Parameter(torch.full((self.steps,), float(step_size)))
        self.in_channels = getattr(first, "in_channels", None)
        self.out_channels = getattr(first, "out_channels", None)
        self.checkpointing = False
        self.last_info: dict[str, Any] = {"iterations": 0}

    def prior_at(self, k: int) -> nn.Module:
        return self.prior if self.shared else self.priors[k]

    def step(self, k: int, x: torch.Tensor, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        """Step k: gradient step on ||A x - y||^2 / 2 with size eta_k, then prior k."""
        x = x - self.step_sizes[k] * op.A_adjoint(op.A(x) - y)
        return self.prior_at(k)(x)

    def forward(self, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        x = op.A_adjoint(y)
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for k in range(self.steps):
            if use_ckpt:
                x = checkpoint(self.step, k, x, y, op, use_reentrant=False)
            else:
                x = self.step(k, x, y, op)
        self.last_info = {"iterations": self.steps}
        return x

    def prior_paths(self) -> list[str]:
        return ["prior"] if self.shared else [f"priors.{k}" for k in range(self.steps)]

    def output_layers(self) -> list[nn.Module]:
        mods = [self.prior] if self.shared else list(self.priors)
        return [layer for p in mods for layer in p.output_layers()]

    def extra_repr(self) -> str:
        return f"steps={self.steps}, shared={self.shared}"


def _channel_args(prior: str, channels: int) -> dict[str, int]:
    """The prior factory's own names for its channel counts (fastMRI's U-Net says *_chans)."""
    names = default_args(prior)
    if "in_chans" in names:
        return {"in_chans": channels, "out_chans": channels}
    return {"in_channels": channels, "out_channels": channels}


def build_prior(prior: str, in_channels: int, prior_args: Mapping[str, Any] | None) -> nn.Module:
    """Create a registered prior with image channels in and out, checking ``prior_args``."""
    priors = list_archs("prior")
    if prior not in priors:
        raise ConfigError(f"unknown prior {prior!r} for an unrolled network", f"use one of: {', '.join(priors)}")
    args = dict(prior_args or {})
    chan = _channel_args(prior, in_channels)
    clash = sorted(set(args) & set(chan))
    if clash:
        raise ConfigError(f"prior_args sets {', '.join(clash)}, which follow in_channels",
                          "remove them from prior_args and set in_channels instead")
    return create_arch(prior, **chan, **args)


@register_arch("unrolled", kind="mbdl")
def unrolled(prior: str = "dncnn", steps: int = 8, shared: bool = True, in_channels: int = 2,
             prior_args: dict[str, Any] | None = None, step_size: float = 1.0) -> Unrolled:
    """Deep unrolled network: gradient steps alternating with a (shared or per-step) prior."""
    if shared:
        priors: Any = build_prior(prior, in_channels, prior_args)
    else:
        priors = [build_prior(prior, in_channels, prior_args) for _ in range(steps)]
    return Unrolled(priors, steps=steps, shared=shared, step_size=step_size)
