"""Small synthetic test images shared by the bench and sweep tests: a Gaussian blob per image."""

from __future__ import annotations

import torch


def blob_images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 2, size, size): a blob moving down by one pixel per image plus seeded noise (real part),
    zero imaginary part."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        blob = torch.exp(-((yy - 8 - i) ** 2 + (xx - 8) ** 2) / 20.0)
        out.append(torch.stack([blob + 0.05 * torch.rand(size, size, generator=g), torch.zeros(size, size)]))
    return torch.stack(out).float()
