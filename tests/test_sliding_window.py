"""Volumes: patch-wise updates, per-volume statistics, MONAI sliding-window prediction, 3D views and augmentation."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet, UNet
from tiny import scramble_batch_norms
from torch import nn

import monai_tta.inferers.sliding_window as sliding_window
from monai_tta.adapters import SAR, VPTTA, CaseParts, GraTa, NormAdapt, SourceOnly, Tent
from monai_tta.engines import AdaptiveEvaluator
from monai_tta.inferers import SlidingWindowAdapter, sample_patches, window_slices
from monai_tta.norms import NormPolicy, convert_norms, pooled_statistics
from monai_tta.params import select_parameters
from monai_tta.transforms import VIEW_DIMS, StrongStyle, apply_view, invert_view

ALL = slice(None)


@pytest.fixture(autouse=True)
def published_methods(monkeypatch):
    """The methods as published: without the safe choice SlidingWindowAdapter adds by default (issue 18)."""
    monkeypatch.setattr(SlidingWindowAdapter, "default_safe", False)


class TinyNet3d(nn.Module):
    """conv 3x3x3 -> BN -> ReLU [-> conv 1x1x1 -> BN -> ReLU] -> conv 1x1x1 (2 logits)."""

    def __init__(self, second_bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm3d(3)
        self.mid = nn.Sequential(nn.Conv3d(3, 3, 1), nn.BatchNorm3d(3), nn.ReLU()) if second_bn else nn.Identity()
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        return self.head(self.mid(torch.relu(self.bn(self.conv(x)))))


def tiny3d(seed=0, second_bn=False):
    torch.manual_seed(seed)
    return scramble_batch_norms(TinyNet3d(second_bn))


def unet3d(seed=0):
    torch.manual_seed(seed)
    return UNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), norm="batch").eval()


def vol(shape, seed=1):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_source_only_is_monai_sliding_window_inference():
    net, x = unet3d(), vol((1, 1, 20, 16, 12))
    kw = {"roi_size": (8, 8, 8), "sw_batch_size": 3, "overlap": 0.25, "mode": "gaussian"}
    with torch.no_grad():
        expected = SlidingWindowInferer(**kw)(x, net)
    torch.testing.assert_close(SlidingWindowAdapter(SourceOnly(), **kw)(x, net), expected, rtol=0, atol=0)
    small = vol((1, 1, 6, 8, 5))  # smaller than the roi: padded as MONAI pads, cropped back
    with torch.no_grad():
        expected = SlidingWindowInferer(**kw)(small, net)
    torch.testing.assert_close(SlidingWindowAdapter(SourceOnly(), **kw)(small, net), expected)


def test_window_slices_follow_monai_and_patches_are_grid_tiles_or_seeded():
    assert window_slices((12, 12, 8), (8, 8, 8), 0.5) == [
        (slice(a, a + 8), slice(b, b + 8), slice(0, 8)) for a in (0, 4) for b in (0, 4)
    ]
    tiles = sample_patches((16, 12, 8), (8, 8, 8))
    assert [(t[0].start, t[1].start) for t in tiles] == [(0, 0), (0, 4), (8, 0), (8, 4)]
    assert sample_patches((16, 12, 8), (8, 8, 8), num_patches=2) == [tiles[0], tiles[3]]
    draw = [sample_patches((16, 12, 8), (8, 8, 8), 3, "random", torch.Generator().manual_seed(5)) for _ in range(2)]
    assert draw[0] == draw[1] and all(s.stop <= n for p in draw[0] for s, n in zip(p, (16, 12, 8)))
    with pytest.raises(ValueError):
        sample_patches((16, 12, 8), (8, 8, 8), None, "random")
    with pytest.raises(ValueError):
        sample_patches((16, 12, 8), (8, 8, 8), 2, "poisson")


def test_per_volume_statistics_equal_a_hand_computation():
    net, x = tiny3d(), vol((1, 2, 16, 12, 8))
    roi = (8, 8, 8)
    out = SlidingWindowAdapter(NormAdapt(), roi_size=roi, overlap=0.5, sw_batch_size=2)(x, copy.deepcopy(net))
    # the statistics come from the non-overlapping tiles (the last tile of an axis shifted to end at the border)
    tiles = [(ALL, ALL, slice(a, a + 8), slice(b, b + 8), slice(0, 8)) for a in (0, 8) for b in (0, 4)]
    with torch.no_grad():
        h = torch.cat([net.conv(x[w]) for w in tiles])  # every tile's BN input, as one batch
        mean, var = h.mean(dim=(0, 2, 3, 4)), h.var(dim=(0, 2, 3, 4), unbiased=False)

        def fixed(v):
            bn = F.batch_norm(net.conv(v), mean, var, net.bn.weight, net.bn.bias, False, 0.0, net.bn.eps)
            return net.head(torch.relu(bn))

        expected = SlidingWindowInferer(roi, 2, 0.5, "gaussian")(x, fixed)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_more_statistics_passes_make_deeper_layers_exact():
    net, x = tiny3d(second_bn=True), vol((1, 2, 12, 12, 8))
    layers = convert_norms(net)
    NormPolicy("image").apply(layers)
    windows = [(ALL, ALL, slice(a, a + 8), slice(b, b + 8), slice(0, 8)) for a in (0, 4) for b in (0, 4)]
    batch = torch.cat([x[w] for w in windows])
    with torch.no_grad():
        expected = net(batch)  # BatchNorm in training mode on the batch of all windows: the pooled definition
        h1 = net.conv(batch)
        m1, v1 = h1.mean(dim=(0, 2, 3, 4)), h1.var(dim=(0, 2, 3, 4), unbiased=False)
        h2 = net.mid[0](torch.relu(F.batch_norm(h1, m1, v1, net.bn.weight, net.bn.bias, False, 0.0, 1e-5)))
    one = pooled_statistics(layers, lambda: [net(x[w]) for w in windows], passes=1)
    two = pooled_statistics(layers, lambda: [net(x[w]) for w in windows], passes=2)
    torch.testing.assert_close(one[0][0], m1)
    torch.testing.assert_close(two[1][0], h2.mean(dim=(0, 2, 3, 4)))
    torch.testing.assert_close(two[1][1], h2.var(dim=(0, 2, 3, 4), unbiased=False))
    assert not torch.allclose(one[1][0], two[1][0], atol=1e-4)  # one pass is exact for the first layer only
    assert expected.shape == (4, 2, 8, 8, 8)


def _fixed_two_bn(net, mean_var):
    """TinyNet3d(second_bn=True) normalised with fixed statistics ``[(m1, v1), (m2, v2)]``."""
    (m1, v1), (m2, v2) = mean_var

    def forward(v):
        h = torch.relu(F.batch_norm(net.conv(v), m1, v1, net.bn.weight, net.bn.bias, False, 0.0, net.bn.eps))
        bn2 = net.mid[1]
        h = torch.relu(F.batch_norm(net.mid[0](h), m2, v2, bn2.weight, bn2.bias, False, 0.0, bn2.eps))
        return net.head(h)

    return forward


def test_patch_statistics_are_batchnorm_training_statistics_of_the_batch_of_patches():
    """stats_from="patches": every layer (the deeper one too) gets the statistics BatchNorm in training mode computes on
    the batch of the K patches, and the whole volume is predicted with them."""
    net, x = tiny3d(second_bn=True), vol((1, 2, 24, 12, 8))
    roi, patches = (8, 8, 8), sample_patches((24, 12, 8), (8, 8, 8), 3)
    out = SlidingWindowAdapter(NormAdapt(), roi_size=roi, overlap=0.5, sw_batch_size=4, num_patches=3)(
        x, copy.deepcopy(net)
    )
    batch = torch.cat([x[(ALL, ALL, *p)] for p in patches])
    with torch.no_grad():
        h1 = net.conv(batch)
        m1, v1 = h1.mean(dim=(0, 2, 3, 4)), h1.var(dim=(0, 2, 3, 4), unbiased=False)
        h1 = torch.relu(F.batch_norm(h1, m1, v1, net.bn.weight, net.bn.bias, False, 0.0, net.bn.eps))
        h2 = net.mid[0](h1)
        m2, v2 = h2.mean(dim=(0, 2, 3, 4)), h2.var(dim=(0, 2, 3, 4), unbiased=False)
        expected = SlidingWindowInferer(roi, 4, 0.5, "gaussian")(x, _fixed_two_bn(net, [(m1, v1), (m2, v2)]))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    tiles = SlidingWindowAdapter(NormAdapt(), roi_size=roi, overlap=0.5, sw_batch_size=4, stats_from="tiles")
    assert not torch.allclose(tiles(x, copy.deepcopy(net)), out, atol=1e-4)  # 6 tiles: other windows, other stats


def count_forwards(net):
    calls = []
    net.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("cls", [Tent, GraTa, SAR])
def test_statistics_from_the_update_forward_equal_a_separate_pass(cls):
    """With the K patches in one update batch the statistics come from the update's first forward (no extra pass);
    batches of one patch take them from a no-grad forward of the K patches first: same statistics, same update and
    prediction."""
    x, results = vol((1, 1, 24, 16, 8)), []
    for update_batch in (3, 1):
        net = unet3d()
        calls = count_forwards(net)
        adapter = SAR(margin=1e9) if cls is SAR else cls()
        sw = SlidingWindowAdapter(adapter, roi_size=8, sw_batch_size=4, num_patches=3, update_batch_size=update_batch)
        out = sw(x, net)
        results.append((out, [p.detach().clone() for p in net.parameters()], calls))
    (fused, fused_params, fused_calls), (apart, apart_params, apart_calls) = results
    torch.testing.assert_close(fused, apart, atol=1e-5, rtol=1e-5)
    for a, b in zip(fused_params, apart_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert fused_calls[0] == 3 and apart_calls[:2] == [3, 1]  # the statistics batch, then the first update batch
    assert sum(apart_calls) == sum(fused_calls) + 3  # the same forwards, plus the statistics batch of 3 patches


def test_patch_statistics_do_not_depend_on_patch_order(monkeypatch):
    x, results = vol((1, 1, 24, 16, 8)), []
    for reverse in (False, True):
        if reverse:
            monkeypatch.setattr(sliding_window, "sample_patches", lambda *a: sample_patches(*a)[::-1])
        net = unet3d()
        out = SlidingWindowAdapter(Tent(), roi_size=8, sw_batch_size=8, num_patches=None)(x, net)
        results.append((out, [p.detach().clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_pooled_statistics_are_stable_for_a_large_mean():
    layer = convert_norms(nn.Sequential(nn.BatchNorm3d(2)))[0]
    layer.prior = 0.0
    parts = [1000.0 + 0.01 * torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    ((mean, var, count),) = pooled_statistics([layer], lambda: [layer(p) for p in parts])
    joint = torch.cat(parts).double()
    assert count == 3 * 2 * 64
    torch.testing.assert_close(mean.double(), joint.mean(dim=(0, 2, 3, 4)), atol=1e-4, rtol=0)
    torch.testing.assert_close(var.double(), joint.var(dim=(0, 2, 3, 4), unbiased=False), atol=2e-6, rtol=0.02)


@pytest.mark.parametrize("cls", [Tent, GraTa])
def test_prediction_does_not_depend_on_window_or_patch_order(cls, monkeypatch):
    x, results = vol((1, 1, 24, 16, 8)), []
    for batch, reverse in ((1, False), (5, False), (1, True)):
        if reverse:
            monkeypatch.setattr(sliding_window, "sample_patches", lambda *a: sample_patches(*a)[::-1])
        net = unet3d()
        out = SlidingWindowAdapter(cls(), roi_size=8, sw_batch_size=batch, num_patches=None)(x, net)
        results.append((out, [p.detach().clone() for p in net.parameters()]))
    for out, params in results[1:]:
        torch.testing.assert_close(out, results[0][0], atol=1e-6, rtol=1e-5)
        for a, b in zip(params, results[0][1]):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_patch_gradients_are_the_mean_over_patches(batch_size):
    net, x = tiny3d(), vol((1, 2, 24, 8, 8))
    net.eval()  # fixed statistics: each patch's loss is independent of the others in its batch
    params = [net.bn.weight, net.bn.bias]
    parts = CaseParts(sample_patches(x.shape[2:], (8, 8, 8)), batch_size=batch_size)
    assert [len(g) for g in parts] == {1: [1, 1, 1], 2: [2, 1], 3: [3]}[batch_size]  # groups: one forward each
    grads, loss, used = parts.grads(lambda g: net(parts.take(x, g)).pow(2).mean(), params)
    joint = torch.stack([net(x[i]).pow(2).mean() for i in parts.slices]).mean()
    expected = torch.autograd.grad(joint, params)
    assert used == 3
    torch.testing.assert_close(loss, joint.detach())
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


class SavedBytes:
    """Bytes of the tensors autograd keeps for backward, live at once (peak), counted with saved-tensor hooks."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        box = [t]
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        holder = type("Holder", (), {})()
        holder.box = box
        weakref.finalize(holder, self._free, size)
        return holder

    def _free(self, size):
        self.live -= size

    def unpack(self, holder):
        return holder.box[0]


