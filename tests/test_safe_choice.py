"""``safe`` (the label-free choice of the reported prediction) and the safeguard's source gap, on a tiny network whose
forward is written out by hand here: conv -> BN (source, image or mixed statistics) -> ReLU -> conv."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny import noise_images, tiny_image, tiny_net

from monai_tta.adapters import VPTTA, NormAdapt, SafeChoice, SafeNorm, Tent
from monai_tta.adapters.stats import StatKeys
from monai_tta.gradients import set_grads
from monai_tta.guards import SafeChoiceState
from monai_tta.losses import entropy_loss


def by_hand(ref: torch.nn.Module, x: torch.Tensor, prior: float, affine: list[torch.Tensor] | None = None):
    """The tiny network's logits with BatchNorm statistics ``prior * source + (1 - prior) * image``."""
    with torch.no_grad():
        h = ref.conv(x)
        mean = prior * ref.bn.running_mean + (1 - prior) * h.mean((0, 2, 3))
        var = prior * ref.bn.running_var + (1 - prior) * h.var((0, 2, 3), unbiased=False)
        w, b = affine if affine is not None else (ref.bn.weight, ref.bn.bias)
        z = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + ref.bn.eps)
        return ref.head(torch.relu(z * w[None, :, None, None] + b[None, :, None, None]))


def entropy_by_hand(logits: torch.Tensor) -> float:
    """Mean sigmoid entropy in bits, in float64 numpy."""
    z = logits.double().numpy()
    p = 1.0 / (1.0 + np.exp(-z))

    def plogp(q: np.ndarray) -> np.ndarray:
        return np.where(q > 0, q * np.log(np.maximum(q, 1e-300)), 0.0)

    return float(np.mean(-(plogp(p) + plogp(1 - p))) / math.log(2.0))


def images(n: int, size: int = 8) -> list[torch.Tensor]:
    """Images of very different contrasts: the source statistics of :func:`contrast_net` fit some of them."""
    scales = (0.2, 5.0, 1.0, 0.2, 5.0, 3.0)
    return [(tiny_image(seed=10 + i, size=size) - 0.5) * scales[i % len(scales)] for i in range(n)]


def contrast_net() -> torch.nn.Module:
    """A tiny network whose source variance sits between the images' (so that the most confident statistics change
    from case to case)."""
    net = tiny_net()
    with torch.no_grad():
        net.bn.running_var.fill_(0.2)
        net.head.weight.mul_(3.0)
    return net


# --------------------------------------------------------------------------------------------------- the choice
def test_per_case_choice_is_the_lowest_entropy_candidate_of_a_gradient_method():
    net = contrast_net()
    ref = copy.deepcopy(net)
    plain_net = copy.deepcopy(net)
    safe = Tent(setting="continual", lr=1e-2, safe={"signal": "entropy"}, safeguard=False)
    plain = Tent(setting="continual", lr=1e-2, safeguard=False)
    chosen = []
    for x in images(6):
        before = [p.detach().clone() for p in plain.state_for(plain_net).params]
        own = plain(x, plain_net)  # TENT reports its forward before the update, in the image's statistics
        after = [p.detach().clone() for p in plain.state_for(plain_net).params]
        assert torch.allclose(own, by_hand(ref, x, 0.0, before), atol=1e-6)
        candidates = {
            "method": own,
            "stats_1": by_hand(ref, x, 1.0, after),
            "stats_0.5": by_hand(ref, x, 0.5, after),
            "stats_0": by_hand(ref, x, 0.0, after),
            "source": by_hand(ref, x, 1.0),
        }
        raw = {k: entropy_by_hand(z) for k, z in candidates.items()}
        # the source is preferred by its margin; the others pay mix_margin (0.01) per unit of statistics departure
        departure = {"method": 1.0, "stats_1": 0.0, "stats_0.5": 0.5, "stats_0": 1.0, "source": 0.0}
        entropies = {k: h - (0.01 if k == "source" else 0.0) + 0.01 * departure[k] for k, h in raw.items()}
        best = min(entropies, key=entropies.get)
        # ... and the update is accepted where, like with like (source statistics), it moves the entropy by < 0.01
        step = best == "source" and raw["stats_1"] <= raw["source"] + 0.01
        best = "stats_1" if step else best
        out = safe(x, net)
        chosen.append(best)
        assert safe.last_stats[StatKeys.SAFE_CHOICE] == best
        assert safe.last_stats[StatKeys.SAFE_SOURCE] == (best == "source")
        assert safe.last_stats[StatKeys.SAFE_STEP] is step
        assert torch.allclose(out, candidates[best], atol=1e-6)
        # the adapted state evolves by the method's rule whatever is chosen: bit for bit the plain method's
        assert all(torch.equal(p, q) for p, q in zip(safe.state_for(net).params, after))
        assert all(layer.prior == 0.0 for layer in safe.state_for(net).norms)  # the method's regime, restored
    assert len(set(chosen)) > 1  # the stream exercises the choice


