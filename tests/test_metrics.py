"""PSNR/SSIM against known values and an independent reference of the same formulas."""

import math

import numpy as np
import pytest
import torch

from mbdlprune import metrics as M


def _images(n=3, c=1, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64)
    return x


def test_psnr_constant_error_known_value():
    x = _images()
    # force a data range of exactly 1 in every image
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    y = x + 0.1  # MSE = 0.01
    assert torch.allclose(M.psnr(y, x), torch.full((3,), 20.0, dtype=torch.float64))
    assert torch.allclose(M.psnr(y, x, peak=2.0), torch.full((3,), 10 * math.log10(4 / 0.01), dtype=torch.float64))
    # per-image peaks
    p = M.psnr(y, x, peak=torch.tensor([1.0, 2.0, 4.0]))
    assert p.shape == (3,) and p[1] - p[0] == pytest.approx(20 * math.log10(2))


def test_psnr_symmetric_for_fixed_peak_and_inf_when_equal():
    a, b = _images(seed=1), _images(seed=2)
    assert torch.allclose(M.psnr(a, b, peak=1.0), M.psnr(b, a, peak=1.0))
    assert torch.isinf(M.psnr(a, a)).all()


def test_psnr_accepts_2d_3d_and_numpy():
    x = np.linspace(0, 1, 64).reshape(8, 8)
    assert M.psnr(x + 0.1, x).shape == (1,)
    assert M.psnr(torch.rand(4, 8, 8), torch.rand(4, 8, 8)).shape == (4,)
    with pytest.raises(ValueError):
        M.psnr(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 9))


def test_ssim_identity_and_noise_monotone():
    x = _images(h=48, w=48)
    assert torch.allclose(M.ssim(x, x), torch.ones(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    s = [float(M.ssim(x + s * noise, x).mean()) for s in (0.01, 0.05, 0.2, 0.5)]
    assert all(a > b for a, b in zip(s, s[1:]))
    assert s[0] < 1.0


def test_ssim_symmetric_with_fixed_range():
    a, b = _images(seed=4), _images(seed=5)
    assert torch.allclose(M.ssim(a, b, data_range=1.0), M.ssim(b, a, data_range=1.0))


def test_ssim_constant_images_closed_form():
    # no variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    a = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    b = torch.full((1, 1, 16, 16), 0.6, dtype=torch.float64)
    c1 = (0.01 * 1.0) ** 2
    want = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert float(M.ssim(a, b, data_range=1.0)) == pytest.approx(want, rel=1e-12)


def test_gaussian_window_matches_truncated_gaussian():
    g = M.gaussian_window(11, 1.5)
    assert g.numel() == 11 and float(g.sum()) == pytest.approx(1.0)
    assert int(torch.argmax(g)) == 5 and torch.allclose(g, g.flip(0))


def _reference_ssim(a, b, L, sigma=1.5):
    """SSIM computed the scikit-image way: reflect-mode Gaussian filtering (truncate 3.5),
    then the mean of the map without a border of (win - 1) / 2 pixels."""
    ndimage = pytest.importorskip("scipy.ndimage")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    filt = lambda z: ndimage.gaussian_filter(z, sigma=sigma, truncate=3.5, mode="reflect")  # noqa: E731
    ua, ub = filt(a), filt(b)
    vaa, vbb, vab = filt(a * a) - ua * ua, filt(b * b) - ub * ub, filt(a * b) - ua * ub
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (vaa + vbb + c2))
    pad = 5  # int(3.5 * 1.5 + 0.5) = 5  ->  11 taps
    return s[pad:-pad, pad:-pad].mean()


def test_ssim_matches_reference_formula():
    rng = np.random.default_rng(0)
    a = rng.random((37, 45))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    want = _reference_ssim(b, a, L=1.0)
    got = float(M.ssim(torch.from_numpy(b), torch.from_numpy(a), data_range=1.0))
    assert got == pytest.approx(want, abs=1e-10)


def test_ssim_multichannel_is_channel_mean():
    a, b = _images(c=2, h=24, w=24, seed=6), _images(c=2, h=24, w=24, seed=7)
    both = M.ssim(a, b, data_range=1.0)
    each = [M.ssim(a[:, i:i + 1], b[:, i:i + 1], data_range=1.0) for i in range(2)]
    assert torch.allclose(both, (each[0] + each[1]) / 2)


def test_ssim_differentiable():
    x = _images(n=1, h=16, w=16).float()
    y = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    loss = 1 - M.ssim(y, x, data_range=1.0).mean()
    loss.backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_ssim_too_small_image_is_an_error():
    with pytest.raises(ValueError, match="smaller"):
        M.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_magnitude():
    x = torch.zeros(2, 2, 4, 4)
    x[:, 0], x[:, 1] = 3.0, 4.0
    m = M.magnitude(x)
    assert m.shape == (2, 1, 4, 4) and torch.allclose(m, torch.full_like(m, 5.0))
    real = torch.rand(2, 1, 4, 4)
    assert M.magnitude(real) is not None and torch.equal(M.magnitude(real), real)
    assert M.magnitude(x, complex_channels=False).shape == (2, 2, 4, 4)


def test_paper_normalize():
    x = torch.zeros(1, 1, 20, 30)
    x[..., 5:15, 10:20] = torch.linspace(1, 3, 100).reshape(10, 10)
    x_hat = x * 2 + 0.5 * (x == 0)  # scaled object, background 0.5 where truth is 0
    a, b = M.paper_normalize(x_hat, x)
    assert a.shape == (1, 1, 20, 20) and b.shape == (1, 1, 20, 20)
    assert float(a.min()) == 0 and float(a.max()) == 1 and float(b.max()) == 1
    # background zeroed, and a scaled reconstruction of the object is perfect after min-max
    assert torch.allclose(a, b)
    assert torch.isinf(M.psnr(a, b, peak=1.0)).all()
    assert M.paper_normalize(x_hat, x, crop=False)[0].shape == (1, 1, 20, 30)
    assert M.paper_normalize(x_hat, x, crop=8)[0].shape == (1, 1, 8, 8)


def test_definitions_and_compute_metrics():
    x = _images(n=2, c=2, h=24, w=24)
    y = x + 0.05
    plain = M.compute_metrics(y, x, "plain")
    paper = M.compute_metrics(y, x, "paper")
    assert plain["psnr"].shape == (2,) and paper["ssim"].shape == (2,)
    assert "peak" in M.PAPER.describe() and "min-max" in M.PAPER.describe()
    assert M.PLAIN.to_dict()["name"] == "plain"
    from mbdlprune.errors import MbdlError

    with pytest.raises(MbdlError):
        M.get_definition("nope")


def test_compute_metrics_small_images_shrink_window():
    x = _images(n=1, h=8, w=8)
    out = M.compute_metrics(x, x)
    assert float(out["ssim"]) == pytest.approx(1.0)