def peak_saved(fn):
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        fn()
    return counter.peak


@pytest.mark.parametrize("cls", [Tent, GraTa])
def test_patchwise_update_keeps_one_patch_graph_alive(cls):
    x = vol((1, 1, 32, 16, 16))
    one = peak_saved(lambda: SlidingWindowAdapter(cls(), roi_size=16, num_patches=1)(x, unet3d()))
    tiles = peak_saved(lambda: SlidingWindowAdapter(cls(), roi_size=16, num_patches=None)(x, unet3d()))
    whole = peak_saved(lambda: cls()(x, unet3d()))
    assert 0 < tiles <= 1.05 * one  # 2 grid tiles: the peak stays that of one patch
    pair = peak_saved(
        lambda: SlidingWindowAdapter(cls(), roi_size=16, num_patches=None, update_batch_size=2)(x, unet3d())
    )
    assert 1.8 * one <= pair <= 2.1 * one  # the 2 tiles in one update batch: that batch's graph
    assert whole > 1.5 * one


@pytest.mark.parametrize("cls", [Tent, SAR, GraTa])
def test_volumes_of_a_groupnorm_network_update_only_the_selected_parameters(cls):
    torch.manual_seed(0)
    net = SegResNet(3, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1), blocks_up=(1,)).eval()
    source = {k: v.clone() for k, v in net.state_dict().items()}
    x = vol((1, 1, 20, 16, 8))
    x_before = x.clone()
    adapter = SAR(margin=1e9) if cls is SAR else cls()
    sw = SlidingWindowAdapter(adapter, roi_size=8, num_patches=3, patch_sampling="random")
    assert sw(x, net).shape == (1, 2, 20, 16, 8) and torch.equal(x, x_before)
    selected = {id(p) for p in select_parameters(net, "norm")}
    changed = {id(p) for name, p in net.named_parameters() if not torch.equal(p, source[name])}
    assert changed and changed <= selected  # every other parameter bit for bit
    sw.reset(net)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in source.items())


