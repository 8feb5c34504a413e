"""Measurement operators: exact adjoints, masks, coil maps, file inputs and strict spec checking."""

from __future__ import annotations

import json
import math

import h5py
import nibabel
import numpy as np
import pytest
import torch

from mbdlprune.errors import ConfigError, MbdlError
from mbdlprune.operators import list_operator_kinds, load_operator
from mbdlprune.operators.small import SMALL_SPECS, small_spec
from mbdlprune.operators.fft import (chan_to_complex, complex_abs, complex_conj, complex_mul, complex_to_chan,
                                     fft2c, fft2c_complex, ifft2c, rss, rss_complex)
from mbdlprune.operators.masks import center_run

KINDS = list_operator_kinds()


def build(kind: str, **changes):
    spec = small_spec(kind)
    spec.update(changes)
    return load_operator(spec)


def save_nii(path, arr):
    nibabel.save(nibabel.Nifti1Image(np.asarray(arr), np.eye(4)), str(path))
    return path


# -- every kind --------------------------------------------------------------------------


def test_every_kind_has_an_example():
    assert set(KINDS) == set(SMALL_SPECS)
    assert {"mri", "denoise", "deblur", "inpaint", "superres", "ct"} <= set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_adjointness(kind):
    op = build(kind)
    assert op.adjointness_error(dtype=torch.float64) < 1e-5
    assert op.adjointness_error(seed=3, batch=1, dtype=torch.float64) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_float64(kind):
    op = build(kind).to(torch.float64)
    assert all(b.dtype in (torch.float64, torch.int64, torch.int32) for b in op.buffers())
    x = torch.randn(3, *op.image_shape, dtype=torch.float64)
    y = op.A(x)
    assert y.dtype == torch.float64 and y.shape[0] == 3
    back = op.A_adjoint(y)
    assert back.shape == x.shape and back.dtype == torch.float64
    expected = {"mri": (3, 4, 32, 32, 2), "denoise": (3, 1, 32, 32), "deblur": (3, 1, 32, 32),
                "inpaint": (3, 1, 32, 32), "superres": (3, 1, 16, 16), "ct": (3, 1, 30, 46)}
    if kind in expected:
        assert tuple(y.shape) == expected[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_spec_is_json_and_rebuilds_the_same_operator(kind):
    op = build(kind)
    spec = json.loads(json.dumps(op.spec))
    assert spec["kind"] == kind and spec["image_size"] == [32, 32]
    again = load_operator(spec)
    x = torch.randn(2, *op.image_shape)
    assert torch.allclose(op.A(x), again.A(x))


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_key_is_named(kind):
    with pytest.raises(ConfigError, match="bogus_key"):
        build(kind, bogus_key=1)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_or_bad_image_size(kind):
    spec = small_spec(kind)
    del spec["image_size"]
    with pytest.raises(ConfigError, match="image_size"):
        load_operator(spec)
    for bad in ([32], [0, 32], [32.0, 32], "32x32", [True, 32]):
        with pytest.raises(ConfigError, match="image_size"):
            build(kind, image_size=bad)


@pytest.mark.parametrize("kind", KINDS)
def test_noise_is_seeded_and_reproducible(kind):
    op = build(kind, noise_sigma=0.1)
    x = torch.randn(2, *op.image_shape)
    y1 = op.measure(x, torch.Generator().manual_seed(7))
    y2 = op.measure(x, torch.Generator().manual_seed(7))
    y3 = op.measure(x, torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    assert torch.equal(build(kind, noise_sigma=0.0).measure(x), op.A(x))


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(MbdlError, match="mri"):
        load_operator({"kind": "nope", "image_size": [8, 8]})


# -- spec files ----------------------------------------------------------------------------


def test_load_from_toml_and_json(tmp_path):
    np.save(tmp_path / "mask.npy", (np.arange(32) % 2 == 0).astype(np.float32))
    toml = tmp_path / "op.toml"
    toml.write_text('[operator]\nkind = "mri"\nimage_size = [32, 32]\nmask = "mask.npy"\nnoise_sigma = 0.05\n')
    op = load_operator(toml)
    assert op.spec["mask"].startswith("embedded:mask@")  # the spec records the data, not the path
    assert op.embedded_sources["mask"] == str((tmp_path / "mask.npy").resolve())
    assert np.array_equal(op.embedded["mask"], (np.arange(32) % 2 == 0))
    assert op.noise_sigma == 0.05 and op.mask.sum() == 16
    js = tmp_path / "op.json"
    js.write_text(json.dumps({"operator": {"kind": "deblur", "image_size": [16, 16], "kernel_size": 3}}))
    assert load_operator(js).kernel.shape == (3, 3)
    js.write_text(json.dumps({"kind": "denoise", "image_size": [16, 16], "channels": 3}))
    assert load_operator(js).image_shape == (3, 16, 16)


def test_errors_are_readable():
    with pytest.raises(ConfigError) as e:
        build("mri", acceleration=0.5)
    assert "acceleration" in str(e.value) and e.value.fix and " — " in str(e.value)


@pytest.mark.parametrize("kind, changes, words", [
    ("mri", {"acceleration": 0.5}, "acceleration"),
    ("mri", {"acceleration": "4"}, "acceleration"),
    ("mri", {"center_fraction": 1.0}, "center_fraction"),
    ("mri", {"center_fraction": -0.1}, "center_fraction"),
    ("mri", {"mask": "zigzag"}, "zigzag"),
    ("mri", {"mask": "random", "center_fraction": 0.5}, "centre"),
    ("mri", {"mask": "equispaced_fraction", "center_fraction": 0.5}, "centre"),
    ("mri", {"mask": "equispaced", "mask_rule": 1, "center_fraction": 0.5}, "centre"),  # the fraction rule
    ("mri", {"mask_rule": 3}, "mask_rule"),
    ("mri", {"mask": "equispaced_fraction", "mask_rule": 1}, "mask_rule"),
    ("mri", {"channels": 1}, "channels"),
    ("mri", {"coils": 0}, "coils"),
    ("mri", {"mask": "missing/mask.npy"}, "does not exist"),
    ("mri", {"coil_maps": "nowhere.h5"}, "does not exist"),
    ("mri", {"noise_sigma": -1}, "noise_sigma"),
    ("deblur", {"kernel_size": 4}, "odd"),
    ("deblur", {"kernel_size": 33}, "larger"),
    ("deblur", {"kernel_sigma": 0}, "kernel_sigma"),
    ("deblur", {"kernel": "box"}, "box"),
    ("inpaint", {"fraction": 0}, "fraction"),
    ("inpaint", {"fraction": 1.5}, "fraction"),
    ("superres", {"factor": 3}, "divide"),
    ("superres", {"factor": 1}, "factor"),
    ("superres", {"filter": "lanczos"}, "lanczos"),
    ("superres", {"kernel_size": 5}, "no effect"),
    ("ct", {"angles": 0}, "angles"),
    ("ct", {"angles": []}, "angles"),
    ("ct", {"angles": ["a"]}, "angles"),
    ("ct", {"channels": 2}, "channels"),
    ("ct", {"detector_size": 0}, "detector_size"),
    ("denoise", {"channels": 0}, "channels"),
])
def test_bad_values(kind, changes, words):
    with pytest.raises(ConfigError, match=words):
        build(kind, **changes)


# -- MRI -----------------------------------------------------------------------------------


def mask_cols(op):
    return op.mask.reshape(-1).numpy()


def test_uniform_mask_is_every_rth_column_plus_paper_centre():
    op = load_operator({"kind": "mri", "image_size": [16, 100], "acceleration": 4, "mask": "uniform"})
    cols = mask_cols(op)
    assert op.mask.shape == (1, 1, 1, 100, 1) and op.spec["mask_rule"] == 2
    assert all(cols[j] == 1 for j in range(0, 100, 4))
    n = 2 * (int(100 * 0.2 * (2 / 4)) // 2) + 100 % 2  # the paper's centre (tests/test_masks.py checks it)
    assert op.num_low_frequencies == n == 10
    pad = (100 - n + 1) // 2
    assert cols[pad:pad + n].all() and center_run(cols) >= n
    off = [j for j in range(100) if j % 4 and not pad <= j < pad + n]
    assert not cols[off].any()


def test_explicit_center_fraction_overrides_paper_rule():
    op = load_operator({"kind": "mri", "image_size": [16, 100], "acceleration": 4, "center_fraction": 0.2})
    assert op.num_low_frequencies == 20 and op.spec["center_fraction"] == 0.2


@pytest.mark.parametrize("mask", ["random", "equispaced_fraction"])
def test_random_and_equispaced_fraction_masks(mask):
    spec = {"kind": "mri", "image_size": [8, 320], "acceleration": 4, "mask": mask}
    accels = []
    for seed in range(8):
        op = load_operator({**spec, "seed": seed})
        cols = mask_cols(op)
        n = round(320 * 0.08)
        assert op.num_low_frequencies == n
        pad = (320 - n + 1) // 2
        assert cols[pad:pad + n].all()
        accels.append(op.acceleration)
    assert abs(np.mean(accels) - 4) < 0.4
    assert all(abs(a - 4) < 1.2 for a in accels)
    same = load_operator({**spec, "seed": 3})
    assert torch.equal(same.mask, load_operator({**spec, "seed": 3}).mask)
    assert not all(torch.equal(same.mask, load_operator({**spec, "seed": s}).mask) for s in range(4))


def test_equispaced_mask_is_not_adjusted_for_the_centre():
    """fastMRI's EquiSpacedMaskFunc rule: every 4th column plus the centre, so above W / 4 columns."""
    for seed in range(4):
        op = load_operator({"kind": "mri", "image_size": [8, 320], "acceleration": 4, "mask": "equispaced", "seed": seed})
        cols = mask_cols(op)
        n = round(320 * 0.08)
        assert op.num_low_frequencies == n and cols[(320 - n + 1) // 2:(320 - n + 1) // 2 + n].all()
        assert 80 + n - 7 <= cols.sum() <= 80 + n - 6  # 80 lines, 6 or 7 of them inside the 26 centre columns
        assert op.acceleration < 4


def test_acceleration_one_samples_everything_and_is_unitary():
    op = load_operator({"kind": "mri", "image_size": [12, 10], "acceleration": 1, "mask": "equispaced"}).double()
    assert op.mask.all()
    x = torch.randn(2, 2, 12, 10, dtype=torch.float64)
    assert torch.allclose(op.A_adjoint(op.A(x)), x)


def test_simulated_coil_maps_are_normalised():
    op = load_operator({"kind": "mri", "image_size": [24, 20], "coils": 8})
    assert op.coils == 8 and op.coil_maps.shape == (8, 24, 20, 2)
    total = complex_abs(op.coil_maps).pow(2).sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert op.norm(iters=20) <= 1 + 1e-4
    mags = complex_abs(op.coil_maps)
    assert (mags.amax((1, 2)) / mags.amin((1, 2)) > 2).all()  # each coil sees some region best


def test_single_coil_maps_are_ones():
    op = load_operator({"kind": "mri", "image_size": [8, 8]})
    assert op.coils == 1 and torch.equal(op.coil_maps[..., 0], torch.ones(1, 8, 8))
    assert not op.coil_maps[..., 1].any()


def test_mri_noise_only_on_sampled_entries():
    op = build("mri", noise_sigma=0.5)
    y = op.measure(torch.zeros(1, 2, 32, 32), torch.Generator().manual_seed(0))
    unsampled = (op.mask == 0).expand_as(y)
    assert not y[unsampled].any() and y[~unsampled].std() > 0.3


def test_mri_shape_errors():
    op = build("mri")
    with pytest.raises(MbdlError, match="does not fit"):
        op.A(torch.zeros(1, 1, 32, 32))
    with pytest.raises(MbdlError, match="does not fit"):
        op.A_adjoint(torch.zeros(1, 3, 32, 32, 2))


def test_mask_files_npy_and_nii(tmp_path):
    cols = (np.arange(32) % 3 == 0).astype(np.float32)
    cols[14:18] = 1
    np.save(tmp_path / "m1.npy", cols)
    op = load_operator({"kind": "mri", "image_size": [16, 32], "mask": "m1.npy"}, base_dir=tmp_path)
    assert np.array_equal(mask_cols(op), cols)
    # fastMRI's detection for mask files: 2 * min(left, right) of the run around W // 2 (here 2 and 3)
    assert center_run(cols) == 5 and op.num_low_frequencies == 4
    op = load_operator({"kind": "mri", "image_size": [16, 32], "mask": "m1.npy", "num_low_frequencies": 5}, base_dir=tmp_path)
    assert op.num_low_frequencies == 5
    mask2d = np.zeros((16, 32))
    mask2d[:, 12:20] = 1
    mask2d[::2, ::4] = 1
    save_nii(tmp_path / "m2.nii.gz", mask2d)
    op = load_operator({"kind": "mri", "image_size": [16, 32], "mask": str(tmp_path / "m2.nii.gz")})
    assert op.mask.shape == (1, 1, 16, 32, 1) and op.num_low_frequencies == 8
    assert op.adjointness_error() < 1e-5
    assert op.acceleration == pytest.approx(16 * 32 / mask2d.sum())


@pytest.mark.parametrize("bad, words", [
    (np.full(31, 1.0), "shape"),
    (np.full(32, 2.0), "0 and 1"),
])
def test_bad_mask_files(tmp_path, bad, words):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ConfigError, match=words):
        load_operator({"kind": "mri", "image_size": [16, 32], "mask": "bad.npy"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="acceleration"):
        load_operator({"kind": "mri", "image_size": [16, 32], "mask": "bad.npy", "acceleration": 4},
                      base_dir=tmp_path)


def random_maps(coils, h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((coils, h, w)) + 1j * rng.standard_normal((coils, h, w))


def test_coil_map_files(tmp_path):
    maps = random_maps(3, 16, 12).astype(np.complex64)
    np.save(tmp_path / "c.npy", maps)
    np.save(tmp_path / "c2.npy", np.stack((maps.real, maps.imag), -1))
    save_nii(tmp_path / "c.nii", maps)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["sens_maps"] = maps
        f["other"] = np.zeros(3)
    base = {"kind": "mri", "image_size": [16, 12], "mask": "random", "acceleration": 2}
    ops = [load_operator({**base, "coil_maps": name}, base_dir=tmp_path) for name in ("c.npy", "c2.npy", "c.nii", "c.h5")]
    for op in ops:
        assert op.coils == 3 and op.spec["coils"] == 3
        assert np.allclose(op.coil_maps[..., 0].numpy(), maps.real)
        assert np.allclose(op.coil_maps[..., 1].numpy(), maps.imag)
        assert op.adjointness_error() < 1e-5
    assert load_operator({**base, "coil_maps": "c.h5", "coils": 3}, base_dir=tmp_path).coils == 3
    with pytest.raises(ConfigError, match="coils"):
        load_operator({**base, "coil_maps": "c.npy", "coils": 4}, base_dir=tmp_path)
    np.save(tmp_path / "small.npy", maps[:, :8])
    with pytest.raises(ConfigError, match="coil_maps"):
        load_operator({**base, "coil_maps": "small.npy"}, base_dir=tmp_path)


# -- FFT helpers -----------------------------------------------------------------------------


def test_fft_is_orthonormal_and_centred():
    x = torch.randn(2, 3, 10, 9, 2, dtype=torch.float64)
    k = fft2c(x)
    assert torch.allclose(k.norm(), x.norm())
    assert torch.allclose(ifft2c(k), x)
    ones = torch.stack((torch.ones(10, 9), torch.zeros(10, 9)), -1)
    mag = complex_abs(fft2c(ones))
    assert mag[5, 4] == pytest.approx(math.sqrt(90)) and mag.sum() == pytest.approx(math.sqrt(90))
    y = torch.randn_like(x)
    assert torch.allclose((fft2c(x) * y).sum(), (x * ifft2c(y)).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mri_native_complex_path_equals_the_real_arithmetic(dtype):
    """A and A^H in complex dtypes give what the (re, im) arithmetic gives: multi-coil, one set
    of maps per image, a per-image mask, a non-contiguous image batch."""
    op = load_operator({"kind": "mri", "image_size": [12, 10], "coils": 3, "acceleration": 2})
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 12, 10, 2, generator=g, dtype=torch.float64)
    op = op.with_sampling(mask=(torch.rand(2, 10, generator=g) > 0.5).float(), coil_maps=maps, per_image_mask=True)
    op = op.to(dtype)
    x = torch.randn(2, 12, 10, 2, generator=g, dtype=torch.float64).permute(0, 3, 1, 2).to(dtype)  # non-contiguous
    y = torch.randn(2, 3, 12, 10, 2, generator=g, dtype=torch.float64).to(dtype)
    ref_a = fft2c(complex_mul(op.coil_maps, chan_to_complex(x).unsqueeze(1))) * op.mask
    ref_ah = complex_to_chan(complex_mul(complex_conj(op.coil_maps), ifft2c(y * op.mask)).sum(1))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(op.A(x), ref_a, atol=tol) and torch.allclose(op.A_adjoint(y), ref_ah, atol=tol)
    assert op.A_adjoint(y).is_contiguous() and op.A_adjoint(y).shape == (2, 2, 12, 10)


def test_complex_helpers():
    a, b = torch.randn(4, 5, 2), torch.randn(4, 5, 2)
    za, zb = torch.view_as_complex(a), torch.view_as_complex(b)
    assert torch.allclose(torch.view_as_complex(complex_mul(a, b)), za * zb)
    assert torch.allclose(torch.view_as_complex(complex_conj(a).contiguous()), za.conj())
    x = torch.randn(2, 2, 6, 7)
    assert chan_to_complex(x).shape == (2, 6, 7, 2) and torch.equal(complex_to_chan(chan_to_complex(x)), x)
    k = torch.randn(2, 4, 6, 7, 2)
    assert torch.allclose(rss_complex(k), rss(complex_abs(k)))
    assert rss_complex(k).shape == (2, 6, 7)


def _formula_mul(a, b):
    re = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
    im = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
    return torch.stack((re, im), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_complex_products_equal_the_formula(dtype):
    """complex_mul runs in native complex arithmetic: broadcast, permuted (non-contiguous) and
    conjugated operands give the real-arithmetic formula to the last bit or one ulp (torch's scalar
    remainder of a vectorised loop), and fft2c on a view gives what it gives on a copy."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 1, 9, 8, 2, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(2, 4, 9, 8, 2, generator=g, dtype=torch.float64).to(dtype)
    bt = b.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not bt.is_contiguous()
    ulp = torch.finfo(dtype).eps * float(a.abs().max() * b.abs().max()) * 2
    for other in (b, bt):
        torch.testing.assert_close(complex_mul(a, other), _formula_mul(a, other), rtol=0, atol=ulp)
        torch.testing.assert_close(complex_mul(other, a, conj_b=True), _formula_mul(other, complex_conj(a)),
                                   rtol=0, atol=ulp)
    big = torch.randn(1, 8, 64, 64, 2, generator=g, dtype=torch.float64).to(dtype)  # whole vectors: exact
    assert torch.equal(complex_mul(big[:, :1], big), _formula_mul(big[:, :1], big))
    h = a.to(torch.bfloat16)  # no native complex type: the formula itself
    assert torch.equal(complex_mul(h, h, conj_b=True), _formula_mul(h, complex_conj(h)))
    k = torch.randn(3, 10, 12, 2, generator=g, dtype=torch.float64).to(dtype)
    zk = torch.complex(k[..., 0], k[..., 1])
    assert torch.equal(fft2c(k), torch.view_as_real(fft2c_complex(zk)))
    assert torch.equal(fft2c(k.transpose(0, 1).contiguous().transpose(0, 1)), fft2c(k))


def test_complex_mul_gradients():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v: complex_mul(u, v, conj_b=True), (a, b))


# -- other kinds -----------------------------------------------------------------------------


def test_blur_preserves_constants_and_reads_kernel_files(tmp_path):
    op = build("deblur", channels=3)
    x = torch.full((1, 3, 32, 32), 2.0)
    assert torch.allclose(op.A(x), x, atol=1e-5)
    kernel = np.zeros((3, 5))
    kernel[1, 2], kernel[1, 3] = 3.0, 1.0
    np.save(tmp_path / "k.npy", kernel)
    save_nii(tmp_path / "k.nii", kernel)
    for name in ("k.npy", "k.nii"):
        op = load_operator({"kind": "deblur", "image_size": [8, 8], "kernel": name}, base_dir=tmp_path)
        assert op.kernel.sum() == pytest.approx(1.0)
        img = torch.zeros(1, 1, 8, 8)
        img[0, 0, 4, 4] = 1
        out = op.A(img)[0, 0]
        assert out[4, 4] == pytest.approx(0.75, abs=1e-6) and out[4, 5] == pytest.approx(0.25, abs=1e-6)
    np.save(tmp_path / "even.npy", np.ones((4, 3)))
    with pytest.raises(ConfigError, match="odd"):
        load_operator({"kind": "deblur", "image_size": [8, 8], "kernel": "even.npy"}, base_dir=tmp_path)
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="sum"):
        load_operator({"kind": "deblur", "image_size": [8, 8], "kernel": "zero.npy"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="kernel_size"):
        load_operator({"kind": "deblur", "image_size": [8, 8], "kernel": "k.npy", "kernel_size": 3}, base_dir=tmp_path)


def test_inpaint_masks(tmp_path):
    op = build("inpaint", fraction=0.25, seed=1, channels=2)
    assert op.mask.sum() == 256 and op.mask.shape == (1, 1, 32, 32)
    assert torch.equal(op.mask, build("inpaint", fraction=0.25, seed=1).mask)
    assert op.A(torch.ones(1, 2, 32, 32)).sum() == 512
    mask = (np.arange(64).reshape(8, 8) % 3 == 0)
    save_nii(tmp_path / "m.nii.gz", mask.astype(np.uint8))
    op = load_operator({"kind": "inpaint", "image_size": [8, 8], "mask": "m.nii.gz"}, base_dir=tmp_path)
    assert np.array_equal(op.mask[0, 0].numpy(), mask)
    with pytest.raises(ConfigError, match="shape"):
        load_operator({"kind": "inpaint", "image_size": [8, 9], "mask": "m.nii.gz"}, base_dir=tmp_path)


@pytest.mark.parametrize("filt", ["box", "gaussian"])
def test_superres(filt):
    op = load_operator({"kind": "superres", "image_size": [24, 36], "factor": 3, "filter": filt, "channels": 2})
    x = torch.full((2, 2, 24, 36), 1.5)
    y = op.A(x)
    assert y.shape == (2, 2, 8, 12) and torch.allclose(y, torch.full_like(y, 1.5), atol=1e-5)
    assert op.adjointness_error() < 1e-5
    with pytest.raises(MbdlError, match="does not fit"):
        op.A_adjoint(torch.zeros(1, 2, 24, 36))


def test_ct_geometry_and_angles():
    op = load_operator({"kind": "ct", "image_size": [64, 64], "angles": 8})
    assert op.detector_size == math.ceil(math.sqrt(2) * 64) and op.angles_deg.tolist() == [i * 22.5 for i in range(8)]
    yy, xx = torch.meshgrid(torch.arange(64) - 31.5, torch.arange(64) - 31.5, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= 20 ** 2).float()[None, None]
    centre = op.A(disk)[0, 0, :, op.detector_size // 2]
    assert torch.allclose(centre, torch.full_like(centre, 40.0), rtol=0.05)  # chord through the centre
    point = torch.zeros(1, 1, 64, 64)
    point[0, 0, 5, 10] = 1  # x = -21.5, y = +26.5 from the centre (rows point down)
    sino = op.A(point)[0, 0]
    centre_bin = (op.detector_size - 1) / 2
    assert sino[0].argmax() == math.floor(centre_bin - 21.5) and sino[4].argmax() == math.floor(centre_bin + 26.5)
    listed = load_operator({"kind": "ct", "image_size": [16, 16], "angles": [0, 45.5, 90], "detector_size": 30})
    assert listed.measurement_shape == (1, 3, 30) and listed.spec["angles"] == [0.0, 45.5, 90.0]
    assert listed.adjointness_error() < 1e-5


def test_ct_gradients_flow():
    op = build("ct").double()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(op.A(x).pow(2).sum(), x)
    assert torch.allclose(grad, 2 * op.A_adjoint(op.A(x)).detach())
