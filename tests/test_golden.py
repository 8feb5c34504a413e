"""Golden outputs: pruning and benchmarking the shipped examples give what was recorded.

The pruned models' tensors (sha256), parameter and MAC counts are the same as the code before
its reorganisation into packages produced (checked against that commit when this file was
recorded), and are checked after every change, so a move that changes behaviour shows here.
To record it again after an intended change: ``python tests/test_golden.py --write`` (and say
why in the commit).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).with_name("golden") / "prune_examples.json"
BENCH_GOLDEN = Path(__file__).with_name("golden") / "bench_examples.json"
REPORT_KEYS = ("ratio", "importance", "round_to", "params_before", "params_after", "macs_per_reconstruction_before",
               "macs_per_reconstruction_after", "nominal_iterations")
PRIOR_KEYS = ("params_before", "params_after", "macs_before", "macs_after", "widths_before", "widths_after",
              "achieved_channel_ratio", "requested_channel_ratio", "layers")


def observed(name: str) -> dict:
    from mbdlprune.api import prune
    from mbdlprune.examples import example_path

    res = prune(example_path(name), ratio=0.5, seed=0)
    r = res.report
    out = {k: r[k] for k in REPORT_KEYS}
    out["priors"] = {p: {k: v.get(k) for k in PRIOR_KEYS} for p, v in r["priors"].items()}
    h = hashlib.sha256()
    for key, t in sorted(res.model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    out["state_sha256"] = h.hexdigest()
    return out


@pytest.mark.parametrize("name", ["deq", "unrolled"])
def test_pruning_the_shipped_examples_matches_the_recorded_output(name):
    want = json.loads(GOLDEN.read_text())[name]
    got = json.loads(json.dumps(observed(name)))
    assert got == want


def bench_observed(name: str, folder: Path) -> dict:
    """The schema and the machine-independent figures of ``bench --json`` on a shipped example."""
    from mbdlprune import bench, prune
    from mbdlprune.examples import example_path

    pruned = folder / f"{name}.safetensors"
    prune(example_path(name), ratio=0.5, seed=0, out=pruned)
    d = bench([str(example_path(name)), str(pruned)], str(example_path("eval")), max_images=3, warmup=0, repeats=1,
              device="cpu", threads=1).to_dict()
    models = [{"role": m["role"], "params": m["params"], "prior_macs": m["prior_macs"], "psnr_mean": m["psnr_mean"],
               "ssim_mean": m["ssim_mean"], "iterations": (m.get("deq") or {}).get("iterations_mean")} for m in d["models"]]
    return {"keys": sorted(d), "model_keys": sorted(d["models"][0]), "schema": d["schema_version"], "models": models}


@pytest.mark.parametrize("name", ["deq", "unrolled"])
def test_bench_json_of_the_shipped_examples_matches_the_recorded_output(name, tmp_path):
    want = json.loads(BENCH_GOLDEN.read_text())[name]
    got = json.loads(json.dumps(bench_observed(name, tmp_path)))
    assert {k: got[k] for k in ("keys", "model_keys", "schema")} == {k: want[k] for k in ("keys", "model_keys", "schema")}
    for g, w in zip(got["models"], want["models"], strict=True):
        assert (g["role"], g["params"], g["prior_macs"]) == (w["role"], w["params"], w["prior_macs"])
        # other CPUs round convolutions differently: quality within a small margin, iterations within one
        assert g["psnr_mean"] == pytest.approx(w["psnr_mean"], abs=0.05)
        assert g["ssim_mean"] == pytest.approx(w["ssim_mean"], abs=2e-3)
        assert (g["iterations"] is None) == (w["iterations"] is None)
        if g["iterations"] is not None:
            assert abs(g["iterations"] - w["iterations"]) <= 1.0


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    GOLDEN.write_text(json.dumps({n: observed(n) for n in ("deq", "unrolled")}, indent=1, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory() as d:
        BENCH_GOLDEN.write_text(json.dumps({n: bench_observed(n, Path(d)) for n in ("deq", "unrolled")}, indent=1,
                                           sort_keys=True) + "\n")
