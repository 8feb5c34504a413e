"""A zoo of foreign MBDL architectures, for the pruning tests (a test-only registry).

Each entry is a factory (no arguments needed) returning a model with ``forward(y, op)``, the way
a user's own code looks: a data-consistency step with the operator and a CNN prior whose layers
mbdlprune has never seen. Together they cover GroupNorm, grouped and depthwise convolutions,
per-channel PReLU, transposed convolutions, concatenation and residual skips, BatchNorm, affine
InstanceNorm, weight norm, a squeeze-excitation gate and a spatial gate broadcast over channels,
1x1 and dilated convolutions, one prior per step, one shared prior and a fixed-point (DEQ-like)
loop. Widths are multiples of 32 so that ratio 0.5 lands on multiples of the default
``--round-to 16``.

The tests name a factory as ``--arch`` does: ``f"{ZOO_FILE}:{name}"`` (file path and function
name); :data:`ZOO` maps each registry name to its function.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrizations

from mbdlprune.registry import Registry

ZOO_FILE = Path(__file__).resolve()
ZOO: Registry = Registry("zoo architecture")
#: the operator every zoo model is traced and tested with
OPERATOR = {"kind": "mri", "image_size": [32, 32], "acceleration": 4, "coils": 2}


def arch_spec(name: str) -> str:
    """``--arch`` for a zoo entry: this file and the entry's factory function."""
    return f"{ZOO_FILE}:{ZOO.get(name).__name__}"


# -- outer loops ---------------------------------------------------------------------------------
class Unrolled(nn.Module):
    """``steps`` gradient steps on ||Ax - y||^2, each followed by ``x + prior(x)``."""

    def __init__(self, make_prior, steps: int = 3, shared: bool = True, gamma: float = 0.5):
        super().__init__()
        self.steps = steps
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        if shared:
            self.prior = make_prior()
        else:
            self.priors = nn.ModuleList(make_prior() for _ in range(steps))

    def forward(self, y, op):
        x = op.A_adjoint(y)
        for k in range(self.steps):
            x = x - self.gamma * op.A_adjoint(op.A(x) - y)
            prior = self.prior if hasattr(self, "prior") else self.priors[k]
            x = x + prior(x)
        return x


class FixedPoint(nn.Module):
    """A DEQ-like loop: x <- a * D(z) + (1 - a) * z with z = x - g * A^H(Ax - y), ``max_iter`` times."""

    def __init__(self, prior: nn.Module, max_iter: int = 4, gamma: float = 0.5, alpha: float = 0.5):
        super().__init__()
        self.denoiser = prior
        self.max_iter = max_iter
        self.gamma, self.alpha = gamma, alpha

    def forward(self, y, op):
        x = op.A_adjoint(y)
        for _ in range(self.max_iter):
            z = x - self.gamma * op.A_adjoint(op.A(x) - y)
            x = self.alpha * (z + self.denoiser(z)) + (1 - self.alpha) * z
        return x


# -- priors --------------------------------------------------------------------------------------
class GroupNormUNet(nn.Module):
    """GroupNorm(4), per-channel PReLU, a grouped conv (groups=4), a strided conv down, a
    transposed conv up and a concatenation skip; widths 32/64 (the model of the pruning issue)."""

    def __init__(self, c: int = 32, groups: int = 4):
        super().__init__()
        self.head = nn.Conv2d(2, c, 3, padding=1)
        self.gn1, self.act1 = nn.GroupNorm(groups, c), nn.PReLU(c)
        self.grouped, self.act2 = nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.PReLU(c)
        self.down = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.gn2, self.act3 = nn.GroupNorm(groups, 2 * c), nn.PReLU(2 * c)
        self.mid, self.act4 = nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.PReLU(2 * c)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.fuse = nn.Conv2d(2 * c, c, 3, padding=1)
        self.gn3, self.act5 = nn.GroupNorm(groups, c), nn.PReLU(c)
        self.tail = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        s = self.act2(self.grouped(self.act1(self.gn1(self.head(x)))))
        d = self.act4(self.mid(self.act3(self.gn2(self.down(s)))))
        f = self.act5(self.gn3(self.fuse(torch.cat([s, self.up(d)], dim=1))))
        return self.tail(f)


class SEBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, scaled by a squeeze-excitation gate, plus the input."""

    def __init__(self, c: int, reduced: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.squeeze = nn.Conv2d(c, reduced, 1)
        self.excite = nn.Conv2d(reduced, c, 1)

    def forward(self, x):
        h = self.body(x)
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(h.mean(dim=(2, 3), keepdim=True)))))
        return x + h * gate


class SEResNet(nn.Module):
    """Residual blocks with BatchNorm and a squeeze-excitation gate (broadcast over the image)."""

    def __init__(self, c: int = 64, blocks: int = 2):
        super().__init__()
        self.head = nn.Conv2d(2, c, 3, padding=1)
        self.blocks = nn.Sequential(*(SEBlock(c, c // 2) for _ in range(blocks)))
        self.tail = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        return self.tail(self.blocks(self.head(x)))


class InvertedResidual(nn.Module):
    """1x1 expand, affine InstanceNorm, depthwise 3x3, 1x1 project, residual."""

    def __init__(self, c: int, expand: int):
        super().__init__()
        e = c * expand
        self.net = nn.Sequential(
            nn.Conv2d(c, e, 1), nn.InstanceNorm2d(e, affine=True), nn.ReLU6(),
            nn.Conv2d(e, e, 3, padding=1, groups=e), nn.InstanceNorm2d(e, affine=True), nn.ReLU6(),
            nn.Conv2d(e, c, 1))

    def forward(self, x):
        return x + self.net(x)


class MobileNetPrior(nn.Module):
    """Inverted residual blocks with depthwise convolutions and affine InstanceNorm."""

    def __init__(self, c: int = 32, blocks: int = 2, expand: int = 2):
        super().__init__()
        self.head = nn.Conv2d(2, c, 3, padding=1)
        self.blocks = nn.Sequential(*(InvertedResidual(c, expand) for _ in range(blocks)))
        self.tail = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        return self.tail(self.blocks(self.head(x)))


class DilatedGatePrior(nn.Module):
    """Weight-normed dilated convs, then a sigmoid spatial gate broadcast over the channels."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.head = parametrizations.weight_norm(nn.Conv2d(2, c, 3, padding=1))
        self.dil2 = parametrizations.weight_norm(nn.Conv2d(c, c, 3, padding=2, dilation=2))
        self.dil4 = nn.Conv2d(c, c, 3, padding=4, dilation=4)
        self.gate = nn.Conv2d(c, 1, 1)
        self.tail = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.head(x))
        h = torch.relu(self.dil4(torch.relu(self.dil2(h)))) + h
        return self.tail(h * torch.sigmoid(self.gate(h)))


class InstanceNormUNet(nn.Module):
    """VarNet-style U-Net block: conv, affine InstanceNorm, LeakyReLU, max-pool down, transposed
    conv up, concatenation skip, 1x1 output."""

    def __init__(self, c: int = 32):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.InstanceNorm2d(o, affine=True),
                                 nn.LeakyReLU(0.2))

        self.enc = block(2, c)
        self.bottom = block(c, 2 * c)
        self.up = nn.Sequential(nn.ConvTranspose2d(2 * c, c, 2, stride=2, bias=False), nn.InstanceNorm2d(c, affine=True),
                                nn.LeakyReLU(0.2))
        self.dec = block(2 * c, c)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        e = self.enc(x)
        b = self.bottom(nn.functional.max_pool2d(e, 2))
        return self.out(self.dec(torch.cat([self.up(b), e], dim=1)))


class ResNeXtPrior(nn.Module):
    """1x1 - grouped 3x3 (groups=8) - 1x1 bottleneck blocks with GroupNorm(8) and residual skips."""

    def __init__(self, c: int = 64, groups: int = 8):
        super().__init__()
        self.head = nn.Conv2d(2, c, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(c, c, 1), nn.GroupNorm(groups, c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.GroupNorm(groups, c), nn.ReLU(),
            nn.Conv2d(c, c, 1)) for _ in range(2))
        self.tail = nn.Conv2d(c, 2, 3, padding=1)

    def forward(self, x):
        h = self.head(x)
        for b in self.blocks:
            h = h + b(h)
        return self.tail(h)


# -- registry: the factories --------------------------------------------------------------------
@ZOO.register("groupnorm-unet")
def groupnorm_unet(steps: int = 3):
    """The issue's model: unrolled, one shared GroupNorm/PReLU/grouped/transposed/concat U-Net."""
    return Unrolled(GroupNormUNet, steps=steps, shared=True)


@ZOO.register("se-resnet")
def se_resnet(steps: int = 2):
    """Unrolled, one BatchNorm + squeeze-excitation ResNet per step."""
    return Unrolled(SEResNet, steps=steps, shared=False)


@ZOO.register("mobilenet-deq")
def mobilenet_deq(max_iter: int = 4):
    """A fixed-point loop around a depthwise / InstanceNorm inverted-residual prior."""
    return FixedPoint(MobileNetPrior(), max_iter=max_iter)


@ZOO.register("dilated-gate")
def dilated_gate(steps: int = 2):
    """Unrolled, one weight-normed dilated prior with a spatial gate per step."""
    return Unrolled(DilatedGatePrior, steps=steps, shared=False)


@ZOO.register("instancenorm-unet")
def instancenorm_unet(steps: int = 2):
    """Unrolled, one VarNet-style InstanceNorm U-Net per step."""
    return Unrolled(InstanceNormUNet, steps=steps, shared=False)


@ZOO.register("resnext")
def resnext(steps: int = 2):
    """Unrolled, one shared grouped-conv / GroupNorm(8) bottleneck ResNet."""
    return Unrolled(ResNeXtPrior, steps=steps, shared=True)
