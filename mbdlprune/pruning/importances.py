"""Channel importance criteria, by name: the registry behind ``--importance`` (its help and checks).

Each entry builds a torch-pruning importance object on demand; this module imports neither
torch nor torch_pruning, so the command line can list the choices without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..registry import Registry


@dataclass(frozen=True)
class Importance:
    """A named criterion: a one-line summary for help texts and the builder of its torch-pruning object."""

    summary: str
    build: Callable[[], Any]
    needs_gradients: bool = False


IMPORTANCES: Registry[Importance] = Registry("importance")


def _tp():
    import torch_pruning as tp

    return tp


IMPORTANCES.register("l1", Importance("L1 norm of each channel group (the reference paper's)",
                                      lambda: _tp().importance.GroupMagnitudeImportance(p=1, group_reduction="mean")))
IMPORTANCES.register("l2", Importance("L2 norm of each channel group",
                                      lambda: _tp().importance.GroupMagnitudeImportance(p=2, group_reduction="mean")))
IMPORTANCES.register("lamp", Importance("layer-adaptive magnitude (LAMP)", lambda: _tp().importance.LAMPImportance(p=2)))
IMPORTANCES.register("taylor", Importance("first-order Taylor estimate on the example input",
                                          lambda: _tp().importance.GroupTaylorImportance(), needs_gradients=True))
IMPORTANCES.register("random", Importance("random channels (a baseline)", lambda: _tp().importance.RandomImportance()))


def importance_help() -> str:
    """``l1 (...), l2 (...), ...`` for the command line's help."""
    return "; ".join(f"{n}: {IMPORTANCES.get(n).summary}" for n in IMPORTANCES.names())
