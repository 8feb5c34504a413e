"""bench on raw multi-coil k-space: the fastMRI protocol (per-file mask, RSS target, crop, maxval),
checked against an independent NumPy computation and fastMRI's own mask functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mbdlprune
import mbdlprune.errors
from mbdlprune.models.user import build_arch

from fastmri_layout import brain_slices, crop, ifft2c, write_fastmri_h5

H, W, COILS = 64, 32, 4  # k-space: readout oversampled x2 -> recon 32 x 32
SPEC = {"kind": "mri", "image_size": [H, W], "coils": COILS, "mask": "equispaced_fraction", "acceleration": 4,
        "center_fraction": 0.125}
FAST = {"warmup": 0, "repeats": 1, "device": "cpu", "threads": 1}


class ZeroFilled(torch.nn.Module):
    """A model with no parameters to learn: A^H y with the operator's coil maps (a known answer)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Conv2d(2, 2, 1, bias=False)
        torch.nn.init.dirac_(self.w.weight)

    def forward(self, y, op):
        return self.w(op.A_adjoint(y))


@pytest.fixture(scope="module")
def raw_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    imgs = brain_slices(6, size=W, start=8)
    a, b = folder / "file_brain_AXT1_201_6002725.h5", folder / "file_brain_AXT2_200_2000019.h5"
    write_fastmri_h5(a, imgs[:3], coils=COILS, seed=1)
    write_fastmri_h5(b, imgs[3:], coils=COILS, seed=2)
    return folder, [a, b]


def _op():
    return mbdlprune.load_operator({"operator": dict(SPEC)})


def _varnet(seed=0):
    torch.manual_seed(seed)
    model, spec = build_arch("e2e-varnet", {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2, "sens_pools": 2})
    return mbdlprune.LoadedModel(model.eval(), {"arch": spec.to_dict(), "operator": _op().spec}, _op(), label=f"v{seed}",
                                 role="original" if seed == 0 else "pruned")


def _expected_zero_filled(path, maps_fn):
    """fastMRI's protocol computed independently: its mask function and seed, the RSS target."""
    import h5py
    from fastmri.data.subsample import EquispacedMaskFractionFunc

    with h5py.File(path, "r") as f:
        k, target = f["kspace"][()], f["reconstruction_rss"][()]
    mf = EquispacedMaskFractionFunc([0.125], [4])
    mask, n_low = mf((1, W, 1), seed=tuple(map(ord, path.name)))
    cols = mask.numpy().reshape(-1)
    coil_imgs = ifft2c(k * cols)
    maps = maps_fn(k * cols, int(n_low))
    comb = (np.conj(maps) * coil_imgs).sum(1)
    rec = crop(np.abs(comb), *target.shape[-2:])
    return rec, target, cols


def test_bench_reads_raw_kspace_with_the_fastmri_protocol(raw_files):
    folder, files = raw_files
    a, b = _varnet(0), _varnet(1)
    report = mbdlprune.bench([a, b], str(folder), **FAST)
    d = report.to_dict()
    assert d["data"]["kind"] == "raw k-space" and d["data"]["volumes"] == 2 and d["data"]["n_images"] == 6
    assert d["metric"]["name"] == "fastmri"
    proto = d["data"]["protocol"]
    assert proto["mask"] == "equispaced_fraction" and proto["kspace_scale"] == "none"
    assert proto["coil_maps"] == "estimated by the model"
    for vol in d["data"]["per_volume"]:
        assert vol["crop"] == [W, W] and vol["target_source"] == "reconstruction_rss"
    m = report.models[0]
    assert len(m.volumes) == 2 and len(m.psnr) == 6
    assert m.psnr_mean == pytest.approx(np.mean([v["psnr"] for v in m.volumes]))


def test_each_file_gets_fastmris_mask_and_the_scores_match_numpy(raw_files):
    """A zero-filled reconstruction with known coil maps: our numbers equal a NumPy computation."""
    folder, files = raw_files
    from mbdlprune.data.raw import read_raw_file

    op = _op()
    lm = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="zf", role="original")
    lm2 = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="zf2")
    report = mbdlprune.bench([lm, lm2], [str(f) for f in files], coil_maps="acs", kspace_scale="none", **FAST)
    assert report.to_dict()["data"]["protocol"]["coil_maps"] == "acs"
    for vol, path in zip(report.models[0].volumes, files):
        rv = read_raw_file(path)
        rec, target, cols = _expected_zero_filled(path, _acs_maps_numpy)
        maxval = target.max()
        mse = np.mean((rec - target) ** 2)
        assert vol["maxval"] == pytest.approx(float(maxval), rel=1e-6)
        assert vol["psnr"] == pytest.approx(10 * math.log10(maxval ** 2 / mse), abs=1e-3)
        nmse = np.sum((rec - target) ** 2) / np.sum(target ** 2)
        assert vol["nmse"] == pytest.approx(nmse, rel=1e-3)
        assert rv.num_slices == vol["slices"]


