"""Generated MRI masks: the paper's uniform rule, the versioned mask rules (``mask_rule``), and old
model files that must rebuild the mask they were written with.

``paper_uniformly_cartesian_mask`` below is written from the reference paper's code
(github.com/wustl-cig/MBDL_Pruning, ``dataset/pmri_fastmri_brain.py: uniformly_cartesian_mask``,
identical in its four other copies), not from mbdlprune's masks.py: its ACS indices, the even-width
correction and the ``i % R == j`` loop are kept as the paper writes them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mbdlprune.errors import ConfigError
from mbdlprune.examples import example_path
from mbdlprune.io import load_model, save_model
from mbdlprune.operators import load_operator
from mbdlprune.operators.masks import (LEGACY_MASK_RULE, MASK_RULE, MASK_TYPES, RULE_MASK_TYPES, make_mask,
                                       paper_center_lines, uniform_center_lines)
from mbdlprune.operators.mri import MRI_KEYS


def paper_uniformly_cartesian_mask(img_size, acceleration_rate, acs_percentage: float = 0.2):
    """The paper's ``uniformly_cartesian_mask(img_size, R)`` with ``randomly_return=False``."""
    ny = img_size[-1]
    acs_start = (ny // 2) - (int(ny * acs_percentage * (2 / acceleration_rate)) // 2)
    acs_end = (ny // 2) + (int(ny * acs_percentage * (2 / acceleration_rate)) // 2)
    if ny % 2 == 0:
        acs_end -= 1
    mask = np.zeros(shape=(acceleration_rate,) + tuple(img_size), dtype=np.float32)
    mask[..., acs_start:(acs_end + 1)] = 1
    for i in range(ny):
        for j in range(acceleration_rate):
            if i % acceleration_rate == j:
                mask[j, ..., i] = 1
    return mask[0]


def legacy_uniform(width: int, accel: float) -> np.ndarray:
    """mbdlprune's rule-1 ``uniform`` as the previous version documented it: every R-th column from 0
    plus int(W * 0.2 * 2 / R) centre columns at fastMRI's pad (W - n + 1) // 2."""
    n = int(width * 0.2 * 2 / accel)
    cols = np.zeros(width, dtype=np.float32)
    pad = (width - n + 1) // 2
    cols[pad:pad + n] = 1
    cols[[int(c) for c in np.round(np.arange(0, width, accel)) if c < width]] = 1
    return cols


def cols_of(op) -> np.ndarray:
    return op.mask.reshape(-1).numpy()


def mri(width, **keys):
    return load_operator({"kind": "mri", "image_size": [4, width], **keys})


# -- the paper's rule ----------------------------------------------------------------------------
WIDTHS = list(range(1, 130)) + [160, 172, 200, 218, 224, 232, 256, 260, 272, 288, 308, 320, 332, 368, 372, 384, 396,
                                 400, 512, 640]


def test_uniform_equals_the_papers_mask_for_every_width_and_integer_acceleration():
    checked = differ_from_legacy = 0
    for width in WIDTHS:
        for accel in range(1, 17):
            if accel > width:
                continue
            want = paper_uniformly_cartesian_mask((3, width), accel)
            assert (want == want[0]).all()  # the same for every row
            got = make_mask("uniform", width, accel, uniform_center_lines(width, accel, MASK_RULE), rule=MASK_RULE)
            assert np.array_equal(got, want[0]), (width, accel)
            checked += 1
            differ_from_legacy += not np.array_equal(legacy_uniform(width, accel), want[0])
    assert checked == 2264
    assert differ_from_legacy == 853  # the previous rule (rule 1) was not the paper's on these


@pytest.mark.parametrize("width, accel, paper, legacy", [
    (320, 6, 70, 71), (232, 4, 75, 76), (232, 6, 51, 52), (232, 8, 37, 38),  # int(W·0.4/R) odd, W even
    (101, 4, 35, 34), (333, 6, 75, 74), (5, 3, 3, 2),                          # int(W·0.4/R) even, W odd
])
def test_measured_differences_from_the_previous_rule(width, accel, paper, legacy):
    """The sampled column counts of the paper's mask and of the previous (rule 1) uniform."""
    new, old = mri(width, acceleration=accel), mri(width, acceleration=accel, mask_rule=1)
    assert new.spec["mask_rule"] == 2 and old.spec["mask_rule"] == 1
    assert int(new.mask.sum()) == paper == int(paper_uniformly_cartesian_mask((1, width), accel).sum())
    assert int(old.mask.sum()) == legacy
    assert np.array_equal(cols_of(old), legacy_uniform(width, accel))
    assert np.array_equal(cols_of(new), paper_uniformly_cartesian_mask((1, width), accel)[0])
    assert new.num_low_frequencies == paper_center_lines(width, accel)


def test_operator_masks_equal_the_papers_through_the_spec():
    for width in (96, 97, 232, 256, 320, 368, 640):
        for accel in (2, 3, 4, 5, 6, 8, 10, 12):
            op = mri(width, mask="uniform", acceleration=accel)
            assert np.array_equal(cols_of(op), paper_uniformly_cartesian_mask((1, width), accel)[0]), (width, accel)


def test_non_integer_acceleration_extends_the_papers_rule():
    """The paper's code takes integer R only (it allocates R masks and loops over range(R)); its ACS
    formula holds for any R, so for non-integer R: that centre, plus columns round(k R)."""
    with pytest.raises(TypeError):
        paper_uniformly_cartesian_mask((1, 64), 2.5)
    checked = 0
    for width in (31, 64, 95, 96, 232, 320, 368):
        for accel in (1.5, 2.5, 3.3, 4.5, 5.7, 6.25, 7.5):
            ny, h = width, int(width * 0.2 * (2 / accel)) // 2
            acs = np.zeros(width, dtype=np.float32)
            acs[ny // 2 - h: ny // 2 + h - (ny % 2 == 0) + 1] = 1
            lines = np.zeros(width, dtype=np.float32)
            lines[[int(round(k * accel)) for k in range(width) if k * accel < width and round(k * accel) < width]] = 1
            op = mri(width, acceleration=accel)
            assert np.array_equal(cols_of(op), np.maximum(acs, lines)), (width, accel)
            assert op.num_low_frequencies == int(acs.sum())
            checked += 1
    assert checked == 49


# -- the versioned rules -------------------------------------------------------------------------
def test_names_per_rule():
    assert MASK_RULE == 2 and LEGACY_MASK_RULE == 1 and "mask_rule" in MRI_KEYS
    assert MASK_TYPES == ("uniform", "random", "equispaced", "equispaced_fraction")
    assert RULE_MASK_TYPES[1] == ("uniform", "random", "equispaced")


def test_legacy_spec_and_new_spec_give_the_masks_of_their_rule():
    """A spec with mask_rule = 1 (what a file without the key means) rebuilds the previous masks;
    rule 2 gives the paper's uniform and fastMRI's names."""
    base = {"kind": "mri", "image_size": [8, 320], "acceleration": 6}
    old = load_operator({**base, "mask_rule": 1})
    new = load_operator(base)
    assert np.array_equal(cols_of(old), legacy_uniform(320, 6)) and int(old.mask.sum()) == 71
    assert np.array_equal(cols_of(new), paper_uniformly_cartesian_mask((1, 320), 6)[0]) and int(new.mask.sum()) == 70
    assert (old.num_low_frequencies, new.num_low_frequencies) == (21, 20)  # each its own centre block
    assert (int(320 * 0.4 / 6), paper_center_lines(320, 6)) == (21, 20)
    # legacy "equispaced" is the fraction rule, which rule 2 calls "equispaced_fraction"
    for seed in range(5):
        keys = {**base, "acceleration": 4, "seed": seed}
        legacy_eq = load_operator({**keys, "mask": "equispaced", "mask_rule": 1})
        fraction = load_operator({**keys, "mask": "equispaced_fraction"})
        plain = load_operator({**keys, "mask": "equispaced"})
        assert torch.equal(legacy_eq.mask, fraction.mask)
        assert not torch.equal(legacy_eq.mask, plain.mask)
        assert legacy_eq.num_low_frequencies == fraction.num_low_frequencies == plain.num_low_frequencies == 26
        # random is the same rule in both
        assert torch.equal(load_operator({**keys, "mask": "random", "mask_rule": 1}).mask,
                           load_operator({**keys, "mask": "random"}).mask)
    # each rebuilds itself from its own spec
    for op in (old, new):
        assert torch.equal(load_operator(op.spec).mask, op.mask)


def test_spec_without_the_marker_is_legacy_only_in_model_files():
    """A spec the caller gives gets the current rule; the same spec read from a model file (which
    the loader passes with that file's embedded arrays) gets the legacy one."""
    spec = {"kind": "mri", "image_size": [8, 320], "acceleration": 6}
    assert load_operator(spec).spec["mask_rule"] == 2
    from_file = load_operator(spec, embedded={})
    assert from_file.spec["mask_rule"] == 1 and int(from_file.mask.sum()) == 71
    assert load_operator({**spec, "mask_rule": 2}, embedded={}).spec["mask_rule"] == 2


@pytest.mark.parametrize("keys, recorded", [
    ({"mask": "random", "seed": 3}, {"mask": "random", "mask_rule": 2}),
    ({"mask": "equispaced", "seed": 3}, {"mask": "equispaced_fraction", "mask_rule": 2}),
    ({"mask": "uniform", "acceleration": 5}, {"mask": "uniform", "mask_rule": 2}),      # W = 256: the same mask and centre
    ({"mask": "uniform", "acceleration": 4}, {"mask": "uniform", "mask_rule": 1}),      # the same mask, centre 25 vs 24
    ({"mask": "uniform", "acceleration": 6}, {"mask": "uniform", "mask_rule": 1}),      # 57 vs 56 columns
    ({"mask": "uniform", "acceleration": 4, "center_fraction": 0.1}, {"mask": "uniform", "mask_rule": 2}),
])
def test_legacy_specs_are_recorded_under_the_current_rule_where_it_rebuilds_them(keys, recorded):
    """A legacy spec is recorded as mask_rule 2 (and its current name) when rule 2 gives the same mask
    and centre count, so an old model file and one written now describe it alike (bench compares the
    recorded specs); otherwise it keeps mask_rule 1. Either way the mask is the legacy one."""
    spec = {"kind": "mri", "image_size": [8, 256], "acceleration": 4, **keys}
    old = load_operator(spec, embedded={})
    assert {k: old.spec[k] for k in recorded} == recorded
    legacy = load_operator({**spec, "mask_rule": 1})
    assert torch.equal(old.mask, legacy.mask) and old.num_low_frequencies == legacy.num_low_frequencies
    again = load_operator(old.spec)
    assert torch.equal(again.mask, old.mask) and again.num_low_frequencies == old.num_low_frequencies
    if recorded["mask_rule"] == 2:
        assert load_operator({**spec, "mask": recorded["mask"]}).spec == old.spec


def test_new_equispaced_is_every_rth_column_from_an_offset():
    offsets = set()
    for seed in range(8):
        op = mri(320, mask="equispaced", acceleration=4, seed=seed)
        cols = cols_of(op)
        n = round(320 * 0.08)
        offset = int(np.argmax(cols))
        want = np.zeros(320, dtype=np.float32)
        want[offset::4] = 1
        want[(320 - n + 1) // 2:(320 - n + 1) // 2 + n] = 1
        assert offset < 4 and np.array_equal(cols, want) and op.num_low_frequencies == n
        offsets.add(offset)
    assert len(offsets) > 1  # the seed draws the offset


@pytest.mark.parametrize("keys, words", [
    ({"mask_rule": 3}, "mask_rule"),
    ({"mask_rule": 0}, "mask_rule"),
    ({"mask_rule": True}, "mask_rule"),
    ({"mask_rule": "2"}, "mask_rule"),
    ({"mask_rule": 2.0}, "mask_rule"),
    ({"mask": "equispaced_fraction", "mask_rule": 1}, "mask_rule 1"),
])
def test_bad_mask_rule(keys, words):
    with pytest.raises(ConfigError, match=words) as e:
        mri(64, **keys)
    assert e.value.fix


def test_mask_rule_with_a_mask_file_is_refused(tmp_path):
    np.save(tmp_path / "m.npy", (np.arange(64) % 4 == 0).astype(np.float32))
    with pytest.raises(ConfigError, match="mask_rule has no effect with a mask file"):
        load_operator({"kind": "mri", "image_size": [4, 64], "mask": "m.npy", "mask_rule": 2}, base_dir=tmp_path)
    op = load_operator({"kind": "mri", "image_size": [4, 64], "mask": "m.npy"}, base_dir=tmp_path)
    assert "mask_rule" not in op.spec  # a file's mask follows no rule: old and new files record the same spec


# -- model files ---------------------------------------------------------------------------------
def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["mbdlprune"]), {k: f.get_tensor(k) for k in f.keys()}


def _write_old_file(path, meta, tensors):
    """A model file as the previous mbdlprune wrote it (its operator spec has no mask_rule)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "mbdlprune", "mbdlprune": json.dumps(meta, sort_keys=True)})


@pytest.mark.parametrize("name", ["deq", "unrolled"])
def test_shipped_example_models_reload_with_their_recorded_mask(name):
    """The shipped files record mask = "equispaced" without mask_rule: they rebuild the fraction rule
    they were trained with (23 of 96 columns, seed 0), not rule 2's equispaced (30 columns), and
    record it under its current name."""
    meta, _ = _header(example_path(name))
    recorded = meta["operator"]
    assert "mask_rule" not in recorded and recorded["mask"] == "equispaced"
    op = load_model(example_path(name)).operator
    assert (op.spec["mask"], op.spec["mask_rule"]) == ("equispaced_fraction", 2)
    legacy = load_operator({**recorded, "mask_rule": 1})
    fraction = load_operator({**recorded, "mask": "equispaced_fraction"})
    assert torch.equal(op.mask, legacy.mask) and torch.equal(op.mask, fraction.mask)
    assert int(op.mask.sum()) == 23 and op.num_low_frequencies == 8
    # the columns the previous mbdlprune (the commit before mask_rule) built for this spec
    assert np.array_equal(np.flatnonzero(cols_of(op)),
                          [5, 10, 16, 22, 27, 32, 38, 44, 45, 46, 47, 48, 49, 50, 51, 54, 60, 66, 71, 76, 82, 88, 93])
    # rule 2's "equispaced" on the same keys is fastMRI's EquiSpacedMaskFunc: a different mask
    assert int(load_operator(recorded).mask.sum()) == 30
    # operator_mri4x.toml (same keys) gives the models' mask when it names the fraction rule
    from mbdlprune.config import read_config_file

    table = read_config_file(example_path("operator"))["operator"]
    assert {k: table[k] for k in ("image_size", "acceleration", "center_fraction", "seed")} == \
        {k: recorded[k] for k in ("image_size", "acceleration", "center_fraction", "seed")}
    fixed = load_operator({**table, "mask": "equispaced_fraction"})
    assert torch.equal(fixed.mask, op.mask) and fixed.spec == op.spec


def test_old_model_file_with_uniform_mask_reloads_and_resaves_unchanged(tmp_path):
    """An old file with mask = "uniform" at a width where the rules differ keeps the previous mask
    through load and save; a file written now from the same spec records mask_rule = 2."""
    meta, tensors = _header(example_path("unrolled"))
    spec = {"kind": "mri", "image_size": [96, 96], "noise_sigma": 0.0, "channels": 2, "mask": "uniform",
            "acceleration": 5.0, "seed": 0, "coils": 1}
    _write_old_file(tmp_path / "old.safetensors", {**meta, "operator": spec}, tensors)
    old = load_model(tmp_path / "old.safetensors")
    assert np.array_equal(cols_of(old.operator), legacy_uniform(96, 5)) and int(old.operator.mask.sum()) == 25
    assert old.operator.spec == {**spec, "mask_rule": 1}
    save_model(tmp_path / "resaved.safetensors", old.model, {**old.meta, "operator": old.operator.spec},
               operator=old.operator)
    again = load_model(tmp_path / "resaved.safetensors")
    assert torch.equal(again.operator.mask, old.operator.mask) and again.operator.spec["mask_rule"] == 1
    new_op = load_operator(spec)
    assert int(new_op.mask.sum()) == 24 and new_op.spec["mask_rule"] == 2
    save_model(tmp_path / "new.safetensors", old.model, {**old.meta, "operator": new_op.spec}, operator=new_op)
    new = load_model(tmp_path / "new.safetensors")
    assert _header(tmp_path / "new.safetensors")[0]["operator"]["mask_rule"] == 2
    assert torch.equal(new.operator.mask, new_op.mask)
    assert np.array_equal(cols_of(new.operator), paper_uniformly_cartesian_mask((1, 96), 5)[0])
