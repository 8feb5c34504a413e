"""Fine-tuning: losses, ground-truth hygiene, DEQ gradients, splits, resume, NaN stop, 2-process gloo, CLI."""

from __future__ import annotations

import json
import os
import socket

import nibabel as nib
import numpy as np
import pytest
import torch

from mbdlprune import api, io
from mbdlprune.errors import ConfigError, DataError, MbdlError
from mbdlprune.finetuning import FinetuneConfig, combine, finetune, state_paths
from mbdlprune.finetuning.state import state_path
from mbdlprune.finetuning import losses as L
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
SPEC = {"kind": "mri", "image_size": [32, 32], "acceleration": 4, "coils": 2, "noise_sigma": 0.01}
DEQ_ARGS = {"n_feats": 8, "n_blocks": 1, "gamma": 0.5, "alpha": 0.2, "max_iter": 8, "tol": 1e-3}


class GroundTruthRead(AssertionError):
    pass


class Sentinel(torch.Tensor):
    """A tensor that fails the test on any use: proof that a loss never reads the ground truth."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise GroundTruthRead(f"ground truth was read ({getattr(func, '__name__', func)})")


def sentinel(shape):
    return torch.zeros(shape).as_subclass(Sentinel)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three NIfTI files of real brain slices (32x32), an original tiny DEQ and its 50% pruned copy."""
    root = tmp_path_factory.mktemp("ft")
    arr = np.asarray(nib.load(os.path.join(NIB_DATA, "anatomical.nii")).dataobj).astype(np.float32)[:32, 4:36]
    (root / "data").mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(arr[:, :, 8 + 2 * i: 10 + 2 * i], np.eye(4)), str(root / "data" / f"s{i}.nii.gz"))
    (root / "eval").mkdir()
    nib.save(nib.Nifti1Image(arr[:, :, 18:20], np.eye(4)), str(root / "eval" / "e0.nii.gz"))
    torch.manual_seed(0)
    op = load_operator(SPEC)
    model, spec = build_arch("deq-edsr", DEQ_ARGS)
    io.save_model(root / "orig.safetensors", model, {"arch": spec.to_dict(), "operator": op.spec})
    api.prune(root / "orig.safetensors", ratio=0.5, round_to=1, out=root / "pruned.safetensors")
    return root


def run(setup, out, **kw):
    args = dict(data=setup / "data", mode="supervised", epochs=1, val_fraction=0.34, lr=1e-3)
    args.update(kw)
    return finetune(setup / "pruned.safetensors", out=out, **args)


# ----------------------------------------------------------------------------- losses
def tiny_problem(noise=0.0):
    torch.manual_seed(1)
    op = load_operator({**SPEC, "noise_sigma": noise})
    model, _ = build_arch("deq-edsr", DEQ_ARGS)
    x = torch.rand(2, 2, 32, 32)
    y = op.A(x)
    return op, model.train(), x, y


@pytest.mark.parametrize("name", sorted({*L.LOSSES.names(), *L.PIXEL_LOSSES}))
def test_each_loss_is_finite_and_has_gradients(name):
    op, model, x, y = tiny_problem()
    teacher, _ = build_arch("deq-edsr", DEQ_ARGS)
    loss = combine({name: 1.0}, teacher=teacher.eval())
    x_net = model(y, op)
    v = loss(x_net, x, y, op, model, generator=torch.Generator().manual_seed(0))
    assert v.dim() == 0 and torch.isfinite(v)
    v.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())


@pytest.mark.parametrize("name", __import__("mbdlprune.finetuning.schedules", fromlist=["SCHEDULES"]).SCHEDULES.names())
def test_each_schedule_starts_at_the_base_rate_and_never_rises(name):
    from mbdlprune.finetuning.schedules import SCHEDULES

    fn = SCHEDULES.get(name)
    rates = [fn(e, 10, 1e-3) for e in range(10)]
    assert rates[0] == pytest.approx(1e-3)
    assert all(0 < b <= a for a, b in zip(rates, rates[1:]))


