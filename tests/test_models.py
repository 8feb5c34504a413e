"""Every registered architecture builds, runs, back-propagates and describes its priors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mbdlprune.errors import ConfigError
from mbdlprune.models import create_arch, default_args, get_arch, list_archs
from mbdlprune.models.deq import DEQ
from mbdlprune.models.small import SMALL_ARGS, SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.priors import EDSR, Unet
from mbdlprune.models.solvers import SOLVERS
from mbdlprune.models.unrolled import Unrolled

try:
    from _toy_ops import ToyInpaint, ToyMRI, toy_mri
except ImportError:  # tests/ imported as a package
    from tests._toy_ops import ToyInpaint, ToyMRI, toy_mri



@pytest.fixture(scope="module")
def mri():
    return toy_mri(SMALL_IMAGE_SIZE)


def _problem(op, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *op.image_shape), generator=g)
    return x, op.A(x)


def _assert_grads(model: nn.Module):
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"


def _check_paths_and_outputs(model: nn.Module, image_channels: int):
    paths = model.prior_paths()
    assert paths and len(set(paths)) == len(paths)
    priors = [model.get_submodule(p) for p in paths]
    assert len({id(p) for p in priors}) == len(priors)  # a shared prior appears once
    modules = {id(m) for m in model.modules()}
    outs = model.output_layers()
    assert outs and all(id(m) in modules for m in outs)
    assert all(m.out_channels == image_channels for m in outs)
    for prior in priors:
        assert hasattr(prior, "in_channels") and hasattr(prior, "out_channels")
        assert {id(m) for m in prior.output_layers()} <= {id(m) for m in outs}


def test_small_args_cover_every_architecture():
    assert set(SMALL_ARGS) == set(list_archs())
    for name, args in SMALL_ARGS.items():
        assert set(args) <= set(default_args(name)), name


@pytest.mark.parametrize("name", list_archs())
def test_architecture_forward_backward(name, mri):
    torch.manual_seed(0)
    model = create_arch(name, **small_args(name)).train()
    if get_arch(name).kind == "prior":
        x = torch.randn(2, model.in_channels, *SMALL_IMAGE_SIZE)
        out = model(x)
        assert out.shape == (2, model.out_channels, *SMALL_IMAGE_SIZE)
        assert model.output_layers() and all(m.out_channels == model.out_channels for m in model.output_layers())
    else:
        x, y = _problem(mri)
        out = model(y, mri)
        assert out.shape == x.shape
        assert model.last_info["iterations"] >= 1
        _check_paths_and_outputs(model, image_channels=2)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    _assert_grads(model)


def test_unknown_factory_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="nope"):
        create_arch("edsr", nope=1)
    with pytest.raises(ConfigError, match="nope"):
        create_arch("unrolled", prior="dncnn", prior_args={"nope": 1})
    with pytest.raises(ConfigError):
        create_arch("unrolled", prior="no-such-prior")
    with pytest.raises(ConfigError):
        create_arch("unrolled", prior="dncnn", prior_args={"in_channels": 1})
    with pytest.raises(ConfigError):
        create_arch("deq-edsr", solver="newton")
    with pytest.raises(ConfigError):
        create_arch("e2e-varnet", output="magnitude")


def test_edsr_default_size_and_names():
    model = create_arch("edsr")
    assert 0.95e6 < sum(p.numel() for p in model.parameters()) < 1.05e6
    names = dict(model.named_modules())
    assert {"head", "body", "body.13", "tail"} <= set(names)
    assert model.output_layers() == [model.tail]


def test_dncnn_residual_and_plain():
    x = torch.randn(1, 2, 8, 8)
    model = create_arch("dncnn", features=4, depth=3).eval()
    assert torch.allclose(model(x), x - model.layers(x))
    plain = create_arch("dncnn", in_channels=1, out_channels=3, features=4, depth=3, residual=False, batchnorm=False)
    assert plain(torch.randn(1, 1, 8, 8)).shape == (1, 3, 8, 8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


@pytest.mark.parametrize("size", [(15, 17), (16, 16), (9, 12)])
def test_unet_odd_sizes(size):
    model = Unet(in_chans=1, out_chans=3, chans=4, num_pool_layers=2)
    assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)
    assert (model.in_channels, model.out_channels) == (1, 3)


# ----------------------------------------------------------------------- solvers
def _contraction(seed=0, n=3, d=24, rate=0.97):
    """A linear contraction x -> A x + b with A symmetric, eigenvalues in [-0.5, rate]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-0.5, rate, d, dtype=torch.float64)) @ q.T
    b = torch.randn(n, 2, 3, 4, generator=g, dtype=torch.float64)
    return (lambda x: (x.reshape(n, d) @ a.T).reshape(x.shape) + b), a, b


