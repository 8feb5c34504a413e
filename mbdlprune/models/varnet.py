"""fastMRI's (end-to-end) variational network, with fastMRI's parameter names.

State-dict keys equal ``fastmri.models.VarNet``'s (``cascades.{i}.model.unet.*``,
``cascades.{i}.dc_weight``, ``sens_net.norm_unet.unet.*``), so fastMRI state dicts load
without renaming. fastMRI's ``VarNetBlock`` once held a persistent ``zero`` buffer (dropped in
October 2020, before the published leaderboard weights): here it is a non-persistent buffer,
and state dicts that still carry ``cascades.{i}.zero`` load too (the keys are listed by
:meth:`VarNet.legacy_state_keys` and ignored). Complex tensors are real with a trailing
dimension of 2; k-space is (N, coils, H, W, 2) with the mask on columns (W).

Difference from fastMRI: its VarNet returns the RSS magnitude image. Here ``forward``
returns, by default (``output="complex"``), the coil-combined complex image
sum_c conj(S_c) F^-1(k_c) as (N, 2, H, W) so it compares with other models and the
ground truth x; ``output="rss"`` gives fastMRI's (N, 1, H, W) magnitude instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MbdlError
from ..operators.fft import complex_abs, complex_conj, complex_mul, fft2c, ifft2c, rss, rss_complex  # noqa: F401  (re-exported)
from .priors import Unet
from .registry import register_arch

OUTPUTS = ("complex", "rss")


# ------------------------------------------------------------------ complex helpers
def sens_expand(x: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """E: coil-combined image (N, 1, H, W, 2) -> coil k-space F(S x) (N, coils, H, W, 2)."""
    return fft2c(complex_mul(x, sens))


def sens_reduce(k: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """R = E^H: coil k-space -> sum_c conj(S_c) F^-1(k_c), shape (N, 1, H, W, 2)."""
    return complex_mul(ifft2c(k), sens, conj_b=True).sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------- blocks
class NormUnet(nn.Module):
    """U-Net on complex images: per-group (real, imag) mean/std normalisation, padding to 16."""

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2, drop_prob: float = 0.0):
        super().__init__()
        self.unet = Unet(in_chans=in_chans, out_chans=out_chans, chans=chans,
                         num_pool_layers=num_pools, drop_prob=drop_prob)

    @staticmethod
    def complex_to_chan_dim(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w, two = x.shape
        return x.permute(0, 4, 1, 2, 3).reshape(b, 2 * c, h, w)

    @staticmethod
    def chan_complex_to_last_dim(x: torch.Tensor) -> torch.Tensor:
        b, c2, h, w = x.shape
        return x.view(b, 2, c2 // 2, h, w).permute(0, 2, 3, 4, 1).contiguous()

    @staticmethod
    def norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # two groups: all real channels, all imaginary channels
        b, c, h, w = x.shape
        g = x.reshape(b, 2, -1)
        mean = g.mean(dim=2).repeat_interleave(c // 2, dim=1).view(b, c, 1, 1)
        std = g.std(dim=2).repeat_interleave(c // 2, dim=1).view(b, c, 1, 1)
        return (x - mean) / std, mean, std

    @staticmethod
    def pad(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        _, _, h, w = x.shape
        h_mult, w_mult = ((h - 1) | 15) + 1, ((w - 1) | 15) + 1
        w_pad = (math.floor((w_mult - w) / 2), math.ceil((w_mult - w) / 2))
        h_pad = (math.floor((h_mult - h) / 2), math.ceil((h_mult - h) / 2))
        return F.pad(x, list(w_pad + h_pad)), (h_pad, w_pad, h_mult, w_mult)

    @staticmethod
    def unpad(x: torch.Tensor, h_pad, w_pad, h_mult: int, w_mult: int) -> torch.Tensor:
        return x[..., h_pad[0]:h_mult - h_pad[1], w_pad[0]:w_mult - w_pad[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.complex_to_chan_dim(x)
        x, mean, std = self.norm(x)
        x, pads = self.pad(x)
        x = self.unpad(self.unet(x), *pads)
        return self.chan_complex_to_last_dim(x * std + mean)


class SensitivityModel(nn.Module):
    """Coil sensitivity estimation: ACS lines -> coil images -> NormUnet per coil -> / RSS.

    ``mask_center=False`` (fastMRI's option) estimates the maps from all measured k-space
    instead of the centre columns only.
    """

    def __init__(self, chans: int, num_pools: int, in_chans: int = 2, out_chans: int = 2, drop_prob: float = 0.0,
                 mask_center: bool = True):
        super().__init__()
        self.mask_center = bool(mask_center)
        self.norm_unet = NormUnet(chans, num_pools, in_chans=in_chans, out_chans=out_chans, drop_prob=drop_prob)

    @staticmethod
    def low_frequency_mask(mask: torch.Tensor, width: int, num_low_frequencies: int | None) -> torch.Tensor:
        """(N or 1, 1, 1, W, 1) bool mask of the centre ACS columns, as fastMRI picks them.

        A count (> 0) gives columns ``pad .. pad + n - 1`` with ``pad = (W - n + 1) // 2``;
        ``None`` or 0 detects it from the first row of the mask: ``2 * min(left, right)``
        (at least 1), where left/right are the sampled runs from ``W // 2`` outwards.
        """
        n = mask.shape[0]
        if num_low_frequencies:
            nlf = torch.full((n,), int(num_low_frequencies), dtype=torch.long, device=mask.device)
        else:
            # count the fully sampled run around the centre column
            cols = (mask.reshape(n, -1, width, mask.shape[-1])[:, 0, :, 0] > 0).to(torch.int8)
            cent = width // 2
            left = torch.argmin(cols[:, :cent].flip(1), dim=1)
            right = torch.argmin(cols[:, cent:], dim=1)
            nlf = torch.clamp_min(2 * torch.minimum(left, right), 1)
        pad = torch.div(width - nlf + 1, 2, rounding_mode="trunc")
        idx = torch.arange(width, device=mask.device)
        keep = (idx[None] >= pad[:, None]) & (idx[None] < (pad + nlf)[:, None])
        return keep.view(n, 1, 1, width, 1)

    def forward(self, masked_kspace: torch.Tensor, mask: torch.Tensor,
                num_low_frequencies: int | None = None) -> torch.Tensor:
        b, c, h, w, _ = masked_kspace.shape
        if self.mask_center:
            acs = self.low_frequency_mask(mask, w, num_low_frequencies)
            masked_kspace = torch.where(acs, masked_kspace, torch.zeros_like(masked_kspace))
        images = ifft2c(masked_kspace)
        maps = self.norm_unet(images.reshape(b * c, 1, h, w, 2)).view(b, c, h, w, 2)
        # tiny floor only guards exact zeros (e.g. padded rows); fastMRI divides as is
        return maps / rss_complex(maps, dim=1).clamp_min(1e-12)[:, None, ..., None]


class VarNetBlock(nn.Module):
    """One cascade: k - w * M (k - k0) - E(model(R(k))), with learnable ``dc_weight`` w."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.dc_weight = nn.Parameter(torch.ones(1))
        # not saved: fastMRI's VarNetBlock dropped this buffer from its state dict (October 2020)
        self.register_buffer("zero", torch.zeros(1, 1, 1, 1, 1), persistent=False)

    def legacy_state_keys(self) -> list[str]:
        """Keys (relative to this block) that old state dicts may hold and that are ignored."""
        return ["zero"]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # a state dict from before October 2020 (or an older mbdlprune file) still holds `zero`
        for key in self.legacy_state_keys():
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, current: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
        # fastMRI's where(mask, current - ref, 0), without the broadcast select (the same values)
        soft_dc = (current - ref).masked_fill_(~mask, 0.0) * self.dc_weight
        return current - soft_dc - sens_expand(self.model(sens_reduce(current, sens)), sens)


# ---------------------------------------------------------------------------- model
class VarNet(nn.Module):
    """Variational network: cascades of soft data consistency and a NormUnet refinement.

    With ``sensitivity=True`` (E2E-VarNet) coil maps are estimated from the ACS region of
    the measurements by ``sens_net``; otherwise the operator's ``coil_maps`` are used.
    ``forward(y, op)`` needs an MRI operator (``mask``, ``coil_maps`` or
    ``num_low_frequencies``; ``0`` detects the centre from the mask as fastMRI does with
    ``num_low_frequencies=None``). ``mask_center`` is fastMRI's: ``False`` feeds all measured
    k-space to ``sens_net``. ``prune_sensitivity`` is accepted (files written before 0.2 record
    it) and has no effect: the sensitivity U-Net is pruned when named, ``--prior +sens_net.norm_unet.unet``.
    """

    def __init__(self, num_cascades: int = 12, chans: int = 18, pools: int = 4, sensitivity: bool = True,
                 sens_chans: int = 8, sens_pools: int = 4, output: str = "complex", prune_sensitivity: bool = False,
                 mask_center: bool = True):
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"unknown VarNet output {output!r}", f"use one of: {', '.join(OUTPUTS)}")
        if num_cascades < 1:
            raise ConfigError(f"num_cascades must be >= 1, got {num_cascades}", "set num_cascades to 1 or more")
        if not isinstance(mask_center, bool):
            raise ConfigError(f"mask_center must be true or false, got {mask_center!r}", "set mask_center to true or false")
        if sensitivity:
            self.sens_net = SensitivityModel(sens_chans, sens_pools, mask_center=mask_center)
        else:
            self.sens_net = None
        self.cascades = nn.ModuleList([VarNetBlock(NormUnet(chans, pools)) for _ in range(num_cascades)])
        self.output = output
        self.in_channels = 2
        self.out_channels = 2 if output == "complex" else 1
        self.last_info: dict[str, Any] = {"iterations": 0}

    @property
    def estimates_coil_maps(self) -> bool:
        """E2E: coil maps come from the network (``sens_net``), not from the operator."""
        return self.sens_net is not None

    def sensitivity_maps(self, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        """Coil maps (N or 1, coils, H, W, 2): estimated (E2E) or the operator's."""
        if self.sens_net is not None:
            return self.sens_net(y, _mask(op), getattr(op, "num_low_frequencies", None))
        maps = getattr(op, "coil_maps", None)
        if maps is None:
            raise MbdlError("this VarNet needs an operator with coil_maps", "use an MRI operator, or e2e-varnet")
        return (maps if maps.dim() == 5 else maps.unsqueeze(0)).to(y.dtype)

    def forward(self, y: torch.Tensor, op: nn.Module) -> torch.Tensor:
        mask = _mask(op)
        sens = self.sensitivity_maps(y, op)
        k = y.clone()
        for cascade in self.cascades:
            k = cascade(k, y, mask, sens)
        self.last_info = {"iterations": len(self.cascades)}
        if self.output == "rss":
            # fastMRI's formula, rss(|.|) (not rss_complex), so the rounding matches too
            return rss(complex_abs(ifft2c(k)), dim=1).unsqueeze(1)
        return sens_reduce(k, sens)[:, 0].permute(0, 3, 1, 2).contiguous()

    def legacy_state_keys(self) -> list[str]:
        """State-dict keys old checkpoints may hold that this model does not keep: ``cascades.{i}.zero``.

        A loader drops exactly these keys, when present, before loading strictly.
        """
        return [f"{name}.{key}" for name, m in self.named_modules()
                if isinstance(m, VarNetBlock) for key in m.legacy_state_keys()]

    def prior_paths(self) -> list[str]:
        return [f"cascades.{i}.model.unet" for i in range(len(self.cascades))]

    def output_layers(self) -> list[nn.Module]:
        layers = [lay for c in self.cascades for lay in c.model.unet.output_layers()]
        if self.sens_net is not None:
            layers += self.sens_net.norm_unet.unet.output_layers()
        return layers

    def extra_repr(self) -> str:
        extra = "" if self.sens_net is None or self.sens_net.mask_center else ", mask_center=False"
        return f"output={self.output!r}{extra}"


def _mask(op: nn.Module) -> torch.Tensor:
    mask = getattr(op, "mask", None)
    if mask is None:
        raise MbdlError("VarNet needs an MRI operator with a sampling mask", 'use an operator of kind "mri"')
    return mask > 0


@register_arch("varnet", kind="mbdl")
def varnet(num_cascades: int = 12, chans: int = 18, pools: int = 4, output: str = "complex") -> VarNet:
    """fastMRI VarNet with the operator's coil maps (no sensitivity network)."""
    return VarNet(num_cascades, chans, pools, sensitivity=False, output=output)


@register_arch("e2e-varnet", kind="mbdl")
def e2e_varnet(num_cascades: int = 12, chans: int = 18, pools: int = 4, sens_chans: int = 8, sens_pools: int = 4,
               output: str = "complex", prune_sensitivity: bool = False, mask_center: bool = True) -> VarNet:
    """fastMRI end-to-end VarNet: learned coil-sensitivity estimation plus cascades."""
    return VarNet(num_cascades, chans, pools, sensitivity=True, sens_chans=sens_chans, sens_pools=sens_pools,
                  output=output, prune_sensitivity=prune_sensitivity, mask_center=mask_center)
