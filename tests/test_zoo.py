"""Foreign architectures (tests/zoo.py) pruned with the defaults: each reaches the requested
removal, stays coherent (equal to the unpruned model with the removed channels zeroed) and
round-trips exactly through the model file; requests that cannot be met fail in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mbdlprune.api import example_inputs, prune_model
from mbdlprune.cli import app
from mbdlprune.errors import PruningError
from mbdlprune.io import load_model, save_model
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator
from zoo import OPERATOR, ZOO, arch_spec

@pytest.fixture(scope="module")
def op():
    return load_operator(OPERATOR)


def build(name: str):
    torch.manual_seed(0)
    model, spec = build_arch(arch_spec(name), {})
    for m in model.modules():  # non-trivial norm statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval(), spec


def zero_removed(prior: nn.Module, inputs: tuple, history) -> None:
    """Zero, in the unpruned ``prior``, every channel pruning removed (all coupled layers of each
    group); GroupNorm layers then normalise each of their groups over the channels kept. The
    graph is torch-pruning's with one-channel gates decoupled, as pruning builds it."""
    import torch_pruning as tp
    from torch.nn.utils import parametrize

    from mbdlprune.pruning.groups import _cut_broadcasts

    for m in list(prior.modules()):  # plain weights, as pruning sees them
        if parametrize.is_parametrized(m):
            for pname in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
    for p in prior.parameters():
        p.requires_grad_(True)
    dg = tp.DependencyGraph().build_dependency(prior, example_inputs=inputs)
    _cut_broadcasts(dg, [m for m in prior.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 1])
    removed: dict[nn.Module, set[int]] = {}
    with torch.no_grad():
        for name, is_out, idxs in history:
            module = prior.get_submodule(name)
            pruner = dg.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
            for dep, dep_idxs in dg.get_pruning_group(module, fn, idxs):
                if not dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(dep.target.module, nn.Module):
                    continue
                m = dep.target.module
                ix = torch.as_tensor(list(dep_idxs), dtype=torch.long)
                removed.setdefault(m, set()).update(ix.tolist())
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    m.weight[:, ix] = 0
                elif getattr(m, "weight", None) is not None and not isinstance(m, nn.PReLU):
                    m.weight[ix] = 0
                if getattr(m, "bias", None) is not None:
                    m.bias[ix] = 0
    for m, gone in removed.items():
        if isinstance(m, nn.GroupNorm):
            m.register_forward_hook(_group_norm_over_kept(sorted(set(range(m.num_channels)) - gone)))


