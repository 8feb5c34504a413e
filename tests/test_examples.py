"""The example models shipped in mbdlprune/examples_data: they load, they beat zero filling on
held-out slices by the margin PROVENANCE.md states, and the demo/examples commands run."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from mbdlprune.cli import app
from mbdlprune.data import read_volumes, simulate, slices_to_images
from mbdlprune.examples import EXAMPLES, MODEL_EXAMPLES, example_path, list_examples, read_header_meta
from mbdlprune.io import load_model, sha256_file
from mbdlprune.metrics import compute_metrics

#: PSNR (dB) by which each example must beat the zero-filled image Aᴴy on every tested
#: held-out slice; PROVENANCE.md states the same numbers (checked below)
MARGIN_DB = {"deq": 3.0, "unrolled": 2.5}
#: held-out slices the score test uses (the first N of eval_slices.nii.gz)
N_SLICES = 3

runner = CliRunner()


@pytest.fixture(scope="module")
def eval_images():
    op = load_model(example_path("deq")).operator
    vols = read_volumes(example_path("eval"))
    assert len(vols) == 1
    x = slices_to_images(vols[0], op)
    return x, op


def test_every_example_file_ships():
    rows = list_examples()
    assert {r["name"] for r in rows} == set(EXAMPLES)
    missing = [r["file"] for r in rows if not r["present"]]
    assert not missing, f"missing from mbdlprune/examples_data: {missing}"


@pytest.mark.parametrize("name", MODEL_EXAMPLES)
def test_example_records_arch_and_operator(name):
    meta = read_header_meta(example_path(name))
    assert meta["arch"]["name"] in ("deq-edsr", "unrolled")
    assert meta["operator"]["kind"] == "mri"
    assert meta["operator"]["image_size"] == [96, 96]
    loaded = load_model(example_path(name))
    assert loaded.operator is not None
    from mbdlprune.operators import load_operator

    spec_op = load_operator(example_path("operator"))
    assert torch.equal(loaded.operator.mask, spec_op.mask), "operator_mri4x.toml differs from the models' operator"


def test_eval_data_is_held_out():
    """Evaluation slices come from another file than the fine-tuning data, and are never the same content."""
    hashes = {n: sha256_file(example_path(n)) for n in ("eval", "finetune", "finetune-val")}
    assert len(set(hashes.values())) == 3
    for name in MODEL_EXAMPLES:
        training = read_header_meta(example_path(name))["training"]["data"]
        assert training["eval_source"]["file"] != training["training_source"]["file"]


def test_eval_slices_read_back_exactly(eval_images):
    x, op = eval_images
    assert x.shape[1:] == (2, 96, 96) and x.shape[0] >= N_SLICES
    mag = x.norm(dim=1).reshape(x.shape[0], -1)
    assert torch.allclose(mag.amax(1), torch.ones(x.shape[0]))  # stored normalised: nothing rescaled
    assert float(x[:, 1].abs().max()) == 0.0


@pytest.mark.parametrize("name", MODEL_EXAMPLES)
def test_example_beats_zero_filled(name, eval_images):
    x, _ = eval_images
    loaded = load_model(example_path(name))
    model, op = loaded.model, loaded.operator
    x = x[:N_SLICES]
    y = simulate(x, op, seed=0)
    with torch.no_grad():
        out = torch.cat([model(y[i:i + 1], op) for i in range(x.shape[0])])
        if name == "deq":
            assert model.last_info["converged"], model.last_info
    got = compute_metrics(out, x)["psnr"]
    zero_filled = compute_metrics(op.A_adjoint(y), x)["psnr"]
    gain = got - zero_filled
    assert float(gain.min()) >= MARGIN_DB[name], f"{name}: PSNR {got.tolist()} vs zero-filled {zero_filled.tolist()}"


def test_provenance_states_the_tested_margins():
    text = example_path("provenance").read_text(encoding="utf-8")
    for name, margin in MARGIN_DB.items():
        pattern = rf"`{name}`[^\n]*?at least \*\*{margin:.1f} dB\*\*"
        assert re.search(pattern, text), f"PROVENANCE.md does not state the {margin:.1f} dB margin for {name}"


def test_examples_command_lists_everything():
    r = runner.invoke(app, ["examples", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["deq"]["params"] > 0 and by_name["deq"]["eval"]["psnr_mean"] > by_name["deq"]["eval"]["zero_filled_psnr_mean"]


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert "not empty" in r.output and "--force" in r.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_rejects_unknown_model(tmp_path):
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--model", "resnet"])
    assert r.exit_code == 2 and "unknown demo model" in r.output


def test_demo_quick(tmp_path):
    """The whole chain (prune -> distill -> bench) on every example with tiny budgets (seconds); the
    multi-coil varnet on raw k-space scored the fastMRI way."""
    from mbdlprune.workflows.demo import PRUNING

    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--json", "--model", "all"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert [m["name"] for m in summary["models"]] == ["deq", "unrolled", "varnet"]
    for m in summary["models"]:
        name, s = m["name"], m["summary"]
        assert s["pruned"]["params"] < s["original"]["params"]
        assert s["pruned+finetuned"]["params"] == s["pruned"]["params"]
        for f in ("pruned.safetensors", "pruned_finetuned.safetensors", "bench.json", "bench.md"):
            assert (out / name / f).is_file(), f
        meta = read_header_meta(out / name / "pruned_finetuned.safetensors")
        assert meta["finetune"]["mode"] == "distill"
        assert meta["pruning"]["ratio"] == PRUNING[name]["ratio"]  # each example's own ratio and width multiple
        assert meta["pruning"]["round_to"] == PRUNING[name].get("round_to", 16)
    deq = summary["models"][0]["summary"]
    assert all(v["deq_iterations_mean"] > 0 for v in deq.values())  # same solver settings, iterations reported
    assert all(v["warm_start"]["warm_ms"] > 0 for v in deq.values())  # the DEQ also benched warm-started
    assert all("warm_start" not in v for v in summary["models"][1]["summary"].values())  # not for unrolled models
    assert (out / "demo.json").is_file()
    varnet = json.loads((out / "varnet" / "bench.json").read_text())
    assert varnet["data"]["kind"] == "raw k-space" and varnet["metric"]["name"] == "fastmri"
    assert varnet["data"]["protocol"]["mask"] == "equispaced_fraction" and varnet["data"]["protocol"]["kspace_scale"] == "none"
    assert (out / "data" / "raw" / "eval.h5").is_file()


def test_demo_force_reuses_its_folder(tmp_path):
    out = tmp_path / "demo"
    assert runner.invoke(app, ["demo", "--out", str(out), "--quick", "--model", "unrolled", "--json"]).exit_code == 0
    r = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--model", "unrolled", "--json"])
    assert r.exit_code == 2 and "not empty" in r.output
    r = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--model", "unrolled", "--json", "--force"])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_demo_full_defaults(tmp_path, request):
    """The demo as users run it (about 100 s on 2 idle CPU cores); skipped unless run with -m slow."""
    if "slow" not in (request.config.getoption("-m") or "") or "not slow" in request.config.getoption("-m"):
        pytest.skip("the full demo takes minutes: run with -m slow")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    for m in summary["models"]:
        s = m["summary"]
        assert s["pruned+finetuned"]["psnr"] > s["pruned"]["psnr"]
