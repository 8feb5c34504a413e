"""The residual read every k iterations (identical results, fewer host reads) and warm starts across
slices (each DEQ solve from the previous slice's fixed point; reported apart from pruning)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mbdlprune
from mbdlprune.errors import MbdlError
from mbdlprune.models.deq import DEQ
from mbdlprune.models.protocol import accepts_warm_start
from mbdlprune.models.solvers import SOLVERS
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator

from blob_images import blob_images

SIZE = 16
OP_SPEC = {"kind": "denoise", "image_size": [SIZE, SIZE], "noise_sigma": 0.05, "channels": 2}
DEQ_ARGS = {"n_feats": 8, "n_blocks": 1, "gamma": 0.5, "alpha": 0.5, "max_iter": 40, "tol": 1e-5}
FAST = {"warmup": 0, "repeats": 2, "device": "cpu", "threads": 1}


def _nonlinear_contraction(n=3, d=24, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = (q @ torch.diag(torch.linspace(-0.5, 0.9, d, dtype=torch.float64)) @ q.T).to(device)
    b = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64).to(device)
    return (lambda x: (x.reshape(n, d) @ a.T).reshape(x.shape) + b + 0.1 * torch.tanh(x)), b


# ------------------------------------------------------------------------------ check_every
@pytest.mark.parametrize("solver", ["anderson", "fixed_point"])
@pytest.mark.parametrize("tol, max_iter", [(1e-7, 200), (1e-12, 9)])  # converges / stops at the cap
@pytest.mark.parametrize("every", [2, 3, 5, 8])
def test_reading_the_residual_every_k_iterations_changes_nothing(solver, tol, max_iter, every):
    f, b = _nonlinear_contraction()
    x0 = torch.zeros_like(b)
    ref, ref_info = SOLVERS.get(solver)(f, x0, max_iter=max_iter, tol=tol)
    got, info = SOLVERS.get(solver)(f, x0, max_iter=max_iter, tol=tol, check_every=every)
    assert torch.equal(got, ref)
    assert info == ref_info
    assert ref_info["converged"] == (max_iter == 200)


@pytest.mark.parametrize("solver", ["anderson", "fixed_point"])
def test_the_host_reads_the_residual_only_every_k_iterations(solver, monkeypatch):
    """Every host read of a tensor value (bool, float, int, item) is counted during one solve."""
    f, b = _nonlinear_contraction()
    reads = {"n": 0}

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *a, **k):
            reads["n"] += 1
            return original(self, *a, **k)

        return read

    for name in ("__bool__", "__float__", "__int__", "item"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    counts = {}
    for every in (1, 6):
        reads["n"] = 0
        _, info = SOLVERS.get(solver)(f, torch.zeros_like(b), max_iter=300, tol=1e-9, check_every=every)
        counts[every] = (reads["n"], info["iterations"])
    n1, iters = counts[1]
    n6, _ = counts[6]
    assert n1 >= iters  # one read per iteration
    assert n6 <= math.ceil(iters / 6) + 3  # one per 6 iterations, and the final info
    assert iters > 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["anderson", "fixed_point"])
def test_on_cuda_the_solver_loop_synchronises_only_every_k_iterations(solver):
    """torch's sync debug mode warns at every host synchronisation; count them over one solve."""
    import warnings

    f, bc = _nonlinear_contraction(device="cuda")
    f(torch.zeros_like(bc))  # kernels loaded before counting
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, info = SOLVERS.get(solver)(f, torch.zeros_like(bc), max_iter=40, tol=0.0, check_every=10)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert info["iterations"] == 40
    assert len(syncs) <= 40 // 10 + 3, [str(w.message) for w in syncs[:5]]


def _deq_problem():
    """A small DEQ (eval mode), its operator and the measurements of two blob images."""
    op = load_operator(OP_SPEC)
    torch.manual_seed(0)
    model, _ = build_arch("deq-edsr", DEQ_ARGS)
    return model.eval(), op, op.measure(blob_images(2, SIZE))


def test_deq_check_every_is_a_runtime_setting_with_the_same_output():
    model, op, y = _deq_problem()
    with torch.no_grad():
        ref = model(y, op)
        ref_info = dict(model.last_info)
        model.check_every = 4
        got = model(y, op)
    assert torch.equal(got, ref) and model.last_info == ref_info
    assert "check_every=4" in repr(model)


