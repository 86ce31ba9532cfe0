"""Issue 18: safe's signals (hand-computed), safe and the collapse safeguard on volumes, the source gap on networks
without running statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.networks.nets import BasicUNet, SegResNet, UNet

from monai_tta.adapters import SourceOnly, Tent
from monai_tta.guards import CollapseSafeguard, SafeChoice
from monai_tta.guards.signals import SafeSignal, agreement, mix_neighbours, signal_scores
from monai_tta.inferers import SlidingWindowAdapter

KW = {"roi_size": (8, 8, 8), "sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"}


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def unet3d(seed=0):
    torch.manual_seed(seed)
    net = UNet(3, 1, 2, channels=(4, 8, 8), strides=(2, 2), norm="batch").eval()
    with torch.no_grad():  # source statistics that do not fit the volumes: the candidates differ
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def vol(seed=1):
    return torch.rand((1, 1, 16, 16, 8), generator=torch.Generator().manual_seed(seed))


def test_agreement_by_hand():
    p, q = torch.tensor([[[0.2, 0.8]]]), torch.tensor([[[0.4, 0.8]]])
    assert agreement(p, q, "sigmoid").item() == pytest.approx((0.8 + 1.0) / 2)
    p, q = torch.tensor([[[0.7], [0.3]]]), torch.tensor([[[0.5], [0.5]]])  # 2 classes, 1 pixel
    assert agreement(p, q, "softmax").item() == pytest.approx(0.5 + 0.3)


def test_signal_scores_by_hand():
    z = [torch.full((1, 1, 2), logit(p)) for p in (0.5, 0.75, 0.5)]
    # consensus: the mean probability is 0.5833..., agreement 1 - |p - mean|
    got = signal_scores(SafeSignal.CONSENSUS, z, "sigmoid")
    assert got == pytest.approx([1 - 0.25 / 3, 1 - 0.5 / 3, 1 - 0.25 / 3], abs=1e-6)
    # source (index 1): the others agree 0.75 with it; the source scores their mean
    assert signal_scores(SafeSignal.SOURCE, z, "sigmoid", source_index=1) == pytest.approx([0.75, 0.75, 0.75])
    # entropy: minus the mean entropy in bits
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert signal_scores(SafeSignal.ENTROPY, z, "sigmoid") == pytest.approx([-1.0, -h, -1.0], abs=1e-6)
    # flip: agreement with the prediction of the flipped input
    flipped = [torch.full((1, 1, 2), logit(p)) for p in (0.6, 0.75, 0.5)]
    assert signal_scores(SafeSignal.FLIP, z, "sigmoid", flipped=flipped) == pytest.approx([0.9, 1.0, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="flipped input"):
        signal_scores(SafeSignal.FLIP, z, "sigmoid")
    # mixes: the mean agreement with the neighbouring mixes; none: 1
    near = [[torch.full((1, 1, 2), logit(0.6)), torch.full((1, 1, 2), logit(0.3))], [], [z[0]]]
    got = signal_scores(SafeSignal.MIXES, z, "sigmoid", neighbours=near)
    assert got == pytest.approx([(0.9 + 0.8) / 2, 1.0, 1.0], abs=1e-6)
    with pytest.raises(ValueError, match="path of statistics mixes"):
        signal_scores(SafeSignal.MIXES, z, "sigmoid")
    assert mix_neighbours(0.0) == [0.25] and mix_neighbours(0.5) == [0.25, 0.75] and mix_neighbours(1.0) == [0.75]
    # softmax (2 classes, 1 pixel): the agreement is sum_c min(p_c, q_c)
    two = [torch.log(torch.tensor([[[0.7], [0.3]]])), torch.log(torch.tensor([[[0.5], [0.5]]]))]
    near = [[two[1], torch.log(torch.tensor([[[0.9], [0.1]]]))], [two[0]]]
    got = signal_scores(SafeSignal.MIXES, two, "softmax", neighbours=near)
    assert got == pytest.approx([((0.5 + 0.3) + (0.7 + 0.1)) / 2, 0.5 + 0.3], abs=1e-6)


def count_windows(adapter: SlidingWindowAdapter) -> list[int]:
    calls = [0]
    inner = adapter.inferer.__call__

    class Counting:
        def __call__(self, *a, **k):
            calls[0] += 1
            return inner(*a, **k)

    adapter.inferer = Counting()
    return calls


@pytest.mark.parametrize("signal", ["entropy", "flip", "consensus", "source", "mixes"])
def test_safe_on_a_volume_predicts_it_once_with_the_chosen_candidate(signal):
    x = vol()
    adapter = SlidingWindowAdapter(Tent(safe={"signal": signal}, seed=0), **KW)
    calls = count_windows(adapter)
    out = adapter(x, unet3d())
    stats = adapter.last_stats
    assert calls[0] == 1  # the whole volume is predicted once, by the chosen candidate only
    assert stats["safe_signal"] == signal
    labels = ["method", "stats_1", "stats_0.5", "stats_0", "source"]
    assert {f"safe_score_{label}" for label in labels} <= set(stats)
    # the source model's choice reports the source model's own sliding-window prediction
    if stats["safe_choice"] == "source":
        torch.testing.assert_close(out, SlidingWindowAdapter(SourceOnly(), **KW)(x, unet3d()))


def test_safe_with_only_the_methods_candidate_is_the_method_on_volumes():
    x = vol()
    plain = SlidingWindowAdapter(Tent(seed=0, safeguard=False), safe=False, **KW)(x, unet3d())
    only = SlidingWindowAdapter(Tent(seed=0, safeguard=False, safe={"priors": (), "source": False}), **KW)
    torch.testing.assert_close(only(x, unet3d()), plain, rtol=0, atol=0)
    assert only.last_stats["safe_choice"] == "method"
    source = SlidingWindowAdapter(Tent(seed=0, safeguard=False, safe={"priors": (), "source_margin": 1.0}), **KW)
    torch.testing.assert_close(source(x, unet3d()), SlidingWindowAdapter(SourceOnly(), **KW)(x, unet3d()))
    assert source.last_stats["safe_choice"] == "source"


def test_sliding_window_adds_safe_to_an_adapter_that_adapts():
    assert SlidingWindowAdapter(Tent(), **KW).adapter.safe is not None
    assert SlidingWindowAdapter(Tent(), safe=False, **KW).adapter.safe is None
    assert SlidingWindowAdapter(SourceOnly(), **KW).adapter.safe is None


def test_the_collapse_safeguard_probes_volumes_on_patches():
    net = unet3d()
    adapter = SlidingWindowAdapter(Tent(setting="continual", seed=0, safeguard={"source_gap": 1.0}), safe=False, **KW)
    adapter(vol(), net)
    assert "safeguard_gap" in adapter.last_stats and adapter.last_stats["safeguard_fallback"] is False
    adapter = SlidingWindowAdapter(Tent(setting="continual", seed=0, safeguard={"source_gap": -1.0}), safe=False, **KW)
    calls = count_windows(adapter)
    out = adapter(vol(), unet3d())
    assert adapter.last_stats["safeguard_fallback"] is True and calls[0] == 1  # only the source model's prediction
    torch.testing.assert_close(out, SlidingWindowAdapter(SourceOnly(), **KW)(vol(), unet3d()))


def test_the_source_gap_without_running_statistics_accepts_a_small_step():
    guard = CollapseSafeguard()
    state = guard.init_state()
    assert guard.check_gap(state, 0.305, 0.3, running_stats=False) is False  # +0.005 < step_margin 0.01
    state = guard.init_state()
    assert guard.check_gap(state, 0.305, 0.3, running_stats=True) is True  # BatchNorm: unchanged rule (> -0.01)
    state = guard.init_state()
    assert guard.check_gap(state, 0.32, 0.3, running_stats=False) is True  # +0.02: less confident, fall back


@pytest.mark.parametrize(
    "make",
    [
        lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 4, 4, 4, 4)),
        lambda: SegResNet(
            spatial_dims=2, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)
        ),
    ],
    ids=["BasicUNet-InstanceNorm", "SegResNet-GroupNorm"],
)
def test_tent_adapts_instance_and_group_norm_networks_at_its_defaults(make):
    torch.manual_seed(0)
    net = make().eval()
    before = copy.deepcopy(net.state_dict())
    adapter = Tent(setting="domain", seed=0)
    for i in range(3):
        adapter(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(i)), net)
        assert adapter.last_stats["safeguard_fallback"] is False
    assert adapter.last_stats["step"] == 3
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_safe_choice_signal_is_validated():
    with pytest.raises(ValueError):
        SafeChoice(signal="dropout")


def test_fallbacks_are_counted_per_domain_and_warned_when_most_cases_refused():
    from monai_tta.handlers.refusals import count_fallbacks, count_update_only, refusal_warnings

    rows = [
        {"domain": "a", "safeguard_fallback": 1.0, "safe_source": 0.0},
        {"domain": "a", "safe_source": 1.0},
        {"domain": "a", "safe_source": 0.0},
        {"domain": "b", "safe_source": 1.0},
        {"domain": "b", "safe_source": 0.0},
        {"domain": "c", "dice_mean": 50.0},
    ]
    counts = count_fallbacks(rows)
    assert counts == {"a": (2, 3), "b": (1, 2)}
    lines = refusal_warnings("TENT", counts)
    assert len(lines) == 1 and "refused on 2 of 3 cases of domain 'a'" in lines[0]
    # the step rule: the source model won and only the update was kept
    steps = [{"domain": "a", "safe_step": 1.0}, {"domain": "a", "safe_step": 1.0}, {"domain": "a", "safe_step": 0.0}]
    steps += [{"domain": "b", "safe_step": 0.0}, {"domain": "c", "dice_mean": 1.0}]
    update_only = count_update_only(steps)
    assert update_only == {"a": (2, 3), "b": (0, 1)}
    lines = refusal_warnings("TENT", {}, update_only)
    assert len(lines) == 1 and "on 2 of 3 cases of domain 'a' the source model won safe's choice" in lines[0]
