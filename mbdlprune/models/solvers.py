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
    the usual form with weights summing to one, solved via float64 normal equations, which
    keeps it accurate down to tight tolerances and reproducible bit for bit.
    """
    shape, n = x0.shape, x0.shape[0]
    m = max(1, int(m))
    max_iter = max(1, int(max_iter))
    x = x0.reshape(n, -1)
    fx = f(x0).reshape(n, -1)
    g = fx - x
    d_x: list[torch.Tensor] = []
    d_g: list[torch.Tensor] = []
    it = 1
    while True:
        residual = float((g.norm(dim=1) / (fx.norm(dim=1) + _EPS)).max())
        if residual < tol or it >= max_iter:
            break
        if not d_g:
            x_new = x + beta * g
        else:
            dg = torch.stack(d_g, dim=2)  # (n, d, k)
            dx = torch.stack(d_x, dim=2)
            k = dg.shape[2]
            scale = dg.norm(dim=1, keepdim=True).clamp_min(1e-30)  # (n, 1, k)
            ridge = (lam ** 0.5) * torch.eye(k, dtype=dg.dtype, device=dg.device).expand(n, k, k)
            lhs = torch.cat([dg / scale, ridge], dim=1)
            rhs = torch.cat([g, g.new_zeros(n, k)], dim=1).unsqueeze(2)
            # normal equations in float64: as accurate here as QR, and bit-reproducible on
            # CPU (LAPACK's least-squares driver is not, which breaks exact reload checks)
            lhs64, rhs64 = lhs.double(), rhs.double()
            gram = lhs64.transpose(1, 2) @ lhs64
            c = torch.linalg.solve(gram, lhs64.transpose(1, 2) @ rhs64).to(lhs.dtype) / scale.transpose(1, 2)
            x_new = x + beta * g - ((dx + beta * dg) @ c).squeeze(2)
        fx_new = f(x_new.reshape(shape)).reshape(n, -1)
        g_new = fx_new - x_new
        it += 1
        d_x.append(x_new - x)
        d_g.append(g_new - g)
        if len(d_x) > m:
            d_x.pop(0), d_g.pop(0)
        x, fx, g = x_new, fx_new, g_new
    return fx.reshape(shape), _info(it, residual, tol)


def get_solver(name: str) -> Solver:
    """The solver registered under ``name`` (an error lists the known ones)."""
    return SOLVERS.get(name)
