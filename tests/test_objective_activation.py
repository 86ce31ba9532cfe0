"""The objective follows the network's output: sigmoid (multi-label) and softmax (exclusive classes) for TENT, SAR
and GraTa, against hand-computed values and reference steps written out plainly here on a tiny conv-BN network."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tiny import TinyNet, scramble_batch_norms, tiny_image

from monai_tta.adapters import SAR, GraTa, Tent
from monai_tta.losses import consistency_loss, entropy_loss, pseudo_target

EPS_BN, EPS_LOG = 1e-5, 1e-6
VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270")


def net3(seed: int = 0) -> TinyNet:
    """The tiny network with 3 output channels (background and 2 classes, or 3 labels)."""
    torch.manual_seed(seed)
    return scramble_batch_norms(TinyNet(in_channels=2, out_channels=3))


def forward(net, x, gamma, beta):
    """The tiny network's forward with per-image BatchNorm statistics, written out by hand."""
    h = F.conv2d(x, net.conv.weight, net.conv.bias, padding=1)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mean) / torch.sqrt(var + EPS_BN) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return F.conv2d(torch.relu(h), net.head.weight, net.head.bias)


def probs(z, activation):
    return torch.softmax(z, 1) if activation == "softmax" else torch.sigmoid(z)


def entropy(z, activation):
    p = probs(z, activation)
    return -(p * torch.log(p + EPS_LOG)).sum(1).mean()


