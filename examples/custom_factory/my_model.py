"""A user-defined MBDL model: proximal-gradient unrolling with one small ResNet prior per step.

mbdlprune knows nothing about this file: `--arch examples/custom_factory/my_model.py:build`
imports it (explicitly) and finds the priors by tracing one forward pass.
"""

import torch
from torch import nn


class ResPrior(nn.Module):
    """conv → (conv-ReLU-conv + skip) × blocks → conv, predicting a residual."""

    def __init__(self, channels: int = 2, width: int = 32, blocks: int = 2):
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks)
        )
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        for b in self.blocks:
            h = h + b(h)
        return x + self.tail(h)


class ProxGrad(nn.Module):
    def __init__(self, steps: int = 4, width: int = 32, blocks: int = 2):
        super().__init__()
        self.step_size = nn.Parameter(torch.full((steps,), 0.5))
        self.denoisers = nn.ModuleList(ResPrior(2, width, blocks) for _ in range(steps))

    def forward(self, y, op):
        x = op.A_adjoint(y)
        for eta, prior in zip(self.step_size, self.denoisers):
            x = prior(x - eta * op.A_adjoint(op.A(x) - y))
        return x


def build(steps: int = 4, width: int = 32, blocks: int = 2) -> nn.Module:
    """The factory mbdlprune calls with --arch-args."""
    return ProxGrad(steps, width, blocks)
