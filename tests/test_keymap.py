"""Key maps: foreign checkpoint layouts renamed to a built-in architecture before strict loading."""

from __future__ import annotations

import json

import pytest
import torch

from mbdlprune.api import convert, prune
from mbdlprune.errors import CheckpointError, ConfigError
from mbdlprune.io import load_model, read_checkpoint
from mbdlprune.keymap import KeyMap, list_key_maps, load_key_map
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch

MRI = {"operator": {"kind": "mri", "image_size": list(SMALL_IMAGE_SIZE), "acceleration": 4, "coils": 2}}


def paper_deq_state(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """deq-edsr's tensors under the names the reference paper's DEQ code saves (its module layout:
    du_block.nn = EDSR with head/tail wrapped in one-element Sequentials; scalars gamma, alpha, mu)."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("prior.head."):
            k = "du_block.nn.head.0." + k[len("prior.head."):]
        elif k.startswith("prior.tail."):
            k = "du_block.nn.tail.0." + k[len("prior.tail."):]
        elif k.startswith("prior.body."):
            k = "du_block.nn.body." + k[len("prior.body."):]
        elif k in ("gamma", "alpha"):
            k = "du_block." + k
        out[prefix + k] = v.clone()
    out[prefix + "du_block.mu"] = torch.tensor(0.5)
    return out


@pytest.mark.parametrize("prefix", ["", "module."])
def test_shipped_mbdl_pruning_map_loads_the_papers_deq_layout(tmp_path, prefix):
    assert "mbdl-pruning" in list_key_maps()
    args = small_args("deq-edsr")
    model, _ = build_arch("deq-edsr", args)
    with torch.no_grad():
        model.gamma.fill_(0.7)
    path = tmp_path / "deq_acc6.pt"
    torch.save(paper_deq_state(model, prefix), path)
    # without the map: the error names the first unmatched keys and suggests --key-map
    with pytest.raises(CheckpointError, match="--key-map") as e:
        load_model(path, arch="deq-edsr", arch_args=args)
    assert "du_block" in str(e.value)
    lm = load_model(path, arch_args=args, key_map="mbdl-pruning")  # the map names deq-edsr
    assert lm.arch.name == "deq-edsr"
    for k, v in model.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v), k
    rec = lm.meta["key_map"]
    assert rec["name"] == "mbdl-pruning" and rec["dropped"] == 1 and len(rec["sha256"]) == 64
    # the record travels into the pruned file
    out = prune(path, arch_args=args, key_map="mbdl-pruning", operator=MRI, out=tmp_path / "p.safetensors",
                ratio=0.5, round_to=1, image_size=SMALL_IMAGE_SIZE)
    assert read_checkpoint(out.out)[1]["key_map"]["name"] == "mbdl-pruning"
    conv = convert(path, arch="deq-edsr", arch_args=args, key_map="mbdl-pruning", operator=MRI, out=tmp_path / "c.safetensors").out
    assert read_checkpoint(conv)[1]["key_map"]["renamed"] > 0


def test_a_key_map_file_is_strict(tmp_path):
    bad = tmp_path / "m.toml"
    for text, match in [("[key_map]\nrenme = []\n", "renme"), ("[key_map]\ndrop = ['(']\n", "bad regex"),
                        ("[key_map]\nrename = [['a']]\n", "pattern, replacement"),
                        ("[key_map]\nrename = [['a', '\\\\9']]\n", "replacement"), ("x = 1\n", "key_map")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_key_map(bad)
    with pytest.raises(ConfigError, match="neither"):
        load_key_map("no-such-map")


def test_two_keys_renamed_to_one_name_is_an_error():
    km = KeyMap("t", rename=[("^a\\.", "x."), ("^b\\.", "x.")])
    with pytest.raises(ConfigError, match="both become"):
        km.apply({"a.w": torch.zeros(1), "b.w": torch.zeros(1)})


def test_a_key_map_is_refused_for_mbdlprune_files(tmp_path):
    args = small_args("deq-edsr")
    model, _ = build_arch("deq-edsr", args)
    torch.save(model.state_dict(), tmp_path / "o.pt")
    out = convert(tmp_path / "o.pt", arch="deq-edsr", arch_args=args, operator=MRI, out=tmp_path / "o.safetensors").out
    with pytest.raises(Exception, match="drop --key-map"):
        load_model(out, key_map="mbdl-pruning")


def test_cli_commands_take_key_map(tmp_path):
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    args = small_args("deq-edsr")
    model, _ = build_arch("deq-edsr", args)
    path = tmp_path / "deq.pt"
    torch.save(paper_deq_state(model), path)
    (tmp_path / "args.json").write_text(json.dumps(args))
    (tmp_path / "op.json").write_text(json.dumps(MRI))
    run = CliRunner().invoke
    common = [str(path), "--key-map", "mbdl-pruning", "--arch-args", str(tmp_path / "args.json")]
    r = run(app, ["inspect", *common, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["key_map"]["name"] == "mbdl-pruning"
    r = run(app, ["prune", *common, "--operator", str(tmp_path / "op.json"), "--ratio", "0.5", "--round-to", "1",
                  "-o", str(tmp_path / "p.safetensors")])
    assert r.exit_code == 0, r.output
    assert read_checkpoint(tmp_path / "p.safetensors")[1]["key_map"]["dropped"] == 1
    r = run(app, ["convert", *common, "-o", str(tmp_path / "c.safetensors")])
    assert r.exit_code == 0, r.output
    r = run(app, ["inspect", str(path), "--arch", "deq-edsr", "--arch-args", str(tmp_path / "args.json")])
    assert r.exit_code == 2 and "--key-map" in r.output
