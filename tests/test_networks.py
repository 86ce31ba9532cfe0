"""Tests of monai_tta.networks: ResUNet (reference state-dict layout), its checkpoint loader, and SmallUNet."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_tta.networks import ResUNet, SmallUNet, load_reference_state_dict

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (channels,), "bias": (channels,), "running_mean": (channels,), "running_var": (channels,)}
    shapes["num_batches_tracked"] = ()
    return {f"{prefix}.{suffix}": shapes[suffix] for suffix in BN_SUFFIXES}


def expected_reference_shapes(in_ch: int = 3, out_ch: int = 2) -> dict[str, tuple[int, ...]]:
    """The GraTa/VPTTA ResNet-34 UNet state dict, written out from the architecture description (methods.md §1.3)."""
    exp: dict[str, tuple[int, ...]] = {"res.conv1.weight": (64, in_ch, 7, 7)}
    exp.update(_bn("res.bn1", 64))
    width_in = 64
    for stage, (width, n_blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for i in range(n_blocks):
            p = f"res.layer{stage}.{i}"
            cin = width_in if i == 0 else width
            exp[f"{p}.conv1.weight"] = (width, cin, 3, 3)
            exp.update(_bn(f"{p}.bn1", width))
            exp[f"{p}.conv2.weight"] = (width, width, 3, 3)
            exp.update(_bn(f"{p}.bn2", width))
            if i == 0 and stage > 1:
                exp[f"{p}.downsample.0.weight"] = (width, cin, 1, 1)
                exp.update(_bn(f"{p}.downsample.1", width))
        width_in = width
    exp["res.fc.weight"] = (1000, 512)
    exp["res.fc.bias"] = (1000,)
    for k, (up_in, x_in) in enumerate(((512, 256), (256, 128), (256, 64), (256, 64)), start=1):
        exp[f"up{k}.tr_conv.weight"] = (up_in, 128, 2, 2)  # ConvTranspose2d weight is (in, out, kH, kW)
        exp[f"up{k}.tr_conv.bias"] = (128,)
        exp[f"up{k}.x_conv.weight"] = (128, x_in, 1, 1)
        exp[f"up{k}.x_conv.bias"] = (128,)
        exp.update(_bn(f"up{k}.bn", 256))
    exp["up5.weight"] = (256, 32, 2, 2)
    exp["up5.bias"] = (32,)
    exp.update(_bn("bnout", 32))
    exp["seg_head.weight"] = (out_ch, 32, 1, 1)
    exp["seg_head.bias"] = (out_ch,)
    return exp


def randomized_state_dict(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict with the model's names and shapes but random values (positive running variances)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, value in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7, dtype=value.dtype)
        elif name.endswith("running_var"):
            out[name] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            out[name] = 0.1 * torch.randn(value.shape, generator=gen)
    return out


@pytest.fixture(scope="module")
def resunet() -> ResUNet:
    torch.manual_seed(0)
    return ResUNet().eval()


@pytest.fixture(scope="module")
def random_state(resunet) -> dict[str, torch.Tensor]:
    return randomized_state_dict(resunet, seed=3)


# ---------------------------------------------------------------- ResUNet


def test_resunet_output_shape(resunet):
    with torch.no_grad():
        assert resunet(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
        assert resunet(torch.rand(2, 3, 64, 96)).shape == (2, 2, 64, 96)
    net = ResUNet(in_channels=1, out_channels=3, layers=(1, 1, 1, 1)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 64)).shape == (1, 3, 32, 64)
    with pytest.raises(ValueError):
        ResUNet(layers=(3, 4, 6))


@pytest.mark.parametrize("shape", [(1, 3, 48, 64), (1, 3, 64, 100), (3, 64, 64)])
def test_resunet_rejects_bad_input(resunet, shape):
    with pytest.raises(ValueError):
        resunet(torch.rand(*shape))


def test_resunet_bn_counts(resunet):
    bns = [m for m in resunet.modules() if isinstance(m, nn.BatchNorm2d)]
    # encoder: stem 1 + 2 per BasicBlock (3+4+6+3 = 16 blocks) + 3 downsample BNs; decoder: up1..up4 bn + bnout
    n_layers = 1 + 2 * 16 + 3 + 4 + 1
    n_channels = 64 + 2 * (3 * 64 + 4 * 128 + 6 * 256 + 3 * 512) + (128 + 256 + 512) + 4 * 256 + 32
    assert (n_layers, n_channels) == (41, 9568)
    assert len(bns) == n_layers
    assert sum(m.num_features for m in bns) == n_channels
    assert sum(p.numel() for m in bns for p in m.parameters()) == 2 * n_channels == 19136
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in resunet.modules())


def test_resunet_state_dict_names_and_shapes(resunet):
    expected = expected_reference_shapes()
    actual = {k: tuple(v.shape) for k, v in resunet.state_dict().items()}
    assert set(actual) == set(expected)
    assert actual == expected
    assert len(expected) == 41 * 5 + 1 + 35 + 2 + 4 * 4 + 2 + 2  # BNs, stem, block convs, fc, up1-4, up5, head


def test_resunet_forward_matches_manual_composition(resunet):
    """Skip wiring and activation placement (ReLU before BN in UnetBlock, ReLU after bnout) checked by hand."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 96)
    r = resunet.res

    def unet_block(block, up, skip):
        cat = torch.cat([block.tr_conv(up), block.x_conv(skip)], dim=1)
        b = block.bn
        return F.batch_norm(F.relu(cat), b.running_mean, b.running_var, b.weight, b.bias, False, 0.0, b.eps)

    with torch.no_grad():
        s0 = F.relu(r.bn1(r.conv1(x)))
        s1 = r.layer1(r.maxpool(s0))
        s2 = r.layer2(s1)
        s3 = r.layer3(s2)
        s4 = r.layer4(s3)
        assert [t.shape[-1] for t in (s0, s1, s2, s3, s4)] == [48, 24, 12, 6, 3]
        y = unet_block(resunet.up1, F.relu(s4), s3)
        y = unet_block(resunet.up2, y, s2)
        y = unet_block(resunet.up3, y, s1)
        y = unet_block(resunet.up4, y, s0)
        expected = resunet.seg_head(F.relu(resunet.bnout(resunet.up5(y))))
        torch.testing.assert_close(resunet(x), expected, rtol=0, atol=0)


