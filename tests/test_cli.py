"""CLI wiring of prune / inspect / archs: exit codes, --json, one-line errors, no partial files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from mbdlprune.cli import app
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch

runner = CliRunner()
H, W = SMALL_IMAGE_SIZE


@pytest.fixture()
def deq_ckpt(tmp_path):
    model, _ = build_arch("deq-edsr", small_args("deq-edsr"))
    path = tmp_path / "deq.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    op = tmp_path / "op.toml"
    op.write_text(f'[operator]\nkind = "mri"\nimage_size = [{H}, {W}]\nacceleration = 4\n')
    return path, op, json.dumps(small_args("deq-edsr"))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prune_json_then_inspect(deq_ckpt, tmp_path):
    ckpt, op, arch_args = deq_ckpt
    out = tmp_path / "p.safetensors"
    r = invoke("prune", ckpt, "--arch", "deq-edsr", "--arch-args", arch_args, "--operator", op, "--ratio", "0.5", "--round-to", "1", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["params_after"] < report["params_before"] and out.is_file()
    assert report["priors"]["prior"]["macs_after"] < report["priors"]["prior"]["macs_before"]
    head = report["priors"]["prior"]["layers"]["head"]
    assert head["after"] < head["before"] and head["removed"] == pytest.approx(1 - head["after"] / head["before"], abs=1e-4)
    assert report["priors"]["prior"]["layers"]["tail"]["removed"] == 0.0  # image channels kept
    r = invoke("inspect", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["pruning"]["ratio"] == 0.5 and info["params"] == report["params_after"]
    r = invoke("inspect", out)
    assert r.exit_code == 0 and "prior" in r.stdout
    # an mbdlprune file can be pruned again without --arch, and the table renders
    r = invoke("prune", out, "--ratio", "0.25", "--round-to", "1", "-o", tmp_path / "pp.safetensors", "--layers")
    assert r.exit_code == 0, r.output
    assert "Pruned at ratio 0.25" in r.stdout and "prior.head" in r.stdout


def test_convert_records_arch_and_operator(deq_ckpt, tmp_path):
    from mbdlprune.io import load_model

    ckpt, op, arch_args = deq_ckpt
    out = tmp_path / "orig.safetensors"
    r = invoke("convert", ckpt, "--arch", "deq-edsr", "--arch-args", arch_args, "--operator", op, "-o", out)
    assert r.exit_code == 0, r.output
    loaded = load_model(out)
    assert loaded.meta["arch"]["name"] == "deq-edsr" and loaded.operator is not None
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, sd[k]) for k, v in loaded.model.state_dict().items())


def test_archs_lists_registry():
    r = invoke("archs", "--json")
    assert r.exit_code == 0
    names = {a["name"] for a in json.loads(r.stdout)["architectures"]}
    assert {"deq-edsr", "unrolled", "varnet", "e2e-varnet", "edsr", "dncnn", "unet"} <= names


def _assert_one_line_error(r, needle, out):
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert needle in err, err
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("case", ["ratio", "corrupt", "unknown_key", "wrong_arch", "bad_size", "factory_raises", "exists", "no_operator"])
def test_bad_input_is_one_line_and_no_file(case, deq_ckpt, tmp_path):
    ckpt, op, arch_args = deq_ckpt
    out = tmp_path / "o.safetensors"
    args = ["prune", ckpt, "--arch", "deq-edsr", "--arch-args", arch_args, "--operator", op, "--ratio", "0.5", "-o", out]
    needle = {
        "ratio": "outside (0, 1)", "corrupt": "truncated or corrupt", "unknown_key": "unknown key 'acceleraton'",
        "wrong_arch": "does not match the architecture", "bad_size": "image_size", "factory_raises": "raised ValueError",
        "exists": "already exists", "no_operator": "--operator",
    }[case]
    if case == "ratio":
        args[args.index("0.5")] = "1.5"
    elif case == "corrupt":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(ckpt.read_bytes()[:200])
        args[1] = bad
    elif case == "unknown_key":
        op.write_text(f'[operator]\nkind = "mri"\nimage_size = [{H}, {W}]\nacceleraton = 4\n')
    elif case == "wrong_arch":
        args[args.index("deq-edsr")] = "unrolled"
        args[args.index(arch_args)] = json.dumps(small_args("unrolled"))
    elif case == "bad_size":
        op.write_text('[operator]\nkind = "superres"\nimage_size = [15, 16]\nfactor = 2\n')
    elif case == "factory_raises":
        f = tmp_path / "f.py"
        f.write_text("def build():\n    raise ValueError('width must be even')\n")
        args[args.index("deq-edsr")] = f"{f}:build"
        args[args.index(arch_args)] = "{}"
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "no_operator":
        i = args.index("--operator")
        del args[i:i + 2]
    r = invoke(*args)
    if case == "exists":
        assert r.exit_code != 0 and out.read_bytes() == b"keep me" and "already exists" in r.stderr
        return
    _assert_one_line_error(r, needle, out)


def test_debug_shows_traceback(deq_ckpt, tmp_path):
    ckpt, op, arch_args = deq_ckpt
    r = invoke("prune", ckpt, "--arch", "nope", "--operator", op, "--ratio", "0.5", "-o", tmp_path / "o.safetensors", "--debug")
    assert r.exit_code != 0 and r.exception is not None


def test_help_does_not_import_torch():
    code = "import sys, mbdlprune, mbdlprune.cli; print('torch' in sys.modules, 'torch_pruning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    r = subprocess.run([sys.executable, "-m", "mbdlprune.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "prune" in r.stdout


def test_sweep_refuses_unknown_finetune_devices_before_any_work(tmp_path):
    from mbdlprune.examples import example_path

    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", str(example_path("unrolled")), "--ratios", "0.3,0.5", "--eval-data",
                            str(example_path("eval")), "--finetune", "distill", "--data", str(example_path("finetune")),
                            "--out-dir", str(out), "--finetune-devices", "tpu:0"])
    assert r.exit_code == 2 and "unknown device 'tpu:0' in --finetune-devices" in r.output
    assert "Traceback" not in r.output and not out.exists()