def test_solvers_converge_and_anderson_is_faster():
    f, a, b = _contraction()
    x0 = torch.zeros_like(b)
    exact = torch.linalg.solve(torch.eye(24, dtype=a.dtype) - a, b.reshape(3, 24).T).T.reshape(b.shape)
    results = {}
    for name in ("fixed_point", "anderson"):
        x, info = SOLVERS.get(name)(f, x0, max_iter=2000, tol=1e-8)
        assert set(info) == {"iterations", "residual", "converged"}
        assert info["converged"] and info["residual"] < 1e-8
        assert torch.allclose(x, exact, atol=1e-6)
        results[name] = info["iterations"]
    assert results["anderson"] < results["fixed_point"] / 3


def _anderson_reference(f, x0, iters, m=5, lam=1e-4, beta=1.0):
    """Anderson type II written out: the last m differences stacked afresh each step, the
    regularised least squares solved with lstsq (float64 throughout)."""
    n = x0.shape[0]
    x = x0.reshape(n, -1)
    fx = f(x0).reshape(n, -1)
    g = fx - x
    dxs, dgs = [], []
    for _ in range(iters - 1):
        if not dgs:
            x_new = x + beta * g
        else:
            dg, dx = torch.stack(dgs, 2), torch.stack(dxs, 2)
            k = dg.shape[2]
            s = dg.norm(dim=1, keepdim=True)
            lhs = torch.cat([dg / s, lam ** 0.5 * torch.eye(k, dtype=dg.dtype).expand(n, k, k)], 1)
            rhs = torch.cat([g, g.new_zeros(n, k)], 1).unsqueeze(2)
            c = torch.linalg.lstsq(lhs, rhs).solution / s.transpose(1, 2)
            x_new = x + beta * g - ((dx + beta * dg) @ c).squeeze(2)
        fx_new = f(x_new.reshape(x0.shape)).reshape(n, -1)
        dxs.append(x_new - x), dgs.append(fx_new - x_new - g)
        if len(dxs) > m:
            dxs.pop(0), dgs.pop(0)
        x, fx, g = x_new, fx_new, fx_new - x_new
    return fx.reshape(x0.shape)


@pytest.mark.parametrize("iters", [1, 2, 4, 9, 15])
def test_anderson_matches_the_textbook_iteration(iters):
    """The ring buffers and the incrementally updated Gram matrix give the textbook iterates,
    also after the history wraps around (m = 5), on a nonlinear map with a batch of 3."""
    lin, _, b = _contraction(rate=0.95)

    def f(x):
        return lin(x) + 0.1 * torch.tanh(x)

    x0 = torch.zeros_like(b)
    got, info = SOLVERS.get("anderson")(f, x0, max_iter=iters, tol=0.0)
    assert info["iterations"] == iters
    assert torch.allclose(got, _anderson_reference(f, x0, iters), rtol=1e-9, atol=1e-9)


def test_solver_reports_non_convergence():
    f, _, b = _contraction(rate=0.99)
    _, info = SOLVERS.get("fixed_point")(f, torch.zeros_like(b), max_iter=5, tol=1e-10)
    assert info == {"iterations": 5, "residual": info["residual"], "converged": False}
    assert math.isfinite(info["residual"])


# --------------------------------------------------------------------------- DEQ
def test_deq_info_eval_and_runtime_settings(mri):
    model = create_arch("deq-edsr", **small_args("deq-edsr")).eval()
    _, y = _problem(mri)
    with torch.no_grad():
        out = model(y, mri)
    assert not out.requires_grad
    info = model.last_info
    assert set(info) == {"iterations", "residual", "converged"} and 1 <= info["iterations"] <= model.max_iter
    model.solver, model.max_iter, model.tol = "fixed_point", 3, 0.0
    model(y, mri)
    assert model.last_info["iterations"] == 3 and not model.last_info["converged"]


