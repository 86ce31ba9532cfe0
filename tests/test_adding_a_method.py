"""docs/adding_a_method.md's worked example runs as written: its adapter's one update equals a hand-computed step."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_net

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def pseudo_label_class():
    namespace: dict = {"__name__": "worked_example"}
    exec(compile(_blocks("python")[0], str(DOC), "exec"), namespace)  # noqa: S102 -- our own doc's code
    return namespace["PseudoLabel"]


def _by_hand(net: torch.nn.Module, x: torch.Tensor, threshold: float, activation: str, lr: float):
    """The loss and the BN affine values after one Adam step, written out (per-image statistics = train-mode BN)."""
    ref = copy.deepcopy(net).train()
    z = ref(x)
    if activation == "softmax":
        p = torch.softmax(z, 1).detach()
        conf, label = p.max(1)
        per_pixel = F.cross_entropy(z, label, reduction="none")
    else:
        p = torch.sigmoid(z).detach()
        conf, label = torch.maximum(p, 1 - p), (p > 0.5).float()
        per_pixel = F.binary_cross_entropy_with_logits(z, label, reduction="none")
    mask = (conf >= threshold).float()
    loss = (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)
    weight, bias = ref.bn.weight, ref.bn.bias
    gw, gb = torch.autograd.grad(loss, [weight, bias])
    eps = 1e-8  # Adam's first step: lr * g / (|g| + eps) (bias corrections cancel)
    step = [p.detach() - lr * g / (g.abs() + eps) for p, g in ((weight, gw), (bias, gb))]
    return float(loss.detach()), step


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_the_worked_example_takes_the_hand_computed_step(pseudo_label_class, activation):
    net = tiny_net(seed=3)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    threshold, lr = 0.6, 1e-2
    loss, (weight, bias) = _by_hand(net, x, threshold, activation, lr)
    adapter = pseudo_label_class(threshold=threshold, activation=activation, lr=lr, setting="episodic")
    adapter(x, net)
    assert adapter.last_stats["loss"] == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(net.bn.weight.detach(), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.bn.bias.detach(), bias, rtol=1e-5, atol=1e-6)
    adapter.reset()
    torch.testing.assert_close(net.bn.weight.detach(), tiny_net(seed=3).bn.weight.detach())


def test_the_worked_example_refuses_a_bad_threshold(pseudo_label_class):
    with pytest.raises(ValueError, match="threshold must be in"):
        pseudo_label_class(threshold=0.3)


def test_the_bundle_layer_of_the_worked_example_names_a_real_adapter_argument(pseudo_label_class):
    layer = json.loads(_blocks("json")[0])
    block = {k: v for k, v in layer["inferer"].items() if not k.startswith("_") and "@" not in str(v)}
    adapter = pseudo_label_class(**block)
    assert adapter.threshold == 0.9 and adapter.lr == 1e-4