def test_gradient_free_candidates_skip_duplicates_and_safe_norm_is_source_inference_with_safe():
    adapter = NormAdapt(safe=True)
    # the method's own forward is the image statistics; the source model is the source statistics (no weights)
    assert adapter.safe.candidates(own=0.0) == [("stats_1", 1.0), ("stats_0.5", 0.5)]
    safe_norm = SafeNorm()
    assert safe_norm.safe.candidates(own=1.0) == [("stats_0.5", 0.5), ("stats_0", 0.0)]
    tent = Tent(safe={"priors": (0.5,), "source": True})
    assert tent.safe.candidates(own=None) == [("stats_0.5", 0.5), ("source", None)]
    with pytest.raises(ValueError, match="priors"):
        SafeChoice(priors=(2.0,))
    with pytest.raises(ValueError, match="domain"):
        SafeChoice(per="week")
    with pytest.raises(TypeError, match="safe must be"):
        Tent(safe=3)
    with pytest.raises(ValueError, match="do not pass norm"):
        SafeNorm(norm="image")


def test_per_domain_choice_uses_the_mean_entropy_of_the_domain_so_far():
    net = contrast_net()
    ref = copy.deepcopy(net)
    adapter = NormAdapt(
        setting="continual", safe={"per": "domain", "mix_margin": 0.0, "signal": "entropy"}
    )  # the margin: next test
    xs = images(6)
    domains = ["a", "a", "a", "b", "b", "b"]
    per_case, per_domain = [], []
    sums: dict[str, float] = {}
    margin = {"method": 0.0, "stats_1": -0.01, "stats_0.5": 0.0}  # the source statistics: source_margin
    n = 0
    for x, domain in zip(xs, domains):
        if n and domain != domains[n - 1]:
            sums = {}
        candidates = {
            "method": by_hand(ref, x, 0.0),
            "stats_1": by_hand(ref, x, 1.0),
            "stats_0.5": by_hand(ref, x, 0.5),
        }
        for k, z in candidates.items():
            sums[k] = sums.get(k, 0.0) + entropy_by_hand(z) + margin[k]
        best = min(sums, key=sums.get)  # the lowest mean over the domain's cases so far, this one included
        per_case.append(min(candidates, key=lambda k: entropy_by_hand(candidates[k]) + margin[k]))
        per_domain.append(best)
        adapter.set_domain(domain)
        out = adapter(x, net)
        assert adapter.last_stats[StatKeys.SAFE_CHOICE] == best
        assert adapter.last_stats[StatKeys.SAFE_PRIOR] == {"method": 0.0, "stats_1": 1.0, "stats_0.5": 0.5}[best]
        assert torch.allclose(out, candidates[best], atol=1e-6)
        n += 1
    assert per_case != per_domain and len(set(per_domain)) > 1  # the domain's history decides, and restarts