def _group_norm_over_kept(kept: list[int]):
    def hook(m: nn.GroupNorm, args, out):
        x = args[0]
        size = m.num_channels // m.num_groups
        res = torch.zeros_like(out)
        for g in range(m.num_groups):
            ch = [c for c in kept if c // size == g]
            xs = x[:, ch]
            mean = xs.mean(dim=tuple(range(1, xs.dim())), keepdim=True)
            var = xs.var(dim=tuple(range(1, xs.dim())), unbiased=False, keepdim=True)
            shape = (1, len(ch)) + (1,) * (xs.dim() - 2)
            res[:, ch] = (xs - mean) / torch.sqrt(var + m.eps) * m.weight[ch].view(shape) + m.bias[ch].view(shape)
        return res
    return hook


@pytest.fixture(scope="module")
def pruned(op):
    """Each zoo entry pruned once at ratio 0.5 with the defaults, with its unpruned original."""
    cache = {}

    def get(name):
        if name not in cache:
            model, spec = build(name)
            original = copy.deepcopy(model)
            cache[name] = (original, prune_model(model, spec, op, ratio=0.5))
        return cache[name]
    return get


@pytest.mark.parametrize("name", ZOO.names())
def test_zoo_reaches_the_requested_removal(name, pruned):
    _, res = pruned(name)
    record, report = res.meta["pruning"], res.report
    assert record["round_to"] == 16 and report["held_back"] == {}
    for prior, rec in record["priors"].items():
        assert rec["held_back"] == {}
        assert rec["achieved_channel_ratio"] >= rec["requested_channel_ratio"] - 0.01, prior
        for layer, (before, after) in rec["widths"].items():
            asked = rec["requested"][layer]
            if asked:  # widths are multiples of 32: half of each is a multiple of 16
                assert after == before // 2, (prior, layer, before, after)
            else:
                assert after == before, (prior, layer)
        assert rec["macs_after"] * 3 < rec["macs_before"], prior
    print(f"{name}: requested {report['priors'][prior]['requested_channel_ratio']:.3f}, "
          f"achieved {report['priors'][prior]['achieved_channel_ratio']:.3f}")


@pytest.mark.parametrize("name", ZOO.names())
def test_zoo_pruned_equals_original_with_removed_channels_zeroed(name, pruned, op):
    original, res = pruned(name)
    for prior_name, rec in res.meta["pruning"]["priors"].items():
        trace = tuple(torch.randn(s) for s in rec["trace_shape"])
        zero_removed(original.get_submodule(prior_name), trace, rec["history"])
    y = example_inputs(original, "mbdl", op, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(res.model(y, op), original(y, op), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ZOO.names())
def test_zoo_round_trips_exactly(name, pruned, op, tmp_path):
    _, res = pruned(name)
    path = save_model(tmp_path / f"{name}.safetensors", res.model, res.meta, operator=op)
    loaded = load_model(path, arch=arch_spec(name))
    assert loaded.meta["pruning"]["priors"].keys() == res.meta["pruning"]["priors"].keys()
    y = example_inputs(res.model, "mbdl", op, seed=7)[0]
    with torch.no_grad():
        assert torch.equal(loaded.model(y, loaded.operator), res.model(y, op))
    assert {k: v.shape for k, v in loaded.model.state_dict().items()} == {k: v.shape for k, v in res.model.state_dict().items()}


def test_the_issue_model_loses_half_its_channels(pruned):
    """GroupNorm(4) + PReLU + groups=4 + transposed conv + concat at 0.5: half of every inner
    width goes (it kept 93% before widths were computed per group), MACs fall about 4x."""
    _, res = pruned("groupnorm-unet")
    rec = res.meta["pruning"]["priors"]["prior"]
    assert rec["widths"]["grouped"] == [32, 16] and rec["widths"]["mid"] == [64, 32] and rec["widths"]["up"] == [32, 16]
    assert rec["macs_before"] / rec["macs_after"] > 3.8
    assert res.model.prior.gn1.num_groups == 4 and res.model.prior.grouped.groups == 4


def test_huge_round_to_fails_in_one_line_and_passes_with_allow_partial(op):
    model, spec = build("groupnorm-unet")
    with pytest.raises(PruningError) as e:
        prune_model(model, spec, op, ratio=0.5, round_to=32)
    msg = str(e.value)
    assert "\n" not in msg and "held back" in msg and "prior.head 32/32" in msg and "--round-to 32" in msg
    assert "--allow-partial" in msg.split("—")[1]
    model, spec = build("groupnorm-unet")
    res = prune_model(model, spec, op, ratio=0.5, round_to=32, allow_partial=True)
    rec = res.meta["pruning"]["priors"]["prior"]
    assert rec["widths"]["head"] == [32, 32] and rec["widths"]["mid"] == [64, 32]  # 64 keeps 32, a multiple of 32
    assert "prior.head" in res.report["held_back"] and res.report["priors"]["prior"]["layers"]["head"]["held_back"]
    assert res.meta["pruning"]["allow_partial"] is True
    assert res.report["priors"]["prior"]["achieved_channel_ratio"] < res.report["priors"]["prior"]["requested_channel_ratio"]


def test_ignore_holding_back_a_group_fails_in_one_line(op):
    model, spec = build("se-resnet")
    with pytest.raises(PruningError) as e:
        prune_model(model, spec, op, ratio=0.5, ignore=["priors.0.head"])
    msg = str(e.value)
    assert "\n" not in msg and "coupled to --ignore priors.0.head" in msg and "priors.0.blocks.0.body.3" in msg
    model, spec = build("se-resnet")
    res = prune_model(model, spec, op, ratio=0.5, ignore=["priors.0.head"], allow_partial=True)
    p0, p1 = res.report["priors"]["priors.0"], res.report["priors"]["priors.1"]
    assert p0["layers"]["head"]["requested"] == 0.0 and not p0["layers"]["head"]["held_back"]
    assert p0["layers"]["blocks.0.body.3"]["held_back"] and p0["layers"]["blocks.0.body.0"]["after"] == 32
    assert p1["achieved_channel_ratio"] >= p1["requested_channel_ratio"] - 0.01 and not any(
        k.startswith("priors.1") for k in res.report["held_back"])


def test_maximum_ratio_and_channel_groups_are_named(op):
    """A per-layer ratio above the maximum is held at the maximum; GroupNorm(32) on 32 channels
    (one channel per group) cannot shrink at all."""
    from mbdlprune.pruning import PruneConfig, prune_priors

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g = nn.Conv2d(2, 32, 3, padding=1), nn.GroupNorm(32, 32)
            self.b = nn.Conv2d(32, 64, 3, padding=1)
            self.c = nn.Conv2d(64, 2, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.g(self.a(x)))))

    x = torch.randn(1, 2, 16, 16)
    cfg = PruneConfig(ratio=0.5, round_to=1, priors=[""], layer_ratios={"b": 0.95}, max_layer_ratio=0.75)
    with pytest.raises(PruningError) as e:
        prune_priors(Net(), (x,), cfg)
    msg = str(e.value)
    assert "a 32/32 (channel groups (GroupNorm(32))" in msg and "b 16/64 (maximum layer ratio 0.75)" in msg
    net = Net()
    cfg.allow_partial = True
    record = prune_priors(net, (x,), cfg)
    assert net.a.out_channels == 32 and net.b.out_channels == 16
    assert set(record["priors"][""]["held_back"]) == {"a", "b"}


