"""Fine-tuning on raw multi-coil k-space: supervised on the RSS target, self-supervised and distillation
from the undersampled k-space alone (no target is ever read), split by file, evaluation files refused."""

from __future__ import annotations

import h5py
import pytest
import torch

import mbdlprune
import mbdlprune.errors
from mbdlprune.models.user import build_arch

from fastmri_layout import brain_slices, write_fastmri_h5

H, W, COILS = 64, 32, 4
SPEC = {"kind": "mri", "image_size": [H, W], "coils": COILS, "mask": "equispaced_fraction", "acceleration": 4,
        "center_fraction": 0.125}
ARCHS = {"e2e-varnet": {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 2, "sens_pools": 2},
         "deq-edsr": {"n_feats": 8, "n_blocks": 1, "max_iter": 4}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rawft")
    imgs = brain_slices(8, size=W, start=6)
    out = []
    for i in range(4):
        p = d / f"file_brain_AXT1_20{i}_600{i}.h5"
        write_fastmri_h5(p, imgs[2 * i:2 * i + 2], coils=COILS, seed=i)
        out.append(p)
    return out


@pytest.fixture(scope="module", params=list(ARCHS))
def model_file(request, tmp_path_factory):
    op = mbdlprune.load_operator({"operator": dict(SPEC)})
    torch.manual_seed(0)
    model, spec = build_arch(request.param, ARCHS[request.param])
    p = tmp_path_factory.mktemp("m") / f"{request.param}.safetensors"
    mbdlprune.save_model(p, model, {"arch": spec.to_dict(), "operator": op.spec}, operator=op)
    return p


def _run(model_file, files, mode, **kw):
    cfg = mbdlprune.FinetuneConfig(mode=mode, epochs=1, lr=1e-4)
    extra = {"teacher": str(model_file)} if mode.startswith("distill") else {}
    return mbdlprune.finetune(str(model_file), cfg, data=[str(f) for f in files[:2]], val_data=str(files[2]),
                              eval_data=str(files[3]), out=None, **extra, **kw)


def test_supervised_trains_on_the_rss_target_scored_the_fastmri_way(model_file, files):
    r = _run(model_file, files, "supervised")
    rec = r.record
    train = rec["data"]["train"]
    assert train["kind"] == "raw" and train["ground_truth"] and train["slices"] == 4
    assert train["protocol"]["mask"] == "equispaced_fraction"
    assert train["protocol"]["kspace_scale"] == ("none" if "varnet" in model_file.name else "max")
    assert rec["validation"]["metric"] == "psnr" and "fastmri" in rec["validation"]["definition"]
    assert rec["validation"]["before"] is not None and rec["validation"]["best"] >= rec["validation"]["before"]


@pytest.mark.parametrize("mode", ["self-supervised", "distill", "distill+self-supervised"])
def test_modes_without_ground_truth_never_read_a_training_target(model_file, files, mode, monkeypatch):
    """No target of a training file is decoded; separate validation files with targets choose the
    best epoch by PSNR, a split of the training files by measurement consistency."""
    read: list[tuple[str, str]] = []
    real = h5py.Group.__getitem__

    def spy(self, name):
        read.append((getattr(self.file, "filename", "?"), str(name)))
        return real(self, name)

    monkeypatch.setattr(h5py.Group, "__getitem__", spy)
    r = _run(model_file, files, mode)
    train_targets = [k for f, k in read if k.startswith("reconstruction")]
    assert len(train_targets) == 1, read  # the validation file's target, and no training file's
    assert sum(k == "kspace" for _, k in read) == 3
    rec = r.record
    assert rec["data"]["train"]["ground_truth"] is False and rec["data"]["train"]["protocol"]["targets"] == "none read"
    assert rec["validation"]["metric"] == "psnr"

    read.clear()
    cfg = mbdlprune.FinetuneConfig(mode=mode, epochs=1, val_fraction=0.5)
    extra = {"teacher": str(model_file)} if mode.startswith("distill") else {}
    r = mbdlprune.finetune(str(model_file), cfg, data=[str(f) for f in files[:2]], out=None, **extra)
    assert not any(k.startswith("reconstruction") for _, k in read), read
    assert r.record["validation"]["metric"] == "measurement-consistency"


def test_a_training_file_among_the_evaluation_files_is_refused(model_file, files):
    cfg = mbdlprune.FinetuneConfig(mode="self-supervised", epochs=1)
    with pytest.raises(mbdlprune.errors.MbdlError, match="evaluation"):
        mbdlprune.finetune(str(model_file), cfg, data=[str(f) for f in files[:2]], eval_data=str(files[1]), out=None,
                           val_fraction=0.5)


def test_undersampled_files_without_targets_refuse_supervised_and_allow_self_supervised(model_file, files, tmp_path):
    import numpy as np

    from fastmri.data.subsample import EquispacedMaskFractionFunc

    imgs = brain_slices(2, size=W, start=20)
    mask, _ = EquispacedMaskFractionFunc([0.125], [4])((1, W, 1), seed=1)
    p = tmp_path / "file_brain_test.h5"
    write_fastmri_h5(p, imgs, coils=COILS, seed=5, mask=mask.numpy().reshape(-1).astype(np.float32))
    cfg = mbdlprune.FinetuneConfig(mode="supervised", epochs=1, val_fraction=0.0)
    with pytest.raises(mbdlprune.errors.DataError, match="no target"):
        mbdlprune.finetune(str(model_file), cfg, data=str(p), out=None)
    r = mbdlprune.finetune(str(model_file), cfg.__class__(mode="self-supervised", epochs=1, val_fraction=0.0),
                           data=str(p), out=None)
    assert r.record["data"]["train"]["protocol"]["targets"] == "none read"