def test_deq_jfb_gradient_only_through_last_step(mri):
    model = create_arch("deq-edsr", **small_args("deq-edsr")).train()
    _, y = _problem(mri)
    out = model(y, mri)
    assert out.requires_grad and out.grad_fn is not None
    out.sum().backward()
    assert model.gamma.grad is not None and model.alpha.grad is not None
    _assert_grads(model)


def test_deq_implicit_gradient_matches_unrolled_autograd():
    """At a contraction, the implicit gradient equals backprop through many iterations."""
    torch.manual_seed(0)
    op = ToyInpaint((6, 6), channels=1).double()
    prior = EDSR(1, 1, n_feats=4, n_blocks=1).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.mul_(0.3)  # keep the prior's Lipschitz constant well below one
    model = DEQ(prior, gamma=0.5, alpha=0.6, solver="fixed_point", tol=1e-13, max_iter=100, backward="implicit")
    model.double().train()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    y = op.A(x)
    target = torch.randn_like(x)

    (model(y, op) - target).square().sum().backward()
    assert model.last_info["converged"]
    implicit = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    z = op.A_adjoint(y)
    for _ in range(100):
        z = model.step(z, y, op)
    (z - target).square().sum().backward()
    reference = [p.grad for p in model.parameters()]
    for gi, gr in zip(implicit, reference):
        assert torch.allclose(gi, gr, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------- unrolled
def test_unrolled_unshared_unet_prior(mri):
    model = create_arch("unrolled", prior="unet", steps=2, shared=False, prior_args={"chans": 4, "num_pool_layers": 2})
    assert model.prior_paths() == ["priors.0", "priors.1"]
    assert all(isinstance(model.get_submodule(p), Unet) for p in model.prior_paths())
    assert model.step_sizes.shape == (2,)
    _, y = _problem(mri)
    assert model(y, mri).shape == (2, 2, *SMALL_IMAGE_SIZE)
    assert model.last_info == {"iterations": 2}
    assert len(model.output_layers()) == 2


def test_unrolled_one_channel_and_checkpointing_same_gradients():
    op = ToyInpaint(SMALL_IMAGE_SIZE, channels=1)
    torch.manual_seed(0)
    model = create_arch("unrolled", prior="edsr", steps=3, in_channels=1, prior_args={"n_feats": 4, "n_blocks": 1})
    assert isinstance(model, Unrolled) and model.prior_paths() == ["prior"]
    _, y = _problem(op)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.checkpointing = ckpt
        model.train()(y, op).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------ VarNet
def test_varnet_outputs_and_sensitivities():
    op = ToyMRI(SMALL_IMAGE_SIZE, coils=3)
    _, y = _problem(op)
    rss = create_arch("e2e-varnet", **small_args("e2e-varnet"), output="rss")
    assert rss(y, op).shape == (2, 1, *SMALL_IMAGE_SIZE)
    model = create_arch("e2e-varnet", **small_args("e2e-varnet"))
    maps = model.sensitivity_maps(y, op)
    assert maps.shape == (2, 3, *SMALL_IMAGE_SIZE, 2)
    assert torch.allclose((maps ** 2).sum(dim=(1, -1)), torch.ones(2, *SMALL_IMAGE_SIZE), atol=1e-4)
    # the ACS centre from the mask alone equals the one from num_low_frequencies
    mask = op.mask > 0
    given = model.sens_net.low_frequency_mask(mask, SMALL_IMAGE_SIZE[1], op.num_low_frequencies)
    found = model.sens_net.low_frequency_mask(mask, SMALL_IMAGE_SIZE[1], None)
    assert int(given.sum()) == op.num_low_frequencies and torch.equal(given, found)


def test_sens_expand_reduce_are_adjoint_and_invert_normalised_maps():
    from mbdlprune.models.varnet import sens_expand, sens_reduce

    op = ToyMRI(SMALL_IMAGE_SIZE, coils=3).double()
    sens = op.coil_maps.unsqueeze(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *SMALL_IMAGE_SIZE, 2, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, *SMALL_IMAGE_SIZE, 2, generator=g, dtype=torch.float64)
    assert torch.allclose((sens_expand(x, sens) * k).sum(), (x * sens_reduce(k, sens)).sum())
    assert torch.allclose(sens_reduce(sens_expand(x, sens), sens), x)