# ------------------------------------------------------------------------------ warm starts
def test_a_deq_started_at_its_fixed_point_stops_at_once():
    model, op, y = _deq_problem()
    with torch.no_grad():
        x_star = model(y, op)
        cold = model.last_info["iterations"]
        again = model(y, op, x0=x_star)
    assert model.last_info["iterations"] <= 2 < cold
    assert torch.allclose(again, x_star, atol=1e-4)
    with pytest.raises(ValueError, match="warm start"):
        model(y, op, x0=x_star[:1])


def test_which_models_take_a_warm_start():
    deq, _ = build_arch("deq-edsr", DEQ_ARGS)
    unrolled, _ = build_arch("unrolled", {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 3}})

    class OwnDEQ(torch.nn.Module):  # a user's DEQ without an x0 argument
        solver, tol, max_iter = "anderson", 1e-3, 10

        def forward(self, y, op):
            return y

    assert accepts_warm_start(deq) and not accepts_warm_start(unrolled) and not accepts_warm_start(OwnDEQ())


class _SpyDEQ(DEQ):
    """Records, per call, whether the solve was warm-started."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.starts = []

    def forward(self, y, op, x0=None):
        self.starts.append(x0 is not None)
        return super().forward(y, op, x0=x0)


def _spy():
    from mbdlprune.models.priors import EDSR

    torch.manual_seed(0)
    return _SpyDEQ(EDSR(2, 2, 8, 1), gamma=0.5, alpha=0.5, max_iter=10, tol=1e-4).eval()


@pytest.mark.parametrize("batch, expected", [
    (1, [False, True, True, False, True]),   # a new volume starts cold
    (2, [False, False, False]),              # the second batch spans both volumes; the third follows it
])
def test_warm_starts_stay_within_a_volume(batch, expected):
    from mbdlprune.benchmark.costs import NoCosts, reconstruct_and_score
    from mbdlprune.metrics import get_definition

    op = load_operator(OP_SPEC)
    images = blob_images(5, SIZE)
    y = op.measure(images)
    model = _spy()
    lm = mbdlprune.LoadedModel(model, {}, op, label="spy")
    out = reconstruct_and_score(lm, y, images, op, "cpu", batch, get_definition("plain"), NoCosts, warm=True,
                                volume_index=[0, 0, 0, 1, 1])
    assert model.starts == expected and len(out["psnr"]) == 5
    model.starts.clear()
    reconstruct_and_score(lm, y, images, op, "cpu", batch, get_definition("plain"), NoCosts)
    assert not any(model.starts)  # without warm=True every solve is cold


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An original DEQ, a pruned copy, and two evaluation volumes of slowly moving blobs."""
    from mbdlprune.api import prune_model
    from mbdlprune.io import save_model

    d = tmp_path_factory.mktemp("warm")
    op = load_operator(OP_SPEC)
    torch.manual_seed(0)
    m, spec = build_arch("deq-edsr", DEQ_ARGS)
    save_model(d / "deq.safetensors", m, {"arch": spec.to_dict(), "operator": op.spec, "pruning": None})
    res = prune_model(m, spec, op, ratio=0.5, round_to=1)
    save_model(d / "deq-p50.safetensors", res.model, res.meta)
    np.save(d / "vol_a.npy", blob_images(5, SIZE, 0)[:, 0].numpy())
    np.save(d / "vol_b.npy", blob_images(4, SIZE, 1)[:, 0].numpy())
    np.save(d / "one_slice.npy", blob_images(1, SIZE, 2)[:, 0].numpy())
    return d


