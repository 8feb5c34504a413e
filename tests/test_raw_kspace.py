"""Raw multi-coil k-space (mbdlprune.data.raw, mbdlprune.data.coilmaps) against independent
NumPy computations and the real fastMRI package, on fastMRI-layout files of real brain slices.

The comparisons with fastMRI are skipped where it is not installed (CI installs it, see .ci/run).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest
import torch

from fastmri_layout import brain_slices, crop, ifft2c, ismrmrd_header, write_fastmri_h5, write_fastmri_npz
from mbdlprune.data import coilmaps, raw
from mbdlprune.data.samples import kspace_to_measurements
from mbdlprune.data.volumes import Volume
from mbdlprune.errors import DataError
from mbdlprune.operators import load_operator
from mbdlprune.operators.mri import MRIOperator

H, W, COILS = 64, 64, 8  # image 64x64; k-space 128x64 (readout oversampled x2)


@pytest.fixture(scope="module")
def brain():
    return brain_slices(3, H)


@pytest.fixture(scope="module")
def files(brain, tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    sims = {
        "multi.h5": write_fastmri_h5(d / "multi.h5", brain, COILS),
        "multi.npz": write_fastmri_npz(d / "multi.npz", brain, COILS),
        "single.h5": write_fastmri_h5(d / "single.h5", brain, single_coil=True),
        "single.npz": write_fastmri_npz(d / "single.npz", brain, single_coil=True),
    }
    return d, sims


def message(excinfo) -> str:
    assert isinstance(excinfo.value, DataError)
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


# ----------------------------------------------------------------------------- reader
def test_multicoil_h5_reads_the_fastmri_layout(files, brain):
    d, sims = files
    v = raw.read_raw_file(d / "multi.h5")
    assert v.kspace.shape == (3, COILS, 2 * H, W) and v.kspace.dtype == np.complex64 and not v.single_coil
    np.testing.assert_array_equal(v.kspace, sims["multi.h5"]["kspace"])
    assert v.target_source == "reconstruction_rss" and v.target.dtype == np.float32
    np.testing.assert_allclose(v.target, brain, rtol=0, atol=1e-5 * brain.max())  # the RSS of the coil images is |x|
    assert v.maxval == pytest.approx(float(sims["multi.h5"]["target"].max()))
    assert v.attrs == {"acquisition": "AXT2", "max": pytest.approx(v.maxval),
                       "norm": pytest.approx(float(np.linalg.norm(sims["multi.h5"]["target"])))}
    assert v.encoding == {"encoding_size": (2 * H, W, 1), "recon_size": (H, W, 1), "padding_left": 0, "padding_right": W}
    assert v.sha256 == hashlib.sha256((d / "multi.h5").read_bytes()).hexdigest()
    assert v.name == "multi.h5" and v.path == str((d / "multi.h5").resolve())
    assert v.mask is None and v.fully_sampled and v.slice_index == [0, 1, 2] and v.notes == []
    assert raw.crop_size(v) == (H, W)
    json.dumps(v.record())  # reports take it as it is
    assert "patient" not in json.dumps(v.record())


def test_npz_and_single_coil_files_give_the_same_volumes(files):
    d, _ = files
    a, b = raw.read_raw_file(d / "multi.h5"), raw.read_raw_file(d / "multi.npz")
    np.testing.assert_array_equal(a.kspace, b.kspace)
    np.testing.assert_array_equal(a.target, b.target)
    assert (a.attrs, a.encoding, a.maxval) == (b.attrs, b.encoding, b.maxval)
    for name in ("single.h5", "single.npz"):
        s = raw.read_raw_file(d / name)
        assert s.single_coil and s.coils == 1 and s.kspace.shape == (3, 1, 2 * H, W)
        assert s.target_source == "reconstruction_esc"  # fastMRI's single-coil target
        assert raw.read_raw_file(d / name, target="reconstruction_rss").target_source == "reconstruction_rss"
    assert raw.read_raw_file(d / "multi.h5", target="none").target is None


def test_rss_target_computed_from_fully_sampled_kspace(tmp_path, brain):
    sim = write_fastmri_h5(tmp_path / "f.h5", brain, COILS, targets=())
    v = raw.read_raw_file(tmp_path / "f.h5")
    assert v.target_source == "rss of fully sampled k-space" and raw.crop_size(v) == (H, W)  # the recon matrix
    np.testing.assert_allclose(v.target, sim["target"], rtol=0, atol=1e-6 * brain.max())
    assert v.maxval == pytest.approx(float(sim["target"].max()))  # the file's max attribute
    write_fastmri_h5(tmp_path / "g.h5", brain, COILS, targets=(), header=None)
    g = raw.read_raw_file(tmp_path / "g.h5")
    assert g.encoding == {} and g.target.shape == (3, 2 * H, W)  # no recon matrix: the whole image


def test_undersampled_file_keeps_its_mask_and_has_no_target(tmp_path, brain):
    m = np.zeros(W, np.float32)
    m[::4] = 1
    m[W // 2 - 4:W // 2 + 4] = 1
    write_fastmri_h5(tmp_path / "test.h5", brain, COILS, mask=m)
    v = raw.read_raw_file(tmp_path / "test.h5")
    assert v.target is None and v.target_source is None and not v.fully_sampled
    np.testing.assert_array_equal(v.mask, m)
    ev = raw.prepare_eval(v, "random", 8, 0.04)
    np.testing.assert_array_equal(ev.mask, m)
    assert ev.record["mask"] == "stored in file" and ev.num_low_frequencies == 8 and ev.crop == (H, W)


def test_folder_reading_and_coil_counts(files, tmp_path):
    d, _ = files
    vols = raw.read_raw(d)
    assert [v.name for v in vols] == ["multi.h5", "multi.npz", "single.h5", "single.npz"]
    assert raw.check_same_coils(vols[:2]) == COILS
    with pytest.raises(DataError) as e:
        raw.check_same_coils(vols)
    assert message(e) == ("the files' coil counts differ: multi.h5 has 8, single.h5 has 1 — "
                          "use files of one coil count per run (split the data by coil count)")


# ----------------------------------------------------------------------------- bad input
def test_h5_without_kspace_names_its_datasets(tmp_path):
    with pytest.raises(DataError) as e:
        raw.read_raw_file(h5(tmp_path / "x.h5", foo=np.ones(3), bar=np.ones(2)))
    assert message(e) == ("x.h5 has no kspace dataset (it holds: bar, foo) — "
                          "store raw k-space as 'kspace' (slices, [coils,] H, W) complex, as fastMRI does")


def test_image_file_goes_to_the_image_path(tmp_path, brain):
    with pytest.raises(DataError) as e:
        raw.read_raw_file(h5(tmp_path / "img.h5", reconstruction_rss=brain))
    assert message(e) == ("img.h5 holds images (reconstruction_rss) but no kspace — image files go to the image path "
                          "(read_volumes); raw k-space needs a kspace dataset")
    import nibabel as nib

    nib.save(nib.Nifti1Image(brain.transpose(1, 2, 0), np.eye(4)), str(tmp_path / "img.nii.gz"))
    with pytest.raises(DataError) as e:
        raw.read_raw(tmp_path / "img.nii.gz")
    assert message(e).startswith("img.nii.gz is a NIfTI image file, not raw k-space — image files go to the image path")


@pytest.mark.parametrize("case, expected", [
    ("real", "bad.h5: kspace is float32, not complex — store kspace as complex64 (slices, [coils,] H, W), as fastMRI does"),
    ("mask", "bad.h5: the stored mask is 60 columns wide but the k-space has 64 columns — "
             "store a mask over the k-space's phase-encode columns (W,) or (H, W)"),
    ("big_target", "bad.h5: reconstruction_rss is 64x80, larger than the 128x64 image of its k-space — "
                   "store targets cropped from the k-space's image (fastMRI: 320x320 from 640x320)"),
    ("slices", "bad.h5: reconstruction_rss has 2 slices but kspace has 3 — store one target slice per k-space slice"),
])
def test_inconsistent_files_are_one_line_errors(tmp_path, files, case, expected):
    k = files[1]["multi.h5"]["kspace"]
    t = files[1]["multi.h5"]["target"]
    data = {"real": {"kspace": np.abs(k)}, "mask": {"kspace": k, "mask": np.ones(60, bool)},
            "big_target": {"kspace": k, "reconstruction_rss": np.ones((3, 64, 80), np.float32)},
            "slices": {"kspace": k, "reconstruction_rss": t[:2]}}[case]
    with pytest.raises(DataError) as e:
        raw.read_raw_file(h5(tmp_path / "bad.h5", **data))
    assert message(e) == expected


def test_nonfinite_and_zero_slices_are_dropped_with_a_count(tmp_path, files):
    k = files[1]["multi.h5"]["kspace"].copy()
    t = files[1]["multi.h5"]["target"].copy()
    k[0, 3, 5, 7] = np.nan
    t[2, 0, 0] = np.inf
    v = raw.read_raw_file(h5(tmp_path / "nan.h5", kspace=k, reconstruction_rss=t))
    assert v.slice_index == [1] and v.num_slices == 1
    np.testing.assert_array_equal(v.target[0], t[1])
    assert v.notes == ["dropped 2 of 3 slices of nan.h5: 2 with NaN/Inf values"]
    k[1] = 0
    with pytest.raises(DataError) as e:
        raw.read_raw_file(h5(tmp_path / "all.h5", kspace=k, reconstruction_rss=t))
    assert message(e) == ("all 3 slices of all.h5 are NaN/Inf or all-zero (1 all-zero, 2 with NaN/Inf values) — "
                          "check the file, or remove it from the data")


# ----------------------------------------------------------------------------- hostile files
def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            fn()
        return tracemalloc.get_traced_memory()[1] / 2**20, message(e)
    finally:
        tracemalloc.stop()


def test_huge_declared_shapes_are_refused_before_allocation(tmp_path):
    p = tmp_path / "huge.h5"
    with h5py.File(p, "w") as f:  # nothing written: chunks are allocated lazily, the file is tiny
        f.create_dataset("kspace", shape=(400, 16, 1024, 256), dtype=np.complex64, chunks=(1, 1, 64, 64))
    assert p.stat().st_size < 1 << 20
    peak, text = _peak_mib(lambda: raw.read_raw_file(p))
    assert peak < 20 and "beyond the supported size" in text and "268,435,456 samples" in text
    # an .npz whose .npy header claims 64 GiB over a few bytes of data
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<c8", "fortran_order": False, "shape": (128, 32, 4096, 512)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("kspace.npy", buf.getvalue() + b"\0" * 64)
    peak, text = _peak_mib(lambda: raw.read_raw_file(tmp_path / "huge.npz"))
    assert peak < 20 and text.startswith("huge.npz: kspace shape (128, 32, 4096, 512) is beyond the supported size")


def test_pickled_object_arrays_and_links_are_refused(tmp_path, files):
    np.savez(tmp_path / "obj.npz", kspace=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError) as e:
        raw.read_raw_file(tmp_path / "obj.npz")
    assert message(e) == "obj.npz[kspace] is a pickled object array — store plain numeric arrays (mbdlprune never unpickles data files)"
    other = h5(tmp_path / "other.h5", kspace=files[1]["multi.h5"]["kspace"])
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["kspace"] = h5py.ExternalLink(str(other), "kspace")
    with pytest.raises(DataError) as e:
        raw.read_raw_file(tmp_path / "link.h5")
    assert message(e).startswith("link.h5[kspace] is a link (ExternalLink), not data stored in the file")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(DataError) as e:
        raw.read_raw_file(tmp_path / "junk.h5")
    assert message(e).startswith("cannot read junk.h5: ")


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
                  b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace><matrixSize>'
                  b'<x>&lol2;</x></matrixSize></encodedSpace></encoding></ismrmrdHeader>')
EXTERNAL = (b'<?xml version="1.0"?><!DOCTYPE h SYSTEM "file:///etc/passwd"><ismrmrdHeader>&x;</ismrmrdHeader>')


def test_ismrmrd_header_parsing_is_bounded():
    hdr = ismrmrd_header((640, 368), (320, 320), center=183, maximum=356)
    assert raw.parse_ismrmrd_header(hdr) == {"encoding_size": (640, 368, 1), "recon_size": (320, 320, 1),
                                             "padding_left": 1, "padding_right": 358}  # fastMRI's arithmetic
    refused = "h: ismrmrd_header declares a DOCTYPE or ENTITY — store a plain ISMRMRD header"
    for bad in (BILLION_LAUGHS, EXTERNAL, BILLION_LAUGHS.decode().encode("utf-16")):  # UTF-16 hides it from a byte search
        with pytest.raises(DataError) as e:
            raw.parse_ismrmrd_header(bad, "h")
        assert message(e).startswith(refused)
    with pytest.raises(DataError) as e:
        raw.parse_ismrmrd_header(b"<a>" + b" " * raw.MAX_HEADER_BYTES + b"</a>", "h")
    assert "more than the 1,048,576 an ISMRMRD header needs" in message(e)
    with pytest.raises(DataError) as e:
        raw.parse_ismrmrd_header(b"<a>" * 40 + b"</a>" * 40, "h")
    assert message(e).startswith("h: ismrmrd_header nests deeper than 32 elements")
    with pytest.raises(DataError) as e:
        raw.parse_ismrmrd_header(b"<ismrmrdHeader><encoding>", "h")
    assert message(e).startswith("h: ismrmrd_header is not well-formed XML")
    assert raw.parse_ismrmrd_header(b"<ismrmrdHeader><encoding><reconSpace/></encoding></ismrmrdHeader>") == {}


def test_a_file_with_a_hostile_header_is_refused(tmp_path, brain):
    write_fastmri_h5(tmp_path / "x.h5", brain[:1], 2, header=BILLION_LAUGHS)
    with pytest.raises(DataError) as e:
        raw.read_raw_file(tmp_path / "x.h5")
    assert message(e).startswith("x.h5: ismrmrd_header declares a DOCTYPE or ENTITY")


# ----------------------------------------------------------------------------- protocol vs NumPy and fastMRI
def test_rss_and_rss_target_match_numpy_and_fastmri(files):
    k = files[1]["multi.h5"]["kspace"]
    z = (np.random.default_rng(0).standard_normal((2, 5, 7)) + 1j * np.random.default_rng(1).standard_normal((2, 5, 7)))
    loop = np.sqrt(sum(np.abs(z[:, c]) ** 2 for c in range(5)))
    np.testing.assert_allclose(raw.rss(z, 1), loop, rtol=1e-12)
    np.testing.assert_allclose(raw.rss(torch.from_numpy(z), 1).numpy(), loop, rtol=1e-12)
    ref = np.sqrt((np.abs(ifft2c(k.astype(np.complex128))) ** 2).sum(1))
    np.testing.assert_allclose(raw.rss_target(k), ref, rtol=0, atol=1e-6 * ref.max())
    fastmri = pytest.importorskip("fastmri")
    kt = torch.view_as_real(torch.from_numpy(k))
    np.testing.assert_allclose(raw.ifft2c_np(k), torch.view_as_complex(fastmri.ifft2c(kt)).numpy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(raw.rss_target(k), fastmri.rss_complex(fastmri.ifft2c(kt), dim=1).numpy(), rtol=0,
                               atol=1e-6 * ref.max())


@pytest.mark.parametrize("shape, size", [((7, 10), (3, 4)), ((8, 9), (5, 5)), ((640, 320), (320, 320)), ((6, 6), (6, 6))])
def test_center_crop_is_fastmri_center_crop(shape, size):
    x = torch.arange(2 * np.prod(shape), dtype=torch.float32).reshape(2, *shape)
    np.testing.assert_array_equal(raw.center_crop(x.numpy(), size), crop(x.numpy(), *size))
    with pytest.raises(DataError):
        raw.center_crop(x, (shape[0] + 1, 1))
    center_crop = pytest.importorskip("fastmri.data.transforms").center_crop
    assert torch.equal(raw.center_crop(x, size), center_crop(x, size))


def test_crop_size_rules(files):
    d, _ = files
    v = raw.read_raw_file(d / "multi.h5", target="none")
    assert raw.crop_size(v) == (H, W)  # the recon matrix
    v.encoding = {"recon_size": (48, 96, 1)}
    assert raw.crop_size(v) == (W, W)  # fastMRI's "FLAIR 203": k-space narrower than the recon matrix
    v.encoding = {"recon_size": (200, 32, 1)}
    with pytest.raises(DataError) as e:
        raw.crop_size(v)
    assert message(e).startswith("multi.h5: the ISMRMRD recon matrix 200x32 is larger than the 128x64 image")
    v.encoding = {}
    assert raw.crop_size(v) == (2 * H, W)


def test_undersample_is_a_column_or_image_mask(files):
    k = files[1]["multi.h5"]["kspace"]
    cols = (np.arange(W) % 3 == 0).astype(np.float32)
    np.testing.assert_array_equal(raw.undersample(k, cols), k * cols[None, None, None, :])
    full = (np.random.default_rng(2).uniform(size=(2 * H, W)) < 0.3)
    np.testing.assert_array_equal(raw.undersample(k, full), np.where(full, k, 0))
    with pytest.raises(DataError):
        raw.undersample(k, np.ones(W + 1))


@pytest.mark.parametrize("kind", ["random", "equispaced", "equispaced_fraction"])
@pytest.mark.parametrize("name, width, accel, cf", [("file_brain_AXT2_200_2000019.h5", 320, 4, 0.08),
                                                    ("file1000001.h5", 368, 8, 0.04), ("x.npz", 64, 4, 0.16)])
def test_per_volume_masks_equal_fastmri_mask_functions(kind, name, width, accel, cf):
    subsample = pytest.importorskip("fastmri.data.subsample")
    assert raw.volume_seed("/some/where/" + name) == tuple(map(ord, name))
    func = {"random": subsample.RandomMaskFunc, "equispaced": subsample.EquiSpacedMaskFunc,
            "equispaced_fraction": subsample.EquispacedMaskFractionFunc}[kind]([cf], [accel])
    want, n = func((1, 640, width, 2), seed=tuple(map(ord, name)))
    got, ours = raw.volume_mask(name, kind, width, accel, cf)
    np.testing.assert_array_equal(got, want.reshape(-1).numpy())
    assert ours == n
    other, _ = raw.volume_mask("file1000002.h5", kind, width, accel, cf)
    assert kind != "random" or not np.array_equal(other, got)  # another file, another mask


def test_too_many_centre_columns_is_a_data_error():
    for kind in ("random", "equispaced_fraction"):
        with pytest.raises(DataError) as e:
            raw.volume_mask("f.h5", kind, 64, 4, 0.3)
        assert message(e).startswith("f.h5: the 19 fully sampled centre columns ")
    with pytest.raises(DataError) as e:
        raw.volume_mask("f.h5", "poisson", 64, 4, 0.08)
    assert message(e) == "unknown mask kind 'poisson' — use one of: random, equispaced, equispaced_fraction"


def test_prepared_slices_equal_fastmri_varnet_data_transform(tmp_path, brain):
    """fastMRI's own SliceDataset + VarNetDataTransform on our file give the same k-space, mask,
    low frequencies, target, max and crop, including the ISMRMRD padding."""
    SliceDataset = pytest.importorskip("fastmri.data.mri_data").SliceDataset
    from fastmri.data.subsample import EquiSpacedMaskFunc, EquispacedMaskFractionFunc, RandomMaskFunc
    from fastmri.data.transforms import VarNetDataTransform

    name = "file_brain_AXT2_201_2010001.h5"
    write_fastmri_h5(tmp_path / name, brain[:2], 4, header=ismrmrd_header((2 * H, W), (H, W), center=28, maximum=55))
    v = raw.read_raw_file(tmp_path / name)
    assert (v.encoding["padding_left"], v.encoding["padding_right"]) == (4, 60)
    for kind, func in (("random", RandomMaskFunc), ("equispaced", EquiSpacedMaskFunc),
                       ("equispaced_fraction", EquispacedMaskFractionFunc)):
        ds = SliceDataset(tmp_path, "multicoil", transform=VarNetDataTransform(func([0.16], [4])),
                          dataset_cache_file=tmp_path / "cache.pkl")
        ev = raw.prepare_eval(v, kind, 4, 0.16)
        assert ev.mask[:4].sum() == 0 and ev.mask[60:].sum() == 0
        for i in range(len(ds)):
            s = ds[i]
            np.testing.assert_array_equal(s.mask.reshape(-1).numpy(), ev.mask)
            np.testing.assert_array_equal(torch.view_as_complex(s.masked_kspace).numpy(), ev.kspace[i])
            np.testing.assert_array_equal(s.target.numpy(), ev.target[i])
            assert (s.num_low_frequencies, s.max_value, tuple(s.crop_size)) == (ev.num_low_frequencies, ev.maxval, ev.crop)


def test_scale_matches_kspace_to_measurements_and_maps_back_to_the_target(files):
    sim = files[1]["multi.h5"]
    k = sim["kspace"]
    op = load_operator({"kind": "mri", "image_size": [2 * H, W], "coils": COILS, "mask": "uniform", "acceleration": 1})
    for mode in ("max", "volume", "none"):
        y, _ = kspace_to_measurements(Volume("v", "v", "0", "kspace", k), op, mode, skip_empty=False)
        scaled, scale = raw.scale_kspace(k, mode)
        torch.testing.assert_close(torch.view_as_real(torch.from_numpy(scaled)), y, rtol=1e-6, atol=1e-12)
        peaks = np.abs(k).reshape(3, -1).max(1)
        np.testing.assert_allclose(scale, {"max": peaks, "volume": np.full(3, peaks.max()), "none": np.ones(3)}[mode], rtol=1e-6)
    v = raw.read_raw_file(files[0] / "multi.h5")
    ev = raw.prepare_eval(v, "random", 1, 0.08, scale="max")  # acceleration 1: fully sampled
    maps = sim["maps"]
    x = (np.conj(maps)[None] * ifft2c(ev.kspace)).sum(1)  # the true-map combination of the scaled data
    out = ev.to_target_units(torch.from_numpy(np.stack((x.real, x.imag), 1).astype(np.float32)))
    np.testing.assert_allclose(out, v.target, rtol=0, atol=1e-5 * v.maxval)


# ----------------------------------------------------------------------------- coil maps
@pytest.fixture(scope="module")
def acquisition(tmp_path_factory, brain):
    """A noisy 4x acquisition of two brain slices with a 13-column ACS block, read back."""
    d = tmp_path_factory.mktemp("maps")
    sim = write_fastmri_h5(d / "file_brain_AXT2_001.h5", brain[:2], COILS, noise=0.002, seed=3)
    v = raw.read_raw_file(d / "file_brain_AXT2_001.h5")
    return sim, v, raw.prepare_eval(v, "equispaced_fraction", 4, 0.2)


def _head_correlation(v, maps, image):
    """Correlation inside the head of |sens_reduce(fully sampled k-space)| with the true image."""
    head = np.abs(image) > 0.1 * np.abs(image).max()
    out = []
    for s in range(v.num_slices):
        op = MRIOperator(v.image_shape, np.ones(W), torch.from_numpy(maps[s]), 1)
        x = op.sens_reduce(torch.view_as_real(torch.from_numpy(v.kspace[s:s + 1])))[0]
        mag = torch.sqrt(x[0] ** 2 + x[1] ** 2).numpy()
        out.append(np.corrcoef(mag[head[s]], np.abs(image[s])[head[s]])[0, 1])
    return np.array(out), head


@pytest.mark.parametrize("method", ["espirit", "acs"])
def test_coil_maps_reproduce_the_image(acquisition, method):
    sim, v, ev = acquisition
    maps, rec = coilmaps.coil_maps_for(v, ev, method)
    assert maps.shape == (2, COILS, 2 * H, W, 2) and maps.dtype == np.float32
    assert rec["method"] == method and rec["params"]["num_low_frequencies"] == 13 and rec["cache"] == "computed"
    energy = np.square(maps).sum(axis=(1, -1))
    assert np.all(energy < 1 + 1e-4) and np.allclose(energy[energy > 0.5], 1, atol=1e-4)  # sum |S|^2 = 1 where defined
    corr, head = _head_correlation(v, maps, sim["image"])
    assert corr.min() > 0.95, corr
    z = maps[..., 0] + 1j * maps[..., 1]
    agree = np.abs((np.conj(z) * sim["maps"][None]).sum(1))  # |<S_est, S_true>| per pixel: 1 up to a phase
    assert np.median(agree[head]) > 0.95 and np.mean(agree[head] > 0.9) > 0.9
    wrong = np.roll(maps, 3, axis=1)  # the right maps on the wrong coils
    assert _head_correlation(v, wrong, sim["image"])[0].max() < corr.min() - 0.05


def test_acs_maps_equal_fastmri_sensitivity_model_without_its_cnn(acquisition):
    SensitivityModel = pytest.importorskip("fastmri.models.varnet").SensitivityModel

    _, v, ev = acquisition
    model = SensitivityModel(chans=2, num_pools=1)
    model.norm_unet = torch.nn.Identity()  # fastMRI's estimate before the CNN refines it
    mask = torch.from_numpy(ev.mask).reshape(1, 1, 1, W, 1).bool()
    with torch.no_grad():
        want = model(torch.view_as_real(torch.from_numpy(ev.kspace)), mask, None)
    maps, rec = coilmaps.estimate_coil_maps(ev.kspace, ev.mask, "acs")
    torch.testing.assert_close(torch.from_numpy(maps), want, rtol=1e-4, atol=1e-6)
    assert rec["params"] == {"num_low_frequencies": 12}  # detected from the mask, as fastMRI's model does (2 x min side)


def test_coil_map_cache_memory_and_disk(acquisition, tmp_path):
    _, v, ev = acquisition
    cache = coilmaps.CoilMapCache(tmp_path / "c")
    a, ra = coilmaps.coil_maps_for(v, ev, "acs", cache)
    b, rb = coilmaps.coil_maps_for(v, ev, "acs", cache)
    assert (ra["cache"], rb["cache"]) == ("computed", "memory") and b is a
    fresh = coilmaps.CoilMapCache(tmp_path / "c")
    c, rc = coilmaps.coil_maps_for(v, ev, "acs", fresh)
    assert rc["cache"] == "disk" and np.array_equal(c, a)
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    other = raw.prepare_eval(v, "random", 4, 0.125)  # another mask and ACS width: another entry
    assert coilmaps.coil_maps_for(v, other, "acs", fresh)[1]["cache"] == "computed"


@pytest.mark.parametrize("tamper", ["nan", "key", "shape", "junk"])
def test_cache_files_are_verified_not_trusted(acquisition, tmp_path, tamper):
    from safetensors.numpy import load_file, save_file

    _, v, ev = acquisition
    good, _ = coilmaps.coil_maps_for(v, ev, "acs", coilmaps.CoilMapCache(tmp_path))
    (path,) = tmp_path.glob("*.safetensors")
    meta = {"format": coilmaps.CACHE_FORMAT, "version": coilmaps.CACHE_VERSION}
    with __import__("safetensors").safe_open(str(path), "numpy") as f:
        meta["key"] = f.metadata()["key"]
    maps = load_file(str(path))["maps"]
    if tamper == "nan":
        maps[0, 0, 0, 0, 0] = np.nan
        save_file({"maps": maps}, str(path), metadata=meta)
    elif tamper == "key":
        save_file({"maps": np.zeros_like(maps)}, str(path), metadata={**meta, "key": meta["key"].replace("acs", "x")})
    elif tamper == "shape":
        save_file({"maps": maps[:1]}, str(path), metadata=meta)
    else:
        path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    cache = coilmaps.CoilMapCache(tmp_path)
    again, rec = coilmaps.coil_maps_for(v, ev, "acs", cache)
    assert rec["cache"] == "computed" and np.array_equal(again, good)
    assert len(cache.notes) == 1 and cache.notes[0].startswith(f"ignored coil-map cache file {path.name}: ")
    assert coilmaps.coil_maps_for(v, ev, "acs", coilmaps.CoilMapCache(tmp_path))[1]["cache"] == "disk"  # rewritten


def test_coil_map_errors(acquisition, monkeypatch):
    _, v, ev = acquisition
    with pytest.raises(DataError) as e:
        coilmaps.estimate_coil_maps(ev.kspace, ev.mask, "espirit", num_low_frequencies=10)
    assert message(e).startswith("ESPIRiT calibrates on 10x10 samples, which needs at least twice its kernel width 6")
    with pytest.raises(DataError) as e:
        coilmaps.estimate_coil_maps(ev.kspace, ev.mask, "grappa")
    assert message(e) == "unknown coil-map method 'grappa' — use one of: espirit, acs"
    with pytest.raises(DataError) as e:
        coilmaps.estimate_coil_maps(ev.kspace, ev.mask, "acs", kernel_width=5)
    assert message(e) == "coil-map method 'acs' takes no parameter 'kernel_width' — pass no parameters"
    monkeypatch.setitem(sys.modules, "sigpy.mri.app", None)  # as if sigpy were not installed
    with pytest.raises(DataError) as e:
        coilmaps.estimate_coil_maps(ev.kspace, ev.mask, "espirit")
    assert message(e) == ('ESPIRiT coil maps need sigpy, which is not installed — '
                          'pip install "mbdlprune[espirit]" (sigpy), or use coil maps "acs"')


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert coilmaps.default_cache_dir() == tmp_path / "mbdlprune" / "coilmaps"