def test_resunet_loads_reference_layout_strict(resunet, random_state):
    source = ResUNet()
    source.load_state_dict(random_state, strict=True)
    target = ResUNet()
    target.load_state_dict(source.state_dict(), strict=True)
    source.eval()
    target.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out_s, out_t, out_other = source(x), target(x), resunet(x)
    torch.testing.assert_close(out_t, out_s, rtol=0, atol=0)
    assert not torch.equal(out_t, out_other)  # the loaded weights really changed the output


# ---------------------------------------------------------------- loader


def test_loader_strips_module_prefix_and_aux_heads(tmp_path, caplog, random_state):
    aux = {
        "recon_up.weight": torch.zeros(3),
        "denoise_head.bias": torch.zeros(2),
        "supres1.tr_conv.weight": torch.zeros(4),
        "rotate_head.fc.weight": torch.zeros(4, 2),
    }
    ckpt = {"model": {f"module.{k}": v for k, v in {**random_state, **aux}.items()}, "epoch": 200}
    net = ResUNet()
    with caplog.at_level(logging.WARNING, logger="monai_tta.networks.resunet"):
        assert load_reference_state_dict(net, ckpt) is net
    for name in aux:
        assert name in caplog.text
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_state.items())

    path = tmp_path / "last-Res_Unet.pth"
    for saved, where in (({"state_dict": random_state}, str(path)), (random_state, path)):
        torch.save(saved, path)
        with torch.no_grad():
            net.seg_head.weight.zero_()
            net.res.bn1.running_mean.zero_()
        load_reference_state_dict(net, where)
        assert torch.equal(net.seg_head.weight, random_state["seg_head.weight"])
        assert torch.equal(net.res.bn1.running_mean, random_state["res.bn1.running_mean"])