def view(x, name):
    return {"hflip": lambda: x.flip(-1), "vflip": lambda: x.flip(-2), "identity": lambda: x}.get(
        name, lambda: torch.rot90(x, int(name[3:]) // 90, dims=(-2, -1))
    )()


def unview(y, name):
    if name.startswith("rot"):
        return torch.rot90(y, -(int(name[3:]) // 90), dims=(-2, -1))
    return view(y, name)


def strong(x):
    """A deterministic stand-in for the strong augmentation."""
    y = x**2
    return (y - y.min()) / (y.max() - y.min())


def theta_of(net):
    return torch.cat([net.bn.weight.detach(), net.bn.bias.detach()]).clone()


def test_losses_by_hand():
    # one pixel, logits (0, ln 3): softmax (1/4, 3/4); sigmoid (1/2, 3/4)
    z = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    h_soft = -(0.25 * math.log(0.25 + EPS_LOG) + 0.75 * math.log(0.75 + EPS_LOG))
    h_sig = -(0.5 * math.log(0.5 + EPS_LOG) + 0.75 * math.log(0.75 + EPS_LOG))
    assert float(entropy_loss(z, "softmax")) == pytest.approx(h_soft, rel=1e-6)
    assert float(entropy_loss(z, "sigmoid")) == pytest.approx(h_sig, rel=1e-6)
    # softmax pseudo-label: the one-hot argmax; the loss is the cross-entropy -log(3/4)
    target = pseudo_target(torch.softmax(z, 1), "softmax")
    assert target.flatten().tolist() == [0.0, 1.0]
    assert float(consistency_loss(z, target, "softmax")) == pytest.approx(-math.log(0.75), rel=1e-6)
    # sigmoid: the soft target itself and the BCE, mean over the elements
    soft = torch.tensor([0.2, 0.9]).view(1, 2, 1, 1)
    assert torch.equal(pseudo_target(soft, "sigmoid"), soft)
    bce = -(0.2 * math.log(0.5) + 0.8 * math.log(0.5) + 0.9 * math.log(0.75) + 0.1 * math.log(0.25)) / 2
    assert float(consistency_loss(z, soft)) == pytest.approx(bce, rel=1e-6)


def test_softmax_on_one_channel_is_an_error():
    z = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="at least 2 channels.*activation='sigmoid'"):
        entropy_loss(z, "softmax")
    with pytest.raises(ValueError, match="at least 2 channels"):
        consistency_loss(z, torch.ones_like(z), "softmax")
    with pytest.raises(ValueError, match="did you mean 'softmax'"):
        Tent(activation="softmx")
    with pytest.raises(ValueError, match="Unsupported option .logits."):
        GraTa(activation="logits")


def test_activation_default_and_storage():
    assert Tent().activation == GraTa().activation == SAR().activation == "sigmoid"
    assert GraTa(activation="softmax").activation == "softmax"


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_tent_gradient_matches_reference(activation):
    """One plain SGD step (no momentum) on the entropy of the chosen activation: theta - lr * grad, exactly."""
    net, x, lr = net3(), tiny_image(seed=1), 0.5
    ref = copy.deepcopy(net)
    theta = theta_of(ref).requires_grad_(True)
    logits = forward(ref, x, theta[:3], theta[3:])
    loss = entropy(logits, activation)
    grad = torch.autograd.grad(loss, theta)[0]
    adapter = Tent(activation=activation, optimizer="sgd", momentum=0.0, lr=lr, safeguard=False)
    with torch.no_grad():
        out = adapter(x, net)
    assert adapter.last_stats["loss"] == pytest.approx(float(loss), rel=1e-5)
    torch.testing.assert_close(out, logits.detach(), atol=1e-5, rtol=1e-5)  # TENT reports the pre-update forward
    expected = (theta - lr * grad).detach()
    torch.testing.assert_close(theta_of(net), expected, atol=1e-6, rtol=1e-5)


def test_tent_objectives_differ():
    """The two activations are two objectives: their gradients differ on the same case."""
    x, moved = tiny_image(seed=2), []
    for activation in ("sigmoid", "softmax"):
        net = net3()
        Tent(activation=activation, optimizer="sgd", momentum=0.0, lr=0.5, safeguard=False)(x, net)
        moved.append(theta_of(net) - theta_of(net3()))
    assert not torch.allclose(moved[0], moved[1], atol=1e-4)


def reference_grata(net, x, activation, base_lr=1e-4):
    """One GraTa update (Adam's first step) with the given activation: (cos, lr, pseudo loss, new theta)."""
    theta = theta_of(net)
    t = theta.clone().requires_grad_(True)
    g_aux = torch.autograd.grad(entropy(forward(net, x, t[:3], t[3:]), activation), t)[0]
    t_prime = (theta - g_aux).detach()
    with torch.no_grad():
        mean = sum(probs(unview(forward(net, view(x, v), t_prime[:3], t_prime[3:]), v), activation) for v in VIEWS)
        mean = mean / len(VIEWS)
    tp = t_prime.clone().requires_grad_(True)
    z = forward(net, strong(x), tp[:3], tp[3:])
    if activation == "softmax":
        target = F.one_hot(mean.argmax(1), 3).permute(0, 3, 1, 2).float()
        loss = -(target * torch.log_softmax(z, 1)).sum(1).mean()
    else:
        loss = F.binary_cross_entropy_with_logits(z, mean)
    g_pse = torch.autograd.grad(loss, tp)[0]
    cos = float((g_aux * g_pse).sum() / (g_aux.norm() * g_pse.norm() + 1e-12))
    lr = base_lr * (cos + 1) ** 2 / 4
    # Adam's first step: m_hat = g, v_hat = g^2
    new = theta - lr * g_pse / (g_pse.abs() + 1e-8)
    return cos, lr, float(loss), new


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_grata_matches_reference_step(activation):
    net, x = net3(), tiny_image(seed=3)
    cos, lr, loss, new = reference_grata(copy.deepcopy(net), x, activation)
    adapter = GraTa(activation=activation, strong_augment=strong, view_mode="separate", safeguard=False)
    with torch.no_grad():
        adapter(x, net)
    assert adapter.last_stats["cosine"] == pytest.approx(cos, abs=1e-5)
    assert adapter.last_stats["lr"] == pytest.approx(lr, rel=1e-4)
    assert adapter.last_stats["pseudo_loss"] == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(theta_of(net), new, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_sar_filtered_entropy_follows_activation(activation):
    """SAR's first loss is the mean entropy of the chosen activation; its margin is 0.4 x that entropy's maximum."""
    net, x = net3(), tiny_image(seed=4)
    with torch.no_grad():
        h = float(entropy(forward(net, x, net.bn.weight, net.bn.bias), activation))
    top = 3 / math.e if activation == "sigmoid" else math.log(3)
    adapter = SAR(activation=activation, margin=10.0 * top, safeguard=False)
    with torch.no_grad():
        adapter(x, net)
    assert adapter.last_stats["loss"] == pytest.approx(h, rel=1e-5)
    assert adapter.last_stats["n_steps"] == 1
