"""The input check names the convolution that really receives the input, also when it is not the first registered
one (MONAI's DiNTS registers its cells before its stem)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DiNTS, TopologyInstance
from tiny import tiny_net

from monai_tta.adapters import Tent
from monai_tta.data.checks import InvalidCaseError
from monai_tta.networks.inputs import check_network_input, first_conv, input_conv


def tiny_dints(in_channels: int = 1) -> DiNTS:
    torch.manual_seed(0)
    space = TopologyInstance(channel_mul=0.25, num_blocks=2, num_depths=2, use_downsample=True, spatial_dims=3)
    return DiNTS(dints_space=space, in_channels=in_channels, num_classes=3, use_downsample=True, spatial_dims=3).eval()


def test_dints_first_registered_conv_is_not_the_stem():
    net = tiny_dints()
    x = torch.rand(1, 1, 16, 16, 16)
    assert first_conv(net).in_channels != 1  # what the old check compared with ("the network takes 16")
    stem = input_conv(net, x)
    assert any(stem is m for m in net.stem_down.modules())
    assert stem.in_channels == 1 and len(stem.kernel_size) == 3
    check_network_input(x, net)  # no false rejection
    with pytest.raises(InvalidCaseError, match="the image has 2 channels but the network takes 1"):
        check_network_input(torch.rand(1, 2, 16, 16, 16), net)
    with pytest.raises(InvalidCaseError, match="expected a 3D image"):
        check_network_input(torch.rand(1, 1, 16, 16), net)


def test_dints_adapts_with_softmax_tent():
    net, x = tiny_dints(), torch.rand(1, 1, 16, 16, 16)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    adapter = Tent(activation="softmax", setting="episodic")
    with torch.no_grad():
        out = adapter(x, net)
    assert out.shape == (1, 3, 16, 16, 16)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p.detach(), before[n])}
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    norms = {
        f"{m}.{n}" for m, mod in net.named_modules() if isinstance(mod, norm_types) for n, _ in mod.named_parameters()
    }
    assert changed and changed <= norms


def test_stem_first_network_needs_no_dry_run():
    net = tiny_net()  # conv -> BN -> head: the first registered conv is the stem
    check_network_input(torch.rand(1, 2, 8, 8), net)
    with pytest.raises(InvalidCaseError, match="the image has 3 channels but the network takes 2"):
        check_network_input(torch.rand(1, 3, 8, 8), net)