def test_loader_errors_on_mismatch(random_state):
    net = ResUNet()
    with pytest.raises(ValueError, match="unexpected keys.*res.fc2.weight"):
        load_reference_state_dict(net, {**random_state, "res.fc2.weight": torch.zeros(1)})
    missing = dict(random_state)
    del missing["bnout.running_var"]
    with pytest.raises(ValueError, match="missing keys.*bnout.running_var"):
        load_reference_state_dict(net, missing)
    wrong_shape = {**random_state, "seg_head.weight": torch.zeros(3, 32, 1, 1)}
    with pytest.raises(ValueError, match="shape mismatches.*seg_head.weight"):
        load_reference_state_dict(net, wrong_shape)
    with pytest.raises(ValueError, match="collides"):
        load_reference_state_dict(net, {"module.up5.bias": torch.zeros(32), "up5.bias": torch.zeros(32)})
    with pytest.raises(TypeError):
        load_reference_state_dict(net, [1, 2, 3])


def test_loader_non_strict_loads_the_rest(caplog, random_state):
    partial = {k: v for k, v in random_state.items() if not k.startswith("seg_head.")}
    partial["up5.weight"] = torch.zeros(1, 1, 2, 2)  # wrong shape: skipped
    net = ResUNet()
    head_before = net.seg_head.weight.detach().clone()
    up5_before = net.up5.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="monai_tta.networks.resunet"):
        load_reference_state_dict(net, partial, strict=False)
    assert "seg_head.weight" in caplog.text and "up5.weight" in caplog.text
    assert torch.equal(net.seg_head.weight, head_before)
    assert torch.equal(net.up5.weight, up5_before)
    assert torch.equal(net.bnout.running_var, random_state["bnout.running_var"])


# ---------------------------------------------------------------- SmallUNet


@pytest.mark.parametrize("upsample", ["deconv", "bilinear"])
@pytest.mark.parametrize("spatial", [(64, 64), (40, 96)])
def test_small_unet_shapes(upsample, spatial):
    net = SmallUNet(upsample=upsample).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 3, *spatial)).shape == (2, 2, *spatial)
    net = SmallUNet(in_channels=1, out_channels=4, features=(8, 16)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 6, 10)).shape == (1, 4, 6, 10)


def test_small_unet_3d():
    net = SmallUNet(in_channels=1, out_channels=2, features=(4, 8, 16), spatial_dims=3).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 8, 12, 16)).shape == (1, 2, 8, 12, 16)
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_small_unet_structure():
    features = (16, 32, 64, 128)
    net = SmallUNet(features=features)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * len(features) + 2 * (len(features) - 1)
    assert sum(m.num_features for m in bns) == 2 * sum(features) + 2 * sum(features[:-1])
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())
    # every 3x3 convolution is immediately followed by a BatchNorm of the same width
    mods = list(net.modules())
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert isinstance(mods[i + 1], nn.BatchNorm2d) and mods[i + 1].num_features == m.out_channels
    # train mode: the output of the first BN is normalised with the batch's own statistics
    captured = []
    bns[0].register_forward_hook(lambda _m, _i, out: captured.append(out))
    net.train()(torch.rand(2, 3, 32, 32) * 5 + 3)
    out = captured[0]
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"spatial_dims": 1}, {"upsample": "nearest"}, {"features": (16,)}, {"features": (16, 0)}],
)
def test_small_unet_bad_options(kwargs):
    with pytest.raises(ValueError):
        SmallUNet(**kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (3, 64, 64)])
def test_small_unet_rejects_bad_input(shape):
    with pytest.raises(ValueError):
        SmallUNet()(torch.rand(*shape))


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: SmallUNet(features=(4, 8, 16)), (1, 3, 16, 16)),
        (lambda: SmallUNet(features=(4, 8), upsample="bilinear", spatial_dims=3), (1, 3, 4, 4, 4)),
        (lambda: ResUNet(layers=(1, 1, 1, 1)), (1, 3, 32, 32)),
    ],
)
def test_networks_are_scriptable_and_keep_their_input_checks(make, shape):
    """``torch.jit.script`` (what the zoo's ``ckpt_export`` uses) gives the same logits and the same size check."""
    net = make().eval()
    scripted = torch.jit.script(net)
    x = torch.rand(shape)
    assert torch.equal(scripted(x), net(x))
    bad = torch.rand(*shape[:-1], shape[-1] + 1)
    with pytest.raises(Exception, match="divisible by"):
        scripted(bad)