def test_global_pruning_meets_the_prior_ratio(op):
    model, spec = build("resnext")
    res = prune_model(model, spec, op, ratio=0.5, global_pruning=True)
    p = res.report["priors"]["prior"]
    assert p["achieved_channel_ratio"] >= p["requested_channel_ratio"] - 0.1
    widths = res.meta["pruning"]["priors"]["prior"]["widths"]
    assert all(a % 16 == 0 for layer, (b, a) in widths.items() if b != 2 and a != b)


def test_cli_table_and_json_show_requested_and_achieved(op, tmp_path):
    model, _ = build("groupnorm-unet")
    ckpt = tmp_path / "mine.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    spec = tmp_path / "op.json"
    spec.write_text(json.dumps({"operator": OPERATOR}))
    runner = CliRunner()
    base = ["prune", str(ckpt), "--arch", arch_spec("groupnorm-unet"), "--operator", str(spec), "--ratio", "0.5"]
    r = runner.invoke(app, base + ["-o", str(tmp_path / "a.safetensors"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    p = report["priors"]["prior"]
    assert p["requested_channel_ratio"] == pytest.approx(p["achieved_channel_ratio"], abs=0.01) and p["achieved_channel_ratio"] > 0.45
    assert p["layers"]["grouped"] == {"before": 32, "after": 16, "requested": 0.5, "removed": 0.5, "held_back": False, "note": None}
    assert p["layers"]["tail"]["requested"] == 0.0 and p["layers"]["tail"]["note"] == "image layer"
    r = runner.invoke(app, base + ["--round-to", "32", "-o", str(tmp_path / "b.safetensors")])
    assert r.exit_code == 2 and "held back" in r.output and not (tmp_path / "b.safetensors").exists()
    assert len([line for line in r.output.splitlines() if line.strip()]) == 1, r.output
    r = runner.invoke(app, base + ["--round-to", "32", "--allow-partial", "--layers", "-o", str(tmp_path / "b.safetensors")])
    assert r.exit_code == 0, r.output
    assert "requested" in r.stdout and "achieved" in r.stdout and "held back" in r.stdout and "--allow-partial" in r.stdout


def _importance_options():
    from mbdlprune.pruning import IMPORTANCES

    return [{"importance": name} for name in IMPORTANCES.names()] + [{"importance": "l2", "iterative_steps": 3}]


@pytest.mark.parametrize("options", _importance_options())
def test_every_importance_and_iterative_pruning_reach_the_ratio(options, op):
    model, spec = build("groupnorm-unet")
    res = prune_model(model, spec, op, ratio=0.5, **options)
    rec = res.meta["pruning"]["priors"]["prior"]
    assert rec["held_back"] == {} and rec["widths"]["grouped"] == [32, 16] and rec["widths"]["down"] == [64, 32]
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())