@pytest.mark.parametrize("mix_margin", [0.0, 0.1, 1.0])
def test_mix_margin_asks_more_of_candidates_whose_statistics_depart_further(mix_margin):
    """Each candidate's entropy is raised by ``mix_margin * (1 - p)`` before the choice (``p`` its source weight),
    the source statistics keep their ``source_margin``: computed by hand on every image."""
    net = contrast_net()
    ref = copy.deepcopy(net)
    adapter = NormAdapt(
        safe={"mix_margin": mix_margin, "signal": "entropy"}
    )  # its own prediction: the image's statistics
    chosen = []
    for x in images(6):
        candidates = {
            "method": by_hand(ref, x, 0.0),
            "stats_1": by_hand(ref, x, 1.0),
            "stats_0.5": by_hand(ref, x, 0.5),
        }
        weight = {"method": 0.0, "stats_1": 1.0, "stats_0.5": 0.5}
        score = {
            k: entropy_by_hand(z) + (-0.01 if k == "stats_1" else mix_margin * (1.0 - weight[k]))
            for k, z in candidates.items()
        }
        best = min(candidates, key=score.get)
        out = adapter(x, net)
        chosen.append(best)
        assert adapter.last_stats[StatKeys.SAFE_CHOICE] == best
        assert adapter.last_stats[StatKeys.SAFE_PRIOR] == weight[best]
        assert torch.allclose(out, candidates[best], atol=1e-6)
        # the recorded scores are the signal's own values, without either margin
        assert adapter.last_stats[f"{StatKeys.SAFE_SCORE}_stats_0.5"] == pytest.approx(
            -entropy_by_hand(candidates["stats_0.5"]), abs=1e-5
        )
    expected = {0.0: 3, 0.1: 4, 1.0: 6}[mix_margin]  # the source statistics kept on more images as the margin grows
    assert chosen.count("stats_1") == expected
    with pytest.raises(ValueError, match="mix_margin"):
        SafeChoice(mix_margin=-0.1)


