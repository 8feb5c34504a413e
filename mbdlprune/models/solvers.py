"""Fixed-point solvers for deep equilibrium models, batched over the first dimension.

A solver is a plain function ``solve(f, x0, max_iter, tol, **kw) -> (x, info)`` that looks
for x = f(x). ``info = {"iterations": int, "residual": float, "converged": bool}`` where
``iterations`` counts evaluations of ``f`` and ``residual`` is the largest over the batch
of the relative residual ||f(x) - x|| / (||f(x)|| + 1e-8). Solvers do not touch the
autograd mode; callers wrap them in ``torch.no_grad()`` when they want no graph.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..registry import Registry

Solver = Callable[..., "tuple[torch.Tensor, dict[str, Any]]"]

#: name -> solve(f, x0, max_iter, tol, **kw)
SOLVERS: Registry[Solver] = Registry("DEQ solver")

_EPS = 1e-8


def relative_residual(fx: torch.Tensor, x: torch.Tensor) -> float:
    """max over the batch of ||f(x) - x|| / (||f(x)|| + 1e-8)."""
    n = fx.shape[0]
    diff = (fx - x).reshape(n, -1).norm(dim=1)
    ref = fx.reshape(n, -1).norm(dim=1) + _EPS
    return float((diff / ref).max())


def _info(iterations: int, residual: float, tol: float) -> dict[str, Any]:
    return {"iterations": int(iterations), "residual": float(residual), "converged": bool(residual < tol)}


@SOLVERS.register("fixed_point")
def fixed_point(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, max_iter: int = 100,
                tol: float = 1e-4, **kw: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Plain iteration x <- f(x) until the relative residual drops below ``tol``."""
    x = x0
    residual = float("inf")
    it = 0
    for it in range(1, max(1, int(max_iter)) + 1):
        fx = f(x)
        residual = relative_residual(fx, x)
        x = fx
        if residual < tol:
            break
    return x, _info(it, residual, tol)


@SOLVERS.register("anderson")
def anderson(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, max_iter: int = 100,
             tol: float = 1e-4, m: int = 5, lam: float = 1e-4, beta: float = 1.0,
             **kw: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Anderson acceleration with memory ``m``, Tikhonov ``lam`` and mixing ``beta``.

    Each step picks weights a (summing to one) minimising ||sum_i a_i (f(x_i) - x_i)||
    over the last ``m`` iterates, then sets x = beta * sum a_i f(x_i) + (1-beta) * sum a_i x_i.
    The weights come from the bordered normal equations [[0, 1^T], [1, G G^T / s + lam I]],
    with s the mean squared residual norm, so ``lam`` is relative to the residuals' size.
    """
    shape, n = x0.shape, x0.shape[0]
    m = max(1, int(m))
    max_iter = max(1, int(max_iter))
    xs: list[torch.Tensor] = []  # flattened iterates (n, d), newest last
    gs: list[torch.Tensor] = []  # their residuals f(x) - x
    fs: list[torch.Tensor] = []  # f(x)
    x = x0.reshape(n, -1)
    best_fx, residual = x0, float("inf")
    for it in range(1, max_iter + 1):
        fx = f(x.reshape(shape)).reshape(n, -1)
        g = fx - x
        residual = float((g.norm(dim=1) / (fx.norm(dim=1) + _EPS)).max())
        best_fx = fx
        if residual < tol or it == max_iter:
            break
        xs.append(x)
        fs.append(fx)
        gs.append(g)
        if len(xs) > m:
            xs.pop(0), fs.pop(0), gs.pop(0)
        k = len(xs)
        if k == 1:
            x = fx
            continue
        G = torch.stack(gs, dim=1)  # (n, k, d)
        gram = G @ G.transpose(1, 2)
        # scale lam by the Gram's size so the regularisation is dimensionless
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(_EPS)
        H = gram.new_zeros(n, k + 1, k + 1)
        H[:, 0, 1:] = 1.0
        H[:, 1:, 0] = 1.0
        H[:, 1:, 1:] = gram / scale[:, None, None] + lam * torch.eye(k, dtype=gram.dtype, device=gram.device)
        rhs = gram.new_zeros(n, k + 1, 1)
        rhs[:, 0] = 1.0
        try:
            a = torch.linalg.solve(H, rhs)[:, 1:, 0]  # (n, k)
        except RuntimeError:  # singular system: fall back to a plain step
            x = fx
            continue
        mix_f = torch.einsum("nk,nkd->nd", a, torch.stack(fs, dim=1))
        if beta == 1.0:
            x = mix_f
        else:
            x = beta * mix_f + (1.0 - beta) * torch.einsum("nk,nkd->nd", a, torch.stack(xs, dim=1))
    return best_fx.reshape(shape), _info(it, residual, tol)


def get_solver(name: str) -> Solver:
    """The solver registered under ``name`` (an error lists the known ones)."""
    return SOLVERS.get(name)