def test_no_ground_truth_terms_never_read_x():
    op, model, x, y = tiny_problem(noise=0.01)
    teacher, _ = build_arch("deq-edsr", DEQ_ARGS)
    gt = sentinel(x.shape)
    x_net = model(y, op)
    g = torch.Generator().manual_seed(0)
    for term in (L.DistillLoss(teacher.eval()), L.MeasurementConsistencyLoss(), L.EquivarianceLoss(noise=True)):
        assert torch.isfinite(term(x_net, gt, y, op, model, generator=g))
    for mode in ("distill", "self-supervised", "distill+self-supervised"):
        loss = L.build_mode_loss(mode, teacher=teacher.eval())
        assert not loss.needs_ground_truth
        assert torch.isfinite(loss(x_net, gt, y, op, model, generator=g))
    with pytest.raises(GroundTruthRead):
        L.build_mode_loss("supervised")(x_net, gt, y, op, model)
    # a cached teacher output in the batch is used instead of running the teacher
    target = torch.full_like(x_net, 0.5)
    d = L.DistillLoss(None, pixel="l2")(x_net, gt, y, op, model, batch={"teacher": target})
    assert torch.allclose(d, ((x_net - target) ** 2).mean())
    with pytest.raises(ConfigError, match="--teacher"):
        L.DistillLoss(None)(x_net, gt, y, op, model)


def test_equivariance_transforms_keep_the_image_size():
    assert len(L.transforms_for(8, 8)) == 7
    rect = L.transforms_for(8, 6)
    assert len(rect) == 3
    x = torch.arange(48.0).reshape(1, 1, 8, 6)
    for t in rect:
        tx = L.apply_transform(x, t)
        assert tx.shape == x.shape and not torch.equal(tx, x)
    sq = torch.arange(64.0).reshape(1, 1, 8, 8)
    outs = {tuple(L.apply_transform(sq, t).flatten().tolist()) for t in L.transforms_for(8, 8)}
    assert len(outs) == 7  # all distinct, none the identity
    assert tuple(sq.flatten().tolist()) not in outs


def test_combine_weights_registry_and_strict_config():
    c = combine({"distill": 1.0, "self-supervised": 0.5})
    assert c.weights() == {"distill": 1.0, "mc": 0.5, "equivariance": 0.5}
    assert L.mode_weights("self-supervised", {"equivariance": 0.25}) == {"mc": 1.0, "equivariance": 0.25}
    assert set(L.MODES.names()) == {"supervised", "distill", "self-supervised", "distill+self-supervised"}
    with pytest.raises(ConfigError, match="unknown loss"):
        combine({"nope": 1.0})
    with pytest.raises(ConfigError):
        combine({"mc": -1.0})
    with pytest.raises(ConfigError, match="epochz"):
        FinetuneConfig.from_dict({"epochz": 3})
    with pytest.raises(MbdlError, match="fine-tuning mode"):
        FinetuneConfig.from_dict({"mode": "teacher"})
    with pytest.raises(ConfigError, match="lr"):
        FinetuneConfig.from_dict({"lr": 0})
    assert FinetuneConfig.from_dict({"mode": "distill", "epochs": 2}).epochs == 2


def test_spectral_target_travels_from_the_config_to_the_term_and_the_record(setup, tmp_path):
    assert combine({"spectral": 1.0}, spectral_target=0.9).find("spectral").target == 0.9
    assert combine({"spectral": 1.0}).find("spectral").target == 0.5
    with pytest.raises(ConfigError, match="spectral_target"):
        FinetuneConfig.from_dict({"spectral_target": 0})
    res = run(setup, tmp_path / "s.safetensors", weights={"spectral": 0.1}, spectral_target=0.8)
    terms = {t["name"]: t for t in res.record["losses"]["terms"]}
    assert terms["spectral"]["target"] == 0.8 and terms["spectral"]["weight"] == 0.1


# ----------------------------------------------------------------------------- Jacobian term
def _small_deq(alpha, gamma=0.5):
    """A DEQ small enough for its exact iteration Jacobian: 2 x 8 x 8 images (dim 128)."""
    torch.manual_seed(3)
    op = load_operator({**SPEC, "image_size": [8, 8], "noise_sigma": 0.0})
    model, _ = build_arch("deq-edsr", {"n_feats": 4, "n_blocks": 1, "gamma": gamma, "alpha": alpha, "max_iter": 30, "tol": 1e-5})
    y = op.A(torch.rand(1, 2, 8, 8))
    return op, model.train(), y


