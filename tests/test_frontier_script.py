"""benchmarks/frontier.py end to end on its quick setting (behaviour, not speed): its rows carry
what the tables print, the sensitivity U-Net is counted when pruned, bad options are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import frontier as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_quick_varnet_with_sensitivity_pruned_and_fast_path(frontier, tmp_path, capsys):
    out = tmp_path / "f.json"
    rc = frontier.main(["--quick", "--cases", "varnet-paper", "--ratios", "0.5", "--warmup", "0", "--repeats", "1",
                        "--channels-last", "--prune-sensitivity", "--round-to", "8", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "pruned and counted: cascades + sensitivity U-Net" in text and "f.real/MACs" in text
    (run,) = json.loads(out.read_text())["runs"]
    assert run["round_to"] == 8 and run["fast_path"] == "channels-last"
    orig, pruned = run["rows"]
    assert orig["iterations"] == pruned["iterations"] == 13  # 12 cascades + the sensitivity U-Net, each once
    assert pruned["prior_macs_reduction"] > 1 and 0 < pruned["channels_removed"] < 1
    assert all(w[1] % 8 == 0 or w[1] == 2 for w in pruned["widths"])
    assert pruned["fast_realised_per_macs"] == pytest.approx(pruned["fast_speedup"] / pruned["prior_macs_reduction"])
    assert any("sens_net.norm_unet.unet" in n for n in run["notes"])


@pytest.mark.parametrize("value", ["0", "x", "1.5"])
def test_round_to_refused(frontier, value):
    with pytest.raises(SystemExit):
        frontier.parse(["--round-to", value])
    assert frontier.parse(["--round-to", "AUTO"]).round_to == "auto"