def test_sliding_window_adapter_forwards_the_adapter_interface_and_resets():
    net, x = unet3d(), vol((1, 1, 16, 16, 8))
    source = {k: v.clone() for k, v in net.state_dict().items()}
    sw = SlidingWindowAdapter(Tent(setting="domain"), roi_size=8)
    sw.set_domain("a")
    sw(x, net)
    sw.set_domain("b")
    sw(x, net)
    assert sw.last_stats["reset"] is True and sw.n_params(net) == sw.adapter.n_params(net) > 0
    sw.reset(net)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in source.items())


def test_adaptive_evaluator_runs_a_sliding_window_adapter():
    data = [{"image": vol((1, 1, 16, 16, 8), seed=s), "label": torch.zeros(1, 1, 16, 16, 8), "domain": [d]}
            for s, d in enumerate("aab")]  # fmt: skip
    evaluator = AdaptiveEvaluator("cpu", data, unet3d(), SlidingWindowAdapter(Tent(setting="domain"), roi_size=8))
    evaluator.run()
    output = evaluator.state.output[0]  # decollated: one dict per item
    assert output["pred"].shape == (2, 16, 16, 8)
    assert bool(output["adapt"]["reset"])


def test_clear_errors():
    with pytest.raises(ValueError, match="cannot adapt a volume on patches"):
        SlidingWindowAdapter(VPTTA(), roi_size=8)
    with pytest.raises(ValueError, match="roi_size .* not a multiple of"):
        SlidingWindowAdapter(Tent(), roi_size=6)(vol((1, 1, 12, 12, 12)), unet3d())
    with pytest.raises(ValueError):
        SlidingWindowAdapter(Tent(), roi_size=8, patch_sampling="everywhere")
    with pytest.raises(ValueError):
        SlidingWindowAdapter(Tent(), roi_size=8, stats_from="slices")
    with pytest.raises(ValueError, match="update_batch_size"):
        SlidingWindowAdapter(Tent(), roi_size=8, update_batch_size=0)