def agreement_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of ``1 - |sigmoid(a) - sigmoid(b)|`` over every pixel and channel, in float64 numpy."""
    pa, pb = (1.0 / (1.0 + np.exp(-z.double().numpy())) for z in (a, b))
    return float(np.mean(1.0 - np.abs(pa - pb)))


def test_mixes_signal_scores_each_candidate_by_its_agreement_with_its_neighbouring_mixes():
    """``signal="mixes"``: a candidate with statistics weight ``p`` scores its mean agreement with the same weights at
    ``p - 0.25`` and ``p + 0.25`` (the source model: source weights; the others: the adapted ones), then the margins
    apply as with every signal. Computed by hand on every image of a stream."""
    net = contrast_net()
    ref = copy.deepcopy(net)
    plain_net = copy.deepcopy(net)
    sm, mm = 0.001, 0.001  # small margins, so that the stream exercises the choice
    safe = Tent(
        setting="continual", lr=1e-2, safe={"signal": "mixes", "source_margin": sm, "mix_margin": mm}, safeguard=False
    )
    plain = Tent(setting="continual", lr=1e-2, safeguard=False)
    chosen = []
    for x in images(6):
        before = [p.detach().clone() for p in plain.state_for(plain_net).params]
        own = plain(x, plain_net)
        after = [p.detach().clone() for p in plain.state_for(plain_net).params]

        def adapted(q, after=after, x=x):
            return by_hand(ref, x, q, after)

        candidates = {
            "method": by_hand(ref, x, 0.0, before),
            "stats_1": adapted(1.0),
            "stats_0.5": adapted(0.5),
            "stats_0": adapted(0.0),
            "source": by_hand(ref, x, 1.0),
        }
        assert torch.allclose(own, candidates["method"], atol=1e-6)
        near = {
            "method": [adapted(0.25)],  # TENT's regime: the image's statistics
            "stats_1": [adapted(0.75)],
            "stats_0.5": [adapted(0.25), adapted(0.75)],
            "stats_0": [adapted(0.25)],
            "source": [by_hand(ref, x, 0.75)],  # the source weights
        }
        raw = {k: float(np.mean([agreement_by_hand(candidates[k], z) for z in near[k]])) for k in candidates}
        departure = {"method": 1.0, "stats_1": 0.0, "stats_0.5": 0.5, "stats_0": 1.0, "source": 0.0}
        score = {k: v + (sm if k == "source" else -mm * departure[k]) for k, v in raw.items()}
        best = max(score, key=score.get)
        step = best == "source" and raw["stats_1"] >= raw["source"] - 0.01
        best = "stats_1" if step else best
        out = safe(x, net)
        chosen.append(best)
        assert safe.last_stats[StatKeys.SAFE_SIGNAL] == "mixes"
        assert safe.last_stats[StatKeys.SAFE_CHOICE] == best
        for k, v in raw.items():
            assert safe.last_stats[f"{StatKeys.SAFE_SCORE}_{k}"] == pytest.approx(v, abs=1e-5)
        assert torch.allclose(out, candidates[best], atol=1e-6)
        assert all(torch.equal(p, q) for p, q in zip(safe.state_for(net).params, after))
    assert len(set(chosen)) > 1


def test_mixes_without_running_statistics_is_the_entropy():
    """On a network without running statistics every mix is the same forward (no path to be stable along): the
    mixes signal scores with the entropy there, so the step rule still refuses a step that raises it."""
    x = tiny_image(seed=3, size=8)
    runs = {}
    for signal in ("mixes", "entropy"):
        adapter = EntropyAscent(setting="episodic", safeguard=False, safe={"signal": signal})
        runs[signal] = (adapter(x, GroupNormNet()), adapter.last_stats)
    (out, stats), (expected, entropy) = runs["mixes"], runs["entropy"]
    assert stats[StatKeys.SAFE_SIGNAL] == "entropy"
    assert stats[StatKeys.SAFE_CHOICE] == entropy[StatKeys.SAFE_CHOICE] == "source"  # the ascent is refused
    assert stats[f"{StatKeys.SAFE_SCORE}_stats_1"] == entropy[f"{StatKeys.SAFE_SCORE}_stats_1"]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_reset_returns_safe_and_the_safeguard_to_the_start_bit_for_bit():
    net = contrast_net()
    adapter = Tent(setting="continual", lr=1e-2, safe="domain")
    xs = images(4)

    def run() -> tuple[list[torch.Tensor], list[dict]]:
        outs, stats = [], []
        for i, x in enumerate(xs):
            adapter.set_domain("a" if i < 2 else "b")
            outs.append(adapter(x, net))
            stats.append(dict(adapter.last_stats))
        return outs, stats

    first = run()
    adapter.reset()
    adapter.set_domain(None)  # a fresh start: no domain seen
    rollback, collapse, safe = adapter.state_for(net).guards
    assert safe == SafeChoiceState() and (collapse.gap, collapse.probes, collapse.fallback) == (None, 0, False)
    second = run()
    assert all(torch.equal(a, b) for a, b in zip(first[0], second[0]))
    assert first[1] == second[1]


def test_safe_candidates_leave_vptta_memory_and_prompt_alone():
    xs = noise_images(3)  # 3-channel 16 x 16 images, with a 3 x 3 prompt (as in test_vptta.py)
    nets = tiny_net(0, in_channels=3), tiny_net(0, in_channels=3)
    plain = VPTTA(prompt_size=3, memory_size=2, neighbors=2, safeguard=False)
    safe = VPTTA(prompt_size=3, memory_size=2, neighbors=2, safeguard=False, safe=True)
    for x in xs:
        plain(x, nets[0])
        safe(x, nets[1])
        assert len(plain.memory_for(nets[0])) == len(safe.memory_for(nets[1]))
        torch.testing.assert_close(plain.prompt_for(nets[0]).prompt, safe.prompt_for(nets[1]).prompt, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------- source gap
def confident_source_net() -> torch.nn.Module:
    """Source statistics with a tiny variance: the source model's logits are large (confident); any image's own
    statistics shrink them (less confident): an adapted prediction worse than the source's, by the entropy."""
    net = tiny_net()
    with torch.no_grad():
        net.bn.running_var.fill_(1e-3)
        net.bn.running_mean.fill_(0.0)
        net.head.weight.mul_(3.0)
    return net