def _exact_frobenius_per_dim(model, y, op):
    x_star = model.fixed_point(y, op)
    with torch.no_grad():
        J = torch.autograd.functional.jacobian(lambda v: model.step(v, y, op), x_star)
    return float(J.reshape(x_star.numel(), x_star.numel()).pow(2).sum()) / x_star.numel()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_jacobian_term_is_an_unbiased_estimate_of_the_frobenius_norm(alpha):
    # alpha 0: J = I - gamma A^H A (the prior plays no part); alpha 0.5: the prior's Jacobian enters too
    op, model, y = _small_deq(alpha)
    exact = _exact_frobenius_per_dim(model, y, op)
    term = L.JacobianLoss()
    g = torch.Generator().manual_seed(0)
    x_net = model(y, op)
    est = torch.stack([term(x_net, None, y, op, model, generator=g).detach() for _ in range(1500)]).mean().item()
    assert exact > 0.1
    assert abs(est - exact) < 0.08 * exact, (est, exact)


def test_jacobian_term_vanishes_for_a_zero_prior_with_alpha_one():
    op, model, y = _small_deq(alpha=1.0)
    for p in model.prior.parameters():
        torch.nn.init.zeros_(p)  # f(x) = prior(z) = 0 everywhere: J_f = 0
    v = L.JacobianLoss()(model(y, op), None, y, op, model, generator=torch.Generator().manual_seed(0))
    assert float(v.detach()) == 0.0


def test_jacobian_term_reuses_the_training_fixed_point_and_combines_with_any_mode():
    op, model, x, y = tiny_problem()
    model(y, op)
    assert model.fixed_point(y, op) is model._last_fixed_point[1]  # kept by the training forward
    assert model.fixed_point(y.clone(), op) is not model._last_fixed_point[1]  # other measurements: solved again
    teacher, _ = build_arch("deq-edsr", DEQ_ARGS)
    loss = L.build_mode_loss("distill+self-supervised", {"jacobian": 0.05}, teacher=teacher.eval())
    assert loss.weights() == {"distill": 1.0, "mc": 1.0, "equivariance": 1.0, "jacobian": 0.05}
    v = loss(model(y, op), None, y, op, model, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(v) and list(loss.last) == ["distill", "mc", "equivariance", "jacobian"]
    assert loss.describe()["terms"][-1]["definition"].startswith("||e^T J||^2 / dim")


def test_jacobian_term_refuses_models_that_are_not_deq(tmp_path):
    op = load_operator(SPEC)
    model, spec = build_arch("unrolled", {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 2}})
    y = op.A(torch.rand(1, 2, 32, 32))
    with pytest.raises(ConfigError, match="DEQ"):
        L.JacobianLoss()(model(y, op), None, y, op, model)
    io.save_model(tmp_path / "u.safetensors", model, {"arch": spec.to_dict(), "operator": op.spec})
    with pytest.raises(ConfigError, match="DEQ"):
        finetune(tmp_path / "u.safetensors", data=tmp_path, out=None, mode="supervised", epochs=1,
                 weights={"jacobian": 0.1})


def test_jacobian_weight_in_a_run_is_recorded(setup, tmp_path):
    out = tmp_path / "jac.safetensors"
    r = run(setup, out, mode="distill", teacher=setup / "orig.safetensors", weights={"jacobian": 0.05})
    rec = io.read_checkpoint(out)[1]["finetune"]
    assert rec["weights"] == {"distill": 1.0, "jacobian": 0.05}
    assert [t["name"] for t in rec["losses"]["terms"]] == ["distill", "jacobian"]
    assert rec["history"][0]["train"]["jacobian"] > 0
    assert r.summary()["best_epoch"] == 1


# ----------------------------------------------------------------------------- DEQ gradients
def _prior_grads(model):
    return torch.cat([p.grad.flatten() for p in model.prior.parameters()])