def cols_of(path):
    from fastmri.data.subsample import EquispacedMaskFractionFunc

    mask, _ = EquispacedMaskFractionFunc([0.125], [4])((1, W, 1), seed=tuple(map(ord, path.name)))
    return mask.numpy().reshape(-1)


def _acs_maps_numpy(k, n):
    """fastMRI's SensitivityModel estimate without its CNN: the centre n columns, inverse FFT, / RSS."""
    pad = (W - n + 1) // 2
    acs = np.zeros_like(k)
    acs[..., pad:pad + n] = k[..., pad:pad + n]
    imgs = ifft2c(acs)
    return imgs / np.sqrt((np.abs(imgs) ** 2).sum(1, keepdims=True))


def test_masks_differ_between_files_and_follow_the_seed(raw_files):
    folder, files = raw_files
    from mbdlprune.benchmark.rawdata import load_raw_eval

    rev = load_raw_eval([str(f) for f in files], _op(), [_varnet(0)])
    for v, path in zip(rev.volumes, files):
        ours = v.op.mask.reshape(-1).numpy()
        assert np.array_equal(ours > 0, cols_of(path) > 0)
    assert not np.array_equal(rev.volumes[0].op.mask.numpy(), rev.volumes[1].op.mask.numpy())


def test_image_models_get_scaled_kspace_and_estimated_maps(raw_files):
    folder, files = raw_files
    op = _op()
    torch.manual_seed(0)
    deq, spec = build_arch("deq-edsr", {"n_feats": 8, "n_blocks": 1, "max_iter": 3})
    lm = mbdlprune.LoadedModel(deq.eval(), {"arch": spec.to_dict(), "operator": op.spec}, op, label="deq", role="original")
    lm2 = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="zf")
    report = mbdlprune.bench([lm, lm2], str(files[0]), max_images=2, **FAST)
    proto = report.to_dict()["data"]["protocol"]
    assert proto["kspace_scale"] == "max" and proto["coil_maps"] == "acs"
    assert report.to_dict()["data"]["n_images"] == 2
    assert all(math.isfinite(p) for p in report.models[1].psnr)


@pytest.mark.parametrize("change, message", [
    ({"coils": 3}, "coils"),
    ({"image_size": [32, 32]}, "operator takes"),
])
def test_raw_data_that_does_not_fit_the_models_is_refused(raw_files, change, message):
    folder, files = raw_files
    spec = {**SPEC, **change}
    op = mbdlprune.load_operator({"operator": spec})
    lm = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="a", role="original")
    lm2 = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="b")
    with pytest.raises(mbdlprune.errors.DataError, match=message):
        mbdlprune.bench([lm, lm2], str(folder), **FAST)


