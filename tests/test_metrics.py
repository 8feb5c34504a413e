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


# -- definitions: the registry, plain/paper unchanged, fastmri ------------------------------------
def test_metric_registry():
    from mbdlprune.errors import MbdlError

    assert M.metric_names() == M.METRICS.names() == ["fastmri", "paper", "plain"]
    for name in M.metric_names():
        assert M.get_definition(name).name == name and name in M.METRICS
    assert M.get_definition(M.FASTMRI) is M.FASTMRI
    with pytest.raises(MbdlError, match="fastmri, paper, plain"):
        M.get_definition("fastMRI")
    with pytest.raises(MbdlError):
        M.get_definition(3)


def _pinned_pair():
    g = torch.Generator().manual_seed(11)
    x = torch.rand(3, 2, 40, 36, generator=g, dtype=torch.float64)
    return x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64), x


def test_plain_and_paper_values_are_unchanged():
    """The values the code gave before the fastmri definition was added (recorded from that commit)."""
    y, x = _pinned_pair()
    want = {
        "plain": ([28.627036394078583, 28.63341813032632, 28.788823847631324],
                  [0.9832638554979218, 0.9831911252419072, 0.9834391470094893]),
        "paper": ([27.98370199305163, 28.299315338475562, 26.135266455774477],
                  [0.9830383884505902, 0.9829265326093861, 0.9810853394826778]),
    }
    for name, (p, s) in want.items():
        m = M.compute_metrics(y, x, name)
        assert set(m) == {"psnr", "ssim"}
        assert m["psnr"].tolist() == pytest.approx(p, rel=1e-12, abs=0)
        assert m["ssim"].tolist() == pytest.approx(s, rel=1e-12, abs=0)


def _reference_uniform_ssim(a, b, L, win=7):
    """scikit-image's default SSIM re-derived: reflect-mode box filter, sample covariance, crop (win - 1) / 2."""
    ndimage = pytest.importorskip("scipy.ndimage")
    filt = lambda z: ndimage.uniform_filter(z, size=win, mode="reflect")  # noqa: E731
    ua, ub = filt(a), filt(b)
    cov = win * win / (win * win - 1)
    vaa, vbb, vab = cov * (filt(a * a) - ua * ua), cov * (filt(b * b) - ub * ub), cov * (filt(a * b) - ua * ub)
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (vaa + vbb + c2))
    pad = (win - 1) // 2
    return s[pad:-pad, pad:-pad].mean()


def test_uniform_window_ssim_matches_reference_formula():
    rng = np.random.default_rng(1)
    a = rng.random((37, 45)) * 3
    b = np.abs(a + 0.3 * rng.standard_normal(a.shape))
    want = _reference_uniform_ssim(b, a, L=3.5)
    got = float(M.ssim(torch.from_numpy(b), torch.from_numpy(a), window=7, data_range=3.5, weights="uniform",
                       sample_covariance=True))
    assert got == pytest.approx(want, rel=1e-12)
    assert got != pytest.approx(float(M.ssim(torch.from_numpy(b), torch.from_numpy(a), window=7, data_range=3.5)), rel=1e-3)
    with pytest.raises(ValueError, match="weights"):
        M.ssim(torch.from_numpy(b), torch.from_numpy(a), weights="box")


def _volume(s=4, h=40, w=32, seed=2):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(s, h, w, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, s, dtype=torch.float64)[:, None, None]
    return gt