def test_jfb_and_implicit_match_full_unrolled_gradient_on_a_contractive_deq():
    torch.manual_seed(3)
    op = load_operator({"kind": "denoise", "image_size": [16, 16], "channels": 2})
    model, _ = build_arch("deq-edsr", {"n_feats": 4, "n_blocks": 1, "gamma": 0.5, "alpha": 0.5, "tol": 1e-7, "max_iter": 200,
                                       "solver": "fixed_point"})
    with torch.no_grad():
        for p in model.prior.parameters():
            p.mul_(0.3)  # a small-Lipschitz prior: the fixed-point map contracts strongly
    y = torch.rand(1, 2, 16, 16)
    target = torch.rand(1, 2, 16, 16)
    model.train()

    def grads(fn):
        model.zero_grad()
        ((fn() - target) ** 2).sum().backward()
        return _prior_grads(model)

    def unrolled():
        x = op.A_adjoint(y)
        for _ in range(80):
            x = model.step(x, y, op)
        return x

    full = grads(unrolled)
    model.backward = "jfb"
    jfb = grads(lambda: model(y, op))
    model.backward = "implicit"
    implicit = grads(lambda: model(y, op))
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(jfb, full, dim=0)) > 0.9
    assert float((implicit - full).norm() / full.norm()) < 1e-3


# ----------------------------------------------------------------------------- the loop
def test_all_modes_run_and_record(setup, tmp_path):
    for mode in ("supervised", "distill", "self-supervised", "distill+self-supervised"):
        out = tmp_path / f"{mode}.safetensors"
        r = run(setup, out, mode=mode, teacher=setup / "orig.safetensors" if "distill" in mode else None)
        assert out.is_file() and not any(p.exists() for p in state_paths(out))
        rec = io.read_checkpoint(out)[1]["finetune"]
        assert rec["mode"] == mode and rec["validation"]["metric"] == "psnr"
        assert rec["validation"]["before"] is not None and rec["best_val_psnr"] is not None
        assert rec["data"]["train"]["normalization"] == "max" and len(rec["epoch_time_s"]) == 1
        tr, va = set(rec["data"]["train"]["files"].values()), set(rec["data"]["val"]["files"].values())
        assert tr and va and not (tr & va)  # split by file
        if "distill" in mode:
            assert rec["teacher"]["is_parent"] and rec["teacher_cached"]
        loaded = io.load_model(out)
        assert loaded.meta["pruning"] and loaded.meta["arch"]["name"] == "deq-edsr"
        assert r.summary()["best_epoch"] == 1


def test_ground_truth_is_not_used_by_unsupervised_modes(setup, tmp_path, monkeypatch):
    from mbdlprune.finetuning import trainer

    real = trainer._prepare_data

    def poisoned(*a, **k):
        train, val, ev = real(*a, **k)
        train.dataset.x = torch.full_like(train.dataset.x, float("nan"))
        return train, val, ev

    monkeypatch.setattr(trainer, "_prepare_data", poisoned)
    r = run(setup, None, mode="distill+self-supervised", teacher=setup / "orig.safetensors", epochs=1)
    assert np.isfinite(r.record["history"][0]["train"]["loss"])
    with pytest.raises(MbdlError, match="nan"):
        run(setup, None, mode="supervised")


def test_teacher_from_a_plain_torch_state_dict(setup, tmp_path):
    state, _ = io.read_checkpoint(setup / "orig.safetensors")
    torch.save({"state_dict": state}, tmp_path / "orig.pt")
    r = run(setup, None, mode="distill", teacher=tmp_path / "orig.pt")
    assert r.record["teacher"]["sha256"] == io.sha256_file(tmp_path / "orig.pt")
    assert not r.record["teacher"]["is_parent"] and any("not the checkpoint" in w for w in r.warnings)


def test_missing_teacher_overlap_and_single_file_errors(setup, tmp_path):
    with pytest.raises(ConfigError, match="--teacher"):
        run(setup, tmp_path / "a.safetensors", mode="distill")
    with pytest.raises(DataError, match="s1.nii.gz"):
        run(setup, tmp_path / "b.safetensors", eval_data=[setup / "eval", setup / "data" / "s1.nii.gz"])
    with pytest.raises(DataError, match="--val-data"):
        run(setup, tmp_path / "c.safetensors", data=setup / "data" / "s0.nii.gz")
    # separate validation files instead of a split; eval data disjoint is fine
    r = run(setup, None, data=setup / "data" / "s0.nii.gz", val_data=setup / "data" / "s1.nii.gz", eval_data=setup / "eval")
    assert r.record["data"]["val_source"] == "val_data" and r.record["data"]["eval_files"]
    assert not (tmp_path / "a.safetensors").exists()


