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
    """Anderson acceleration (type II) with memory ``m``, Tikhonov ``lam`` and mixing ``beta``.

    With g(x) = f(x) - x and the last ``m`` differences dX, dG of iterates and residuals,
    each step takes c = argmin ||g_k - dG c||^2 + lam ||D c||^2 (D: the column norms of dG,
    so ``lam`` is scale free) and sets x+ = x_k + beta g_k - (dX + beta dG) c. This equals
    the usual form with weights summing to one.

    The differences live in ring buffers (no copies of the history per step), and the small
    system is solved from the Gram matrix dGᵀdG, kept in float64 and updated by one row per
    step: c = D⁻¹ (D⁻¹ dGᵀdG D⁻¹ + lam I)⁻¹ D⁻¹ dGᵀ g with D² = diag(dGᵀdG). Accurate down to
    tight tolerances and reproducible bit for bit (no LAPACK least-squares driver, whose
    results vary between runs on CPU), at about a third of the cost of rebuilding the system.
    """
    shape, n = x0.shape, x0.shape[0]
    m = max(1, int(m))
    max_iter = max(1, int(max_iter))
    x = x0.reshape(n, -1)
    fx = f(x0).reshape(n, -1)
    g = fx - x
    d = x.shape[1]
    d_x = x.new_empty(n, m, d)  # ring buffers: slot (k mod m) holds the k-th difference
    d_g = x.new_empty(n, m, d)
    d_g64 = torch.empty(n, m, d, dtype=torch.float64, device=x.device)
    gram = torch.zeros(n, m, m, dtype=torch.float64, device=x.device)
    eye = torch.eye(m, dtype=torch.float64, device=x.device)
    stored = 0  # differences stored so far (the history holds min(stored, m))
    it = 1
    while True:
        residual = float((g.norm(dim=1) / (fx.norm(dim=1) + _EPS)).max())
        if residual < tol or it >= max_iter:
            break
        if stored == 0:
            x_new = x + beta * g
        else:
            k = min(stored, m)
            gk = gram[:, :k, :k]
            scale = gk.diagonal(dim1=1, dim2=2).clamp_min(1e-60).sqrt()  # (n, k): column norms of dG
            system = gk / (scale.unsqueeze(2) * scale.unsqueeze(1)) + lam * eye[:k, :k]
            rhs = (d_g64[:, :k] @ g.double().unsqueeze(2)).squeeze(2) / scale
            c = (torch.linalg.solve(system, rhs) / scale).to(x.dtype).unsqueeze(1)  # (n, 1, k)
            x_new = x + beta * g - (c @ (d_x[:, :k] + beta * d_g[:, :k])).squeeze(1)
        fx_new = f(x_new.reshape(shape)).reshape(n, -1)
        g_new = fx_new - x_new
        it += 1
        slot = stored % m
        d_x[:, slot] = x_new - x
        d_g[:, slot] = g_new - g
        d_g64[:, slot] = d_g[:, slot]
        stored += 1
        k = min(stored, m)
        row = (d_g64[:, :k] @ d_g64[:, slot].unsqueeze(2)).squeeze(2)  # (n, k): dG_i . dG_new
        gram[:, slot, :k] = row
        gram[:, :k, slot] = row
        x, fx, g = x_new, fx_new, g_new
    return fx.reshape(shape), _info(it, residual, tol)


def get_solver(name: str) -> Solver:
    """The solver registered under ``name`` (an error lists the known ones)."""
    return SOLVERS.get(name)
