"""The adapter contract: what changes, what does not, resets, inputs, modes, seeds, regimes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from tiny import tiny_image, tiny_net

from monai_tta.adapters import SAR, VPTTA, GraTa, NormAdapt, SourceOnly, Tent
from monai_tta.norms import AdaptiveBatchNorm, NormPolicy, convert_norms, per_sample_stats, warmup_lambda

ADAPTERS = [SourceOnly, NormAdapt, Tent, GraTa, SAR, VPTTA]


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("cls", [Tent, GraTa])
def test_only_bn_affine_parameters_change(cls):
    net = tiny_net()
    before = state(net)
    cls()(tiny_image(size=16), net)
    after = state(net)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"bn.weight", "bn.bias"}


@pytest.mark.parametrize("cls", [SourceOnly, NormAdapt])
def test_gradient_free_baselines_change_nothing(cls):
    net = tiny_net()
    before = state(net)
    cls()(tiny_image(size=16), net)
    assert_same_state(before, state(net))


@pytest.mark.parametrize("cls", ADAPTERS)
def test_reset_restores_source_bit_for_bit(cls):
    net = tiny_net()
    before = state(net)
    adapter = cls()
    for s in range(3):
        adapter(tiny_image(seed=s, size=16), net)
    adapter.reset(net)
    assert_same_state(before, state(net))
    if adapter.last_stats.get("step", 0):
        assert adapter.state_for(net).step == 0


@pytest.mark.parametrize("cls", ADAPTERS)
def test_input_is_not_modified_and_works_under_no_grad_in_eval(cls):
    net = tiny_net().eval()
    x = tiny_image(size=16)
    x_before = x.clone()
    with torch.no_grad():
        out = cls()(x, net)
    assert torch.equal(x, x_before)
    assert out.shape == (1, 2, 16, 16)
    assert not out.requires_grad
    assert not net.training


@pytest.mark.parametrize("cls", ADAPTERS)
def test_same_seed_same_outputs(cls):
    outs = []
    for _ in range(2):
        net, adapter = tiny_net(), cls(seed=7)
        outs.append(torch.cat([adapter(tiny_image(seed=s, size=16), net) for s in range(3)]))
    assert torch.equal(outs[0], outs[1])


def test_source_only_equals_eval_forward_and_norm_adapt_equals_batch_stats():
    net = tiny_net()
    x = tiny_image(size=16)
    with torch.no_grad():
        expected_eval = copy.deepcopy(net).eval()(x)
        expected_train = copy.deepcopy(net).train()(x)
    torch.testing.assert_close(SourceOnly()(x, copy.deepcopy(net)), expected_eval)
    torch.testing.assert_close(NormAdapt()(x, copy.deepcopy(net)), expected_train)


def test_episodic_setting_resets_before_every_case():
    net = tiny_net()
    adapter = GraTa(setting="episodic", seed=1)
    x = tiny_image(size=16)
    adapter(x, net)
    after_one = state(net)
    adapter.generator.manual_seed(1)
    adapter(x, net)
    assert_same_state(after_one, state(net))
    assert adapter.last_stats["reset"] is True


def test_domain_setting_resets_only_on_domain_change():
    net = tiny_net()
    source = state(net)
    adapter = Tent(setting="domain")
    resets = []
    for domain in ["a", "a", "b", "b", "a"]:
        adapter.set_domain(domain)
        adapter(tiny_image(size=16), net)
        resets.append(adapter.last_stats["reset"])
    assert resets == [False, False, True, False, True]
    adapter.reset()
    assert_same_state(source, state(net))


def test_continual_never_resets():
    adapter = Tent(setting="continual")
    net = tiny_net()
    for domain in ["a", "b", "c"]:
        adapter.set_domain(domain)
        adapter(tiny_image(size=16), net)
        assert adapter.last_stats["reset"] is False
    assert adapter.last_stats["step"] == 3


def test_state_is_kept_per_network():
    adapter = Tent()
    a, b = tiny_net(0), tiny_net(0)
    adapter(tiny_image(size=16), a)
    assert not torch.equal(a.bn.weight, b.bn.weight)
    adapter(tiny_image(size=16), b)
    assert adapter.state_for(a) is not adapter.state_for(b)
    torch.testing.assert_close(a.bn.weight, b.bn.weight)


def test_metatensor_input_keeps_meta():
    x = MetaTensor(tiny_image(size=16), meta={"filename_or_obj": "case.png"})
    out = GraTa()(x, tiny_net())
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "case.png"


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sometimes"):
        GraTa(setting="sometimes")
    with pytest.raises(ValueError, match="floating-point"):
        GraTa()(torch.zeros(1, 2, 8, 8, dtype=torch.long), tiny_net())
    with pytest.raises(ValueError, match=r"expected a 2D image shaped \(B, C, \*spatial\)"):
        GraTa()(torch.zeros(8, 8), tiny_net())
    with pytest.raises(ValueError):
        GraTa(view_mode="fast")
    with pytest.raises(ValueError, match="prior"):
        NormPolicy("mix", prior=1.5)
    with pytest.raises(ValueError):
        NormPolicy("median")


def test_state_dict_keys_survive_conversion_and_checkpoints_still_load():
    net = tiny_net()
    keys = list(net.state_dict())
    layers = convert_norms(net)
    assert len(layers) == 1 and isinstance(net.bn, AdaptiveBatchNorm)
    assert list(net.state_dict()) == keys
    other = tiny_net(seed=5)
    net.load_state_dict(other.state_dict(), strict=True)
    torch.testing.assert_close(net.bn.running_var, other.bn.running_var)


def test_mix_regime_matches_formula():
    net = tiny_net()
    x = tiny_image(size=16)
    ref = copy.deepcopy(net)
    out = NormAdapt(norm={"regime": "mix", "prior": 0.25})(x, net)
    ref.requires_grad_(False)
    h = ref.conv(x)
    mean = 0.25 * ref.bn.running_mean + 0.75 * h.mean(dim=(0, 2, 3))
    var = 0.25 * ref.bn.running_var + 0.75 * h.var(dim=(0, 2, 3), unbiased=False)
    h = F.batch_norm(h, mean, var, ref.bn.weight, ref.bn.bias, False, 0.0, ref.bn.eps)
    torch.testing.assert_close(out, ref.head(torch.relu(h)).detach())


def test_warmup_lambda_and_regime():
    assert warmup_lambda(1) == pytest.approx(1 / 1.2)
    assert warmup_lambda(25) == pytest.approx(0.5)
    assert warmup_lambda(100) == pytest.approx(1 / 3)
    layers = convert_norms(tiny_net())
    NormPolicy("warmup").apply(layers, t=25)
    assert layers[0].prior == pytest.approx(0.5) and layers[0].unbiased and layers[0].detach_stats


def test_per_sample_statistics_equal_separate_forwards():
    net = tiny_net()
    layers = convert_norms(net)
    NormPolicy("image").apply(layers)
    xs = [tiny_image(seed=s, size=16) for s in range(3)]
    with torch.no_grad():
        separate = torch.cat([net(x) for x in xs])
        with per_sample_stats(layers):
            batched = net(torch.cat(xs))
        pooled = net(torch.cat(xs))
    torch.testing.assert_close(batched, separate, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(pooled, separate, atol=1e-4)


@pytest.mark.parametrize("cls", ADAPTERS)
def test_episodic_serving_gives_the_same_answer_whatever_came_before(cls):
    """What MONAI Label needs: one adapter and one network serve every request; episodic calls do not leak state."""
    net = tiny_net()
    adapter = cls(setting="episodic") if cls is not SourceOnly else cls()
    image, other = tiny_image(seed=1, size=16), tiny_image(seed=2, size=16)
    first = adapter(image, net)
    for _ in range(2):
        adapter(other, net)
    assert torch.equal(adapter(image, net), first)


def test_calls_are_serialised_by_the_adapter_lock():
    """Concurrent requests on one adapter never run their updates at the same time (continual serving)."""
    import threading
    import time

    active, peak = [0], [0]

    class Slow(Tent):
        def adapt(self, state, inputs, network):
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            active[0] -= 1
            return super().adapt(state, inputs, network)

    net, adapter = tiny_net(), Slow(setting="continual")
    threads = [threading.Thread(target=adapter, args=(tiny_image(seed=i, size=16), net)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and adapter.state_for(net).step == 4
