"""Conformance with the real fastMRI package (``fastmri==0.3.0``, installed by .ci/run).

fastMRI's own modules are built with random weights, saved as fastMRI saves them (a plain
``state_dict`` and a Lightning checkpoint of ``VarNetModule``), read back by mbdlprune through
the API and the CLI, and run on the same masked k-space. The generated masks are compared with
``fastmri.data.subsample``'s mask functions over a grid of widths, accelerations and centre
fractions, and the ``fastmri`` metric with ``fastmri.evaluate`` on real brain volumes. A
developer without fastMRI sees these tests skipped; CI installs it and fails if it cannot be
imported.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mbdlprune.api import load_checkpoint_model
from mbdlprune.cli import app
from mbdlprune.errors import CheckpointError, ConfigError
from mbdlprune.io import load_model
from mbdlprune.models import create_arch
from mbdlprune.models.varnet import NormUnet, SensitivityModel
from mbdlprune.operators import load_operator
from mbdlprune.operators.masks import (center_run, equispaced_fraction_mask, equispaced_mask, fastmri_low_frequencies,
                                       fraction_center_lines, make_mask, random_mask)

H, W, COILS = 32, 64, 4
ARGS = {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2}
FASTMRI_ARGS = {"num_cascades": 2, "sens_chans": 4, "sens_pools": 2, "chans": 4, "pools": 2}
TOL32 = 1e-5
runner = CliRunner()


@pytest.fixture(scope="module")
def fm():
    """fastMRI's modules (skipped only where fastMRI is not installed; CI installs it)."""
    models = pytest.importorskip("fastmri.models")
    subsample = pytest.importorskip("fastmri.data.subsample")
    return models, subsample


def _varnet(fm, mask_center: bool = True, seed: int = 0):
    """fastMRI's VarNet with random weights (and data-consistency weights away from 1)."""
    torch.manual_seed(seed)
    model = fm[0].VarNet(**FASTMRI_ARGS, mask_center=mask_center).eval()
    with torch.no_grad():
        for i, cascade in enumerate(model.cascades):
            cascade.dc_weight.fill_(0.3 + 0.4 * i)
    return model


@pytest.fixture(scope="module")
def files(fm, tmp_path_factory):
    """fastMRI's VarNet saved as fastMRI saves it: a plain state dict, a Lightning checkpoint, and the
    pre-October-2020 layout that still holds ``cascades.{i}.zero``."""
    d = tmp_path_factory.mktemp("fastmri")
    ref = _varnet(fm)
    sd = ref.state_dict()
    torch.save(sd, d / "varnet.pt")
    ssim_window = torch.ones(1, 1, 7, 7) / 49  # VarNetModule's SSIMLoss buffer, saved beside the VarNet
    lightning = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.4.9",
                 "state_dict": {**{f"varnet.{k}": v for k, v in sd.items()}, "loss.w": ssim_window},
                 "hyper_parameters": {**FASTMRI_ARGS, "lr": 0.0003, "lr_step_size": 40, "lr_gamma": 0.1},
                 "optimizer_states": [], "lr_schedulers": []}
    torch.save(lightning, d / "varnet.ckpt")
    legacy = dict(sd)
    for i in range(ARGS["num_cascades"]):
        legacy[f"cascades.{i}.zero"] = torch.zeros(1, 1, 1, 1, 1)
    torch.save(legacy, d / "varnet_legacy.pt")
    return d, ref