def test_replaces_the_inferer_of_a_zoo_style_config():
    config = {
        "network": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8, 8], "strides": [2, 2], "norm": "batch"},
        "inferer": {"_target_": "monai_tta.inferers.SlidingWindowAdapter",
                    "adapter": {"_target_": "monai_tta.adapters.Tent"},
                    "roi_size": [8, 8, 8], "sw_batch_size": 2, "overlap": 0.25},
    }  # fmt: skip
    parser = ConfigParser(config)
    inferer, net = parser.get_parsed_content("inferer"), parser.get_parsed_content("network").eval()
    assert inferer(vol((1, 1, 12, 12, 12)), net).shape == (1, 2, 12, 12, 12)


def test_grata_views_act_in_the_axial_plane_and_strong_augmentation_works_in_3d():
    x = vol((1, 2, 6, 6, 4))
    assert VIEW_DIMS == (2, 3)
    torch.testing.assert_close(apply_view(x, "rot90", VIEW_DIMS), torch.rot90(x, 1, dims=(2, 3)))
    for view in ("identity", "hflip", "vflip", "rot90", "rot180", "rot270"):
        y = apply_view(x, view, VIEW_DIMS)
        assert y.shape == x.shape and torch.equal(invert_view(y, view, VIEW_DIMS), x)
        torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)))  # the through-plane axis is never moved
    probs = ("prob_brightness", "prob_contrast", "prob_gamma", "prob_noise", "prob_blur", "prob_blur_channel")
    strong = StrongStyle(**dict.fromkeys(probs, 1.0))
    out = strong(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