def test_resume_gives_bit_identical_weights(setup, tmp_path):
    kw = dict(mode="distill+self-supervised", teacher=setup / "orig.safetensors", epochs=2, lr_schedule="none")
    run(setup, tmp_path / "a.safetensors", **kw)

    class Stop(Exception):
        pass

    def stop_after_first(event):
        if event["epoch"] == 1:
            raise Stop

    with pytest.raises(MbdlError, match="already finished"):
        run(setup, tmp_path / "a.safetensors", resume=True, **kw)
    with pytest.raises(Stop):
        run(setup, tmp_path / "b.safetensors", callback=stop_after_first, **kw)
    assert state_path(tmp_path / "b.safetensors").exists()
    assert not (tmp_path / "b.safetensors").exists()
    with pytest.raises(ConfigError, match="lr"):
        run(setup, tmp_path / "b.safetensors", resume=True, **{**kw, "lr": 5e-4})
    r = run(setup, tmp_path / "b.safetensors", resume=True, **kw)
    assert r.record["resumed_from_epoch"] == 1
    a, _ = io.read_checkpoint(tmp_path / "a.safetensors")
    b, _ = io.read_checkpoint(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_without_output_and_keeps_state(setup, tmp_path):
    state, meta = io.read_checkpoint(setup / "pruned.safetensors")
    model = io.load_model(setup / "pruned.safetensors").model
    with torch.no_grad():
        model.prior.tail.weight.fill_(3e38)  # finite in the file, overflows in the forward
    io.save_model(tmp_path / "bad.safetensors", model, meta)
    out = tmp_path / "out.safetensors"
    with pytest.raises(MbdlError, match="--resume") as e:
        finetune(tmp_path / "bad.safetensors", data=setup / "data", out=out, mode="supervised", epochs=1, val_fraction=0.34)
    assert "nan" in str(e.value) or "inf" in str(e.value)
    assert not out.exists() and state_path(out).exists()


def test_unrolled_with_checkpointing_and_measurement_only_validation(tmp_path):
    """A tiny unrolled network, measurement-only (k-space) data, validation by measurement consistency."""
    op = load_operator(SPEC)
    model, spec = build_arch("unrolled", {"prior": "dncnn", "steps": 2, "prior_args": {"features": 8, "depth": 2}})
    io.save_model(tmp_path / "u.safetensors", model, {"arch": spec.to_dict(), "operator": op.spec})
    arr = np.asarray(nib.load(os.path.join(NIB_DATA, "anatomical.nii")).dataobj).astype(np.float32)[:32, 4:36]
    xs = torch.from_numpy(np.moveaxis(arr[:, :, 8:14], 2, 0).copy())
    k = torch.view_as_complex(op.sens_expand(torch.stack([xs, torch.zeros_like(xs)], 1)).contiguous()).numpy()
    (tmp_path / "k").mkdir()
    np.savez(tmp_path / "k" / "k0.npz", kspace=k[:3])
    np.savez(tmp_path / "k" / "k1.npz", kspace=k[3:])
    r = finetune(tmp_path / "u.safetensors", data=tmp_path / "k", out=tmp_path / "o.safetensors", mode="self-supervised",
                 epochs=2, val_fraction=0.5, checkpointing=True, lr=1e-3)
    v = r.record["validation"]
    assert v["metric"] == "measurement-consistency" and "no ground truth" in v["definition"]
    assert r.record["model_settings"]["checkpointing"] is True and r.record["best_val_psnr"] is None
    # fully sampled k-space: supervised training takes the RSS of the fully sampled k-space as its target
    r = finetune(tmp_path / "u.safetensors", data=tmp_path / "k", out=None, mode="supervised", epochs=1, val_fraction=0.5)
    assert r.record["data"]["train"]["ground_truth"] and r.record["validation"]["metric"] == "psnr"


# ----------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from pathlib import Path

    from safetensors.torch import save_file

    r = finetune(Path(root) / "pruned.safetensors", data=Path(root) / "data", out=out, mode="self-supervised",
                 epochs=1, val_fraction=0.34, lr=1e-3, device="cpu")
    save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}.rank{rank}")


