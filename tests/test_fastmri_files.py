"""fastMRI-layout multi-coil files written by mbdlprune.data.fastmri_files, checked against
fastMRI's own reader and independent NumPy computations; the shipped multi-coil ``varnet``
example on the raw k-space of the held-out slices (examples.raw_example_data).

The comparisons with fastMRI are skipped where it is not installed (CI installs it).
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from mbdlprune.data import raw
from mbdlprune.data.fastmri_files import (coil_rotation, coil_sensitivities, images_from_nifti, simulate_kspace,
                                          write_fastmri_file)
from mbdlprune.errors import DataError, MbdlError
from mbdlprune.examples import (RAW_COILS, RAW_FILES, RAW_MODEL_EXAMPLES, RAW_OVERSAMPLE, RAW_PROTOCOL, example_path,
                                raw_example_data, read_header_meta)
from mbdlprune.metrics import volume_metrics
from mbdlprune.operators.mri import simulate_coil_maps

#: fastMRI PSNR (dB, per volume, eval.h5 with the model file's mask) by which the shipped varnet
#: must beat zero filling; PROVENANCE.md states the same number (checked below)
VARNET_MARGIN_DB = 4.5
#: ... and on every slice
VARNET_SLICE_MARGIN_DB = 3.5


@pytest.fixture(scope="module")
def images():
    """Three real brain slices (the shipped held-out EPI slices, max 1 each)."""
    return images_from_nifti(example_path("eval"))[:3]


@pytest.fixture(scope="module")
def written(images, tmp_path_factory):
    d = tmp_path_factory.mktemp("fastmri_files")
    path = write_fastmri_file(d / "file_brain_AXT1_001.h5", images, coils=4, oversample=2, seed=5)
    return d, path


def np_ifft2c(k: np.ndarray) -> np.ndarray:
    ax = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=ax), norm="ortho"), axes=ax)


def test_layout_is_fastmris(written, images):
    _, path = written
    s, h, w = images.shape
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["ismrmrd_header", "kspace", "reconstruction_rss"]
        k, t = f["kspace"], f["reconstruction_rss"]
        assert k.dtype == np.complex64 and k.shape == (s, 4, 2 * h, w)
        assert t.dtype == np.float32 and t.shape == (s, h, w)
        assert sorted(f.attrs.keys()) == ["acquisition", "max", "norm"]  # no patient attribute
        target = t[()]
        assert f.attrs["max"] == pytest.approx(float(target.max()), rel=1e-7)
        assert f.attrs["norm"] == pytest.approx(float(np.linalg.norm(target.astype(np.float64))), rel=1e-7)
        assert f.attrs["acquisition"] == "AXT1"
        header = f["ismrmrd_header"][()]
    assert isinstance(header, bytes) and header.startswith(b"<?xml")
    enc = raw.parse_ismrmrd_header(header)
    assert enc == {"encoding_size": (2 * h, w, 1), "recon_size": (h, w, 1), "padding_left": 0, "padding_right": w}


def test_target_is_the_rss_of_the_kspace_and_the_image(written, images):
    _, path = written
    with h5py.File(path, "r") as f:
        k, t = f["kspace"][()], f["reconstruction_rss"][()]
    h, w = images.shape[-2:]
    rss = np.sqrt((np.abs(np_ifft2c(k.astype(np.complex128))) ** 2).sum(1))  # NumPy, independent of mbdlprune
    top = (rss.shape[-2] - h) // 2
    np.testing.assert_allclose(t, rss[:, top:top + h], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t, images, atol=2e-6)  # sum_c |S_c|^2 = 1: the RSS is the magnitude given
    assert rss[:, :top].max() < 1e-5 and rss[:, top + h:].max() < 1e-5  # zero padding along the readout


def test_reads_back_fully_sampled_with_its_target(written):
    _, path = written
    v = raw.read_raw_file(path)
    assert v.fully_sampled and v.target_source == "reconstruction_rss" and not v.single_coil
    assert v.coils == 4 and v.image_shape == (192, 96)
    np.testing.assert_array_equal(v.target, raw.center_crop(raw.rss_target(v.kspace), (96, 96)))
    assert v.maxval == pytest.approx(float(v.target.max()), rel=1e-7)
    assert v.attrs["acquisition"] == "AXT1" and not v.notes


def test_fastmri_slice_dataset_reads_it(written):
    """fastMRI's SliceDataset + VarNetDataTransform read the file: its target, max, crop and
    masked k-space equal ours, and its RSS of the k-space is the stored target."""
    SliceDataset = pytest.importorskip("fastmri.data.mri_data").SliceDataset
    import fastmri
    from fastmri.data.subsample import EquispacedMaskFractionFunc
    from fastmri.data.transforms import VarNetDataTransform, center_crop

    d, path = written
    ds = SliceDataset(d, "multicoil", transform=VarNetDataTransform(EquispacedMaskFractionFunc([0.08], [4])),
                      dataset_cache_file=d / "cache.pkl")
    meta = ds.raw_samples[0].metadata
    assert (meta["padding_left"], meta["padding_right"]) == (0, 96)
    assert meta["encoding_size"] == (192, 96, 1) and meta["recon_size"] == (96, 96, 1)
    v = raw.read_raw_file(path)
    ev = raw.prepare_eval(v, "equispaced_fraction", 4, 0.08)
    assert len(ds) == v.num_slices
    with h5py.File(path, "r") as f:
        full = torch.view_as_real(torch.from_numpy(f["kspace"][()]))
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_array_equal(s.target.numpy(), v.target[i])
        assert s.max_value == v.maxval and tuple(s.crop_size) == (96, 96) == ev.crop
        assert s.num_low_frequencies == ev.num_low_frequencies == 8
        np.testing.assert_array_equal(s.mask.reshape(-1).numpy(), ev.mask)
        np.testing.assert_array_equal(torch.view_as_complex(s.masked_kspace).numpy(), ev.kspace[i])
        rss = center_crop(fastmri.rss(fastmri.complex_abs(fastmri.ifft2c(full[i]))), (96, 96))
        torch.testing.assert_close(rss, s.target, rtol=1e-5, atol=1e-6)


def test_no_replace_without_force(written, images):
    _, path = written
    before = path.read_bytes()
    with pytest.raises(MbdlError, match="already exists"):
        write_fastmri_file(path, images[:1])
    assert path.read_bytes() == before
    write_fastmri_file(path, images[:1], force=True)
    assert raw.read_raw_file(path).num_slices == 1
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temp file left


def test_coil_maps_and_seed():
    m = simulate_coil_maps(4, 192, 96)
    np.testing.assert_array_equal(coil_sensitivities(4, 192, 96), m[..., 0] + 1j * m[..., 1])
    turned = coil_sensitivities(4, 192, 96, coil_rotation(7, 4))
    np.testing.assert_allclose((np.abs(turned) ** 2).sum(0), 1, atol=1e-5)
    assert not np.allclose(turned, coil_sensitivities(4, 192, 96))
    assert coil_rotation(7, 4) == coil_rotation(7, 4) != coil_rotation(8, 4)
    assert 0 <= coil_rotation(7, 4) < np.pi / 2


def test_bad_images_are_refused(tmp_path, images):
    for bad, what in ((images.astype(np.complex64), "not real"), (np.full((1, 8, 8), np.nan), "NaN"),
                      (np.zeros((2, 3, 4, 5)), "shape"), (np.zeros((1, 8, 8)), "all zero")):
        with pytest.raises(DataError, match=what):
            write_fastmri_file(tmp_path / "bad.h5", bad)
    with pytest.raises(DataError, match="coils"):
        simulate_kspace(images, coils=0)
    assert not list(tmp_path.iterdir())


def test_images_from_nifti_equal_read_volumes():
    from mbdlprune.data import read_volumes

    vol = read_volumes(example_path("finetune-val"))[0]
    got = images_from_nifti(example_path("finetune-val"))
    np.testing.assert_array_equal(got, np.asarray(vol.array, dtype=np.float32))


# ------------------------------------------------------------------------------ shipped raw examples
@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw_examples")
    return d, raw_example_data(d)


def test_raw_example_data(raw_data):
    d, paths = raw_data
    assert set(paths) == {"eval", "finetune", "finetune-val"}
    slices = {"eval": 8, "finetune": 15, "finetune-val": 4}
    for name, p in paths.items():
        assert p == d / RAW_FILES[name][0]
        v = raw.read_raw_file(p)
        assert v.num_slices == slices[name] and v.coils == RAW_COILS and v.image_shape == (RAW_OVERSAMPLE * 96, 96)
        np.testing.assert_allclose(v.target, images_from_nifti(example_path(RAW_FILES[name][1])), atol=2e-6)
    with pytest.raises(MbdlError, match="already exists"):
        raw_example_data(d)


@pytest.mark.parametrize("name", RAW_MODEL_EXAMPLES)
def test_varnet_example_beats_zero_filled_on_raw_kspace(name, raw_data):
    import mbdlprune

    loaded = mbdlprune.load_model(example_path(name))
    model, op = loaded.model, loaded.operator
    assert loaded.meta["arch"]["name"] == "e2e-varnet"
    assert op.spec["image_size"] == [192, 96] and op.coils == RAW_COILS and op.num_low_frequencies == 8
    v = raw.read_raw_file(raw_data[1]["eval"])
    cols = op.mask.reshape(-1).numpy()
    k = raw.undersample(v.kspace, cols)  # unscaled: RAW_PROTOCOL["scale"] == "none"
    assert RAW_PROTOCOL["scale"] == "none"
    y = torch.view_as_real(torch.from_numpy(k)).float()
    with torch.no_grad():
        out = torch.cat([model(y[i:i + 4], op) for i in range(0, y.shape[0], 4)])
    pred = raw.center_crop(torch.sqrt(out[:, 0] ** 2 + out[:, 1] ** 2), (96, 96))
    zf = raw.center_crop(torch.from_numpy(raw.rss_target(k)), (96, 96))
    gt = torch.from_numpy(v.target)
    got, base = volume_metrics(pred, gt, maxval=v.maxval), volume_metrics(zf, gt, maxval=v.maxval)
    gain = got["psnr"] - base["psnr"]
    slice_gain = got["per_slice"]["psnr"] - base["per_slice"]["psnr"]
    assert gain >= VARNET_MARGIN_DB and float(slice_gain.min()) >= VARNET_SLICE_MARGIN_DB, (got["psnr"], base["psnr"], slice_gain)
    assert got["ssim"] > base["ssim"] + 0.1
    recorded = read_header_meta(example_path(name))["evaluation"]["operator_mask"]
    assert got["psnr"] == pytest.approx(recorded["model"]["psnr"], abs=0.1)
    assert base["psnr"] == pytest.approx(recorded["zero_filled"]["psnr"], abs=1e-3)


def test_provenance_states_the_varnet_margin():
    text = example_path("provenance").read_text(encoding="utf-8")
    assert re.search(rf"`varnet`[^\n]*?at least \*\*{VARNET_MARGIN_DB:.1f} dB\*\*", text), \
        f"PROVENANCE.md does not state the {VARNET_MARGIN_DB:.1f} dB margin for varnet"