def _image(seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(1, 2, H // 4, W // 4, generator=g), size=(H, W), mode="bilinear", align_corners=False)
    return x.to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _compare(ours, ref, op, num_low_frequencies, dtype=torch.float32) -> float:
    """Relative difference of mbdlprune's RSS output and fastMRI's on the same masked k-space."""
    op = op.to(dtype)
    y = op.A(_image(dtype=dtype))
    with torch.no_grad():
        want = ref.to(dtype)(y, op.mask.bool(), num_low_frequencies)
        got = ours.to(dtype)(y, op)
    ref.float()
    ours.float()
    assert got.shape == (1, 1, H, W) and want.shape == (1, H, W)
    return _rel(got[:, 0], want)


def _spec(mask, **extra):
    return {"kind": "mri", "image_size": [H, W], "mask": mask, "coils": COILS, **extra}


def _off_centre_masks(fm) -> list[np.ndarray]:
    """Masks whose sampled run around W // 2 is lopsided: fastMRI's own equispaced masks, and one
    built so (4 columns left of the centre, 11 right of it)."""
    func = fm[1].EquispacedMaskFractionFunc([0.08], [4])
    masks = [func((1, W, 2), seed=s)[0].reshape(-1).numpy() for s in range(6)]
    cols = np.zeros(W, dtype=np.float32)
    cols[::4] = 1
    cols[W // 2 - 3:W // 2 + 11] = 1
    masks.append(cols)
    lopsided = [m for m in masks if fastmri_low_frequencies(m) != center_run(m)]
    assert len(lopsided) >= 3  # the files below do exercise the auto-detected centre
    return masks


# -- key names --------------------------------------------------------------------------------
def test_state_dict_keys_and_shapes_equal_fastmri(fm):
    ref, ours = _varnet(fm), create_arch("e2e-varnet", **ARGS)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]


# -- E2E-VarNet: API, Lightning checkpoint, CLI ------------------------------------------------
@pytest.mark.parametrize("mask", ["equispaced", "equispaced_fraction", "random", "uniform"])
def test_plain_state_dict_through_api_matches_fastmri(fm, files, mask):
    """Generated masks: fastMRI's training path passes the mask function's centre count, as mbdlprune does."""
    d, ref = files
    ours, spec, meta, _ = load_checkpoint_model(d / "varnet.pt", "e2e-varnet", {**ARGS, "output": "rss"})
    op = load_operator(_spec(mask, acceleration=4, center_fraction=0.08))
    assert op.num_low_frequencies == fraction_center_lines(W, 0.08)
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32
    assert _compare(ours, ref, op, op.num_low_frequencies, torch.float64) <= 1e-12


def test_lightning_checkpoint_through_api_matches_fastmri(fm, files):
    d, ref = files
    ours, *_ = load_checkpoint_model(d / "varnet.ckpt", "e2e-varnet", {**ARGS, "output": "rss"})
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.state_dict().items())
    op = load_operator(_spec("equispaced", acceleration=4, center_fraction=0.08, seed=3))
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32


def test_cli_convert_then_reload_with_mask_files(fm, files, tmp_path):
    """Mask files: fastMRI's inference passes num_low_frequencies=None (detection from the mask);
    mbdlprune's default "auto" picks the same centre, and the converted file reproduces it."""
    d, ref = files
    arch_args = json.dumps({**ARGS, "output": "rss"})
    for i, cols in enumerate(_off_centre_masks(fm)):
        np.save(tmp_path / f"mask{i}.npy", cols)
        (tmp_path / f"op{i}.toml").write_text(
            f'[operator]\nkind = "mri"\nimage_size = [{H}, {W}]\nmask = "mask{i}.npy"\ncoils = {COILS}\n')
        out = tmp_path / f"varnet{i}.safetensors"
        ckpt = d / ("varnet.ckpt" if i % 2 else "varnet.pt")
        r = runner.invoke(app, ["convert", str(ckpt), "--arch", "e2e-varnet", "--arch-args", arch_args,
                                "--operator", str(tmp_path / f"op{i}.toml"), "-o", str(out)])
        assert r.exit_code == 0, r.output
        loaded = load_model(out)  # no --arch, no operator: the file holds both (the mask embedded)
        op = loaded.operator
        assert op.num_low_frequencies == fastmri_low_frequencies(cols) == op.spec["num_low_frequencies"]
        assert np.array_equal(op.mask.reshape(-1).numpy(), cols)
        assert _compare(loaded.model, ref, op, None) <= TOL32


def test_cli_inspect_reads_fastmri_files(fm, files):
    d, ref = files
    n_params = sum(p.numel() for p in ref.parameters())
    for name in ("varnet.pt", "varnet.ckpt"):
        r = runner.invoke(app, ["inspect", str(d / name), "--arch", "e2e-varnet", "--arch-args", json.dumps(ARGS), "--json"])
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        assert info["params"] == n_params and len(info["priors"]) == ARGS["num_cascades"]


def test_legacy_zero_keys_load(fm, files):
    """State dicts from before fastMRI dropped ``VarNetBlock.zero`` still load (strict torch loading),
    and ``legacy_state_keys`` names exactly the keys a loader may drop."""
    d, ref = files
    legacy = torch.load(d / "varnet_legacy.pt", weights_only=True)
    ours = create_arch("e2e-varnet", **ARGS, output="rss").eval()
    assert set(ours.legacy_state_keys()) == set(legacy) - set(ref.state_dict())
    assert not set(ours.legacy_state_keys()) & set(ours.state_dict())
    ours.load_state_dict(legacy, strict=True)
    assert "cascades.0.zero" in legacy  # the caller's dict is left as it was
    op = load_operator(_spec("equispaced", acceleration=4, center_fraction=0.08))
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32
    # a VarNet without sensitivity network lists its own cascades only
    assert create_arch("varnet", num_cascades=3, chans=4, pools=2).legacy_state_keys() == \
        [f"cascades.{i}.zero" for i in range(3)]


def test_legacy_zero_keys_through_the_loader(fm, files, tmp_path):
    """The strict loader (API, CLI) accepts files with ``cascades.{i}.zero``: fastMRI's pre-October-2020
    layout (plain and Lightning), and mbdlprune files written while the buffer was persistent."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    d, ref = files
    op = load_operator(_spec("equispaced", acceleration=4, center_fraction=0.08))
    ours, *_ = load_checkpoint_model(d / "varnet_legacy.pt", "e2e-varnet", {**ARGS, "output": "rss"})
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32
    legacy = torch.load(d / "varnet_legacy.pt", weights_only=True)
    torch.save({"state_dict": {**{f"varnet.{k}": v for k, v in legacy.items()}, "loss.w": torch.ones(1, 1, 7, 7) / 49},
                "epoch": 0}, tmp_path / "legacy.ckpt")
    ours, *_ = load_checkpoint_model(tmp_path / "legacy.ckpt", "e2e-varnet", {**ARGS, "output": "rss"})
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32
    torch.save({**legacy, "cascades.0.zeros": torch.zeros(1)}, tmp_path / "typo.pt")
    with pytest.raises(CheckpointError, match=r"cascades\.0\.zeros"):  # only the listed keys are dropped
        load_checkpoint_model(tmp_path / "typo.pt", "e2e-varnet", ARGS)
    out = tmp_path / "new.safetensors"
    r = runner.invoke(app, ["convert", str(d / "varnet_legacy.pt"), "--arch", "e2e-varnet",
                            "--arch-args", json.dumps({**ARGS, "output": "rss"}), "-o", str(out)])
    assert r.exit_code == 0, r.output
    with safe_open(str(out), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert not [k for k in tensors if k.endswith(".zero")]
    old = tmp_path / "old.safetensors"
    save_file({**tensors, **{k: torch.zeros(1, 1, 1, 1, 1) for k in ours.legacy_state_keys()}}, str(old), metadata=meta)
    loaded = load_model(old)
    assert _compare(loaded.model, ref, op, op.num_low_frequencies) <= TOL32


def test_mask_center_false_matches_fastmri(fm):
    ref = _varnet(fm, mask_center=False, seed=2)
    ours = create_arch("e2e-varnet", **ARGS, output="rss", mask_center=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    op = load_operator(_spec("random", acceleration=4, center_fraction=0.08, seed=1))
    assert _compare(ours, ref, op, op.num_low_frequencies) <= TOL32
    with pytest.raises(ConfigError, match="mask_center"):
        create_arch("e2e-varnet", **ARGS, mask_center="no")


# -- the parts: SensitivityModel, NormUnet, Unet -----------------------------------------------
@pytest.mark.parametrize("mask_center", [True, False])
def test_sensitivity_model_matches_fastmri(fm, mask_center):
    torch.manual_seed(4)
    ref = fm[0].varnet.SensitivityModel(chans=4, num_pools=2, mask_center=mask_center).eval()
    ours = SensitivityModel(4, 2, mask_center=mask_center).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    masks = [m for m in _off_centre_masks(fm)[-2:]]  # two different masks in one batch
    mask = torch.from_numpy(np.stack(masks)).reshape(2, 1, 1, W, 1).bool()
    g = torch.Generator().manual_seed(5)
    k = torch.randn(2, COILS, H, W, 2, generator=g) * mask
    with torch.no_grad():
        for nlf in (None, 6):
            assert _rel(ours(k, mask, nlf), ref(k, mask, nlf)) <= TOL32
    if mask_center:
        pad, num = ref.get_pad_and_num_low_freqs(mask, None)
        assert num.tolist() == [fastmri_low_frequencies(m) for m in masks]


def test_norm_unet_matches_fastmri(fm):
    torch.manual_seed(6)
    ref = fm[0].varnet.NormUnet(4, 2).eval()
    ours = NormUnet(4, 2).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 1, 21, 35, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert _rel(ours(x), ref(x)) <= TOL32


def test_unet_prior_matches_fastmri(fm, tmp_path):
    """fastMRI's Unet and mbdlprune's ``unet`` prior share parameter names, so its file loads as it is."""
    torch.manual_seed(8)
    ref = fm[0].Unet(in_chans=2, out_chans=2, chans=4, num_pool_layers=3).eval()
    torch.save(ref.state_dict(), tmp_path / "unet.pt")
    ours = load_model(tmp_path / "unet.pt", arch="unet", arch_args={"chans": 4, "num_pool_layers": 3}).model
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    x = torch.randn(2, 2, 27, 37, generator=torch.Generator().manual_seed(9))  # odd sizes: the reflect pads
    with torch.no_grad():
        assert _rel(ours(x), ref(x)) <= TOL32


# -- masks ---------------------------------------------------------------------------------------
#: widths (even and odd, fastMRI's 320/368/372/396/640 among them), integer accelerations, centre fractions
MASK_WIDTHS = (33, 64, 96, 97, 128, 200, 232, 256, 320, 333, 368, 372, 396, 640)
MASK_ACCELS = (2, 3, 4, 5, 6, 8, 10, 12, 16)
MASK_FRACTIONS = (0.0, 0.02, 0.04, 0.08, 0.1, 0.16, 0.25)


def _grid(fraction_rule: bool):
    """(W, R, cf, n) over the grid; the fraction and random rules need n < W / R (fastMRI's formulas
    divide by n R - W and W - n otherwise)."""
    for width in MASK_WIDTHS:
        for accel in MASK_ACCELS:
            for cf in MASK_FRACTIONS:
                n = fraction_center_lines(width, cf)
                if fraction_rule and not n * accel < width:
                    continue
                yield width, accel, cf, n


def _fastmri_mask(func, width, **kwargs):
    mask, n = func((1, width, 2), **kwargs)
    return mask.reshape(-1).numpy(), n


def test_equispaced_fraction_is_fastmris_equispaced_fraction(fm):
    """``equispaced_fraction`` (and rule 1's ``equispaced``) is EquispacedMaskFractionFunc: the same
    mask for every offset, and a seeded mbdlprune mask is one of fastMRI's masks (its offset comes
    from another random stream)."""
    combos = masks = 0
    for width, accel, cf, n in _grid(fraction_rule=True):
        func = fm[1].EquispacedMaskFractionFunc([cf], [accel])
        spacing = accel * (n - width) / (n * accel - width)
        family = []
        for offset in range(round(spacing)):
            want, n_fastmri = _fastmri_mask(func, width, offset=offset)
            assert n_fastmri == n
            assert np.array_equal(equispaced_fraction_mask(width, accel, n, offset=offset), want), (width, accel, cf, offset)
            family.append(want)
            masks += 1
        for seed in range(3):
            ours = make_mask("equispaced_fraction", width, accel, n, seed)
            assert np.array_equal(ours, make_mask("equispaced", width, accel, n, seed, rule=1))
            assert any(np.array_equal(ours, m) for m in family), (width, accel, cf, seed)
        combos += 1
    assert (combos, masks) == (678, 18572)


def test_equispaced_is_fastmris_equispaced(fm):
    """``equispaced`` (rule 2) is EquiSpacedMaskFunc (fastMRI's mask type ``equispaced``): the same mask
    for every offset in [0, R), a seeded mask is one of them, and the operator passes on its centre count."""
    combos = masks = 0
    for width, accel, cf, n in _grid(fraction_rule=False):
        func = fm[1].EquiSpacedMaskFunc([cf], [accel])
        family = []
        for offset in range(accel):
            want, n_fastmri = _fastmri_mask(func, width, offset=offset)
            assert n_fastmri == n
            assert np.array_equal(equispaced_mask(width, accel, n, offset=offset), want), (width, accel, cf, offset)
            family.append(want)
            masks += 1
        for seed in range(3):
            assert any(np.array_equal(make_mask("equispaced", width, accel, n, seed), m) for m in family)
        combos += 1
    assert (combos, masks) == (882, 6468)
    for width, accel, cf in [(368, 4, 0.08), (320, 8, 0.04), (97, 3, 0.1)]:
        op = load_operator({"kind": "mri", "image_size": [4, width], "mask": "equispaced", "acceleration": accel,
                            "center_fraction": cf, "seed": 5})
        want, n = _fastmri_mask(fm[1].EquiSpacedMaskFunc([cf], [accel]), width, offset=int(np.argmax(mask_cols(op))))
        assert np.array_equal(mask_cols(op), want) and op.num_low_frequencies == n


def test_random_is_fastmris_random(fm):
    """``random`` (both rules) is RandomMaskFunc's rule: with fastMRI's random stream (RandomState(seed))
    the masks are equal."""
    combos = 0
    for width, accel, cf, n in _grid(fraction_rule=True):
        func = fm[1].RandomMaskFunc([cf], [accel])
        for seed in range(3):
            want, n_fastmri = _fastmri_mask(func, width, seed=seed)
            assert n_fastmri == n
            got = random_mask(width, accel, n, rng=np.random.RandomState(seed))
            assert np.array_equal(got, want), (width, accel, cf, seed)
        combos += 1
    assert combos == 678


def mask_cols(op) -> np.ndarray:
    return op.mask.reshape(-1).numpy()


@pytest.mark.parametrize("width, accel, cf", [(368, 4, 0.08), (320, 8, 0.04), (64, 4, 0.08)])
def test_uniform_with_center_fraction_is_fastmris_equispaced_offset_zero(fm, width, accel, cf):
    """``uniform`` (integer R, center_fraction given) equals EquiSpacedMaskFunc with offset 0."""
    want, n = fm[1].EquiSpacedMaskFunc([cf], [accel])((1, width, 2), offset=0)
    op = load_operator({"kind": "mri", "image_size": [8, width], "mask": "uniform", "acceleration": accel,
                        "center_fraction": cf})
    assert op.num_low_frequencies == n
    assert np.array_equal(op.mask.reshape(-1).numpy(), want.reshape(-1).numpy())


def test_auto_low_frequencies_equal_fastmris_detection(fm):
    """``fastmri_low_frequencies`` is SensitivityModel.get_pad_and_num_low_freqs(mask, None), border cases included."""
    sens = fm[0].varnet.SensitivityModel(chans=2, num_pools=1)
    func = fm[1].EquispacedMaskFractionFunc([0.08, 0.04], [4, 8])
    masks = [func((1, 368, 2), seed=s)[0].reshape(-1).numpy() for s in range(40)]
    edge = np.zeros(16, dtype=np.float32)
    edge[8:] = 1  # sampled up to the border on the right: fastMRI counts 1
    unsampled = np.ones(16, dtype=np.float32)
    unsampled[8] = 0
    masks += [edge, unsampled, np.ones(15, dtype=np.float32)]
    for cols in masks:
        _, num = sens.get_pad_and_num_low_freqs(torch.from_numpy(cols).reshape(1, 1, 1, -1, 1))
        assert int(num) == fastmri_low_frequencies(cols)
    # the whole sampled run (mbdlprune's former rule) differs on most of fastMRI's own masks
    assert sum(fastmri_low_frequencies(m) != center_run(m) for m in masks[:40]) >= 20


# -- the num_low_frequencies operator key (needs no fastMRI) -----------------------------------
def test_num_low_frequencies_key(tmp_path):
    cols = np.zeros(W, dtype=np.float32)
    cols[::4] = 1
    cols[W // 2 - 3:W // 2 + 11] = 1
    np.save(tmp_path / "m.npy", cols)
    spec = _spec("m.npy")
    op = load_operator(spec, base_dir=tmp_path)
    assert op.num_low_frequencies == 8 == op.spec["num_low_frequencies"]  # 2 * min(4 left, 11 right)
    assert load_operator({**spec, "num_low_frequencies": "auto"}, base_dir=tmp_path).num_low_frequencies == 8
    op = load_operator({**spec, "num_low_frequencies": 15}, base_dir=tmp_path)
    assert op.num_low_frequencies == 15 == op.spec["num_low_frequencies"]
    again = load_operator(op.spec, embedded=op.embedded)
    assert again.num_low_frequencies == 15 and torch.equal(again.mask, op.mask)
    # generated masks keep their own count unless told otherwise
    gen = load_operator(_spec("equispaced", center_fraction=0.08))
    assert gen.num_low_frequencies == 5 and "num_low_frequencies" not in gen.spec  # follows from the spec
    assert load_operator(gen.spec).num_low_frequencies == 5
    gen = load_operator(_spec("equispaced", center_fraction=0.08, num_low_frequencies=4))
    assert gen.num_low_frequencies == 4 == gen.spec["num_low_frequencies"] == load_operator(gen.spec).num_low_frequencies
    assert load_operator(_spec("random", center_fraction=0.0, seed=2)).num_low_frequencies >= 1
    for bad in ("centre", 0, W + 1, 2.5, True, [4]):
        with pytest.raises(ConfigError, match="num_low_frequencies"):
            load_operator({**spec, "num_low_frequencies": bad}, base_dir=tmp_path)


# -- metrics: fastmri.evaluate -------------------------------------------------------------------
@pytest.fixture(scope="module")
def fe():
    """fastMRI's evaluate module (it needs scikit-image and runstats; skipped without them)."""
    evaluate = pytest.importorskip("fastmri.evaluate")
    transforms = pytest.importorskip("fastmri.data.transforms")
    return evaluate, transforms


def _brain_volumes() -> dict[str, np.ndarray]:
    """Real brain MRI as (slices, H, W) magnitude volumes: nibabel's example4d (T2*-weighted EPI,
    128 x 96: cropped to 96 x 96 as fastMRI's evaluation crops to W x W), its anatomical.nii (a T1
    scan sliced to 41 x 25, cropped to 25 x 25, values from -610) and mbdlprune's held-out evaluation
    slices (96 x 96)."""
    import os

    import nibabel as nib

    from mbdlprune.examples import example_path

    data = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
    epi = np.asarray(nib.load(os.path.join(data, "example4d.nii.gz")).dataobj)[..., 0].astype(np.float64)
    anat = np.asarray(nib.load(os.path.join(data, "anatomical.nii")).dataobj).astype(np.float64)
    ev = np.asarray(nib.load(str(example_path("eval"))).dataobj).astype(np.float64)
    return {"epi": np.moveaxis(epi, -1, 0)[4:16], "anat": anat[6:26], "eval": np.moveaxis(ev, -1, 0)}


def _distortions(gt: np.ndarray) -> dict[str, np.ndarray]:
    """Realistic reconstructions: noise, blur, a scale/offset error, and zero-filled 4x undersampling
    through mbdlprune's own MRI operator (and its shipped unrolled network where the size is the examples')."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    sigma = 0.03 * gt.max()
    noisy = np.abs(gt + sigma * rng.standard_normal(gt.shape) + 1j * sigma * rng.standard_normal(gt.shape))
    out = {"noise": noisy, "blur": ndimage.gaussian_filter(gt, (0, 1.2, 1.2)), "scale": 0.93 * gt + 0.01 * gt.max()}
    op = load_operator({"kind": "mri", "image_size": list(gt.shape[1:]), "acceleration": 4, "coils": 4}).double()
    x = torch.from_numpy(np.stack((gt, np.zeros_like(gt)), 1))
    zf = op.A_adjoint(op.A(x))
    out["zero-filled"] = torch.sqrt(zf[:, 0] ** 2 + zf[:, 1] ** 2).numpy()
    if gt.shape[1:] == (96, 96):
        from mbdlprune.examples import example_path

        loaded = load_model(example_path("unrolled"))
        y = loaded.operator.A(x.float())
        with torch.no_grad():
            rec = loaded.model(y, loaded.operator).double()
        out["unrolled"] = torch.sqrt(rec[:, 0] ** 2 + rec[:, 1] ** 2).numpy()
    return out


@pytest.fixture(scope="module")
def brain_cases():
    return [(f"{vol_name}/{dist_name}", gt, pred) for vol_name, gt in _brain_volumes().items()
            for dist_name, pred in _distortions(gt).items()]


def test_volume_metrics_equal_fastmri_evaluate_on_brain_volumes(fe, brain_cases):
    """``volume_metrics(pred, gt, "fastmri")`` is fastMRI's evaluate.py on one volume: centre crop to
    W x W, then ``psnr``, ``ssim`` and ``nmse`` of ``fastmri.evaluate`` (float64 volumes: equal to
    rounding; float32 volumes, where scikit-image works in float32: within 1e-4 relative)."""
    from mbdlprune.metrics import volume_metrics

    evaluate, transforms = fe
    worst64 = worst32 = 0.0
    cases = 0
    for name, gt, pred in brain_cases:
        crop = (gt.shape[-1], gt.shape[-1])
        for dtype in (np.float64, np.float32):
            g, p = gt.astype(dtype), pred.astype(dtype)
            gc, pc = transforms.center_crop(g, crop), transforms.center_crop(p, crop)
            want = {"psnr": float(evaluate.psnr(gc, pc)), "ssim": float(evaluate.ssim(gc, pc)[0]),
                    "nmse": float(evaluate.nmse(gc, pc))}
            got = volume_metrics(torch.from_numpy(p), torch.from_numpy(g), "fastmri")
            assert got["maxval"] == pytest.approx(float(gc.max()), rel=1e-7)
            for k, w in want.items():
                rel = abs(got[k] - w) / abs(w)
                if dtype is np.float64:
                    worst64 = max(worst64, rel)
                    assert rel <= 1e-10, (name, k, got[k], w)
                else:
                    worst32 = max(worst32, rel)
                    assert rel <= 1e-4, (name, k, got[k], w)
        cases += 1
    assert cases == 13  # epi and anat with 4 distortions each, eval with 5
    print(f"max relative deviation from fastmri.evaluate: float64 {worst64:.1e}, float32 {worst32:.1e}")
    assert worst64 < 1e-12 and worst32 < 1e-5


def test_per_slice_metrics_equal_fastmri_with_the_volume_maxval(fe, brain_cases):
    """Slice scores (``per_slice`` and ``compute_metrics(..., "fastmri", maxval=volume max)``) are
    fastMRI's functions on one slice given the volume's maxval; the real 2-channel layout gives the
    magnitude's scores."""
    from mbdlprune.metrics import compute_metrics, volume_metrics

    evaluate, transforms = fe
    slices = 0
    for name, gt, pred in brain_cases:
        crop = (gt.shape[-1], gt.shape[-1])
        gc, pc = transforms.center_crop(gt, crop), transforms.center_crop(pred, crop)
        maxval = float(gc.max())
        vol = volume_metrics(torch.from_numpy(pred), torch.from_numpy(gt))
        batch = compute_metrics(torch.from_numpy(pred), torch.from_numpy(gt), "fastmri", maxval=maxval)
        phase = np.exp(1j * np.linspace(0, 3, gt.size).reshape(gt.shape))
        as_complex = lambda v: torch.from_numpy(np.stack(((v * phase).real, (v * phase).imag), 1))  # noqa: E731
        cplx = compute_metrics(as_complex(pred), as_complex(gt), "fastmri", maxval=maxval)
        for i in range(gt.shape[0]):
            want = {"psnr": float(evaluate.psnr(gc[i], pc[i], maxval)), "ssim": float(evaluate.ssim(gc[i:i + 1], pc[i:i + 1], maxval)[0]),
                    "nmse": float(evaluate.nmse(gc[i], pc[i]))}
            for k, w in want.items():
                for got in (vol["per_slice"][k][i], batch[k][i]):
                    assert float(got) == pytest.approx(w, rel=1e-10), (name, i, k)
                if gt.min() >= 0 and pred.min() >= 0:  # magnitudes (anat holds negative values)
                    assert float(cplx[k][i]) == pytest.approx(w, rel=1e-6), (name, i, k)
            slices += 1
    assert slices == 12 * 4 + 20 * 4 + 8 * 5  # epi, anat, eval