def vague_source_net() -> torch.nn.Module:
    """Source statistics with a huge variance: the source model's logits are near the head's bias (uncertain); the
    image's own statistics are the more confident ones (a benign stream)."""
    net = tiny_net()
    with torch.no_grad():
        net.bn.running_var.fill_(1e4)
        net.bn.bias.zero_()
        net.head.bias.zero_()
    return net


def test_source_gap_fires_on_an_adapted_model_worse_than_the_source_and_falls_back():
    net = confident_source_net()
    ref = copy.deepcopy(net)
    adapter = Tent(setting="continual", lr=1e-2)
    source_params = [p.detach().clone() for p in adapter.state_for(net).params]
    xs = images(3)
    out = adapter(xs[0], net)
    stats = adapter.last_stats
    d = entropy_by_hand(by_hand(ref, xs[0], 0.0)) - entropy_by_hand(by_hand(ref, xs[0], 1.0))
    assert d > 0
    assert stats[StatKeys.SAFEGUARD] is True and stats[StatKeys.SAFEGUARD_SIGNAL] == "source_gap"
    assert stats[StatKeys.SAFEGUARD_FALLBACK] is True
    assert stats[StatKeys.SAFEGUARD_GAP] == pytest.approx(d, abs=1e-6)
    assert torch.allclose(out, by_hand(ref, xs[0], 1.0), atol=1e-6)  # the case that fired reports the source's
    state = adapter.state_for(net)
    assert all(torch.equal(p, q) for p, q in zip(state.params, source_params)) and state.step == 0
    gap = d
    for x in xs[1:]:  # in the fallback: no update, the source model predicts, the probe goes on
        out = adapter(x, net)
        d = entropy_by_hand(by_hand(ref, x, 0.0)) - entropy_by_hand(by_hand(ref, x, 1.0))
        gap = 0.5 * gap + 0.5 * d
        assert adapter.last_stats[StatKeys.SAFEGUARD_GAP] == pytest.approx(gap, abs=1e-6)
        assert adapter.last_stats[StatKeys.SAFEGUARD_FALLBACK] is True and adapter.last_stats["safeguard"] is False
        assert StatKeys.LOSS not in adapter.last_stats  # no update ran
        assert torch.allclose(out, by_hand(ref, x, 1.0), atol=1e-6)
        assert all(torch.equal(p, q) for p, q in zip(state.params, source_params))
    adapter.set_domain("a")
    adapter(xs[0], net)
    adapter.set_domain("b")  # a new domain ends the fallback: the method adapts again, and is probed afresh
    adapter(xs[0], net)
    assert adapter.last_stats[StatKeys.SAFEGUARD_SIGNAL] == "source_gap"  # the same evidence, fired again


def test_source_gap_stays_quiet_on_a_benign_stream_and_can_be_turned_off():
    net = vague_source_net()
    ref = copy.deepcopy(net)
    adapter = Tent(setting="continual", lr=1e-3)
    plain = Tent(setting="continual", lr=1e-3, safeguard={"source_gap": None})
    other = copy.deepcopy(net)
    for x in images(4):
        assert entropy_by_hand(by_hand(ref, x, 0.0)) < entropy_by_hand(by_hand(ref, x, 1.0))
        out = adapter(x, net)
        assert adapter.last_stats[StatKeys.SAFEGUARD] is False
        assert adapter.last_stats[StatKeys.SAFEGUARD_FALLBACK] is False
        torch.testing.assert_close(out, plain(x, other), atol=0, rtol=0)  # the probe changes nothing
    assert StatKeys.SAFEGUARD_GAP not in plain.last_stats
    assert adapter.state_for(net).step == 4


def test_safe_in_the_fallback_records_the_source_model_and_keeps_the_update_rule():
    net = confident_source_net()
    ref = copy.deepcopy(net)
    adapter = Tent(setting="continual", lr=1e-2, safe={"signal": "entropy"})  # the source model is the most confident
    xs = images(2)
    for x in xs:
        out = adapter(x, net)
        assert adapter.last_stats[StatKeys.SAFEGUARD_FALLBACK] is True
        assert adapter.last_stats[StatKeys.SAFE_CHOICE] == "method"  # the source model's, in the fallback
        assert adapter.last_stats[StatKeys.SAFE_SOURCE] is True and adapter.last_stats[StatKeys.SAFE_PRIOR] == 1.0
        assert torch.allclose(out, by_hand(ref, x, 1.0), atol=1e-6)


