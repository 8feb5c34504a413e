"""Pruning: coherence across residual/concatenation paths, guards, reports."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from mbdlprune.api import example_inputs, prune_model
from mbdlprune.errors import MbdlError, PruningError
from mbdlprune.models import list_archs
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator
from mbdlprune.pruning import PruneConfig, count_params, find_priors, prune_priors

MRI_SPEC = {"operator": {"kind": "mri", "image_size": list(SMALL_IMAGE_SIZE), "acceleration": 4, "coils": 3}}


def small(name: str):
    model, spec = build_arch(name, small_args(name))
    op = load_operator(MRI_SPEC) if spec.kind == "mbdl" else None
    return model.eval(), spec, op


def zero_group_channels(model: nn.Module, inputs: tuple, history) -> None:
    """Zero, in ``model``, every channel that pruning removed (all coupled layers of each group)."""
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(model, example_inputs=inputs)
    with torch.no_grad():
        for name, is_out, idxs in history:
            module = model.get_submodule(name)
            pruner = dg.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
            for dep, dep_idxs in dg.get_pruning_group(module, fn, idxs):
                if not dg.is_out_channel_pruning_fn(dep.handler):
                    continue
                m = dep.target.module
                ix = torch.as_tensor(list(dep_idxs), dtype=torch.long)
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    m.weight[:, ix] = 0
                elif isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                    m.weight[ix] = 0
                elif getattr(m, "weight", None) is not None:  # norm layers
                    m.weight[ix] = 0
                if getattr(m, "bias", None) is not None:
                    m.bias[ix] = 0


@pytest.mark.parametrize("prior_name", ["edsr", "dncnn", "unet"])
def test_pruned_prior_equals_zeroed_prior(prior_name):
    """Residual (EDSR, DnCNN) and concatenation (U-Net) paths are pruned coherently."""
    torch.manual_seed(0)
    args = {"edsr": {"n_feats": 16, "n_blocks": 3}, "dncnn": {"features": 16, "depth": 5, "batchnorm": True},
            "unet": {"chans": 8, "num_pool_layers": 2}}[prior_name]
    model, spec = build_arch(prior_name, args)
    model.eval()
    for m in model.modules():  # non-trivial norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    original = copy.deepcopy(model)
    x = torch.randn(2, 2, 24, 24)
    res = prune_model(model, spec, None, ratio=0.5, round_to=1, image_size=(24, 24))
    rec = res.meta["pruning"]["priors"][""]
    assert res.report["params_after"] < res.report["params_before"]
    zero_group_channels(original, (x,), rec["history"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", list_archs("mbdl"))
def test_every_mbdl_arch_prunes_and_keeps_shapes(arch):
    model, spec, op = small(arch)
    inputs = example_inputs(model, spec.kind, op)
    with torch.no_grad():
        before = model(*inputs).shape
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    assert res.report["params_after"] < res.report["params_before"]
    with torch.no_grad():
        assert model(*inputs).shape == before
    for name, rec in res.meta["pruning"]["priors"].items():
        assert rec["params_after"] < rec["params_before"], name
        assert rec["macs_after"] < rec["macs_before"], name
        for layer in rec["ignored"]:  # image-producing layers keep their width
            short = layer[len(name) + 1:] if name else layer
            assert rec["widths"][short][0] == rec["widths"][short][1]


def test_shared_prior_pruned_once_and_per_cascade_each():
    shared, spec, op = small("unrolled")
    res = prune_model(shared, spec, op, ratio=0.5, round_to=1)
    assert list(res.meta["pruning"]["priors"]) == ["prior"]
    assert res.meta["pruning"]["priors"]["prior"]["calls_per_forward"] == spec.args["steps"]
    args = {**small_args("unrolled"), "shared": False}
    model, spec = build_arch("unrolled", args)
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    assert sorted(res.meta["pruning"]["priors"]) == [f"priors.{i}" for i in range(args["steps"])]


def test_e2e_varnet_sensitivity_kept_unless_asked():
    model, spec, op = small("e2e-varnet")
    sens_before = count_params(model.sens_net)
    prune_model(model, spec, op, ratio=0.5, round_to=1)
    assert count_params(model.sens_net) == sens_before
    model, spec, op = small("e2e-varnet")
    res = prune_model(model, spec, op, ratio=0.5, round_to=1, prune_sensitivity=True)
    assert "sens_net.norm_unet.unet" in res.meta["pruning"]["priors"]
    assert count_params(model.sens_net) < sens_before
    assert not hasattr(model, "prune_sensitivity")  # the model does not know it was pruned


@pytest.mark.parametrize("priors, expected", [
    (["+sens_net.norm_unet.unet"], [*(f"cascades.{i}.model.unet" for i in range(2)), "sens_net.norm_unet.unet"]),
    (["cascades.*.model.unet"], [f"cascades.{i}.model.unet" for i in range(2)]),
    (["cascades.1.model.unet"], ["cascades.1.model.unet"]),
])
def test_prior_option_names_globs_and_additions(priors, expected):
    model, spec, op = small("e2e-varnet")
    assert len(model.cascades) == 2
    res = prune_model(model, spec, op, ratio=0.5, round_to=1, priors=priors)
    assert sorted(res.meta["pruning"]["priors"]) == sorted(expected)


def test_prior_glob_matching_nothing_is_refused():
    model, spec, op = small("e2e-varnet")
    with pytest.raises(MbdlError, match="matches no submodule"):
        prune_model(model, spec, op, ratio=0.5, round_to=1, priors=["nothing*"])


def test_frozen_checkpoint_still_prunes():
    model, spec, op = small("deq-edsr")
    for p in model.parameters():
        p.requires_grad_(False)
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    assert res.report["params_after"] < res.report["params_before"]
    assert not any(p.requires_grad for p in model.parameters())  # flags restored


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm", "legacy_weight_norm"])
def test_norm_parametrizations_removed_and_restored(norm):
    from torch.nn.utils import parametrizations, parametrize

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.c = nn.Conv2d(16, 1, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    net = Net()
    wrap = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm,
            "legacy_weight_norm": torch.nn.utils.weight_norm}[norm]
    wrap(net.b)
    x = torch.randn(2, 1, 12, 12)
    record = prune_priors(net, (x,), PruneConfig(ratio=0.5, round_to=1, priors=[""]))
    assert record["params_after"] < record["params_before"]
    assert net.b.weight.shape[0] == 8
    if norm == "legacy_weight_norm":
        assert hasattr(net.b, "weight_g") and net.b.weight_g.shape[0] == 8
    else:
        assert parametrize.is_parametrized(net.b, "weight")
    assert net(x).shape == x.shape


def test_round_to_gives_multiples_and_reports_achieved_ratio():
    model, spec = build_arch("edsr", {"n_feats": 24, "n_blocks": 2})
    res = prune_model(model, spec, None, ratio=0.3, round_to=8, image_size=(16, 16))
    widths = res.meta["pruning"]["priors"][""]["widths"]
    inner = [after for name, (before, after) in widths.items() if before == 24]
    assert inner and all(w % 8 == 0 for w in inner)
    assert res.report["priors"][""]["achieved_channel_ratio"] > 0


def test_user_model_priors_found_automatically():
    class Prior(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1))

        def forward(self, x):
            return x + self.net(x)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.denoisers = nn.ModuleList([Prior(), Prior()])
            self.unused = Prior()

        def forward(self, y, op):
            x = op.A_adjoint(y)
            for d in self.denoisers:
                x = d(x - 0.5 * op.A_adjoint(op.A(x) - y))
            return x

    op = load_operator(MRI_SPEC)
    model = Loop()
    inputs = example_inputs(model, "mbdl", op)
    sites, out = find_priors(model, inputs)
    assert out.shape == (1, 2, *SMALL_IMAGE_SIZE)
    assert [s.name for s in sites] == ["denoisers.0", "denoisers.1"]
    assert all(s.inputs[0].shape == (1, 2, *SMALL_IMAGE_SIZE) for s in sites)


def test_bad_ratio_and_unknown_prior():
    model, spec, op = small("deq-edsr")
    with pytest.raises(MbdlError, match="outside"):
        prune_model(model, spec, op, ratio=1.2)
    with pytest.raises(MbdlError, match="not a submodule"):
        prune_model(model, spec, op, ratio=0.5, priors=["nope"])


def test_nothing_pruned_is_an_error():
    model, spec, op = small("deq-edsr")
    with pytest.raises(PruningError, match="no parameters"):
        prune_model(model, spec, op, ratio=0.5, ignore=["prior.*"])


@pytest.mark.parametrize("ratio,kept", [(0.3, 24), (0.5, 16)])
def test_round_to_keeps_nearest_multiple(ratio, kept):
    """Neighbouring ratios stay distinct models: 32 channels at 0.3 keep 24, at 0.5 keep 16."""
    model, spec = build_arch("edsr", {"n_feats": 32, "n_blocks": 2})
    res = prune_model(model, spec, None, ratio=ratio, round_to=8, image_size=(16, 16))
    widths = res.meta["pruning"]["priors"][""]["widths"]
    assert {after for before, after in widths.values() if before == 32} == {kept}


def test_group_norm_rounds_to_its_groups_and_is_reported():
    """GroupNorm keeps widths divisible by its groups: the nearest multiple of 8 to 32 * 0.7 is 24
    (25% removed for 30% asked, within half a group step); the record shows both per layer."""
    from mbdlprune.pruning import achieved_ratios

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g = nn.Conv2d(2, 32, 3, padding=1), nn.GroupNorm(8, 32)
            self.c = nn.Conv2d(32, 2, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.g(self.a(x))))

    net = Net()
    record = prune_priors(net, (torch.randn(1, 2, 16, 16),), PruneConfig(ratio=0.3, round_to=1, priors=[""]))
    assert net.g.num_channels == net.a.out_channels == 24 and net.g.num_groups == 8
    assert achieved_ratios(record)["a"] == 0.25 and record["priors"][""]["requested"]["a"] == 0.3
    assert record["priors"][""]["held_back"] == {}


def test_pruning_a_copy_leaves_the_weight_normed_original_intact():
    """A deep copy shares torch's parametrized class with the original; pruning the copy (as a
    sweep does) must not take the original's weight property away."""
    from torch.nn.utils import parametrizations

    net = nn.Sequential(nn.Conv2d(2, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1))
    parametrizations.weight_norm(net[0])
    x = torch.randn(1, 2, 12, 12)
    with torch.no_grad():
        ref = net(x)
    clone = copy.deepcopy(net)
    prune_priors(clone, (x,), PruneConfig(ratio=0.5, round_to=1, priors=[""]))
    assert clone[0].weight.shape[0] == 8
    with torch.no_grad():
        assert torch.equal(net(x), ref) and net[0].weight.shape[0] == 16


