"""Bare CNN priors (EDSR, DnCNN, fastMRI U-Net) that MBDL models call as denoisers.

Every prior maps (N, in_channels, H, W) to (N, out_channels, H, W) and names, through
``output_layers()``, the convolutions whose output channels are image channels: a
structured pruner must leave those channel counts alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .registry import register_arch


def _conv3x3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=bias)


def _positive(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}", f"set {name} >= 1")


# ---------------------------------------------------------------------------- EDSR
class ResBlock(nn.Module):
    """EDSR residual block without batch norm: x + res_scale * conv(relu(conv(x)))."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(_conv3x3(n_feats, n_feats), nn.ReLU(), _conv3x3(n_feats, n_feats))
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class EDSR(nn.Module):
    """EDSR-style residual CNN (no upsampling) used as the DEQ prior.

    Layout: ``head`` conv, ``body`` = ``n_blocks`` ResBlocks followed by one conv
    (``body.{n_blocks}``) with a skip from the head output, ``tail`` conv to image channels.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 2, n_feats: int = 64,
                 n_blocks: int = 13, res_scale: float = 1.0):
        super().__init__()
        _positive(in_channels=in_channels, out_channels=out_channels, n_feats=n_feats)
        if n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {n_blocks}", "set n_blocks to 0 or more")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.head = _conv3x3(in_channels, n_feats)
        blocks: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_blocks)]
        blocks.append(_conv3x3(n_feats, n_feats))
        self.body = nn.Sequential(*blocks)
        self.tail = _conv3x3(n_feats, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        return self.tail(h + self.body(h))

    def output_layers(self) -> list[nn.Module]:
        return [self.tail]


# --------------------------------------------------------------------------- DnCNN
class DnCNN(nn.Module):
    """DnCNN denoiser: conv+ReLU, (conv+BN+ReLU) x (depth-2), conv; residual x - net(x).

    All layers live in the Sequential ``layers``; the last entry is the output conv.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 2, features: int = 64,
                 depth: int = 17, residual: bool = True, batchnorm: bool = True):
        super().__init__()
        _positive(in_channels=in_channels, out_channels=out_channels, features=features)
        if depth < 2:
            raise ConfigError(f"DnCNN depth must be >= 2, got {depth}", "set depth to 2 or more")
        if residual and in_channels != out_channels:
            raise ConfigError("a residual DnCNN needs in_channels == out_channels",
                              "set residual = false or make the channel counts equal")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.residual = bool(residual)
        layers: list[nn.Module] = [_conv3x3(in_channels, features), nn.ReLU()]
        for _ in range(depth - 2):
            # a bias right before batch norm is redundant
            layers.append(_conv3x3(features, features, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(features))
            layers.append(nn.ReLU())
        layers.append(_conv3x3(features, out_channels, bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x - out if self.residual else out

    def output_layers(self) -> list[nn.Module]:
        return [self.layers[-1]]


# ---------------------------------------------------------------------------- U-Net
class ConvBlock(nn.Module):
    """Two (3x3 conv, instance norm, LeakyReLU(0.2), channel dropout) stages in ``layers``."""

    def __init__(self, in_chans: int, out_chans: int, drop_prob: float):
        super().__init__()
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.drop_prob = drop_prob
        self.layers = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(0.2),
            nn.Dropout2d(drop_prob),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(0.2),
            nn.Dropout2d(drop_prob),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransposeConvBlock(nn.Module):
    """2x upsampling: ConvTranspose2d(k=2, s=2), instance norm, LeakyReLU(0.2) in ``layers``."""

    def __init__(self, in_chans: int, out_chans: int):
        super().__init__()
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(in_chans, out_chans, kernel_size=2, stride=2, bias=False),
            nn.InstanceNorm2d(out_chans),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Unet(nn.Module):
    """U-Net with concatenation skips, laid out (and named) like fastMRI's ``Unet``.

    Parameter names equal ``fastmri.models.unet.Unet``'s, so fastMRI state dicts load
    as they are. ``in_channels``/``out_channels`` mirror ``in_chans``/``out_chans``.
    """

    def __init__(self, in_chans: int = 2, out_chans: int = 2, chans: int = 32,
                 num_pool_layers: int = 4, drop_prob: float = 0.0):
        super().__init__()
        _positive(in_chans=in_chans, out_chans=out_chans, chans=chans, num_pool_layers=num_pool_layers)
        self.in_chans = self.in_channels = int(in_chans)
        self.out_chans = self.out_channels = int(out_chans)
        self.chans = int(chans)
        self.num_pool_layers = int(num_pool_layers)
        self.drop_prob = float(drop_prob)

        self.down_sample_layers = nn.ModuleList([ConvBlock(in_chans, chans, drop_prob)])
        ch = chans
        for _ in range(num_pool_layers - 1):
            self.down_sample_layers.append(ConvBlock(ch, ch * 2, drop_prob))
            ch *= 2
        self.conv = ConvBlock(ch, ch * 2, drop_prob)

        self.up_conv = nn.ModuleList()
        self.up_transpose_conv = nn.ModuleList()
        for _ in range(num_pool_layers - 1):
            self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
            self.up_conv.append(ConvBlock(ch * 2, ch, drop_prob))
            ch //= 2
        self.up_transpose_conv.append(TransposeConvBlock(ch * 2, ch))
        self.up_conv.append(nn.Sequential(
            ConvBlock(ch * 2, ch, drop_prob),
            nn.Conv2d(ch, out_chans, kernel_size=1, stride=1),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        out = x
        for layer in self.down_sample_layers:
            out = layer(out)
            skips.append(out)
            out = F.avg_pool2d(out, kernel_size=2, stride=2, padding=0)
        out = self.conv(out)
        for up, conv in zip(self.up_transpose_conv, self.up_conv):
            skip = skips.pop()
            out = up(out)
            # odd sizes: pooling floored, so the upsampled map can be one pixel short
            pad_w = int(out.shape[-1] != skip.shape[-1])
            pad_h = int(out.shape[-2] != skip.shape[-2])
            if pad_w or pad_h:
                out = F.pad(out, [0, pad_w, 0, pad_h], mode="reflect")
            out = conv(torch.cat([out, skip], dim=1))
        return out

    def output_layers(self) -> list[nn.Module]:
        return [self.up_conv[-1][1]]


# ------------------------------------------------------------------------ registry
@register_arch("edsr", kind="prior")
def edsr(in_channels: int = 2, out_channels: int = 2, n_feats: int = 64, n_blocks: int = 13,
         res_scale: float = 1.0) -> EDSR:
    """EDSR residual CNN (head, residual blocks, tail); ~1.0 M parameters at defaults."""
    return EDSR(in_channels, out_channels, n_feats, n_blocks, res_scale)


@register_arch("dncnn", kind="prior")
def dncnn(in_channels: int = 2, out_channels: int = 2, features: int = 64, depth: int = 17,
          residual: bool = True, batchnorm: bool = True) -> DnCNN:
    """DnCNN denoiser (conv+BN+ReLU stack, residual output)."""
    return DnCNN(in_channels, out_channels, features, depth, residual, batchnorm)


@register_arch("unet", kind="prior")
def unet(in_chans: int = 2, out_chans: int = 2, chans: int = 32, num_pool_layers: int = 4,
         drop_prob: float = 0.0) -> Unet:
    """fastMRI-layout U-Net with concatenation skips (fastMRI parameter names)."""
    return Unet(in_chans, out_chans, chans, num_pool_layers, drop_prob)
