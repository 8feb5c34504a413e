"""State-dict keys of the U-Net and VarNet equal the real fastMRI package's, so its weights load unrenamed.

The reference is ``fastmri.models`` itself (installed by .ci/run); without it these comparisons skip.
"""

from __future__ import annotations

import pytest
import torch

from mbdlprune.models import create_arch

# (mbdlprune arguments, fastMRI VarNet arguments)
VARNETS = [
    ({"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2},
     {"num_cascades": 2, "chans": 4, "pools": 2, "sens_chans": 4, "sens_pools": 2}),
    ({"num_cascades": 3, "chans": 5, "pools": 3, "sens_chans": 3, "sens_pools": 1},
     {"num_cascades": 3, "chans": 5, "pools": 3, "sens_chans": 3, "sens_pools": 1}),
]


@pytest.fixture(scope="module")
def fastmri_models():
    return pytest.importorskip("fastmri.models")


def _keys_and_shapes(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("chans, pools", [(4, 2), (3, 4)])
def test_unet_keys_and_shapes_match_fastmri(fastmri_models, chans, pools):
    ref = fastmri_models.Unet(in_chans=2, out_chans=2, chans=chans, num_pool_layers=pools)
    ours = create_arch("unet", chans=chans, num_pool_layers=pools)
    assert _keys_and_shapes(ours) == _keys_and_shapes(ref)


@pytest.mark.parametrize("ours_args, ref_args", VARNETS)
def test_e2e_varnet_keys_match_fastmri(fastmri_models, ours_args, ref_args):
    ref = fastmri_models.VarNet(**ref_args)
    ours = create_arch("e2e-varnet", **ours_args)
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert _keys_and_shapes(ours) == _keys_and_shapes(ref)
    assert all(float(ours.state_dict()[f"cascades.{i}.dc_weight"]) == 1.0 for i in range(ours_args["num_cascades"]))


def test_varnet_without_sensitivity_net_has_only_cascades(fastmri_models):
    ours_args, ref_args = VARNETS[0]
    ref = fastmri_models.VarNet(**ref_args)
    args = {k: ours_args[k] for k in ("num_cascades", "chans", "pools")}
    assert _keys_and_shapes(create_arch("varnet", **args)) == \
        [(k, s) for k, s in _keys_and_shapes(ref) if k.startswith("cascades.")]


def test_fastmri_state_dict_loads_strictly(fastmri_models):
    """fastMRI's own (random) weights load with strict=True and land under the same names."""
    ours_args, ref_args = VARNETS[0]
    torch.manual_seed(0)
    foreign = fastmri_models.VarNet(**ref_args).state_dict()
    model = create_arch("e2e-varnet", **ours_args)
    model.load_state_dict(foreign, strict=True)
    assert all(torch.equal(v, foreign[k]) for k, v in model.state_dict().items())


def test_zero_buffer_is_not_saved_but_old_files_with_it_load():
    """``cascades.{i}.zero`` (fastMRI before October 2020, older mbdlprune files) is listed, not kept."""
    model = create_arch("e2e-varnet", num_cascades=2, chans=4, pools=2, sens_chans=4, sens_pools=2)
    sd = model.state_dict()
    assert not [k for k in sd if k.endswith(".zero")]
    assert model.legacy_state_keys() == ["cascades.0.zero", "cascades.1.zero"]
    assert model.cascades[0].zero.shape == (1, 1, 1, 1, 1)
    old = {**sd, **{k: torch.zeros(1, 1, 1, 1, 1) for k in model.legacy_state_keys()}}
    model.load_state_dict(old, strict=True)
    assert model.double().cascades[1].zero.dtype == torch.float64  # still moves with the model


def test_prior_paths_follow_fastmri_names():
    model = create_arch("e2e-varnet", num_cascades=3, chans=4, pools=2, sens_chans=2, sens_pools=2)
    assert model.prior_paths() == [f"cascades.{i}.model.unet" for i in range(3)]
    from mbdlprune.pruning.discovery import resolve_prior_names

    # the sensitivity U-Net is chosen with --prior (+NAME adds it to the cascades): the model has no switch
    chosen = resolve_prior_names(model, ["+sens_net.norm_unet.unet"])
    assert chosen[-1] == "sens_net.norm_unet.unet" and chosen[:-1] == model.prior_paths()
    for path in chosen:
        assert type(model.get_submodule(path)).__name__ == "Unet"
