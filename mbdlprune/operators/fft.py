"""Centered orthonormal 2-D FFTs and complex arithmetic on real tensors with a trailing (re, im) dim.

Complex data never live in buffers or in model activations as native complex tensors: they are
real tensors whose last dimension has size 2, which keeps ``.to(dtype)`` and pruning tools happy.
"""

from __future__ import annotations

import torch


def as_complex(t: torch.Tensor) -> torch.Tensor:
    """A (..., 2) real tensor as a complex one: a view when its layout allows (contiguous float32 or
    float64), else a copy."""
    if t.shape[-1] != 2:
        raise ValueError(f"expected a trailing (re, im) dimension of size 2, got shape {tuple(t.shape)}")
    if t.dtype in (torch.float32, torch.float64) and t.stride(-1) == 1 and t.is_contiguous():
        return torch.view_as_complex(t)
    return torch.complex(t[..., 0], t[..., 1])


def fft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT over the last two dims of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(z, norm="ortho"), dim=(-2, -1))


def ifft2c_complex(z: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT over the last two dims of a complex tensor."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(z, norm="ortho"), dim=(-2, -1))


def fft2c(t: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D FFT of (..., H, W, 2): ifftshift -> fft2(norm="ortho") -> fftshift."""
    return torch.view_as_real(fft2c_complex(as_complex(t)))


def ifft2c(t: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2-D inverse FFT of (..., H, W, 2); the exact adjoint of :func:`fft2c`."""
    return torch.view_as_real(ifft2c_complex(as_complex(t)))


_NATIVE = (torch.float32, torch.float64)


def complex_mul(a: torch.Tensor, b: torch.Tensor, conj_b: bool = False) -> torch.Tensor:
    """Elementwise complex product a * b of (..., 2) tensors (broadcasting); ``conj_b``: a * conj(b).

    float32/float64 go through native complex arithmetic, one fused kernel instead of six
    (re = ar br - ai bi, im = ar bi + ai br, rounded alike: equal bit for bit where torch's
    vectorised kernel covers the tensor, within one ulp in its scalar remainder); other dtypes
    (half precision) through that formula on the real and imaginary parts.
    """
    if a.dtype in _NATIVE and b.dtype == a.dtype:
        zb = as_complex(b)
        return torch.view_as_real(as_complex(a) * (zb.conj() if conj_b else zb))
    if conj_b:
        b = complex_conj(b)
    re = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
    im = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
    return torch.stack((re, im), dim=-1)


def complex_conj(a: torch.Tensor) -> torch.Tensor:
    """Complex conjugate of a (..., 2) tensor."""
    return torch.stack((a[..., 0], -a[..., 1]), dim=-1)


def complex_abs_sq(a: torch.Tensor) -> torch.Tensor:
    """Squared magnitude |a|^2 of a (..., 2) tensor; drops the trailing dim."""
    return a[..., 0] ** 2 + a[..., 1] ** 2


def complex_abs(a: torch.Tensor) -> torch.Tensor:
    """Magnitude |a| of a (..., 2) tensor; drops the trailing dim."""
    return complex_abs_sq(a).sqrt()


def chan_to_complex(x: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) real/imag channels -> (N, H, W, 2)."""
    if x.dim() != 4 or x.shape[1] != 2:
        raise ValueError(f"expected (N, 2, H, W), got shape {tuple(x.shape)}")
    return x.permute(0, 2, 3, 1)


def complex_to_chan(t: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 2) -> (N, 2, H, W) real/imag channels."""
    if t.dim() != 4 or t.shape[-1] != 2:
        raise ValueError(f"expected (N, H, W, 2), got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def rss(data: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares of real data over ``dim`` (the coil dim of (N, coils, H, W) by default)."""
    return (data ** 2).sum(dim).sqrt()


def rss_complex(data: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares of complex (..., 2) data over ``dim``, e.g. (N, coils, H, W, 2) -> (N, H, W)."""
    return complex_abs_sq(data).sum(dim).sqrt()