def test_fastmri_volume_closed_forms():
    gt = _volume()
    c = 0.1
    r = M.volume_metrics(gt + c, gt)  # H > W: cropped to 32 x 32, rows 4 .. 35
    crop = gt[:, 4:36]
    mv = float(crop.max())
    assert r["metric"] == "fastmri" and r["slices"] == 4 and r["maxval"] == mv
    assert r["psnr"] == pytest.approx(10 * math.log10(mv**2 / c**2), rel=1e-12)
    assert r["nmse"] == pytest.approx(c**2 * crop.numel() / float((crop**2).sum()), rel=1e-12)
    per = r["per_slice"]
    assert per["psnr"].shape == (4,) and torch.allclose(per["psnr"], torch.full((4,), r["psnr"], dtype=torch.float64))
    assert r["ssim"] == pytest.approx(float(per["ssim"].mean()), rel=1e-14)
    # one volume maxval for all slices; compute_metrics gives the same per slice when passed it
    m = M.compute_metrics(gt + c, gt, "fastmri", maxval=mv)
    assert set(m) == {"psnr", "ssim", "nmse"}
    for k in m:
        assert torch.allclose(m[k], per[k], rtol=1e-13, atol=0)
    m_each = M.compute_metrics(gt + c, gt, "fastmri", maxval=crop.reshape(4, -1).max(1).values)
    assert torch.allclose(M.compute_metrics(gt + c, gt, "fastmri")["psnr"], m_each["psnr"])  # default: each image's max
    assert not torch.allclose(m_each["psnr"], per["psnr"])
    # SSIM with the volume's maxval is the uniform-window, sample-covariance SSIM of each slice
    ref = [_reference_uniform_ssim((crop[i] + c).numpy(), crop[i].numpy(), L=mv) for i in range(4)]
    assert per["ssim"].tolist() == pytest.approx(ref, rel=1e-12)
    # NMSE per slice and per volume
    assert per["nmse"].tolist() == pytest.approx([c**2 * crop[i].numel() / float((crop[i] ** 2).sum()) for i in range(4)])
    assert M.volume_metrics(gt, gt)["psnr"] == math.inf and M.volume_metrics(gt, gt)["nmse"] == 0.0


def test_fastmri_complex_channels_and_volume_vs_plain():
    gt = _volume(s=3, h=32, w=32, seed=3)
    cplx = torch.stack((gt * 0.6, gt * 0.8), 1)  # magnitude = gt
    r = M.volume_metrics(cplx * 1.1, cplx)
    assert r["psnr"] == pytest.approx(M.volume_metrics(gt * 1.1, gt)["psnr"], rel=1e-12)
    plain = M.volume_metrics(gt * 1.1, gt, "plain")
    assert plain["maxval"] is None
    assert plain["psnr"] == pytest.approx(float(M.compute_metrics(gt * 1.1, gt)["psnr"].mean()), rel=1e-14)
    assert plain["nmse"] == pytest.approx(0.01, rel=1e-12) == r["nmse"]


def test_fastmri_degenerate_inputs():
    from mbdlprune.errors import DataError

    gt = _volume(s=3, h=32, w=32, seed=4)
    with pytest.raises(DataError, match="maximum is 0"):
        M.volume_metrics(gt * 0, gt * 0)
    empty = gt.clone()
    empty[1] = 0
    with pytest.raises(DataError, match="image 2 of 3 has maximum 0"):
        M.compute_metrics(empty + 0.1, empty, "fastmri")
    m = M.compute_metrics(empty + 0.1, empty, "fastmri", maxval=float(empty.max()))
    assert m["nmse"][1] == math.inf and math.isfinite(float(m["psnr"][1]))
    assert float(M.compute_metrics(empty, empty, "fastmri", maxval=1.0)["nmse"][1]) == 0.0
    bad = gt + 0.01
    bad[0, 3, 3] = math.nan
    r = M.volume_metrics(bad, gt)
    assert math.isnan(r["psnr"]) and math.isnan(r["nmse"]) and math.isnan(float(r["per_slice"]["psnr"][0]))
    assert math.isfinite(float(r["per_slice"]["psnr"][1]))
    bad[0, 3, 3] = math.inf
    assert math.isnan(M.volume_metrics(bad, gt)["psnr"])
    for mv in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(DataError, match="maxval"):
            M.compute_metrics(gt, gt, "fastmri", maxval=mv)
    with pytest.raises(ValueError, match="one value per image"):
        M.compute_metrics(gt, gt, "fastmri", maxval=torch.ones(2))
    with pytest.raises(ValueError, match="fastmri"):
        M.compute_metrics(gt, gt, "plain", maxval=1.0)
    with pytest.raises(DataError, match="wider than tall"):
        M.volume_metrics(torch.rand(2, 20, 30), torch.rand(2, 20, 30))
    with pytest.raises(DataError, match="NaN/Inf"):
        M.volume_metrics(gt, bad)


def test_fastmri_definition_describes_itself():
    text = M.FASTMRI.describe()
    for words in ("evaluate.py", "7x7 uniform window", "n = 49", "maximum of the ground-truth volume", "NMSE", "W x W"):
        assert words in text
    d = M.FASTMRI.to_dict()
    assert (d["ssim_window"], d["ssim_weights"], d["ssim_sample_covariance"], d["per_volume"]) == (7, "uniform", True, True)
    assert M.PLAIN.describe().startswith("metric 'plain':") and "Gaussian window (sigma 1.5)" in M.PLAIN.describe()
