"""Behaviour of bench, sweep, pipeline and their commands on tiny models (not timing accuracy)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mbdlprune
import mbdlprune.config
from mbdlprune import benchmark as B
from mbdlprune.errors import ConfigError, DataError, MbdlError

from blob_images import blob_images

SIZE = 16
OP_SPEC = {"kind": "denoise", "image_size": [SIZE, SIZE], "noise_sigma": 0.05, "channels": 2}
DEQ_ARGS = {"n_feats": 8, "n_blocks": 1, "gamma": 0.5, "alpha": 0.2, "max_iter": 6, "tol": 1e-3}
UNROLLED_ARGS = {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 3}}
FAST = {"warmup": 0, "repeats": 2, "device": "cpu"}


def _images(n=3, seed=0):
    return blob_images(n, SIZE, seed)


def _save_npy(path: Path, n=3, seed=0):
    arr = _images(n, seed)[:, 0].numpy()
    np.save(path, arr)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """original + pruned files for a DEQ and an unrolled network, plus raw .pt originals."""
    from mbdlprune.api import prune_model
    from mbdlprune.io import save_model
    from mbdlprune.models.user import build_arch
    from mbdlprune.operators import load_operator

    d = tmp_path_factory.mktemp("models")
    op = load_operator(OP_SPEC)
    out = {"dir": d}
    for name, args in (("deq-edsr", DEQ_ARGS), ("unrolled", UNROLLED_ARGS)):
        torch.manual_seed(0)
        m, spec = build_arch(name, args)
        torch.save(m.state_dict(), d / f"{name}.pt")
        save_model(d / f"{name}.safetensors", m, {"arch": spec.to_dict(), "operator": op.spec, "pruning": None})
        res = prune_model(m, spec, op, ratio=0.5, round_to=1)
        save_model(d / f"{name}-p50.safetensors", res.model, res.meta)
        out[name] = (d / f"{name}.safetensors", d / f"{name}-p50.safetensors", d / f"{name}.pt")
    _save_npy(d / "eval.npy", 3, 0)
    _save_npy(d / "train.npy", 3, 1)
    (d / "op.toml").write_text('[operator]\nkind = "denoise"\nimage_size = [16, 16]\nnoise_sigma = 0.05\nchannels = 2\n')
    return out


# ------------------------------------------------------------------------------ timing
def test_time_model_plumbing():
    from mbdlprune.models.user import build_arch
    from mbdlprune.operators import load_operator

    op = load_operator(OP_SPEC)
    m, _ = build_arch("deq-edsr", DEQ_ARGS)
    m.eval()
    y = op.measure(_images(2))
    t = B.time_model(m, y, op, "cpu", warmup=1, repeats=4, batch_size=3)
    assert len(t.samples_ms) == 4 and t.repeats == 4 and t.batch_size == 3
    assert t.p10_ms <= t.median_ms <= t.p90_ms
    assert t.throughput == pytest.approx(3 / (t.median_ms / 1e3))
    assert t.iterations_mean is not None and 1 <= t.iterations_mean <= DEQ_ARGS["max_iter"]
    assert t.residual_final is not None and t.method == "time.perf_counter"
    assert t.peak_memory_mb >= 0 and t.memory_kind.startswith("process peak RSS")


def test_time_models_interleaves_and_counts_calls():
    calls = []

    class Net(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, y, op):
            calls.append(self.tag)
            return y

    res = B.time_models([Net("a"), Net("b")], torch.zeros(1, 1, 4, 4), None, "cpu", warmup=2, repeats=4)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up per model
    timed = calls[4:]
    assert timed == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating order
    assert all(r.iterations_mean is None for r in res)
    with pytest.raises(MbdlError):
        B.time_models([Net("a")], torch.zeros(1, 1, 4, 4), None, "cpu", repeats=0)


def test_percentile():
    from mbdlprune.benchmark.timing import percentile

    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([1, 2], 0.1) == pytest.approx(1.1)


# ------------------------------------------------------------------------------ bench
def test_bench_deq_identical_solver_settings(models, tmp_path):
    from mbdlprune.io import load_model, save_model

    orig, pruned, _ = models["deq-edsr"]
    # a pruned model stored with a looser tolerance must still run with the original's
    lm = load_model(pruned)
    lm.model.tol, lm.model.max_iter = 4e-3, 3
    arch = {**lm.meta["arch"], "args": {**lm.meta["arch"]["args"], "tol": 4e-3, "max_iter": 3}}
    loose = save_model(tmp_path / "loose.safetensors", lm.model, {**lm.meta, "arch": arch}, operator=lm.operator)
    rep = mbdlprune.bench([orig, loose], _images(), **FAST)
    assert rep.solver["tol"] == DEQ_ARGS["tol"] and rep.solver["max_iter"] == DEQ_ARGS["max_iter"]
    assert rep.solver["stored"]["loose"]["tol"] == 4e-3
    o, p = rep.models
    assert o.role == "original" and p.role == "pruned"
    assert o.speedup == pytest.approx(1.0) and o.psnr_drop == pytest.approx(0.0)
    assert p.deq["iterations_mean"] >= 1 and "residual_max" in p.deq
    assert p.timed_calls == pytest.approx(p.timing.iterations_mean)
    want = (o.timing.median_ms / o.timed_calls) / (p.timing.median_ms / p.timed_calls)
    assert p.per_call_speedup == pytest.approx(want)
    assert p.prior_macs_reduction > 1.5 and p.prior_params < o.prior_params
    assert p.macs_per_reconstruction == pytest.approx(p.prior_macs * p.prior_calls_per_reconstruction, rel=1e-6)
    assert p.psnr_drop == pytest.approx(o.psnr_mean - p.psnr_mean)
    assert len(p.psnr) == 3 and len(p.ssim) == 3
    # overrides apply to every model and are reported
    rep2 = mbdlprune.bench([orig, pruned], _images(), tol=1e-2, max_iter=2, **FAST)
    assert rep2.solver["tol"] == 1e-2 and "overridden" in rep2.solver["source"]
    assert all(m.deq["iterations_max"] <= 2 for m in rep2.models)


def test_bench_unrolled_costs_and_no_solver(models):
    orig, pruned, _ = models["unrolled"]
    rep = mbdlprune.bench([orig, pruned], _images(), batch_size=2, metric="paper", **FAST)
    assert rep.solver is None and rep.models[0].deq is None
    assert rep.models[0].prior_calls_per_reconstruction == pytest.approx(UNROLLED_ARGS["steps"])
    assert rep.models[1].per_call_speedup == pytest.approx(rep.models[1].speedup)
    assert rep.metric["name"] == "paper" and rep.settings["batch_size"] == 2
    with pytest.raises(MbdlError, match="DEQ"):
        mbdlprune.bench([orig, pruned], _images(), tol=1e-3, **FAST)


def test_bench_operator_mismatch_is_one_error(models, tmp_path):
    from mbdlprune.io import load_model, save_model

    orig, pruned, _ = models["deq-edsr"]
    lm = load_model(pruned)
    other = save_model(tmp_path / "other.safetensors", lm.model, {**lm.meta, "operator": {**OP_SPEC, "noise_sigma": 0.1}})
    with pytest.raises(MbdlError, match="different operator.*noise_sigma"):
        mbdlprune.bench([orig, other], _images(), **FAST)
    with pytest.raises(DataError, match="operator takes"):
        mbdlprune.bench([orig, pruned], torch.rand(2, 2, 8, 8), **FAST)


def test_bench_reads_volume_files_and_device_auto(models):
    orig, pruned, _ = models["deq-edsr"]
    rep = mbdlprune.bench([str(orig), str(pruned)], str(models["dir"] / "eval.npy"), warmup=0, repeats=2, device="auto")
    assert rep.data["n_images"] == 3 and len(rep.data["sha256"]) == 1
    if not torch.cuda.is_available():
        assert "fell back to CPU" in rep.environment["note"]
        assert any("fell back" in n for n in rep.notes)


def test_report_json_markdown_schema(models, tmp_path):
    orig, pruned, _ = models["deq-edsr"]
    rep = mbdlprune.bench([orig, pruned], _images(), min_speedup=1e-6, max_psnr_drop=1e6, **FAST)
    d = json.loads(rep.to_json())  # allow_nan=False: no NaN/inf reach the file
    assert d["schema_version"] == B.SCHEMA_VERSION
    assert set(d) >= {"schema_version", "environment", "settings", "solver", "operator", "data", "metric", "models", "gates", "passed"}
    assert set(d["environment"]) >= {"device", "name", "torch_threads", "torch"}
    assert set(d["settings"]) >= {"warmup", "repeats", "batch_size", "dtype"}
    m = d["models"][1]
    for key in ("label", "role", "params", "prior_macs", "macs_per_reconstruction", "speedup", "prior_macs_reduction",
                "speedup_per_macs_reduction", "psnr_mean", "psnr_std", "ssim_mean", "psnr_drop", "timing", "deq"):
        assert key in m
    assert set(m["timing"]) >= {"median_ms", "p10_ms", "p90_ms", "throughput", "peak_memory_mb"}
    assert d["passed"] is True and len(d["gates"]) == 2
    md = rep.markdown()
    assert md.startswith("## mbdlprune bench") and "| model |" in md and "all gates passed" in md
    assert "Solver:" in md and "tol" in md
    png = rep.figure(tmp_path / "f.png")
    assert png.stat().st_size > 1000


def test_json_cleans_non_finite():
    assert mbdlprune.config.json_safe({"a": math.inf, "b": [math.nan, 1.0]}) == {"a": None, "b": [None, 1.0]}


def test_gates_messages():
    def result(label, speedup, drop, role="pruned"):
        t = B.TimingResult(1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, "", "")
        return B.ModelResult(label, role, None, None, None, None, 0, 0, 0, 0, 0, {}, t, [], [], 0, 0, 0, 0,
                             speedup=speedup, psnr_drop=drop)

    rs = [result("orig", 1.0, 0.0, "original"), result("p", 1.3, 0.7)]
    g = B.evaluate_gates(rs, min_speedup=1.5, max_psnr_drop=0.5)
    assert [x.passed for x in g] == [False, False]
    assert "0.200x short" in g[0].message and "0.200 dB over" in g[1].message
    assert all(x.model == "p" for x in g)  # the original is never gated
    assert all(x.passed for x in B.evaluate_gates(rs, min_speedup=1.2, max_psnr_drop=1.0))


# ------------------------------------------------------------------------------ fine-tune records
def test_finetune_overlap_refused_and_eval_files_ignored(models, tmp_path):
    from mbdlprune.io import load_model, save_model, sha256_file

    orig, pruned, _ = models["deq-edsr"]
    ev = models["dir"] / "eval.npy"
    h = sha256_file(ev)
    lm = load_model(pruned)
    honest = {"mode": "supervised", "epochs": 2, "data": {"train": {"files": {"/x/train.npy": "a" * 64}}, "eval_files": {str(ev): h}}}
    ok = save_model(tmp_path / "ok.safetensors", lm.model, {**lm.meta, "finetune": honest})
    rep = mbdlprune.bench([orig, ok], str(ev), **FAST)
    assert rep.models[1].finetune["mode"] == "supervised" and rep.models[1].finetune["epochs"] == 2
    assert "(supervised, 2 ep)" in rep.markdown()
    leaky = {"mode": "supervised", "epochs": 1, "data": {"train": {"files": {str(ev): h}}}}
    bad = save_model(tmp_path / "bad.safetensors", lm.model, {**lm.meta, "finetune": leaky})
    with pytest.raises(DataError, match="fine-tuned on 1 of the evaluation files"):
        mbdlprune.bench([orig, bad], str(ev), **FAST)
    val_leak = {"mode": "supervised", "epochs": 1, "data": {"train": {"files": {}}, "val": {"files": {str(ev): h}}}}
    assert B.training_hashes(val_leak) == {h}


def test_control_needs_a_finetune_record(models):
    orig, pruned, _ = models["deq-edsr"]
    with pytest.raises(MbdlError, match="--control"):
        mbdlprune.bench([orig, pruned], _images(), control=True, **FAST)


# ------------------------------------------------------------------------------ CLI gates
def _cli(args):
    from mbdlprune.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_bench_gate_exit_codes(models, tmp_path):
    orig, pruned, _ = models["deq-edsr"]
    ev = models["dir"] / "eval.npy"
    base = ["bench", orig, pruned, "--data", ev, "--device", "cpu", "--warmup", "0", "--repeats", "2", "--quiet"]
    ok = _cli(base + ["--min-speedup", "0.000001", "--max-psnr-drop", "1000", "--json", "-", "--markdown", tmp_path / "r.md"])
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.stdout)
    assert d["passed"] is True and d["schema_version"] == B.SCHEMA_VERSION
    assert (tmp_path / "r.md").read_text().startswith("## mbdlprune bench")
    bad = _cli(base + ["--max-psnr-drop", "-1000"])
    assert bad.exit_code == 1
    failed = [ln for ln in bad.output.splitlines() if "gate failed" in ln and "dB over" in ln]
    assert failed and "max-psnr-drop" in failed[-1]
    slow = _cli(base + ["--min-speedup", "1000", "--json", tmp_path / "r.json"])
    assert slow.exit_code == 1 and "x short" in slow.output
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    user_err = _cli(["bench", orig, "--data", ev])
    assert user_err.exit_code == 2 and "error:" in user_err.output


# ------------------------------------------------------------------------------ sweep
def test_sweep_tiny(models, tmp_path):
    from mbdlprune.workflows.sweep import parse_ratios, sweep

    _, _, raw = models["unrolled"]
    sr = sweep(raw, arch="unrolled", arch_args=UNROLLED_ARGS, operator=models["dir"] / "op.toml", ratios="0.5,0.25",
               eval_data=_images(), max_psnr_drop=1e6, out_dir=tmp_path / "sw", round_to=1, **FAST)
    assert [p.ratio for p in sr.points] == [0.0, 0.25, 0.5]
    assert sr.points[2].prior_macs_reduction > sr.points[1].prior_macs_reduction > 1.0
    assert all(p.speedup_per_macs_reduction is not None for p in sr.points)
    assert any(p.on_front for p in sr.points)
    assert sr.best is not None and Path(sr.best_path).is_file()
    assert (tmp_path / "sw" / "sweep.json").is_file() and "## mbdlprune sweep" in sr.markdown()
    assert sr.exit_code() == 0
    assert json.loads(json.dumps(sr.to_dict(), allow_nan=False))["kind"] == "sweep"
    none = sweep(raw, arch="unrolled", arch_args=UNROLLED_ARGS, operator=models["dir"] / "op.toml", ratios=[0.5],
                 eval_data=_images(), max_psnr_drop=-1e6, round_to=1, **FAST)
    assert none.best is None and none.exit_code() == 1
    assert parse_ratios("0.3, 0.1,0.3") == [0.1, 0.3]
    with pytest.raises(MbdlError):
        parse_ratios("0.1,1.5")


def test_pareto_front():
    from mbdlprune.workflows.sweep import SweepPoint, pareto_front

    def pt(s, q):
        return SweepPoint(0.1, f"{s}-{q}", None, None, 0, s, None, None, q, None, 0.0, 1.0)

    pts = [pt(1.0, 30.0), pt(1.5, 29.0), pt(1.4, 28.0), pt(2.0, 25.0)]
    pareto_front(pts)
    assert [p.on_front for p in pts] == [True, True, False, True]


# ------------------------------------------------------------------------------ pipeline
PIPELINE = """
[model]
checkpoint = "{ckpt}"
arch = "deq-edsr"
arch_args = {{ n_feats = 8, n_blocks = 1, gamma = 0.5, alpha = 0.2, max_iter = 6, tol = 1e-3 }}
operator = "op.toml"

