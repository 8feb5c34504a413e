"""The fast inference path of bench (--compile, --channels-last): applied to every model alike,
timed beside the eager runs, compile time apart, and undone afterwards."""

from __future__ import annotations

import pytest
import torch

import mbdlprune
from mbdlprune.api import prune_model
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch

SPEC = {"operator": {"kind": "mri", "image_size": list(SMALL_IMAGE_SIZE), "acceleration": 4, "coils": 2}}
FAST = {"warmup": 0, "repeats": 2, "device": "cpu", "threads": 1}


def _pair(arch="unrolled"):
    op = mbdlprune.load_operator(SPEC)
    torch.manual_seed(0)
    model, spec = build_arch(arch, small_args(arch))
    meta = {"arch": spec.to_dict(), "operator": op.spec}
    res = prune_model(model, spec, op, ratio=0.5, round_to=1)
    torch.manual_seed(0)
    orig, _ = build_arch(arch, small_args(arch))
    return (mbdlprune.LoadedModel(orig.eval(), meta, op, label="original", role="original"),
            mbdlprune.LoadedModel(res.model.eval(), res.meta, op, label="pruned"))


def _images(n=2):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 2, *SMALL_IMAGE_SIZE, generator=g)


def test_channels_last_is_timed_beside_eager_and_undone():
    a, b = _pair()
    before = [p.detach().clone() for p in b.model.parameters()]
    report = mbdlprune.bench([a, b], _images(), channels_last=True, **FAST)
    for m in report.models:
        assert m.fast_timing is not None and m.fast_timing.median_ms > 0
        assert m.fast_path["channels_last"] and m.fast_path["compiled"] == []
    assert report.models[0].fast_speedup == pytest.approx(1.0)
    assert report.to_dict()["settings"]["fast_path"] == {"compile": False, "channels_last": True, "bf16": False}
    assert "Fast inference path (channels-last)" in report.markdown()
    # undone: contiguous parameters, no hook left, same values
    for p, q in zip(b.model.parameters(), before):
        assert p.is_contiguous() and torch.equal(p, q)
    assert all(not m._forward_pre_hooks for m in b.model.modules())


def test_compile_replaces_only_the_priors_and_restores_them():
    a, b = _pair()
    priors = {p: b.model.get_submodule(p) for p in b.model.prior_paths()}
    report = mbdlprune.bench([a, b], _images(1), compile=True, **FAST)
    m = report.models[1]
    if m.fast_timing is None:  # no C++ compiler for inductor here: one note, eager only
        assert any("torch.compile failed" in n for n in report.notes)
        return
    assert m.fast_path["compiled"] and m.fast_path["compile_s"] > 0
    assert m.fast_speedup_vs_eager_original is not None
    for p, mod in priors.items():
        assert b.model.get_submodule(p) is mod  # the eager prior is back
    # the same reconstructions as before the run: the caller's models are unchanged
    y = a.operator.A(_images(1))
    with torch.no_grad():
        torch.testing.assert_close(b.model(y, b.operator), b.model(y, b.operator))


@pytest.mark.parametrize("arch", ["unrolled", "deq-edsr"])
def test_bf16_path_is_timed_and_scored_and_undone(arch):
    """bf16: the priors run under bfloat16 autocast and hand float32 back (data consistency and
    solver stay float32); its quality is scored beside the eager one, close to it; afterwards the
    models are float32 and eager again, with the same weights."""
    a, b = _pair(arch)
    before = {k: v.detach().clone() for k, v in b.model.state_dict().items()}
    report = mbdlprune.bench([a, b], _images(), bf16=True, **FAST)
    for m in report.models:
        assert m.fast_timing is not None and m.fast_path["bf16"] == list(b.model.prior_paths())
        assert m.fast_psnr_mean is not None and abs(m.fast_psnr_mean - m.psnr_mean) < 1.0
        assert m.fast_psnr_mean != m.psnr_mean  # bf16 outputs really differ: the path ran in bf16
        if arch == "deq-edsr":
            assert m.fast_timing.iterations_mean is not None
    if arch == "deq-edsr":  # a cap the bf16 path hits is said in a note
        capped = mbdlprune.bench([a, b], _images(), bf16=True, tol=1e-9, max_iter=3, **FAST)
        assert any("on the bf16 path the DEQ solver ran to max_iter (3)" in n for n in capped.notes)
    d = report.to_dict()
    assert d["settings"]["fast_path"]["bf16"] and d["models"][1]["fast_psnr_mean"] == report.models[1].fast_psnr_mean
    assert "fast PSNR dB" in report.markdown() and "bf16" in report.markdown()
    assert all(type(m).__name__ != "Bf16Prior" for m in b.model.modules())
    after = b.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())


def test_bf16_refuses_a_non_boolean_setting():
    from mbdlprune.errors import MbdlError

    with pytest.raises(MbdlError, match="bf16"):
        mbdlprune.bench(["a.safetensors", "b.safetensors"], _images(), bf16="yes")
