"""Fixed-point solvers for deep equilibrium models, batched over the first dimension.

A solver is a plain function ``solve(f, x0, max_iter, tol, **kw) -> (x, info)`` that looks
for x = f(x). ``info = {"iterations": int, "residual": float, "converged": bool}`` where
``iterations`` counts evaluations of ``f`` and ``residual`` is the largest over the batch
of the relative residual ||f(x) - x|| / (||f(x)|| + 1e-8). Solvers do not touch the
autograd mode; callers wrap them in ``torch.no_grad()`` when they want no graph.

``check_every=k`` reads the residual on the host only every k iterations. On a GPU each read
is a synchronisation that stalls the queue of kernels; with k > 1 the residual test stays on
the device: the first iterate below ``tol`` is kept there (with its iteration count and
residual) and later iterates are discarded, so the result and ``info`` are exactly those of
``k=1``. The price is up to k - 1 evaluations of ``f`` past convergence.
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
    return float(_batch_residual(fx, x))


def _info(iterations: int, residual: float, tol: float) -> dict[str, Any]:
    return {"iterations": int(iterations), "residual": float(residual), "converged": bool(residual < tol)}


def _batch_residual(fx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`relative_residual` as a 0-d tensor on the device (no host read)."""
    n = fx.shape[0]
    return ((fx - x).reshape(n, -1).norm(dim=1) / (fx.reshape(n, -1).norm(dim=1) + _EPS)).max()


class _Stop:
    """The convergence test of one solve: on the host every iteration (``check_every=1``), or
    on the device with a host read every ``check_every`` iterations (see the module docstring)."""

    def __init__(self, tol: float, max_iter: int, check_every: int):
        self.tol, self.max_iter, self.every = float(tol), max(1, int(max_iter)), max(1, int(check_every))
        self.out = self.done = self.its = self.res = None
        self.residual = float("inf")
        self.it = 0

    def __call__(self, fx: torch.Tensor, residual: torch.Tensor, it: int) -> bool:
        """Record iterate ``fx`` (evaluation ``it``) with its residual; True when the solve should end."""
        self.it = it
        if self.every == 1:
            self.out, self.residual = fx, float(residual)
            return self.residual < self.tol or it >= self.max_iter
        if self.done is None:
            self.out, self.res = fx, residual
            self.its = torch.full((), it, dtype=torch.int64, device=fx.device)
        else:  # keep the first iterate below tol; later ones are discarded
            self.out = torch.where(self.done, self.out, fx)
            self.res = torch.where(self.done, self.res, residual)
            self.its = torch.where(self.done, self.its, torch.full_like(self.its, it))
        below = residual < self.tol
        self.done = below if self.done is None else self.done | below
        return it >= self.max_iter or (it % self.every == 0 and bool(self.done))

    def result(self, shape) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.every == 1:
            return self.out.reshape(shape), _info(self.it, self.residual, self.tol)
        return self.out.reshape(shape), _info(int(self.its), float(self.res), self.tol)


@SOLVERS.register("fixed_point")
def fixed_point(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, max_iter: int = 100,
                tol: float = 1e-4, check_every: int = 1, **kw: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Plain iteration x <- f(x) until the relative residual drops below ``tol``."""
    stop = _Stop(tol, max_iter, check_every)
    x, it = x0, 0
    while True:
        fx = f(x)
        it += 1
        if stop(fx, _batch_residual(fx, x), it):
            break
        x = fx
    return stop.result(x0.shape)


@SOLVERS.register("anderson")
def anderson(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, max_iter: int = 100,
             tol: float = 1e-4, m: int = 5, lam: float = 1e-4, beta: float = 1.0, check_every: int = 1,
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
    The small solve skips LAPACK's error check (``solve_ex``), which on a GPU would read back
    to the host every iteration; the Tikhonov term keeps the system non-singular.
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
    stop = _Stop(tol, max_iter, check_every)
    it = 1
    while True:
        if stop(fx, (g.norm(dim=1) / (fx.norm(dim=1) + _EPS)).max(), it):
            break
        if stored == 0:
            x_new = x + beta * g
        else:
            k = min(stored, m)
            gk = gram[:, :k, :k]
            scale = gk.diagonal(dim1=1, dim2=2).clamp_min(1e-60).sqrt()  # (n, k): column norms of dG
            system = gk / (scale.unsqueeze(2) * scale.unsqueeze(1)) + lam * eye[:k, :k]
            rhs = (d_g64[:, :k] @ g.double().unsqueeze(2)).squeeze(2) / scale
            c = (torch.linalg.solve_ex(system, rhs, check_errors=False)[0] / scale).to(x.dtype).unsqueeze(1)  # (n, 1, k)
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
    return stop.result(shape)


def get_solver(name: str) -> Solver:
    """The solver registered under ``name`` (an error lists the known ones)."""
    return SOLVERS.get(name)