def test_two_process_gloo_run(setup, tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(setup), out), nprocs=2, join=True)
    state, meta = io.read_checkpoint(out)
    assert meta["finetune"]["world_size"] == 2
    from safetensors.torch import load_file

    r0, r1 = load_file(out + ".rank0"), load_file(out + ".rank1")
    assert all(torch.equal(r0[k], r1[k]) and torch.equal(state[k], r0[k]) for k in state)  # ranks stay in sync
    assert not any(p.exists() for p in state_paths(out))


# ----------------------------------------------------------------------------- CLI
def test_cli_wiring(setup, tmp_path):
    from typer.testing import CliRunner

    from mbdlprune.cli import app

    runner = CliRunner()
    out = tmp_path / "cli.safetensors"
    base = ["finetune", str(setup / "pruned.safetensors"), "--data", str(setup / "data"), "--epochs", "1",
            "--val-fraction", "0.34", "-o", str(out)]
    res = runner.invoke(app, [*base, "--mode", "self-supervised", "--json", "--weights", '{"equivariance": 0.5}'])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["mode"] == "self-supervised" and doc["record"]["weights"] == {"mc": 1.0, "equivariance": 0.5}
    assert out.is_file()
    res = runner.invoke(app, [*base, "--mode", "self-supervised", "--json"])
    assert res.exit_code == 2 and "--force" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, [*base, "--mode", "distill", "--force"])
    assert res.exit_code == 2 and "--teacher" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, [*base, "--mode", "nonsense", "--force"])
    assert res.exit_code == 2 and "fine-tuning mode" in res.stderr
    res = runner.invoke(app, [*base, "--mode", "distill", "--teacher", str(setup / "orig.safetensors"), "--force"])
    assert res.exit_code == 0, res.output
    assert "Fine-tuned (distill)" in res.stdout and "wrote" in res.stdout


def test_progress_goes_to_a_reporter_and_the_core_draws_nothing(setup, tmp_path):
    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, name):
            if name in ("start", "step", "val", "skip", "close"):
                return lambda *a: self.calls.append((name, a))
            raise AttributeError(name)

    rec = Recorder()
    run(setup, tmp_path / "p.safetensors", progress=rec, mode="supervised", epochs=2, val_fraction=0.34)
    names = [c[0] for c in rec.calls]
    assert names[0] == "start" and rec.calls[0][1][0] == 2 and names[-1] == "close"
    assert names.count("val") == 2 and names.count("step") >= 2
    with pytest.raises(ConfigError, match="reporter"):
        run(setup, tmp_path / "q.safetensors", progress=object(), mode="supervised", epochs=1, val_fraction=0.34)


def test_spectral_term_estimates_the_largest_singular_value_of_the_iteration():
    """The power iteration (carried across calls) converges to sigma_max of J at the fixed point,
    checked against torch.autograd.functional's jvp/vjp; the penalty has gradients."""
    from torch.autograd.functional import jvp, vjp

    op, model, x, y = tiny_problem()
    y = y[:1]
    term = L.SpectralLoss(target=0.0, iterations=4)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # the vector carries over: 20 power iterations in all
        model.zero_grad()
        v = term(model(y, op), None, y, op, model, generator=g)
    v.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.parameters())
    x_star = model.fixed_point(y, op).detach()

    def f(z):
        return model.step(z, y, op)

    u = torch.randn(x_star.shape, generator=torch.Generator().manual_seed(1))
    u = u / u.norm()
    for _ in range(40):
        _, ju = jvp(f, x_star, u)
        _, u = vjp(f, x_star, ju)
        u = u / u.norm()
    _, ju = jvp(f, x_star, u)
    assert term.last_sigma == pytest.approx(float(ju.norm()), rel=0.02)
