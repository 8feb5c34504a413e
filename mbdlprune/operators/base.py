"""Operator base class: a linear measurement model with A and A_adjoint, plus noise."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Operator(nn.Module):
    """A measurement operator y = A x + noise on real images (N, C, H, W).

    Complex images use C=2 (real, imaginary). Fixed data (masks, coil maps, kernels) are
    buffers so ``.to(device)`` moves them. ``spec`` is the (validated) dict the operator was
    built from, stored in checkpoints so the same operator can be rebuilt.
    """

    kind: str = "base"
    linear: bool = True

    def __init__(self, image_size: tuple[int, int], channels: int, noise_sigma: float = 0.0,
                 spec: dict[str, Any] | None = None):
        super().__init__()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.noise_sigma = float(noise_sigma)
        self.spec: dict[str, Any] = dict(spec or {})

    # -- the operator -------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (field notation)
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.A_adjoint(self.A(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    # -- helpers ------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this operator takes."""
        return (self.channels, *self.image_size)

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Simulate measurements A x + sigma * n with the spec's ``noise_sigma``."""
        y = self.A(x)
        if self.noise_sigma > 0:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
            y = y + self.noise_sigma * self.noise_mask(y) * noise
        return y

    def noise_mask(self, y: torch.Tensor) -> torch.Tensor | float:
        """Where noise lands in measurement space (1 everywhere by default)."""
        return 1.0

    def check_image(self, x: torch.Tensor) -> None:
        """Raise a clear error if ``x`` is not an image this operator takes."""
        from ..errors import MbdlError

        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise MbdlError(
                f"image of shape {tuple(x.shape)} does not fit the {self.kind} operator "
                f"(expects (N, {self.channels}, {self.image_size[0]}, {self.image_size[1]}))",
                "set image_size in the operator spec to the data's size",
            )

    @torch.no_grad()
    def norm(self, iters: int = 30, seed: int = 0) -> float:
        """Spectral norm of A by power iteration (largest singular value)."""
        g = torch.Generator().manual_seed(seed)
        dev = next((b.device for b in self.buffers()), torch.device("cpu"))
        x = torch.randn((1, *self.image_shape), generator=g).to(dev)
        s = 0.0
        for _ in range(iters):
            x = x / x.norm()
            x = self.A_adjoint_A(x)
            s = float(x.norm())
        return s ** 0.5

    def adjointness_error(self, seed: int = 0, batch: int = 2, dtype: torch.dtype = torch.float64) -> float:
        """Relative error |<Ax, y> - <x, A^H y>| / (|<Ax, y>|) for random x, y."""
        g = torch.Generator().manual_seed(seed)
        op = self.to(dtype)
        x = torch.randn((batch, *self.image_shape), generator=g, dtype=dtype)
        ax = op.A(x)
        y = torch.randn(ax.shape, generator=g, dtype=dtype)
        lhs = (ax * y).sum()
        rhs = (x * op.A_adjoint(y)).sum()
        return float((lhs - rhs).abs() / lhs.abs().clamp_min(1e-30))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, image_size={self.image_size}, channels={self.channels}, noise_sigma={self.noise_sigma}"
