"""``round_to="auto"``: widths chosen by timing the prior's layers (fake timers, except one small real run)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from mbdlprune.api import example_inputs
from mbdlprune.cli import app
from mbdlprune.errors import ConfigError
from mbdlprune.models.priors import edsr
from mbdlprune.models.small import SMALL_IMAGE_SIZE, small_args
from mbdlprune.models.user import build_arch
from mbdlprune.operators import load_operator
from mbdlprune.pruning import PruneConfig, WidthTimer, candidate_widths, choose_width, prune_priors
from mbdlprune.pruning.widths import layer_signature, signature_macs
from zoo import OPERATOR, arch_spec


def fake_timer(factor=lambda sig: 1.0, tmp=None):
    """A timer whose milliseconds are the layer's MACs (in millions) times ``factor(sig)``."""
    calls = []

    def measure(sig):
        calls.append(sig)
        return signature_macs(sig) / 1e6 * factor(sig)

    t = WidthTimer("cpu", cache_dir=tmp, measure=measure)
    t.calls = calls
    return t


def prune_edsr(ratio=0.5, timer=None, n_feats=16, **kw):
    torch.manual_seed(0)
    net = edsr(n_feats=n_feats, n_blocks=2)
    cfg = PruneConfig(ratio=ratio, round_to="auto", priors=[""], **kw)
    return net, prune_priors(net, (torch.randn(1, 2, 24, 20),), cfg, timer=timer or fake_timer())


# -- candidates and the rule ------------------------------------------------------------------
def test_candidates_are_capped_and_keep_the_round_widths():
    assert candidate_widths(6, 8) == [6, 7, 8]
    c = candidate_widths(72, 96)
    assert len(c) == 12 and c == sorted(c) and c[-1] == 96 and min(c) >= 72
    assert {80, 88, 96} <= set(c)  # the multiples of 8 (16, 32) in range are always there
    c = candidate_widths(5, 64, multiple=4)
    assert all(w % 4 == 0 for w in c) and {8, 16, 24, 32, 40, 48, 56, 64} <= set(c) and len(c) == 12
    assert candidate_widths(9, 8) == []


def test_choice_is_the_fewest_ms_per_mac_and_ties_go_to_the_wider():
    widths, macs = [24, 28, 32], [24, 28, 32]
    assert choose_width(widths, [2.4, 2.0, 3.2], macs) == 28  # 28 runs at the best GMAC/s
    assert choose_width(widths, [2.0, 2.8, 3.2], macs) == 24
    # within 3% of the best: a tie, the wider wins; beyond it, not
    assert choose_width(widths, [2.4, 2.8, 3.2 * 1.02], macs) == 32
    assert choose_width(widths, [2.4, 2.8, 3.2 * 1.05], macs) == 28
    assert choose_width(widths, [2.4, 2.8, 3.2], [0, 0, 0]) == 32  # nothing measurable: the widest allowed


def test_chosen_widths_follow_the_fake_timer():
    # a layer writing 6 channels runs twice as efficiently: 6 is chosen although 8 is allowed
    _, rec = prune_edsr(timer=fake_timer(lambda s: 0.5 if s["out"] == 6 else 1.0))
    widths = rec["priors"][""]["widths"]
    assert {k: v[1] for k, v in widths.items() if k != "tail"} == dict.fromkeys(widths.keys() - {"tail"}, 6)
    # 2% better is a tie: the wider 8 is kept
    _, rec = prune_edsr(timer=fake_timer(lambda s: 0.98 if s["out"] == 6 else 1.0))
    assert {v[1] for k, v in rec["priors"][""]["widths"].items() if k != "tail"} == {8}
    table = rec["priors"][""]["widths_timing"]["head"]
    assert table["candidates"] == [6, 7, 8] and table["chosen"] == 8 and table["allowed"] == 8 and len(table["ms"]) == 3
    assert "head" in table["layers"] and "tail" in table["layers"]  # the tail reads the residual stream
    assert rec["round_to"] == "auto" and rec["widths_device"]["device"] == "cpu" and rec["widths_device"]["measured"] > 0


@pytest.mark.parametrize("kw", [{"ratio": 0.3}, {"ratio": 0.55}, {"ratio": 0.7}, {"ratio": 0.5, "iterative_steps": 2},
                                {"ratio": 0.5, "global_pruning": True}])
def test_never_keeps_more_than_the_ratio_allows(kw):
    # a timer favouring the widest widths: auto then stops exactly at the budget, never above
    _, rec = prune_edsr(n_feats=24, timer=fake_timer(lambda s: 1.0 / max(s["in"], s["out"])), **kw)
    r = rec["priors"][""]
    assert not r["held_back"]
    if not kw.get("global_pruning"):
        for name, (before, after) in r["widths"].items():
            if name != "tail":
                assert after <= before * (1 - kw["ratio"]) + 1e-9, (name, before, after)
    assert r["achieved_channel_ratio"] >= r["requested_channel_ratio"] - 1e-9


@pytest.mark.parametrize("name", ["groupnorm-unet", "resnext", "mobilenet-deq"])
def test_channel_groups_and_depthwise_convs(name):
    torch.manual_seed(0)
    model, _ = build_arch(arch_spec(name), {})
    model.eval()
    op = load_operator(OPERATOR)
    rec = prune_priors(model, example_inputs(model, "mbdl", op), PruneConfig(ratio=0.5, round_to="auto"), timer=fake_timer())
    for prior in rec["priors"].values():
        assert not prior["held_back"]
        for t in prior["widths_timing"].values():
            assert t["chosen"] in t["candidates"] and t["candidates"] == sorted(t["candidates"])
            assert max(t["candidates"]) == t["allowed"] <= t["target"] + 1e-9


