"""State-dict keys of the U-Net and VarNet equal fastMRI's, so its weights load unrenamed."""

from __future__ import annotations

import torch

from mbdlprune.models import create_arch

# fastmri.models.unet.Unet(in_chans=2, out_chans=2, chans=4, num_pool_layers=2):
# ConvBlock.layers = [conv, inorm, lrelu, drop, conv, inorm, lrelu, drop] (convs at 0, 4),
# TransposeConvBlock.layers = [convT, inorm, lrelu], last up_conv = Sequential(ConvBlock, 1x1 conv).
UNET_POOLS2 = {
    "down_sample_layers.0.layers.0.weight": (4, 2, 3, 3),
    "down_sample_layers.0.layers.4.weight": (4, 4, 3, 3),
    "down_sample_layers.1.layers.0.weight": (8, 4, 3, 3),
    "down_sample_layers.1.layers.4.weight": (8, 8, 3, 3),
    "conv.layers.0.weight": (16, 8, 3, 3),
    "conv.layers.4.weight": (16, 16, 3, 3),
    "up_conv.0.layers.0.weight": (8, 16, 3, 3),
    "up_conv.0.layers.4.weight": (8, 8, 3, 3),
    "up_conv.1.0.layers.0.weight": (4, 8, 3, 3),
    "up_conv.1.0.layers.4.weight": (4, 4, 3, 3),
    "up_conv.1.1.weight": (2, 4, 1, 1),
    "up_conv.1.1.bias": (2,),
    "up_transpose_conv.0.layers.0.weight": (16, 8, 2, 2),
    "up_transpose_conv.1.layers.0.weight": (8, 4, 2, 2),
}

# fastmri.models.VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
E2E_VARNET_C2_P2 = [
    "sens_net.norm_unet.unet.down_sample_layers.0.layers.0.weight",
    "sens_net.norm_unet.unet.down_sample_layers.0.layers.4.weight",
    "sens_net.norm_unet.unet.down_sample_layers.1.layers.0.weight",
    "sens_net.norm_unet.unet.down_sample_layers.1.layers.4.weight",
    "sens_net.norm_unet.unet.conv.layers.0.weight",
    "sens_net.norm_unet.unet.conv.layers.4.weight",
    "sens_net.norm_unet.unet.up_conv.0.layers.0.weight",
    "sens_net.norm_unet.unet.up_conv.0.layers.4.weight",
    "sens_net.norm_unet.unet.up_conv.1.0.layers.0.weight",
    "sens_net.norm_unet.unet.up_conv.1.0.layers.4.weight",
    "sens_net.norm_unet.unet.up_conv.1.1.weight",
    "sens_net.norm_unet.unet.up_conv.1.1.bias",
    "sens_net.norm_unet.unet.up_transpose_conv.0.layers.0.weight",
    "sens_net.norm_unet.unet.up_transpose_conv.1.layers.0.weight",
    "cascades.0.dc_weight",
    "cascades.0.zero",
    "cascades.0.model.unet.down_sample_layers.0.layers.0.weight",
    "cascades.0.model.unet.down_sample_layers.0.layers.4.weight",
    "cascades.0.model.unet.down_sample_layers.1.layers.0.weight",
    "cascades.0.model.unet.down_sample_layers.1.layers.4.weight",
    "cascades.0.model.unet.conv.layers.0.weight",
    "cascades.0.model.unet.conv.layers.4.weight",
    "cascades.0.model.unet.up_conv.0.layers.0.weight",
    "cascades.0.model.unet.up_conv.0.layers.4.weight",
    "cascades.0.model.unet.up_conv.1.0.layers.0.weight",
    "cascades.0.model.unet.up_conv.1.0.layers.4.weight",
    "cascades.0.model.unet.up_conv.1.1.weight",
    "cascades.0.model.unet.up_conv.1.1.bias",
    "cascades.0.model.unet.up_transpose_conv.0.layers.0.weight",
    "cascades.0.model.unet.up_transpose_conv.1.layers.0.weight",
    "cascades.1.dc_weight",
    "cascades.1.zero",
    "cascades.1.model.unet.down_sample_layers.0.layers.0.weight",
    "cascades.1.model.unet.down_sample_layers.0.layers.4.weight",
    "cascades.1.model.unet.down_sample_layers.1.layers.0.weight",
    "cascades.1.model.unet.down_sample_layers.1.layers.4.weight",
    "cascades.1.model.unet.conv.layers.0.weight",
    "cascades.1.model.unet.conv.layers.4.weight",
    "cascades.1.model.unet.up_conv.0.layers.0.weight",
    "cascades.1.model.unet.up_conv.0.layers.4.weight",
    "cascades.1.model.unet.up_conv.1.0.layers.0.weight",
    "cascades.1.model.unet.up_conv.1.0.layers.4.weight",
    "cascades.1.model.unet.up_conv.1.1.weight",
    "cascades.1.model.unet.up_conv.1.1.bias",
    "cascades.1.model.unet.up_transpose_conv.0.layers.0.weight",
    "cascades.1.model.unet.up_transpose_conv.1.layers.0.weight",
]


def test_unet_keys_and_shapes_match_fastmri():
    sd = create_arch("unet", chans=4, num_pool_layers=2).state_dict()
    assert list(sd) == list(UNET_POOLS2)
    assert {k: tuple(v.shape) for k, v in sd.items()} == UNET_POOLS2


def test_e2e_varnet_keys_match_fastmri():
    model = create_arch("e2e-varnet", num_cascades=2, chans=4, pools=2, sens_chans=4, sens_pools=2)
    sd = model.state_dict()
    assert list(sd) == E2E_VARNET_C2_P2
    for i in range(2):
        for name, shape in UNET_POOLS2.items():
            assert tuple(sd[f"cascades.{i}.model.unet.{name}"].shape) == shape
        assert tuple(sd[f"cascades.{i}.dc_weight"].shape) == (1,)
        assert float(sd[f"cascades.{i}.dc_weight"]) == 1.0
        assert tuple(sd[f"cascades.{i}.zero"].shape) == (1, 1, 1, 1, 1)


def test_varnet_without_sensitivity_net_has_only_cascades():
    sd = create_arch("varnet", num_cascades=2, chans=4, pools=2).state_dict()
    assert list(sd) == [k for k in E2E_VARNET_C2_P2 if k.startswith("cascades.")]


def test_fastmri_style_state_dict_loads_strictly():
    """A state dict keyed as fastMRI writes it (fresh tensors) loads with strict=True."""
    model = create_arch("e2e-varnet", num_cascades=2, chans=4, pools=2, sens_chans=4, sens_pools=2)
    g = torch.Generator().manual_seed(0)
    foreign = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    model.load_state_dict(foreign, strict=True)
    assert torch.equal(model.state_dict()["cascades.1.model.unet.up_conv.1.1.bias"],
                       foreign["cascades.1.model.unet.up_conv.1.1.bias"])


def test_prior_paths_follow_fastmri_names():
    model = create_arch("e2e-varnet", num_cascades=3, chans=4, pools=2, sens_chans=2, sens_pools=2)
    assert model.prior_paths() == [f"cascades.{i}.model.unet" for i in range(3)]
    model.prune_sensitivity = True
    assert model.prior_paths()[-1] == "sens_net.norm_unet.unet"
    for path in model.prior_paths():
        assert type(model.get_submodule(path)).__name__ == "Unet"
