"""Data readers, file-level splits, overlap refusal, slice fitting and simulated measurements.

Real brain MRI shipped with nibabel (anatomical.nii, example4d.nii.gz) provides the images.
"""

from __future__ import annotations

import os

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from mbdlprune import data
from mbdlprune.errors import DataError
from mbdlprune.operators import load_operator

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
ANAT = os.path.join(NIB_DATA, "anatomical.nii")
EX4D = os.path.join(NIB_DATA, "example4d.nii.gz")


def mri_op(size=(32, 32), noise=0.01, coils=2):
    return load_operator({"kind": "mri", "image_size": list(size), "acceleration": 4, "coils": coils, "noise_sigma": noise})


@pytest.fixture(scope="module")
def anat():
    return np.asarray(nib.load(ANAT).dataobj).astype(np.float32)  # (33, 41, 25)


def write_slices(folder, arr, n_files, per_file=3, start=8):
    """Write ``n_files`` NIfTI files of ``per_file`` axial slices each (the writer side of the reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        p = folder / f"sub{i}.nii.gz"
        s = start + i * per_file
        nib.save(nib.Nifti1Image(arr[:, :, s:s + per_file], np.eye(4)), str(p))
        paths.append(p)
    return paths


def test_nifti_folder_reader_slices_along_axis(tmp_path, anat):
    write_slices(tmp_path / "d", anat, 2)
    vols = data.read_volumes(tmp_path / "d")
    assert [v.name for v in vols] == ["sub0.nii.gz", "sub1.nii.gz"]
    assert vols[0].array.shape == (3, 33, 41) and vols[0].kind == "image"
    np.testing.assert_allclose(vols[0].array[1], anat[:, :, 9], rtol=1e-5)
    assert len(vols[0].sha256) == 64 and vols[0].sha256 != vols[1].sha256
    v0 = data.read_volumes(tmp_path / "d" / "sub0.nii.gz", axis=0)[0]
    assert v0.array.shape == (33, 41, 3)
    with pytest.raises(DataError, match="--axis"):
        data.read_volumes(tmp_path / "d", axis=3)


def test_4d_nifti_volumes_share_a_file_and_stay_together(tmp_path, anat):
    four = np.stack([anat[:, :, 5:9], anat[:, :, 10:14]], axis=-1)  # (33, 41, 4, 2)
    nib.save(nib.Nifti1Image(four, np.eye(4)), str(tmp_path / "fourd.nii.gz"))
    write_slices(tmp_path, anat, 1, start=15)
    vols = data.read_volumes(tmp_path)
    names = [v.name for v in vols]
    assert "fourd.nii.gz[t=0]" in names and "fourd.nii.gz[t=1]" in names
    for seed in range(6):
        train, val = data.split_by_file(vols, 0.5, seed)
        sides = {v.name: ("t" if v in train else "v") for v in vols}
        assert sides["fourd.nii.gz[t=0]"] == sides["fourd.nii.gz[t=1]"]
        assert train and val


def test_real_example4d_reads_two_volumes():
    vols = data.read_volumes(EX4D)
    assert len(vols) == 2 and vols[0].array.shape == (24, 128, 96)
    assert vols[0].path == vols[1].path and vols[0].sha256 == vols[1].sha256


def test_numpy_layouts(tmp_path, anat):
    sl = np.moveaxis(anat[:, :, 8:11], 2, 0)  # (3, 33, 41)
    np.save(tmp_path / "real.npy", sl)
    np.save(tmp_path / "cplx.npy", sl * np.exp(1j * 0.3))
    np.save(tmp_path / "ri.npy", np.stack([sl, -sl], axis=1))
    np.savez(tmp_path / "two.npz", a=sl, b=sl[:2])
    got = {v.name: v for v in data.read_volumes(tmp_path)}
    assert got["real.npy"].array.dtype == np.float32 and got["real.npy"].array.shape == (3, 33, 41)
    assert np.iscomplexobj(got["cplx.npy"].array)
    np.testing.assert_allclose(got["ri.npy"].array.imag, -sl)
    assert got["two.npz[a]"].num_slices == 3 and got["two.npz[b]"].num_slices == 2
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(DataError, match="bad.npy"):
        data.read_volumes(tmp_path / "bad.npy")


def test_fastmri_h5_images_and_kspace(tmp_path, anat):
    op = mri_op(noise=0.0)
    sl = np.moveaxis(anat[:32, :32, 8:11], 2, 0)
    with h5py.File(tmp_path / "img.h5", "w") as h:
        h["reconstruction_rss"] = sl
        h["kspace"] = np.zeros((3, 2, 32, 32), np.complex64)
    x = data.slices_to_images(data.read_volumes(tmp_path / "img.h5")[0], op)
    # measurement-only file: fully sampled k-space of the images, undersampled by the operator
    xs = torch.stack([torch.from_numpy(sl), torch.zeros(3, 32, 32)], 1)
    full = op.sens_expand(xs)
    k = torch.view_as_complex(full.contiguous()).numpy()
    with h5py.File(tmp_path / "ks.h5", "w") as h:
        h["kspace"] = k
    vol = data.read_volumes(tmp_path / "ks.h5")[0]
    assert vol.kind == "kspace" and vol.array.shape == (3, 2, 32, 32)
    y, kept = data.kspace_to_measurements(vol, op, normalize="none")
    assert y.shape == (3, 2, 32, 32, 2) and len(kept) == 3
    torch.testing.assert_close(y, op.A(xs), atol=1e-4, rtol=1e-4)
    assert x.shape == (3, 2, 32, 32)
    pd = data.build_dataset([vol], op)
    item = pd.dataset[0]
    assert set(item) == {"y", "index", "volume"} and pd.kind == "kspace" and not pd.dataset.has_ground_truth
    with pytest.raises(DataError, match="operator measures"):
        data.kspace_to_measurements(vol, mri_op(coils=3))
    # a stored mask that disagrees with the operator's is refused
    with h5py.File(tmp_path / "ksm.h5", "w") as h:
        h["kspace"] = k
        h["mask"] = np.ones(32, np.float32)
    with pytest.raises(DataError, match="mask"):
        data.kspace_to_measurements(data.read_volumes(tmp_path / "ksm.h5")[0], op)


def test_split_by_file_hygiene(tmp_path, anat):
    write_slices(tmp_path, anat, 5)
    vols = data.read_volumes(tmp_path)
    train, val = data.split_by_file(vols, 0.4, seed=3)
    tf, vf = {v.path for v in train}, {v.path for v in val}
    assert tf and vf and not (tf & vf) and len(vf) == 2
    assert data.split_by_file(vols, 0.4, seed=3) == (train, val)  # reproducible
    assert data.split_by_file(vols, 0.0) == (vols, [])
    # even a tiny fraction keeps one file on each side
    train, val = data.split_by_file(vols, 0.01)
    assert len(val) == 1 and len(train) == 4
    # a copy of a file under another name counts as the same file
    (tmp_path / "copy.nii.gz").write_bytes((tmp_path / "sub0.nii.gz").read_bytes())
    vols = data.read_volumes(tmp_path)
    for seed in range(5):
        train, val = data.split_by_file(vols, 0.5, seed)
        assert not ({v.sha256 for v in train} & {v.sha256 for v in val})


def test_single_file_validation_split_is_refused(tmp_path, anat):
    write_slices(tmp_path, anat, 1)
    vols = data.read_volumes(tmp_path)
    with pytest.raises(DataError, match="--val-data") as e:
        data.split_by_file(vols, 0.2)
    assert "\n" not in str(e.value)


def test_overlap_refusal_names_the_file(tmp_path, anat):
    paths = write_slices(tmp_path, anat, 2)
    vols = data.read_volumes(tmp_path)
    h = data.file_hashes(vols)
    data.check_no_overlap({paths[0].as_posix(): h[str(paths[0].resolve())]}, {str(paths[1]): h[str(paths[1].resolve())]})
    with pytest.raises(DataError, match="sub1.nii.gz"):
        data.check_no_overlap(h, {str(paths[1]): h[str(paths[1].resolve())]})


def test_fit_normalise_channels_and_empty_slices(tmp_path, anat):
    op = mri_op()
    vol = data.Volume("v", "v", "0" * 64, "image", np.moveaxis(anat[:, :, 8:12], 2, 0).copy())
    with pytest.raises(DataError, match=r"33x41 .* 32x32 .* --fit crop-pad"):
        data.slices_to_images(vol, op)
    with pytest.raises(DataError):
        data.slices_to_images(vol, mri_op(size=(40, 40)), fit="crop")
    x = data.slices_to_images(vol, op, fit="crop")
    assert x.shape == (4, 2, 32, 32) and float(x[:, 1].abs().max()) == 0.0
    assert torch.allclose(x[:, 0].flatten(1).amax(1), torch.ones(4))
    xp = data.slices_to_images(vol, mri_op(size=(36, 44)), fit="crop-pad", normalize="volume")
    assert xp.shape == (4, 2, 36, 44) and float(xp.abs().max()) == pytest.approx(1.0)
    assert float(xp[:, :, :, 0].abs().max()) == 0.0  # zero padded border
    one = load_operator({"kind": "denoise", "image_size": [32, 32], "channels": 1})
    assert data.slices_to_images(vol, one, fit="crop").shape == (4, 1, 32, 32)
    # empty slices: zeros and near-empty slices are skipped and counted
    arr = np.moveaxis(anat[:32, :32, 8:12], 2, 0).copy()
    arr[1] = 0
    arr[2] = arr[2] * 0.01
    ev = data.Volume("e", "e", "1" * 64, "image", arr)
    pd = data.build_dataset([ev], op)
    assert pd.slices == 2 and pd.skipped_empty == 2 and pd.record()["normalization"] == "max"


def test_simulate_is_reproducible_per_sample(anat):
    op = mri_op(noise=0.05)
    vol = data.Volume("v", "v", "0" * 64, "image", np.moveaxis(anat[:32, :32, 8:11], 2, 0).copy())
    x = data.slices_to_images(vol, op)
    y1, y2 = data.simulate(x, op, seed=4), data.simulate(x, op, seed=4)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, data.simulate(x, op, seed=5))
    pd = data.build_dataset([vol], op, seed=4)
    item = pd.dataset[2]
    assert set(item) == {"y", "x", "index", "volume"} and item["index"] == 2 and item["volume"] == "v"
    assert torch.equal(pd.dataset.y, y1)
