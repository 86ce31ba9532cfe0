"""GraTa and TENT updates against reference steps written out plainly here, on a tiny conv-BN network."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_image, tiny_net

from monai_tta.adapters import SAR, GraTa, Tent

EPS_BN = 1e-5


def forward(net, x, gamma, beta):
    """The tiny network's forward with per-image BatchNorm statistics, written out by hand."""
    h = F.conv2d(x, net.conv.weight, net.conv.bias, padding=1)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    h = (h - mean) / torch.sqrt(var + EPS_BN) * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)
    return F.conv2d(torch.relu(h), net.head.weight, net.head.bias)


def entropy(logits):
    p = torch.sigmoid(logits)
    return -(p * torch.log(p + 1e-6)).sum(dim=1).mean()


class Adam:
    """Adam written out: m, v, bias corrections, eps outside the square root."""

    def __init__(self, betas=(0.9, 0.999), eps=1e-8):
        self.b1, self.b2, self.eps, self.t, self.m, self.v = betas[0], betas[1], eps, 0, None, None

    def step(self, theta, grad, lr):
        self.t += 1
        self.m = (1 - self.b1) * grad if self.m is None else self.b1 * self.m + (1 - self.b1) * grad
        self.v = (1 - self.b2) * grad**2 if self.v is None else self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return theta - lr * m_hat / (torch.sqrt(v_hat) + self.eps)


def strong(x):
    """A deterministic stand-in for the strong augmentation: squared intensities, min-maxed per sample."""
    y = x**2
    return (y - y.min()) / (y.max() - y.min())


ROT = {
    "identity": (None, 0),
    "hflip": (-1, 0),
    "vflip": (-2, 0),
    "rot90": (None, 1),
    "rot180": (None, 2),
    "rot270": (None, 3),
}


def view(x, name):
    flip, k = ROT[name]
    return x.flip(flip) if flip is not None else torch.rot90(x, k, dims=(-2, -1))


def unview(y, name):
    flip, k = ROT[name]
    return y.flip(flip) if flip is not None else torch.rot90(y, -k, dims=(-2, -1))


def reference_grata(net, images, base_lr=1e-4):
    """GraTa on a stream of images: returns per-image (cos, lr, prediction) and the final (gamma, beta)."""
    theta = torch.cat([net.bn.weight.detach(), net.bn.bias.detach()]).clone()
    n = net.bn.weight.numel()
    adam, records = Adam(), []
    for x in images:
        t = theta.clone().requires_grad_(True)
        g_aux = torch.autograd.grad(entropy(forward(net, x, t[:n], t[n:])), t)[0]
        t_prime = (theta - g_aux).detach()
        with torch.no_grad():
            probs = [torch.sigmoid(unview(forward(net, view(x, v), t_prime[:n], t_prime[n:]), v)) for v in ROT]
            pseudo = sum(probs) / len(probs)
        tp = t_prime.clone().requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(forward(net, strong(x), tp[:n], tp[n:]), pseudo)
        g_pse = torch.autograd.grad(loss, tp)[0]
        cos = float((g_aux * g_pse).sum() / (g_aux.norm() * g_pse.norm() + 1e-12))
        lr = base_lr * (cos + 1) ** 2 / 4
        theta = adam.step(theta, g_pse, lr)
        with torch.no_grad():
            pred = forward(net, x, theta[:n], theta[n:])
        records.append((cos, lr, pred))
    return records, theta[:n], theta[n:]


