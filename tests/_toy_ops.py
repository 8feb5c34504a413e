"""Small stand-in operators with the interface of mbdlprune's operators, for model tests.

``ToyMRI`` follows the MRI operator's contract: images (N, 2, H, W) complex, measurements
(N, coils, H, W, 2) zero off the column mask, with ``mask``, ``coil_maps``,
``num_low_frequencies`` and ``coils``. ``ToyInpaint`` keeps a random subset of pixels of
a C-channel real image.
"""

from __future__ import annotations

import torch
from torch import nn

from mbdlprune.models.varnet import complex_conj, complex_mul, fft2c, ifft2c


class ToyMRI(nn.Module):
    """Multi-coil Cartesian MRI: y = M F (S x), column mask with a fully sampled centre."""

    kind = "mri"

    def __init__(self, image_size=(16, 16), coils: int = 3, acceleration: int = 4,
                 num_low_frequencies: int = 4, seed: int = 0):
        super().__init__()
        h, w = image_size
        g = torch.Generator().manual_seed(seed)
        self.image_size = (h, w)
        self.channels = 2
        self.coils = coils
        self.num_low_frequencies = num_low_frequencies
        cols = torch.rand(w, generator=g) < 1.0 / acceleration
        pad = (w - num_low_frequencies + 1) // 2
        cols[pad:pad + num_low_frequencies] = True
        self.register_buffer("mask", cols.float().view(1, 1, 1, w, 1))
        # smooth coil profiles: Gaussians centred around the image, random phase ramps
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        maps = []
        for c in range(coils):
            ang = 2 * torch.pi * c / coils
            mag = torch.exp(-((yy - 0.8 * torch.sin(torch.tensor(ang))) ** 2 + (xx - 0.8 * torch.cos(torch.tensor(ang))) ** 2))
            phase = torch.rand(1, generator=g) * xx + torch.rand(1, generator=g) * yy
            maps.append(torch.stack((mag * torch.cos(phase), mag * torch.sin(phase)), dim=-1))
        maps = torch.stack(maps)
        maps = maps / (maps ** 2).sum(dim=(0, -1)).sqrt()[None, ..., None]
        self.register_buffer("coil_maps", maps)

    @property
    def image_shape(self):
        return (2, *self.image_size)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        img = x.permute(0, 2, 3, 1).unsqueeze(1)  # (N, 1, H, W, 2)
        return fft2c(complex_mul(img, self.coil_maps.unsqueeze(0))) * self.mask

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        img = complex_mul(ifft2c(y * self.mask), complex_conj(self.coil_maps.unsqueeze(0))).sum(dim=1)
        return img.permute(0, 3, 1, 2).contiguous()


class ToyInpaint(nn.Module):
    """Pixel inpainting on real C-channel images: y = m * x (same shape as x)."""

    kind = "inpaint"

    def __init__(self, image_size=(16, 16), channels: int = 1, keep: float = 0.6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_size = tuple(image_size)
        self.channels = channels
        self.register_buffer("pixels", (torch.rand(1, 1, *image_size, generator=g) < keep).float())

    @property
    def image_shape(self):
        return (self.channels, *self.image_size)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x * self.pixels

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return y * self.pixels


def toy_mri(image_size=(16, 16), **kw) -> nn.Module:
    """The MRI operator for tests: the real one once it exists, else ``ToyMRI``."""
    from mbdlprune.errors import MbdlError

    try:
        from mbdlprune.operators import load_operator

        return load_operator({"operator": {"kind": "mri", "image_size": list(image_size), "acceleration": 4}})
    except (ImportError, MbdlError):  # the MRI operator has not landed yet
        return ToyMRI(image_size, **kw)