@pytest.mark.parametrize("target,width,multiple,floor,kept", [
    (16, 32, 16, 0, 16), (22.4, 32, 8, 0, 24), (22.4, 32, 16, 0, 16),  # nearest multiple
    (72, 144, 16, 0, 64), (40, 80, 16, 0, 32),  # a tie goes to the even number of multiples
    (9, 18, 16, 0, 16), (4, 8, 16, 0, 8),  # at least one multiple; narrower than one: whole
    (3.2, 64, 1, 16, 16), (6.4, 64, 16, 6.4, 16), (30, 64, 16, 40, 48),  # the maximum-ratio floor
    (40, 40, 16, 0, 32), (60, 64, 32, 0, 64),
])
def test_kept_width_is_the_nearest_allowed_multiple(target, width, multiple, floor, kept):
    from mbdlprune.pruning import kept_width

    assert kept_width(target, width, multiple, floor) == kept


@pytest.mark.parametrize("before,after,requested,round_to,multiple,short", [
    (32, 16, 0.5, 16, None, False), (18, 16, 0.5, 16, None, False),  # the nearest multiple of 16
    (144, 144, 0.025, 16, None, False),  # within the tolerance
    (144, 144, 0.05, 16, None, False),  # 136.8 rounds to 144
    (32, 24, 0.3, 1, 8, False),  # GroupNorm(8): within half a group step
    (32, 32, 0.5, 64, None, True), (8, 8, 0.5, 16, None, True),  # narrower than one multiple
    (64, 16, 0.9, 16, None, True),  # held at one multiple, far above the request
    (32, 32, 0.3, 1, 32, True),  # one channel per group: left whole
    (64, 64, 0.5, 16, None, True), (16, 16, 0.5, 16, None, True),
    (64, 32, 0.0, 16, None, False), (64, 64, None, 16, None, False),
])
def test_shortfall_allows_rounding_only(before, after, requested, round_to, multiple, short):
    from mbdlprune.pruning import shortfall

    assert shortfall(before, after, requested, round_to, multiple) is short


def test_rounding_that_removes_far_less_than_asked_says_so():
    """48 channels at ratio 0.5 with widths rounded to 16: the nearest multiple is 32 (a tie kept
    wide), 33% removed where 50% was asked: not refused (the nearest multiple is the rule), but
    the report says so and names a --round-to that meets the request; an exact request stays quiet."""
    op = load_operator({"kind": "mri", "image_size": list(SMALL_IMAGE_SIZE), "acceleration": 4})
    args = {"prior": "dncnn", "steps": 2, "prior_args": {"features": 48, "depth": 3, "batchnorm": False}}
    torch.manual_seed(0)
    model, spec = build_arch("unrolled", args)
    res = prune_model(copy.deepcopy(model), spec, op, ratio=0.5, round_to=16)
    (note,) = res.report["notes"]
    assert re.search(r"33% of the channels removed where (49|50)% was asked", note) and "--round-to 8" in note
    assert prune_model(copy.deepcopy(model), spec, op, ratio=0.5, round_to=8).report["notes"] == []
    assert prune_model(copy.deepcopy(model), spec, op, ratio=0.5, round_to=1).report["notes"] == []