@pytest.mark.parametrize("view_mode", ["batched", "separate"])
def test_grata_matches_reference_steps(view_mode):
    net = tiny_net()
    images = [tiny_image(seed=s) for s in (1, 2, 3)]
    records, gamma, beta = reference_grata(copy.deepcopy(net), images)
    adapter = GraTa(strong_augment=strong, view_mode=view_mode, lr=1e-4)
    for x, (cos, lr, pred) in zip(images, records):
        with torch.no_grad():
            out = adapter(x, net)
        assert adapter.last_stats["cosine"] == pytest.approx(cos, abs=1e-5)
        assert adapter.last_stats["lr"] == pytest.approx(lr, rel=1e-4)
        torch.testing.assert_close(out, pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net.bn.weight.detach(), gamma, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(net.bn.bias.detach(), beta, atol=1e-6, rtol=1e-6)
    assert adapter.last_stats["n_params"] == 6


def test_grata_lr_schedule_endpoints():
    from monai_tta.adapters import cosine_lr

    assert cosine_lr(1e-4, 1.0) == pytest.approx(1e-4)
    assert cosine_lr(1e-4, 0.0) == pytest.approx(2.5e-5)
    assert cosine_lr(1e-4, -1.0) == 0.0


def test_grata_batched_and_separate_views_agree_exactly():
    nets = [tiny_net(), tiny_net()]
    outs = []
    for net, mode in zip(nets, ("batched", "separate")):
        adapter = GraTa(view_mode=mode, seed=3)
        outs.append([adapter(tiny_image(seed=s, size=16), net) for s in (4, 5)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(nets[0].bn.weight, nets[1].bn.weight, atol=1e-7, rtol=1e-6)


def test_tent_matches_reference_steps():
    net = tiny_net()
    ref = copy.deepcopy(net)
    images = [tiny_image(seed=s) for s in (1, 2)]
    theta = torch.cat([ref.bn.weight.detach(), ref.bn.bias.detach()]).clone()
    adam, expected = Adam(), []
    for x in images:
        t = theta.clone().requires_grad_(True)
        logits = forward(ref, x, t[:3], t[3:])
        grad = torch.autograd.grad(entropy(logits), t)[0]
        expected.append((logits.detach(), float(entropy(logits))))
        theta = adam.step(theta, grad, 1e-4)
    adapter = Tent()
    for x, (logits, loss) in zip(images, expected):
        out = adapter(x, net)
        torch.testing.assert_close(out, logits, atol=1e-6, rtol=1e-6)  # the reference reports the pre-update forward
        assert adapter.last_stats["loss"] == pytest.approx(loss, rel=1e-6)
    torch.testing.assert_close(torch.cat([net.bn.weight, net.bn.bias]).detach(), theta, atol=1e-7, rtol=1e-6)


def test_tent_predict_after_update():
    net, ref = tiny_net(), tiny_net()
    x = tiny_image()
    out = Tent(predict_after_update=True)(x, net)
    Tent()(x, ref)
    torch.testing.assert_close(out, forward(ref, x, ref.bn.weight, ref.bn.bias).detach(), atol=1e-6, rtol=1e-6)


def test_sar_matches_reference_step():
    net = tiny_net()
    ref = copy.deepcopy(net)
    x = tiny_image()
    lr, rho = 0.1, 0.05
    theta = torch.cat([ref.bn.weight.detach(), ref.bn.bias.detach()]).clone()
    t = theta.clone().requires_grad_(True)
    logits = forward(ref, x, t[:3], t[3:])
    g = torch.autograd.grad(entropy(logits), t)[0]
    t2 = (theta + rho * g / (g.norm() + 1e-12)).requires_grad_(True)
    loss2 = entropy(forward(ref, x, t2[:3], t2[3:]))
    g2 = torch.autograd.grad(loss2, t2)[0]
    expected = theta - lr * g2  # first SGD step with momentum: the buffer is the gradient itself
    adapter = SAR(lr=lr, rho=rho, margin=10.0)
    out = adapter(x, net)
    torch.testing.assert_close(out, logits.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.cat([net.bn.weight, net.bn.bias]).detach(), expected, atol=1e-7, rtol=1e-6)
    assert adapter.last_stats["ema"] == pytest.approx(float(loss2), rel=1e-6)


def test_sar_filters_unreliable_cases_and_recovers():
    x = tiny_image()
    net = tiny_net()
    before = torch.cat([net.bn.weight, net.bn.bias]).detach().clone()
    adapter = SAR(lr=0.1)  # default margin 0.4 * 2 / e: the tiny net's near-0.5 outputs are above it
    adapter(x, net)
    assert adapter.last_stats["n_steps"] == 0
    assert torch.equal(torch.cat([net.bn.weight, net.bn.bias]).detach(), before)
    recovering = SAR(lr=0.1, margin=10.0, reset_threshold=10.0)  # every loss EMA is below: recover at once
    recovering(x, net)
    assert recovering.last_stats["recovered"] is True
    assert torch.equal(torch.cat([net.bn.weight, net.bn.bias]).detach(), before)
