"""Any MONAI network, 2D and 3D: the shared parameter option, clear errors, what changes, resets, inputs of any size."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SegResNet, UNet
from tiny import scramble_batch_norms, tiny_net
from torch import nn

from monai_tta.adapters import SAR, VPTTA, GraTa, NormAdapt, SourceOnly, Tent
from monai_tta.networks import SmallUNet
from monai_tta.padding import network_divisor, pad_to_multiple
from monai_tta.params import PARAM_SETS, select_parameters


def unet_batch(d):
    return UNet(d, 1, 2, channels=(4, 8, 8), strides=(2, 2), norm="batch")


def unet_default(d):
    return UNet(d, 1, 2, channels=(4, 8, 8), strides=(2, 2))  # InstanceNorm without affine: nothing to update


def basic_unet(d):
    return BasicUNet(d, 1, 2, features=(4, 4, 4, 8, 8, 4))  # InstanceNorm with affine


def segresnet(d):
    return SegResNet(d, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,))  # GroupNorm


def dynunet(d):
    return DynUNet(d, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 4, 8])


def unetr(d):  # LayerNorm in the transformer, InstanceNorm without affine in the convolution blocks
    return UNETR(1, 2, (16,) * d, feature_size=4, hidden_size=12, mlp_dim=12, num_heads=2, spatial_dims=d)


NETWORKS = {"unet_batch": unet_batch, "basic_unet": basic_unet, "segresnet": segresnet, "dynunet": dynunet}
if importlib.util.find_spec("einops") is not None:  # MONAI's UNETR needs it (the test extra installs it)
    NETWORKS["unetr"] = unetr


def make(name, d, seed=0):
    torch.manual_seed(seed)
    return scramble_batch_norms(NETWORKS[name](d))


def volume(name, d, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = 32 if name == "basic_unet" else 16  # BasicUNet halves 4 times
    return torch.rand((1, 1) + (size,) * d, generator=g)


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def param_names(net, params):
    ids = {id(p) for p in params}
    return {n for n, p in net.named_parameters(remove_duplicate=False) if id(p) in ids}


CASES = [(cls, name, d) for d in (2, 3) for name in NETWORKS for cls in (Tent, SAR, GraTa)]
CASES += [(VPTTA, "unet_batch", d) for d in (2, 3)]


def build(cls):
    # the method's own update: the safeguard's source-gap probe may send a random network back to the source state
    if cls is SAR:
        return SAR(margin=1e9, safeguard=False)  # every sample reliable, so the update always happens
    if cls is VPTTA:
        return VPTTA(prompt_size=3, safeguard=False)
    return cls(safeguard=False)


@pytest.mark.parametrize("cls, name, d", CASES, ids=[f"{c.__name__}-{n}-{d}d" for c, n, d in CASES])
def test_adapter_runs_changes_only_its_params_resets_and_keeps_input(cls, name, d):
    net, x = make(name, d), volume(name, d)
    x_before, source = x.clone(), snapshot(net)
    adapter = build(cls)
    out = adapter(x, net)
    assert out.shape == (1, 2, *x.shape[2:]) and torch.isfinite(out).all()
    assert torch.equal(x, x_before)
    after = snapshot(net)
    changed = {k for k in source if not torch.equal(source[k], after[k])}
    selected = param_names(net, adapter.state_for(net).params)
    if cls is VPTTA:
        assert changed == set() and selected == set()  # only the prompt changes
    else:
        assert changed and changed <= selected  # buffers and every other parameter bit for bit
        assert selected == param_names(net, select_parameters(net, "norm"))
    adapter(volume(name, d, seed=2), net)
    adapter.reset(net)
    restored = snapshot(net)
    assert all(torch.equal(source[k], restored[k]) for k in source)


@pytest.mark.parametrize("cls", [Tent, SAR, GraTa])
@pytest.mark.parametrize("d", [2, 3])
def test_unet_at_its_default_norm_raises_a_clear_error(cls, d):
    net = unet_default(d)
    with pytest.raises(ValueError, match=r"nothing to update on UNet.*InstanceNorm.*affine.*params='all'"):
        cls()(volume("unet", d), net)


def test_other_parameter_sets_and_callables():
    net = unet_default(2)
    n_all = sum(p.numel() for p in net.parameters())
    adapter = Tent(params="all")
    adapter(volume("unet", 2), net)
    assert adapter.n_params(net) == n_all
    conv_only = Tent(params=lambda m: [m.model[0].conv.weight])
    assert conv_only.n_params(unet_default(2)) == unet_default(2).model[0].conv.weight.numel()
    with pytest.raises(ValueError):
        Tent(params="layers")
    with pytest.raises(TypeError, match="Parameter"):
        Tent(params=lambda m: [torch.zeros(1)]).n_params(net)
    with pytest.raises(ValueError, match="params"):
        NormAdapt(params="all")
    assert PARAM_SETS == ("norm", "bn", "all")


def test_norm_set_covers_every_normalisation_kind_and_bn_set_equals_the_published_one():
    net = nn.Sequential(
        nn.BatchNorm1d(2),
        nn.SyncBatchNorm(2),
        nn.InstanceNorm2d(2, affine=True),
        nn.InstanceNorm2d(2),
        nn.GroupNorm(1, 2),
        nn.LayerNorm(2),
        nn.Conv2d(2, 2, 1),
    )
    names = param_names(net, select_parameters(net, "norm"))
    assert names == {f"{i}.{w}" for i in (0, 1, 2, 4, 5) for w in ("weight", "bias")}
    assert param_names(net, select_parameters(net, "bn")) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    small = SmallUNet(in_channels=1, out_channels=2)  # a BatchNorm network: "norm" is exactly the BN affine set
    assert [id(p) for p in select_parameters(small, "norm")] == [id(p) for p in select_parameters(small, "bn")]


@pytest.mark.parametrize("cls", [NormAdapt, VPTTA])
def test_methods_that_need_batch_norm_statistics_say_so(cls):
    with pytest.raises(ValueError, match="needs BatchNorm layers with source running statistics.*BasicUNet"):
        cls()(volume("basic_unet", 2), basic_unet(2))


def test_statistics_regimes_act_on_batchnorm_1d_3d_and_syncbatchnorm():
    layers = ((nn.BatchNorm1d(3), (2, 3, 7)), (nn.BatchNorm3d(3), (2, 3, 4, 4, 4)), (nn.SyncBatchNorm(3), (2, 3, 5)))
    for bn, shape in layers:
        net = nn.Sequential(bn).eval()
        x = torch.randn(shape)
        with torch.no_grad():
            expected = nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        torch.testing.assert_close(NormAdapt()(x, net), expected)
        torch.testing.assert_close(SourceOnly()(x, net), net(x).detach())
    no_stats = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    x = torch.randn(2, 1, 4, 4)
    expected = no_stats(x).detach()  # plain inference: the input's own statistics
    for cls in (SourceOnly, Tent):
        torch.testing.assert_close(cls(lr=0.0)(x, copy.deepcopy(no_stats)), expected)


def test_whole_inputs_of_any_size_are_padded_and_cropped_back():
    net = tiny_net(in_channels=1)
    net.size_divisor = 4
    x = torch.rand(1, 1, 9, 6)
    padded, crop = pad_to_multiple(x, (4, 4))
    assert padded.shape == (1, 1, 12, 8) and torch.equal(padded[crop], x)
    out = SourceOnly()(x, net)
    with torch.no_grad():
        torch.testing.assert_close(out, net(padded)[crop])
    unet = make("unet_batch", 3)
    assert network_divisor(unet, 3) == (4, 4, 4)
    odd = torch.rand(1, 1, 13, 10, 7)
    for cls in (Tent, GraTa):
        assert cls()(odd, unet).shape == (1, 2, 13, 10, 7)
    assert network_divisor(SmallUNet(in_channels=1, out_channels=2), 2) == (8, 8)
