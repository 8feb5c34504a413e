"""Learning-rate schedules, by name: the registry behind ``--lr-schedule`` (its help and checks).

A schedule maps (epoch index from 0, number of epochs, base learning rate) to the learning
rate of that epoch. Plain arithmetic: no torch, so the command line lists the choices cheaply.
"""

from __future__ import annotations

import math
from typing import Callable

from ..registry import Registry

Schedule = Callable[[int, int, float], float]

SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule")


@SCHEDULES.register("none")
def constant(epoch: int, epochs: int, lr: float) -> float:
    """The base rate throughout."""
    return lr


@SCHEDULES.register("cosine")
def cosine(epoch: int, epochs: int, lr: float) -> float:
    """Half a cosine from the base rate (first epoch) towards 0 (after the last)."""
    return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def schedule_help() -> str:
    return ", ".join(SCHEDULES.names())
