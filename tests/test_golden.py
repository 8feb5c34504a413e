"""Golden outputs: pruning the shipped examples gives the same model and the same report as recorded.

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


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps({n: observed(n) for n in ("deq", "unrolled")}, indent=1, sort_keys=True) + "\n")