[prune]
ratio = 0.5
round_to = 1

[bench]
data = "eval.npy"
device = "cpu"
warmup = 0
repeats = 2
{bench_extra}

[gates]
min_speedup = 0.000001
max_psnr_drop = {drop}

[output]
dir = "{out}"
"""


def _pipeline(models, tmp_path, drop="1000", bench_extra="", extra=""):
    ckpt = models["deq-edsr"][2]
    text = PIPELINE.format(ckpt=ckpt, out=tmp_path / "out", drop=drop, bench_extra=bench_extra) + extra
    p = models["dir"] / f"pipe-{tmp_path.name}.toml"
    p.write_text(text)
    return p


def test_pipeline_strict_keys(models, tmp_path):
    from mbdlprune.workflows.pipeline import PipelineConfig

    p = _pipeline(models, tmp_path, bench_extra="repeets = 3")
    with pytest.raises(ConfigError, match="repeets"):
        PipelineConfig.load(p)
    p = _pipeline(models, tmp_path, extra="\n[extra]\nx = 1\n")
    with pytest.raises(ConfigError, match="extra"):
        PipelineConfig.load(p)
    p = _pipeline(models, tmp_path, extra="\n[finetune]\nmode = \"supervised\"\ndata = \"train.npy\"\nepochs = 1\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        PipelineConfig.load(p)
    p = _pipeline(models, tmp_path, bench_extra="batch_size = \"two\"")
    with pytest.raises(ConfigError, match="batch_size"):
        PipelineConfig.load(p)
    cfg = PipelineConfig.load(_pipeline(models, tmp_path))
    assert cfg.prune.options == {"ratio": 0.5, "round_to": 1}
    assert cfg.bench.data[0].name == "eval.npy" and cfg.bench.data[0].parent == models["dir"]


def test_pipeline_end_to_end_with_finetune_and_gate(models, tmp_path):
    from mbdlprune.workflows.pipeline import run_pipeline

    ft = "\n[finetune]\nmode = \"supervised\"\ndata = \"train.npy\"\nepochs = 1\nval_fraction = 0.0\nbatch_size = 3\n"
    res = run_pipeline(_pipeline(models, tmp_path, extra=ft))
    assert res.exit_code == 0
    out = tmp_path / "out"
    for name in ("pruned.safetensors", "finetuned.safetensors", "report.json", "report.md", "prune.json", "pipeline.toml"):
        assert (out / name).is_file(), name
    d = json.loads((out / "report.json").read_text())
    assert d["models"][1]["finetune"]["mode"] == "supervised" and d["models"][1]["label"] == "pruned+finetuned"
    # a failing gate: exit code 1 from the command, one line naming the gate
    p = _pipeline(models, tmp_path / "b", drop="-1000")
    r = _cli(["run", p, "--force", "--quiet"])
    assert r.exit_code == 1 and "max-psnr-drop gate failed" in r.output


def test_example_ci_pipeline_parses():
    from mbdlprune.operators import load_operator
    from mbdlprune.workflows.pipeline import PipelineConfig

    root = Path(__file__).resolve().parents[1] / "examples" / "ci"
    cfg = PipelineConfig.load(root / "pipeline.toml")
    assert cfg.prune.options["ratio"] == 0.3 and cfg.finetune.settings["mode"] == "supervised"
    assert cfg.gates.min_speedup == 1.2 and cfg.gates.max_psnr_drop == 0.5
    assert load_operator(cfg.model.operator).kind == "mri"


def test_bench_in_memory_user_models_without_prior_paths():
    from mbdlprune.operators import load_operator

    class Plain(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(2, width, 3, padding=1), torch.nn.ReLU(),
                                           torch.nn.Conv2d(width, 2, 3, padding=1))

        def forward(self, y, op):
            x = op.A_adjoint(y)
            return x + self.net(x)

    op = load_operator(OP_SPEC)
    a = mbdlprune.LoadedModel(Plain(16), {}, op, None, label="wide", role="original")
    b = mbdlprune.LoadedModel(Plain(8), {}, op, None, label="narrow", role="pruned")
    rep = mbdlprune.bench([a, b], _images(2), **FAST)
    assert rep.models[0].priors["(whole model)"]["calls_per_reconstruction"] == 1
    assert rep.models[1].prior_macs_reduction == pytest.approx(2.0)
    assert "wide" in rep.operator["source"]


def test_threads_option_and_busy_note(models):
    orig, pruned, _ = models["unrolled"]
    before = torch.get_num_threads()
    rep = mbdlprune.bench([orig, pruned], _images(2), threads=1, **FAST)
    assert rep.environment["torch_threads"] == 1 and torch.get_num_threads() == before
    assert "cpu_count" in rep.environment and "load_average" in rep.environment
    assert "busy" in B.busy_note({"load_average": 5.0, "cpu_count": 2})
    assert B.busy_note({"load_average": 1.0, "cpu_count": 2}) is None
    with pytest.raises(MbdlError):
        mbdlprune.bench([orig, pruned], _images(2), threads=0, **FAST)


def test_sweep_with_finetune_keeps_lineage(models, tmp_path):
    from mbdlprune.workflows.sweep import sweep

    _, _, raw = models["deq-edsr"]
    sr = sweep(raw, arch="deq-edsr", arch_args=DEQ_ARGS, operator=models["dir"] / "op.toml", ratios=[0.5],
               finetune={"mode": "supervised", "epochs": 1, "val_fraction": 0.0, "batch_size": 3},
               data=str(models["dir"] / "train.npy"), eval_data=str(models["dir"] / "eval.npy"),
               out_dir=tmp_path / "swf", round_to=1, **FAST)
    assert sr.points[1].label.endswith("-ft") and Path(sr.points[1].path).is_file()
    assert sr.bench.models[1].finetune["mode"] == "supervised"
    assert not any("not pruned from" in n for n in sr.bench.notes)
    with pytest.raises(MbdlError, match="out-dir"):
        sweep(raw, arch="deq-edsr", arch_args=DEQ_ARGS, operator=models["dir"] / "op.toml", ratios=[0.5],
              finetune={"mode": "supervised", "epochs": 1}, data=str(models["dir"] / "train.npy"),
              eval_data=_images(), **FAST)


def test_sweep_fine_tunes_points_in_parallel_workers_with_the_same_results(models, tmp_path):
    """Two worker processes (here two CPU workers; several GPUs in use) write the weights a
    sequential sweep writes (up to the rounding of another thread count); the bench of all of
    them stays one run in this process."""
    from safetensors.torch import load_file

    from mbdlprune.workflows.parallel import resolve_finetune_devices
    from mbdlprune.workflows.sweep import sweep

    _, _, raw = models["deq-edsr"]
    common = dict(arch="deq-edsr", arch_args=DEQ_ARGS, operator=models["dir"] / "op.toml", ratios=[0.25, 0.5],
                  finetune={"mode": "supervised", "epochs": 1, "val_fraction": 0.0, "batch_size": 3},
                  data=str(models["dir"] / "train.npy"), eval_data=str(models["dir"] / "eval.npy"), round_to=1, **FAST)
    seq = sweep(raw, out_dir=tmp_path / "seq", finetune_devices="none", **common)
    par = sweep(raw, out_dir=tmp_path / "par", finetune_devices="cpu,cpu", **common)
    assert [p.label for p in par.points] == [p.label for p in seq.points]
    for a, b in zip(seq.points[1:], par.points[1:]):
        wa, wb = load_file(a.path), load_file(b.path)
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)
        assert b.psnr_mean == pytest.approx(a.psnr_mean, abs=1e-3)
    assert par.bench.models[1].finetune["mode"] == "supervised" and len(par.bench.models) == 3
    n = torch.cuda.device_count()
    assert resolve_finetune_devices("auto") == ([f"cuda:{i}" for i in range(n)] if n >= 2 else [])
    assert resolve_finetune_devices("none") == [] and resolve_finetune_devices("cpu, cpu") == ["cpu", "cpu"]
    with pytest.raises(MbdlError, match="CUDA device"):
        resolve_finetune_devices(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(MbdlError, match="unknown device"):
        resolve_finetune_devices("tpu")


def test_plain_original_checkpoint_benches_beside_pruned_file(models):
    """A raw .pt original is built with the architecture the pruned file records."""
    orig_sf, pruned, raw = models["deq-edsr"]
    rep = mbdlprune.bench([str(raw), str(pruned)], str(models["dir"] / "eval.npy"), **FAST)
    ref = mbdlprune.bench([str(orig_sf), str(pruned)], str(models["dir"] / "eval.npy"), **FAST)
    d, e = rep.to_dict(), ref.to_dict()
    assert d["models"][0]["role"] == "original"
    assert d["models"][0]["psnr_mean"] == pytest.approx(e["models"][0]["psnr_mean"])
    with pytest.raises(MbdlError, match="convert"):
        mbdlprune.bench([str(raw), str(models["unrolled"][2])], str(models["dir"] / "eval.npy"), **FAST)


@pytest.mark.parametrize("option", [{"batch_size": 0}, {"repeats": 0}, {"warmup": -1}, {"tol": float("nan")},
                                    {"tol": 0.0}, {"min_speedup": float("inf")}, {"max_images": 0}, {"threads": 0},
                                    {"max_psnr_drop": float("nan")}, {"seed": -1}])
def test_bench_refuses_impossible_options_before_loading(option):
    with pytest.raises(MbdlError, match=next(iter(option)).replace("_", "-")):
        mbdlprune.bench(["not-loaded-a.safetensors", "not-loaded-b.safetensors"], _images(), **option)


def test_bench_gives_each_model_its_own_solver_settings_back(models):
    from mbdlprune.io import load_model

    orig, pruned, _ = models["deq-edsr"]
    a, b = load_model(orig), load_model(pruned)
    b.model.tol, b.model.max_iter = 4e-3, 3
    mbdlprune.bench([mbdlprune.LoadedModel(a.model, a.meta, a.operator, str(orig), label="a", role="original"),
             mbdlprune.LoadedModel(b.model, b.meta, b.operator, str(pruned), label="b")], _images(), **FAST)
    assert (b.model.tol, b.model.max_iter) == (4e-3, 3)


def test_a_network_pruned_besides_the_priors_is_counted_and_fast_pathed_for_every_model():
    """An E2E-VarNet pruned with its sensitivity U-Net: bench counts that network's calls and
    MACs for the original and the pruned model alike (the MACs reduction is the pruning
    record's), and channels-last reaches it too."""
    import copy

    from mbdlprune.api import prune_model
    from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
    from mbdlprune.models.user import build_arch
    from mbdlprune.operators import load_operator

    h, w = SMALL_IMAGE_SIZE
    op = load_operator({"kind": "mri", "image_size": [h, w], "acceleration": 4, "coils": 3})
    torch.manual_seed(0)
    model, spec = build_arch("e2e-varnet", small_args("e2e-varnet"))
    meta = {"arch": spec.to_dict(), "operator": op.spec, "pruning": None}
    orig = mbdlprune.LoadedModel(model.eval(), meta, op, arch=spec, label="orig", role="original")
    sens = "sens_net.norm_unet.unet"
    res = prune_model(copy.deepcopy(model), spec, op, ratio=0.5, round_to=1, prune_sensitivity=True)
    both = mbdlprune.LoadedModel(res.model, res.meta, op, arch=spec, label="both", role="pruned")
    plain = prune_model(copy.deepcopy(model), spec, op, ratio=0.5, round_to=1)
    cascades = mbdlprune.LoadedModel(plain.model, plain.meta, op, arch=spec, label="cascades", role="pruned")
    images = blob_images(2, h, 0)[:, :, :, :w]
    rep = mbdlprune.bench([orig, both, cascades], images, channels_last=True, **FAST)
    for m in rep.models:
        assert sens in m.priors and m.priors[sens]["calls_per_reconstruction"] == 1
        assert m.prior_calls_per_reconstruction == len(model.cascades) + 1
        assert sens in m.fast_path["channels_last"]
    assert any(sens in n and "both" in n for n in rep.notes)
    rec = res.meta["pruning"]["priors"]
    before = sum(r["macs_before"] * r["calls_per_forward"] for r in rec.values())
    after = sum(r["macs_after"] * r["calls_per_forward"] for r in rec.values())
    assert rep.models[1].prior_macs_reduction == pytest.approx(before / after, rel=1e-6)
    orig_sens = rep.models[0].priors[sens]["macs_per_call"]
    assert rep.models[2].priors[sens]["macs_per_call"] == orig_sens > rep.models[1].priors[sens]["macs_per_call"]
    alone = mbdlprune.bench([orig, cascades], images, **FAST)  # nobody pruned it: the models' own priors only
    assert all(sens not in m.priors for m in alone.models)
