"""The model contract every command relies on, in one place.

An MBDL model is an ``nn.Module`` with ``forward(y, op) -> x``. Optional parts of the contract:

* ``prior_paths() -> list[str]``: the submodules that are the learned prior(s) (what pruning
  touches); without it, priors are found by tracing one forward pass;
* ``last_info``: after a forward, a dict with ``iterations``, ``residual`` and ``converged``
  (DEQ models);
* ``solver``, ``tol``, ``max_iter``: a DEQ's solver settings (:func:`is_deq`), which may be
  changed between calls; :func:`solver_settings` applies settings for a block of code and
  restores the model's own afterwards, so no caller leaves a model changed;
* ``check_every``: how often a DEQ's solver reads its residual on the host (1: every
  iteration; more: fewer GPU synchronisations, the same result), set like the solver settings;
* ``forward(y, op, x0=None)``: a DEQ that can start its solve from a given iterate
  (:func:`accepts_warm_start`), e.g. the fixed point of the adjacent slice;
* ``legacy_state_keys() -> list[str]``: keys older checkpoints hold that the model no longer
  keeps (dropped by the loader when present).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

#: the attributes that make a model a DEQ, and that fair comparisons set alike
SOLVER_KEYS = ("solver", "tol", "max_iter")


def estimates_coil_maps(model: Any) -> bool:
    """True for a model that estimates coil sensitivities itself (an E2E-VarNet's ``sens_net``)
    instead of taking them from the operator; such models need no coil maps from raw k-space."""
    return bool(getattr(model, "estimates_coil_maps", False))


def is_deq(model: Any) -> bool:
    """True for a deep equilibrium model: one whose solver, tolerance and iteration cap can be set."""
    return all(hasattr(model, k) for k in SOLVER_KEYS)


def accepts_warm_start(model: Any) -> bool:
    """True for a DEQ whose ``forward`` takes an initial iterate ``x0`` (see the module docstring)."""
    import inspect

    if not is_deq(model):
        return False
    try:
        return "x0" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class SolverSettings:
    """A DEQ's solver, tolerance, iteration cap and residual-check interval; ``None`` leaves
    that setting as it is (``check_every`` applies only to models that have the attribute)."""

    solver: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    check_every: int | None = None

    @classmethod
    def of(cls, model: Any) -> "SolverSettings":
        every = getattr(model, "check_every", None)
        return cls(model.solver, float(model.tol), int(model.max_iter), None if every is None else int(every))

    def to_dict(self) -> dict[str, Any]:
        return {"solver": self.solver, "tol": self.tol, "max_iter": self.max_iter, "check_every": self.check_every}

    def apply(self, model: Any) -> None:
        for key, value in self.to_dict().items():
            if value is not None and (key in SOLVER_KEYS or hasattr(model, key)):
                setattr(model, key, value)


@contextmanager
def solver_settings(models: Any | Iterable[Any], settings: SolverSettings) -> Iterator[None]:
    """Run every DEQ among ``models`` with ``settings`` inside the block; each gets its own back afterwards."""
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    deqs = [m for m in items if is_deq(m)]
    stored = [(m, SolverSettings.of(m)) for m in deqs]
    try:
        for m in deqs:
            settings.apply(m)
        yield
    finally:
        for m, own in stored:
            own.apply(m)