def test_sweep_and_bench_commands_on_raw_kspace(raw_files, tmp_path):
    """The CLI end to end: sweep prunes an E2E-VarNet at two ratios and scores every point on raw k-space;
    bench gives one line, exit 2, for a k-space file whose coil count does not fit."""
    import json

    from typer.testing import CliRunner

    from mbdlprune.cli import app

    folder, files = raw_files
    v = _varnet(0)
    orig = tmp_path / "varnet.safetensors"
    mbdlprune.save_model(orig, v.model, v.meta, operator=v.operator)
    r = CliRunner().invoke(app, ["sweep", str(orig), "--ratios", "0.25,0.5", "--eval-data", str(folder), "--warmup", "0",
                                 "--repeats", "1", "--round-to", "1", "--json", "-", "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert [p["ratio"] for p in d["points"]] == [0.0, 0.25, 0.5]
    assert d["bench"]["data"]["kind"] == "raw k-space" and d["bench"]["metric"]["name"] == "fastmri"
    assert all(p["psnr_mean"] is not None for p in d["points"])

    # an E2E-VarNet estimates its own coil maps: files of other coil counts are evaluated as they are
    other = tmp_path / "three_coils.h5"
    write_fastmri_h5(other, brain_slices(1, size=W, start=8), coils=3, seed=3)
    r = CliRunner().invoke(app, ["bench", str(orig), str(orig), "--data", str(other), "--data", str(files[0]),
                                 "--warmup", "0", "--repeats", "1", "--json", "-", "--quiet"])
    assert r.exit_code == 0, r.output
    assert [v["coils"] for v in json.loads(r.stdout)["data"]["per_volume"]] == [3, COILS]


def _h5(path, **arrays):
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize("case, words", [
    ("real", "not complex"),
    ("mask", "columns wide"),
    ("big_target", "larger than"),
    ("coils", "coil counts differ"),
    ("nothing", "bad.h5"),
])
def test_bad_raw_files_give_one_line_through_the_cli(raw_files, tmp_path, case, words):
    import h5py
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    folder, files = raw_files
    with h5py.File(files[0], "r") as f:
        k = f["kspace"][()]
    bad = tmp_path / "bad.h5"
    if case == "real":
        _h5(bad, kspace=np.abs(k))
    elif case == "mask":
        _h5(bad, kspace=k, mask=np.ones(W - 4, bool))
    elif case == "big_target":
        _h5(bad, kspace=k, reconstruction_rss=np.ones((k.shape[0], H + 8, W), np.float32))
    elif case == "coils":  # two files of one run with different coil counts
        _h5(bad, kspace=k[:, :2])
    else:
        _h5(bad, something=np.zeros(3, np.float32))
    data = [str(bad), str(files[1])] if case == "coils" else [str(bad)]
    # a model that takes coil maps from the operator needs the operator's coil count in every file
    op = _op()
    orig = tmp_path / "zf.safetensors"
    torch.manual_seed(0)
    deq, spec = build_arch("deq-edsr", {"n_feats": 4, "n_blocks": 1, "max_iter": 2})
    mbdlprune.save_model(orig, deq, {"arch": spec.to_dict(), "operator": op.spec}, operator=op)
    args = ["bench", str(orig), str(orig), "--warmup", "0", "--repeats", "1"]
    for d in data:
        args += ["--data", d]
    r = CliRunner().invoke(app, args)
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(lines) <= 2 and words in r.output, r.output


def test_single_coil_fastmri_files_are_evaluated_on_their_esc_target(tmp_path):
    """fastMRI's single-coil layout (knee-style: kspace (S, H, W), reconstruction_esc): one coil, no maps."""
    p = tmp_path / "file1000001.h5"
    write_fastmri_h5(p, brain_slices(2, size=W, start=8), single_coil=True, seed=4)
    op = mbdlprune.load_operator({"operator": {**SPEC, "coils": 1}})
    a = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="a", role="original")
    b = mbdlprune.LoadedModel(ZeroFilled(), {"arch": {"name": "zf"}, "operator": op.spec}, op, label="b")
    report = mbdlprune.bench([a, b], str(p), **FAST)
    d = report.to_dict()["data"]
    assert d["protocol"]["coil_maps"] == "single coil"
    assert d["per_volume"][0]["target_source"] == "reconstruction_esc"
    assert all(math.isfinite(v) for v in report.models[0].psnr)


def test_warm_starts_on_raw_kspace_follow_each_files_slices(raw_files):
    """--warm-start on raw k-space: each file's slices in order with that batch's operator, timed and scored."""
    folder, files = raw_files
    op = _op()
    entries = []
    for i in range(2):
        torch.manual_seed(0)
        deq, spec = build_arch("deq-edsr", {"n_feats": 8, "n_blocks": 1, "alpha": 0.5, "max_iter": 30, "tol": 1e-4})
        entries.append(mbdlprune.LoadedModel(deq.eval(), {"arch": spec.to_dict(), "operator": op.spec}, op,
                                             label=f"deq{i}", role="original" if i == 0 else "pruned"))
    report = mbdlprune.bench(entries, str(folder), warm_start=True, **FAST)
    for m in report.models:
        w = m.warm_start
        assert w["timed_batches"] == 2 and math.isfinite(w["psnr_mean"]) and w["warm_ms"] > 0
        assert w["warm_iterations_mean"] <= w["cold_iterations_mean"]
    assert report.models[1].warm_start["psnr_drop"] == pytest.approx(0.0, abs=1e-9)  # the same weights