# --------------------------------------------------------------------------------------------------- the step rule
class GroupNormNet(torch.nn.Module):
    """conv -> GroupNorm (no running statistics) -> ReLU -> conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.head = torch.nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.head.weight.mul_(8.0)  # a confident source model (its entropy far from the maximum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


class EntropyAscent(Tent):
    """A step *up* the entropy (the case the step rule must refuse)."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "lr": 0.1})

    def adapt(self, state, inputs, network):
        loss = -entropy_loss(network(inputs), self.activation)
        set_grads(state.params, torch.autograd.grad(loss, state.params))
        state.optimizer.step()
        return {StatKeys.LOSS: float(loss.detach())}, None


@pytest.mark.parametrize("method, margin", [(Tent, 0.01), (Tent, None), (EntropyAscent, 0.01)])
def test_step_rule_keeps_an_update_that_moves_the_entropy_less_than_the_margin(method, margin):
    """On a network without running statistics the source model and the adapted weights normalise alike: the
    update's prediction is kept unless its entropy is above the source model's by more than ``step_margin``
    (``None``: the source model is kept whenever it wins with its margin)."""
    net = GroupNormNet()
    ref = copy.deepcopy(net)
    x = tiny_image(seed=3, size=8)
    safe = {"step_margin": margin, "priors": (), "source_margin": 1.0}  # the source always wins on its margin
    adapter = method(setting="episodic", lr=1.0, safeguard=False, predict_after_update=True, safe=safe)
    out = adapter(x, net)
    adapted = copy.deepcopy(ref)
    method(setting="continual", lr=1.0, safeguard=False)(x, adapted)  # the same single step, without safe
    with torch.no_grad():
        source, after = ref(x), adapted(x)
    h_source, h_after = entropy_by_hand(source), entropy_by_hand(after)
    assert (h_after < h_source) == (method is Tent)  # TENT lowers the entropy, the ascent raises it
    stats = adapter.last_stats
    if margin is not None and h_after <= h_source + margin:
        assert stats[StatKeys.SAFE_CHOICE] == "method" and stats[StatKeys.SAFE_STEP] is True
        assert stats[StatKeys.SAFE_SOURCE] is False
        torch.testing.assert_close(out, after, atol=1e-5, rtol=0)
    else:
        assert stats[StatKeys.SAFE_CHOICE] == "source" and stats[StatKeys.SAFE_STEP] is False
        torch.testing.assert_close(out, source, atol=1e-6, rtol=0)
    assert (stats[StatKeys.SAFE_CHOICE] == "method") == (method is Tent and margin is not None)


def test_step_margin_is_validated():
    with pytest.raises(ValueError, match="step_margin"):
        SafeChoice(step_margin=-1.0)


def test_without_running_statistics_one_weights_candidate_is_scored():
    """On a network without running statistics every statistics mix is the same forward: only ``stats_1`` is scored
    (with the method's own and the source model's), and it is the adapted weights' prediction."""
    net = GroupNormNet()
    ref = copy.deepcopy(net)
    x = tiny_image(seed=3, size=8)
    adapter = Tent(setting="episodic", lr=1.0, safeguard=False, safe=True)
    adapter(x, net)
    scored = {k[len(StatKeys.SAFE_SCORE) + 1 :] for k in adapter.last_stats if k.startswith(StatKeys.SAFE_SCORE)}
    assert scored == {"method", "stats_1", "source"}
    adapted = copy.deepcopy(ref)
    Tent(setting="continual", lr=1.0, safeguard=False)(x, adapted)
    with torch.no_grad():
        h_after = entropy_by_hand(adapted(x))
    assert adapter.last_stats[f"{StatKeys.SAFE_SCORE}_stats_1"] == pytest.approx(-h_after, abs=1e-5)
