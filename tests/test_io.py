"""Checkpoint format: round trips, foreign checkpoint layouts, safety, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mbdlprune.api import example_inputs, load_checkpoint_model, prune, prune_model
from mbdlprune.errors import CheckpointError, MbdlError
from mbdlprune.io import load_model, match_keys, read_checkpoint, save_model
from mbdlprune.models import list_archs
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator

MRI = {"operator": {"kind": "mri", "image_size": list(SMALL_IMAGE_SIZE), "acceleration": 4, "coils": 2}}

FACTORY = '''
import torch
from torch import nn

class Loop(nn.Module):
    def __init__(self, width=8, steps=2):
        super().__init__()
        self.steps = steps
        self.denoiser = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, 2, 3, padding=1))

    def forward(self, y, op):
        x = op.A_adjoint(y)
        for _ in range(self.steps):
            x = x - 0.5 * op.A_adjoint(op.A(x) - y)
            x = x + self.denoiser(x)
        return x

def build(width=8, steps=2):
    return Loop(width, steps)

def broken(**kw):
    raise RuntimeError("boom")
'''


def small(name):
    model, spec = build_arch(name, small_args(name))
    return model.eval(), spec, load_operator(MRI) if spec.kind == "mbdl" else None


@pytest.mark.parametrize("arch", list_archs())
def test_round_trip_equals_in_memory_model(arch, tmp_path):
    model, spec, op = small(arch)
    res = prune_model(model, spec, op, ratio=0.5, round_to=1, image_size=SMALL_IMAGE_SIZE)
    path = save_model(tmp_path / "m.safetensors", res.model, res.meta)
    loaded = load_model(path)
    inputs = example_inputs(model, spec.kind, op, SMALL_IMAGE_SIZE, seed=3)
    if spec.kind == "mbdl":
        inputs = (inputs[0], loaded.operator)
    with torch.no_grad():
        assert torch.equal(loaded.model(*inputs), model(*inputs))
    assert loaded.meta["pruning"]["params_after"] == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.meta["arch"]["name"] == arch
    assert {"mbdlprune", "torch", "torch_pruning"} <= set(loaded.meta["versions"])


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model", "model_state_dict", "ema", "lightning", "module"])
def test_foreign_checkpoint_layouts_load(layout, tmp_path):
    model, spec, _ = small("deq-edsr")
    sd = model.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd, "optimizer": {"lr": 1e-3}},
        "model_state_dict": {"model_state_dict": sd},
        "ema": {"ema": sd},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
        "module": {f"module.{k}": v for k, v in sd.items()},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded, _, meta, _ = load_checkpoint_model(path, "deq-edsr", small_args("deq-edsr"))
    assert meta is None
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k])


def test_pickled_code_refused_unless_allowed(tmp_path):
    model, _, _ = small("edsr")
    path = tmp_path / "whole.pt"
    torch.save({"net": model}, path)  # a pickled nn.Module: needs code to load
    with pytest.raises(CheckpointError, match="unsafe-pickle"):
        read_checkpoint(path)
    state, _ = read_checkpoint(path, unsafe_pickle=True)
    assert set(state) == set(model.state_dict())


def test_truncated_files_give_clear_errors(tmp_path):
    model, spec, op = small("deq-edsr")
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    good = save_model(tmp_path / "m.safetensors", res.model, res.meta)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(bad)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "bad.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "bad.pt")


def test_wrong_architecture_lists_keys_and_shapes(tmp_path):
    model, _, _ = small("deq-edsr")
    torch.save(model.state_dict(), tmp_path / "deq.pt")
    with pytest.raises(CheckpointError, match="missing .*unexpected|unexpected"):
        load_checkpoint_model(tmp_path / "deq.pt", "unrolled", small_args("unrolled"))
    other = {**small_args("deq-edsr"), "n_feats": 16}
    with pytest.raises(CheckpointError, match=r"shape of .* is \(8"):
        load_checkpoint_model(tmp_path / "deq.pt", "deq-edsr", other)


def test_save_is_atomic_and_refuses_overwrite(tmp_path):
    model, spec, op = small("deq-edsr")
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    out = save_model(tmp_path / "m.safetensors", res.model, res.meta)
    stamp = out.read_bytes()
    with pytest.raises(MbdlError, match="--force"):
        save_model(out, res.model, res.meta)
    assert out.read_bytes() == stamp
    save_model(out, res.model, res.meta, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert out.stat().st_mode & 0o044  # readable by others, as with a plain open()


def test_metadata_is_plain_json_in_header(tmp_path):
    from safetensors import safe_open

    model, spec, op = small("unrolled")
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    out = save_model(tmp_path / "m.safetensors", res.model, res.meta)
    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["mbdlprune"])
    assert meta["format_version"] == 1 and meta["operator"]["kind"] == "mri"
    assert meta["pruning"]["priors"]["prior"]["widths"]


def test_user_factory_round_trip_needs_explicit_arch(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(FACTORY)
    op_file = tmp_path / "op.json"
    op_file.write_text(json.dumps(MRI))
    model, _ = build_arch(f"{f}:build", {"width": 16})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "mine.pth")
    res = prune(tmp_path / "mine.pth", arch=f"{f}:build", arch_args={"width": 16}, operator=op_file,
                ratio=0.5, round_to=1, out=tmp_path / "p.safetensors")
    assert list(res.meta["pruning"]["priors"]) == ["denoiser"]
    with pytest.raises(MbdlError, match="--arch"):
        load_model(res.out)
    loaded = load_model(res.out, arch=f"{f}:build")
    y = example_inputs(res.model, "mbdl", loaded.operator)[0]
    with torch.no_grad():
        assert torch.equal(loaded.model(y, loaded.operator), res.model(y, res.operator))


def test_factory_that_raises_is_one_clear_error(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(FACTORY)
    with pytest.raises(MbdlError, match="raised RuntimeError: boom"):
        build_arch(f"{f}:broken", {})
    with pytest.raises(MbdlError, match="no callable"):
        build_arch(f"{f}:missing", {})
    with pytest.raises(MbdlError, match="unknown argument 'depth'"):
        build_arch(f"{f}:build", {"depth": 3})


def test_match_keys_strips_consistent_prefix():
    keys = ["a.weight", "b.bias"]
    state = {"net.a.weight": 1, "net.b.bias": 2}
    assert match_keys(state, keys) == {"a.weight": 1, "b.bias": 2}