def test_real_timing_does_not_move_the_pruning_seed():
    from mbdlprune.pruning.widths import measure_ms

    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    assert measure_ms(SIG_SMALL, torch.device("cpu"), warmup=0, repeats=1) >= 0
    assert torch.equal(torch.rand(3), want)


SIG_SMALL = layer_signature(torch.nn.Conv2d(2, 2, 3, padding=1), 2, 2, 1, (1, 2, 8, 8))


# -- the cache --------------------------------------------------------------------------------
SIG = layer_signature(torch.nn.Conv2d(4, 8, 3, padding=1), 4, 8, 1, (1, 4, 16, 16))


def test_cache_round_trips_and_is_keyed_by_device_and_torch(tmp_path):
    t = fake_timer(tmp=tmp_path)
    ms = t.ms(SIG)
    t.flush()
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["header"]["torch"] == torch.__version__

    again = WidthTimer("cpu", cache_dir=tmp_path, measure=lambda s: pytest.fail("measured again"))
    assert again.ms(SIG) == ms and again.from_cache == 1 and again.measured == 0

    other = fake_timer(tmp=tmp_path)
    other.info = {**other.info, "torch": "0.0.1"}  # another torch: another file, measured again
    other.ms(SIG)
    assert other.measured == 1 and other.cache_path != t.cache_path
    other.info = {**other.info, "torch": torch.__version__, "name": "cpu: another processor (2 threads)"}
    other.ms({**SIG, "out": 16})
    assert other.cache_path != t.cache_path


@pytest.mark.parametrize("text", [
    "not json",
    '{"format": "mbdlprune-widths", "version": 1, "header": HEADER, "entries": {"KEY": -1.0}}',
    '{"format": "mbdlprune-widths", "version": 1, "header": HEADER, "entries": {"KEY": NaN}}',
    '{"format": "mbdlprune-widths", "version": 1, "header": HEADER, "entries": {"KEY": "fast"}}',
    '{"format": "mbdlprune-widths", "version": 1, "header": HEADER, "entries": {"KEY": true}}',
    '{"format": "mbdlprune-widths", "version": 1, "header": HEADER, "entries": [1, 2]}',
    '{"format": "mbdlprune-widths", "version": 2, "header": HEADER, "entries": {}}',
    '{"format": "mbdlprune-widths", "version": 1, "header": {"torch": "0"}, "entries": {"KEY": 1.0}}',
    '[1, 2, 3]',
])
def test_a_tampered_cache_file_is_ignored_and_rewritten(tmp_path, text):
    t = fake_timer(tmp=tmp_path)
    key = json.dumps(json.dumps(SIG, sort_keys=True, separators=(",", ":")))[1:-1]
    t.cache_path.parent.mkdir(parents=True, exist_ok=True)
    t.cache_path.write_text(text.replace("HEADER", json.dumps(t.info)).replace("KEY", key))
    ms = t.ms(SIG)
    assert t.measured == 1 and math.isfinite(ms) and ms >= 0
    assert len(t.notes) == 1 and "ignored widths cache file" in t.notes[0]
    t.flush()
    doc = json.loads(t.cache_path.read_text())
    assert doc["header"] == t.info and list(doc["entries"].values()) == [ms]


def test_an_unwritable_cache_costs_a_note_not_the_prune(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    t = fake_timer(tmp=blocker / "widths")
    t.ms(SIG)
    t.flush()
    assert t.notes and "could not write widths cache" in t.notes[0]


# -- configuration and the command line -------------------------------------------------------
def test_round_to_accepts_integers_and_auto_only():
    PruneConfig(round_to="auto").validate()
    PruneConfig(round_to=8).validate()
    for bad in ("fast", "Auto", 0, 2.5, True):
        with pytest.raises(ConfigError, match="--round-to must be an integer >= 1 or 'auto'"):
            PruneConfig(round_to=bad).validate()


def test_prune_round_to_auto_end_to_end(tmp_path, monkeypatch):
    """The one test with real timings (a tiny model, nothing asserted about speed)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, _ = build_arch("deq-edsr", small_args("deq-edsr"))
    ckpt = tmp_path / "deq.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    h, w = SMALL_IMAGE_SIZE
    op = tmp_path / "op.toml"
    op.write_text(f'[operator]\nkind = "mri"\nimage_size = [{h}, {w}]\nacceleration = 4\n')
    out = tmp_path / "p.safetensors"
    runner = CliRunner()
    r = runner.invoke(app, ["prune", str(ckpt), "--arch", "deq-edsr", "--arch-args", json.dumps(small_args("deq-edsr")),
                            "--operator", str(op), "--ratio", "0.5", "--round-to", "auto", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["round_to"] == "auto"
    layers = report["priors"]["prior"]["layers"]
    assert all(v["after"] <= v["before"] * 0.5 for k, v in layers.items() if k != "tail")
    assert list((tmp_path / "cache" / "mbdlprune" / "widths").glob("*.json"))
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)["pruning"]
    assert info["round_to"] == "auto" and info["widths_device"]["device"] in ("cpu", "cuda")
    table = info["priors"]["prior"]["widths_timing"]["head"]
    assert table["chosen"] in table["candidates"] and len(table["ms"]) == len(table["candidates"])
    # a bad value is refused before anything is read
    r = runner.invoke(app, ["prune", str(ckpt), "--arch", "deq-edsr", "--ratio", "0.5", "--round-to", "fast", "-o", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and "--round-to must be an integer >= 1 or 'auto'" in r.output
