"""Deep equilibrium (DEQ) reconstruction: the fixed point of a gradient step plus a CNN prior.

One iteration is z = x - gamma * A^H (A x - y), x+ = alpha * prior(z) + (1 - alpha) * z,
started from x0 = A^H y. The fixed point is found without autograd; training then
differentiates either one extra iteration at the fixed point (Jacobian-free backprop,
``backward="jfb"``) or the implicit function theorem (``backward="implicit"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .registry import register_arch
from .solvers import SOLVERS, get_solver

BACKWARDS = ("jfb", "implicit")


class DEQ(nn.Module):
    """Deep equilibrium model around one prior CNN, held at ``prior``.

    ``solver``, ``tol``, ``max_iter`` and ``check_every`` (how often the solver reads its
    residual on the host; see :mod:`.solvers`) may be changed at run time. ``forward(y, op, x0)``
    starts the solve from ``x0`` instead of A^H y (a warm start, e.g. the fixed point of the
    adjacent slice of a volume); the fixed point sought is the same. After each forward,
    ``last_info = {"iterations", "residual", "converged"}`` describes the forward solve.
    A training forward (grad enabled) also keeps its fixed point (detached) for
    :meth:`fixed_point`, so a regulariser at x* (e.g. the Jacobian penalty) need not solve again.

    ``backward="implicit"``: the output is f(x*) with a gradient hook that replaces the
    incoming gradient g by the solution u of the adjoint fixed point u = J^T u + g
    (J = df/dx at x*), found with the same solver, so parameter gradients are exact
    at the equilibrium. It costs one extra prior evaluation per forward plus one
    vector-Jacobian product per adjoint iteration, and needs the map to contract.
    """

    def __init__(self, prior: nn.Module, gamma: float = 1.0, alpha: float = 0.2, solver: str = "anderson",
                 tol: float = 1e-4, max_iter: int = 100, backward: str = "jfb", check_every: int = 1):
        super().__init__()
        if backward not in BACKWARDS:
            raise ConfigError(f"unknown DEQ backward {backward!r}", f"use one of: {', '.join(BACKWARDS)}")
        if solver not in SOLVERS:
            raise ConfigError(f"unknown DEQ solver {solver!r}", f"use one of: {', '.join(SOLVERS.names())}")
        self.prior = prior
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.solver = solver
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.backward = backward
        self.check_every = int(check_every)
        self.in_channels = getattr(prior, "in_channels", None)
        self.out_channels = getattr(prior, "out_channels", None)
        self.last_info: dict[str, Any] = {"iterations": 0, "residual": float("nan"), "converged": False}

    def step(self, x: torch.Tensor, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        """One DEQ iteration f(x): gradient step on the data term, then the relaxed prior."""
        z = x - self.gamma * op.A_adjoint(op.A(x) - y)
        return self.alpha * self.prior(z) + (1 - self.alpha) * z

    def _solve(self, f, x0: torch.Tensor):
        return get_solver(self.solver)(f, x0, self.max_iter, self.tol, check_every=self.check_every)

    def forward(self, y: torch.Tensor, op: nn.Module, x0: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            start = op.A_adjoint(y)
            if x0 is not None:
                if tuple(x0.shape) != tuple(start.shape):
                    raise ValueError(f"warm start x0 has shape {tuple(x0.shape)}, the iterate {tuple(start.shape)}")
                start = x0.to(dtype=start.dtype, device=start.device)
            x_star, info = self._solve(lambda x: self.step(x, y, op), start)
        self.last_info = info
        if not (torch.is_grad_enabled() and self.training):
            self._last_fixed_point = None
            return x_star
        x_star = x_star.detach()
        self._last_fixed_point = (y, x_star)
        out = self.step(x_star, y, op)
        if self.backward == "implicit" and out.requires_grad:
            out.register_hook(self._adjoint_hook(x_star, y, op))
        return out

    def fixed_point(self, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        """The fixed point x* for measurements ``y`` (detached, no graph).

        The one kept by the latest training forward when it was called with this very ``y``
        tensor; otherwise a fresh solve with the current solver settings.
        """
        cached = getattr(self, "_last_fixed_point", None)
        if cached is not None and cached[0] is y:
            return cached[1]
        with torch.no_grad():
            x_star, _ = self._solve(lambda x: self.step(x, y, op), op.A_adjoint(y))
        return x_star.detach()

    def _adjoint_hook(self, x_star: torch.Tensor, y: torch.Tensor, op: nn.Module):
        # a separate graph for J, so the hook never re-enters the graph it is attached to
        xs = x_star.clone().requires_grad_()
        with torch.enable_grad():
            fx = self.step(xs, y, op)
        def hook(grad: torch.Tensor) -> torch.Tensor:
            def adjoint_map(u: torch.Tensor) -> torch.Tensor:
                return torch.autograd.grad(fx, xs, u, retain_graph=True)[0] + grad

            u, info = self._solve(adjoint_map, grad)
            self.last_backward_info = info
            return u

        return hook

    def prior_paths(self) -> list[str]:
        return ["prior"]

    def output_layers(self) -> list[nn.Module]:
        return list(self.prior.output_layers())

    def extra_repr(self) -> str:
        every = f", check_every={self.check_every}" if self.check_every != 1 else ""
        return f"solver={self.solver!r}, tol={self.tol}, max_iter={self.max_iter}{every}, backward={self.backward!r}"


@register_arch("deq-edsr", kind="mbdl")
def deq_edsr(in_channels: int = 2, n_feats: int = 64, n_blocks: int = 13, res_scale: float = 1.0,
             gamma: float = 1.0, alpha: float = 0.2, solver: str = "anderson", tol: float = 1e-4,
             max_iter: int = 100, backward: str = "jfb") -> DEQ:
    """Deep equilibrium model with an EDSR prior (gradient step + relaxed prior)."""
    from .priors import EDSR

    prior = EDSR(in_channels, in_channels, n_feats, n_blocks, res_scale)
    return DEQ(prior, gamma=gamma, alpha=alpha, solver=solver, tol=tol, max_iter=max_iter, backward=backward)