def test_bench_warm_start_reports_the_solver_gain_apart(files):
    report = mbdlprune.bench([str(files / "deq.safetensors"), str(files / "deq-p50.safetensors")],
                             [str(files / "vol_a.npy"), str(files / "vol_b.npy")], warm_start=True, **FAST)
    d = report.to_dict()
    assert d["settings"]["warm_start"] is True
    orig, pruned = report.models
    for m in (orig, pruned):
        w = m.warm_start
        assert w["timed_batches"] == 4 and w["rounds"] == 3 and len(w["warm_samples_ms"]) == 3
        assert w["warm_iterations_mean"] < w["cold_iterations_mean"]  # adjacent slices start closer
        assert w["warm_start_gain"] == pytest.approx(w["cold_ms"] / w["warm_ms"])
        assert w["speedup_vs_cold_original"] == pytest.approx(orig.warm_start["cold_ms"] / w["warm_ms"])
        assert abs(w["psnr_change"]) < 0.5 and math.isfinite(w["psnr_mean"])
    assert pruned.warm_start["speedup_warm"] == pytest.approx(orig.warm_start["warm_ms"] / pruned.warm_start["warm_ms"])
    assert pruned.warm_start["psnr_drop"] == pytest.approx(orig.warm_start["psnr_mean"] - pruned.warm_start["psnr_mean"])
    md = report.markdown()
    assert "Warm starts across slices" in md and "warm-start gain" in md
    json.dumps(mbdlprune.config.json_safe(d), allow_nan=False)
    plain = mbdlprune.bench([str(files / "deq.safetensors"), str(files / "deq-p50.safetensors")],
                            str(files / "vol_a.npy"), **FAST)
    assert all(m.warm_start is None for m in plain.models) and "Warm starts" not in plain.markdown()


def test_bench_command_warm_start_and_check_every(files):
    from mbdlprune.cli import app

    args = ["bench", str(files / "deq.safetensors"), str(files / "deq-p50.safetensors"), "--data",
            str(files / "vol_a.npy"), "--device", "cpu", "--warmup", "0", "--repeats", "2"]
    r = CliRunner().invoke(app, args + ["--warm-start", "--warm-batches", "2", "--check-every", "3", "--json", "-"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert all(m["warm_start"]["timed_batches"] == 2 for m in d["models"]) and d["solver"]["check_every"] == 3
    r = CliRunner().invoke(app, args + ["--warm-start", "--check-every", "3"])
    assert r.exit_code == 0, r.output
    assert "warm starts across slices" in r.output and "residual read every 3 iterations" in r.output


@pytest.mark.parametrize("extra, data, words", [
    (["--warm-start"], "one_slice.npy", "at least two batches"),
    (["--check-every", "0"], "vol_a.npy", "--check-every must be >= 1"),
])
def test_bad_warm_start_and_check_every_options_give_one_line(files, extra, data, words):
    from mbdlprune.cli import app

    r = CliRunner().invoke(app, ["bench", str(files / "deq.safetensors"), str(files / "deq-p50.safetensors"), "--data",
                                 str(files / data), "--device", "cpu", "--warmup", "0", "--repeats", "1", *extra])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_warm_start_needs_deqs_that_take_a_starting_iterate(files):
    from mbdlprune.io import LoadedModel

    op = load_operator(OP_SPEC)
    unrolled, spec = build_arch("unrolled", {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 3}})
    entries = [LoadedModel(unrolled.eval(), {"arch": spec.to_dict(), "operator": op.spec}, op, label=f"u{i}")
               for i in range(2)]
    with pytest.raises(MbdlError, match="applies to DEQ models"):
        mbdlprune.bench(entries, str(files / "vol_a.npy"), warm_start=True, **FAST)

    class OwnDEQ(torch.nn.Module):
        solver, tol, max_iter = "anderson", 1e-3, 10

        def forward(self, y, op):
            return op.A_adjoint(y)

    own = [LoadedModel(OwnDEQ(), {"operator": op.spec}, op, label=f"own{i}") for i in range(2)]
    with pytest.raises(MbdlError, match="takes no starting iterate"):
        mbdlprune.bench(own, str(files / "vol_a.npy"), warm_start=True, **FAST)
    with pytest.raises(MbdlError, match="has no check_every setting"):
        mbdlprune.bench(own, str(files / "vol_a.npy"), check_every=2, **FAST)


def test_sweep_warm_start_shows_the_solver_gain_per_ratio(files, tmp_path):
    from mbdlprune.cli import app

    out = tmp_path / "sweep"
    r = CliRunner().invoke(app, ["sweep", str(files / "deq.safetensors"), "--ratios", "0.5", "--eval-data",
                                 str(files / "vol_a.npy"), "--device", "cpu", "--warmup", "0", "--repeats", "2",
                                 "--round-to", "1", "--warm-start", "--warm-batches", "2", "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert "warm starts across slices" in r.output
    d = json.loads((out / "sweep.json").read_text())
    assert [p["warm_start"]["timed_batches"] for p in d["points"]] == [2, 2]
    assert d["points"][1]["warm_start"]["speedup_warm"] > 0
    assert "Warm starts across slices" in (out / "sweep.md").read_text()
