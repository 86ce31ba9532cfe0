"""VPTTA: prompt transform, warm-up BN, alignment loss, memory bank and full steps against plain re-computations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import TinyNet, tiny_net
from tiny import noise_images as images
from torch import nn

from monai_tta.adapters import VPTTA
from monai_tta.adapters.vptta.memory import PromptMemory
from monai_tta.adapters.vptta.prompt import FourierPrompt, prompt_size_for
from monai_tta.losses import bn_alignment_loss
from monai_tta.norms import NormPolicy, convert_norms, warmup_lambda

EPS_BN = 1e-5
SIZE = 16  # image side
S = 3  # prompt side
PAD = (SIZE - S) // 2  # the reference's window start


def net3(seed: int = 0) -> TinyNet:
    """TinyNet with 3 input channels, non-trivial BN affine values and source statistics, in eval mode."""
    return tiny_net(seed, in_channels=3)


def ref_prompt(x, prompt, all_dims: bool = False):
    """The reference transform written out: polar form, fftshift on the spatial axes (or on every axis)."""
    spectrum = torch.fft.fft2(x, dim=(-2, -1))
    amp, pha = torch.abs(spectrum), torch.angle(spectrum)
    shift = (lambda a: torch.fft.fftshift(a)) if all_dims else (lambda a: torch.fft.fftshift(a, dim=(-2, -1)))
    ishift = (lambda a: torch.fft.ifftshift(a)) if all_dims else (lambda a: torch.fft.ifftshift(a, dim=(-2, -1)))
    amp_s = shift(amp)
    n = x.shape[-1]
    mask = F.pad(prompt, [PAD, n - PAD - S, PAD, n - PAD - S], mode="constant", value=1.0)
    amp_new = ishift(amp_s * mask)
    out = torch.fft.ifft2(torch.complex(torch.cos(pha) * amp_new, torch.sin(pha) * amp_new), dim=(-2, -1)).real
    return out, amp_s[:, :, PAD : PAD + S, PAD : PAD + S]


def warm_forward(net, x, lam):
    """TinyNet with a warm-up BN written out; returns the logits and the alignment loss of its single BN layer."""
    h = F.conv2d(x, net.conv.weight, net.conv.bias, padding=1)
    mu_cur = h.mean(dim=(0, 2, 3), keepdim=True).detach()
    var_cur = h.var(dim=(0, 2, 3), keepdim=True).detach()  # unbiased
    mu_w = lam * mu_cur + (1 - lam) * net.bn.running_mean.view(1, -1, 1, 1)
    var_w = lam * var_cur + (1 - lam) * net.bn.running_var.view(1, -1, 1, 1)
    loss = (mu_w - h.mean(dim=(2, 3), keepdim=True)).abs().mean() + (
        var_w.sqrt() - h.std(dim=(2, 3), keepdim=True)
    ).abs().mean()
    y = (h - mu_w) / torch.sqrt(var_w + EPS_BN) * net.bn.weight.view(1, -1, 1, 1) + net.bn.bias.view(1, -1, 1, 1)
    return F.conv2d(torch.relu(y), net.head.weight, net.head.bias), loss


class Adam:
    """Adam written out (eps outside the square root, bias corrections)."""

    def __init__(self, lr, betas, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, betas[0], betas[1], eps, 0, 0.0, 0.0

    def step(self, theta, grad):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return theta - self.lr * m_hat / (torch.sqrt(v_hat) + self.eps)


class RefMemory:
    """The reference bank written out with numpy: float32 keys as bytes, FIFO pop before insert, softmax(cos / 0.2)."""

    def __init__(self, size, k):
        self.size, self.k, self.memory = size, k, {}

    def push(self, key, value):
        if len(self.memory) > self.size:
            self.memory.pop(list(self.memory)[0])
        self.memory[key.astype(np.float32).reshape(-1).tobytes()] = value.copy()

    def get(self, key):
        key = key.astype(np.float32).reshape(-1)
        all_keys = np.stack([np.frombuffer(b, dtype=np.float32) for b in self.memory])
        sims = all_keys @ key / (np.linalg.norm(all_keys, axis=1) * np.linalg.norm(key))
        top = np.argsort(-sims)[: self.k]
        w = np.exp(sims[top] / 0.2)
        w = w / w.sum()
        values = list(self.memory.values())
        return sum(w[i] * values[j] for i, j in enumerate(top))


def reference_stream(net, xs, lr=0.05, size=2, k=2, warm_n=5):
    """Plain VPTTA over a stream: returns the logits and the updated prompt of every image."""
    bank, adam, outs = RefMemory(size, k), Adam(lr, (0.9, 0.99)), []
    for t, x in enumerate(xs, start=1):
        lam = 1.0 / (math.sqrt(t) / warm_n + 1.0)
        _, key = ref_prompt(x, torch.ones(1, 3, S, S))
        key = key.numpy()
        p0 = torch.from_numpy(bank.get(key)).float() if len(bank.memory) >= k else torch.ones(1, 3, S, S)
        p = p0.clone().requires_grad_(True)
        _, loss = warm_forward(net, ref_prompt(x, p)[0], lam)
        (grad,) = torch.autograd.grad(loss, p)
        p_new = adam.step(p0, grad).detach()
        with torch.no_grad():
            logits, _ = warm_forward(net, ref_prompt(x, p_new)[0], lam)
        bank.push(key, p_new.numpy())
        outs.append((logits, p_new))
    return outs


# ----------------------------------------------------------------------------- prompt transform
def test_prompt_size_rule():
    assert prompt_size_for(512, 0.01) == 5
    assert prompt_size_for(352, 0.01) == 3
    assert prompt_size_for(16, 0.01) == 1
    assert FourierPrompt(3, image_size=512).prompt.shape == (1, 3, 5, 5)
    with pytest.raises(ValueError):
        FourierPrompt(3, prompt_size=3, window="middle")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_prompt_of_ones_is_identity(spatial_dims):
    x = torch.rand((2, 3) + (12,) * spatial_dims, generator=torch.Generator().manual_seed(0))
    out, key = FourierPrompt(3, prompt_size=3, spatial_dims=spatial_dims)(x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert key.shape == (2, 3) + (3,) * spatial_dims


def test_prompt_matches_reference_formula_and_key():
    x = images(1)[0]
    module = FourierPrompt(3, prompt_size=S)
    with torch.no_grad():
        module.prompt.uniform_(0.5, 1.5)
    out, key = module(x)
    ref_out, ref_key = ref_prompt(x, module.prompt.detach())
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(key, ref_key, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(module.low_frequency(x), ref_key, atol=1e-5, rtol=1e-6)
    # the gradient w.r.t. the prompt matches the polar form's
    w = torch.randn_like(x)
    (g,) = torch.autograd.grad((module(x)[0] * w).sum(), module.prompt)
    p = module.prompt.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((ref_prompt(x, p)[0] * w).sum(), p)
    torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_roll_channels_reproduces_reference_and_is_a_channel_permutation():
    x = images(1, seed=5)[0]
    rolled = FourierPrompt(3, prompt_size=S, roll_channels=True)
    clean = FourierPrompt(3, prompt_size=S)
    with torch.no_grad():
        rolled.prompt.uniform_(0.5, 1.5)
        clean.prompt.copy_(torch.roll(rolled.prompt, shifts=-1, dims=1))
    ref_out, ref_key = ref_prompt(x, rolled.prompt.detach(), all_dims=True)  # fftshift without dim, as published
    out, key = rolled(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(key, ref_key, atol=1e-5, rtol=1e-6)
    out_clean, key_clean = clean(x)
    torch.testing.assert_close(out_clean, out, atol=1e-5, rtol=0)
    torch.testing.assert_close(key_clean, torch.roll(key, shifts=-1, dims=1), atol=1e-5, rtol=1e-6)


def test_window_positions():
    ref, centred = FourierPrompt(3, prompt_size=3), FourierPrompt(3, prompt_size=3, window="centred")
    assert ref.window_starts((16, 16)) == (6, 6)  # zero frequency at 8: offsets -2..0
    assert centred.window_starts((16, 16)) == (7, 7)  # offsets -1..+1
    assert ref.window_starts((15, 15)) == centred.window_starts((15, 15)) == (6, 6)
    assert FourierPrompt(3, prompt_size=5).window_starts((512, 512)) == (253, 253)  # offsets -3..+1
    # a centred window with a point-symmetric prompt keeps the spectrum Hermitian: the output is exactly real
    x = images(1)[0]
    with torch.no_grad():
        p = torch.rand(1, 3, 3, 3)
        centred.prompt.copy_((p + p.flip(-1, -2)) / 2)
    spectrum = torch.fft.fft2(x)
    mask = torch.fft.ifftshift(centred.mask((16, 16)), dim=(-2, -1))
    assert torch.fft.ifft2(spectrum * mask).imag.abs().max() < 1e-5
    with pytest.raises(ValueError):
        FourierPrompt(3, prompt_size=5)(torch.rand(1, 3, 4, 4))


# ----------------------------------------------------------------------------- warm-up BN and the loss
def test_warmup_lambda_values():
    assert warmup_lambda(1) == pytest.approx(5 / 6)
    assert warmup_lambda(25) == pytest.approx(0.5)
    assert warmup_lambda(100) == pytest.approx(1 / 3)
    assert warmup_lambda(400) == pytest.approx(0.2)
    policy = NormPolicy("warmup")
    assert policy.source_weight(25) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        warmup_lambda(0)


def test_adapter_sets_warmup_prior_per_image_and_reset_restarts_it():
    net = net3()
    adapter = VPTTA(prompt_size=S, neighbors=2, memory_size=2, safeguard=False)
    priors = []
    for x in images(3):
        adapter(x, net)
        priors.append(net.bn.prior)
        assert net.bn.unbiased and net.bn.detach_stats
    assert priors == pytest.approx([1 - warmup_lambda(t) for t in (1, 2, 3)])
    adapter.reset()
    adapter(images(1)[0], net)
    assert net.bn.prior == pytest.approx(1 - 5 / 6)


class TwoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def test_bn_alignment_loss_against_hooks():
    torch.manual_seed(0)
    net = TwoBN().eval()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    layers = convert_norms(net)
    inputs = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    t = 4
    NormPolicy("warmup").apply(layers, t)
    for layer in layers:
        layer.record = True
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    net(x)
    loss = bn_alignment_loss(layers)
    lam = 1 / (math.sqrt(t) / 5 + 1)
    expected = 0
    for h, layer in zip(inputs, layers):
        mu_w = lam * h.mean(dim=(0, 2, 3)).detach() + (1 - lam) * layer.running_mean
        var_w = lam * h.var(dim=(0, 2, 3)).detach() + (1 - lam) * layer.running_var
        mu_i = h.mean(dim=(2, 3))  # (B, C)
        sd_i = h.std(dim=(2, 3))
        expected = expected + (mu_w - mu_i).abs().mean() + (var_w.sqrt() - sd_i).abs().mean()
    expected = expected / 2
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g_ref,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    assert g.abs().sum() > 0
    for layer in layers:
        layer.recorded = None
    with pytest.raises(ValueError):
        bn_alignment_loss(layers)


# ----------------------------------------------------------------------------- memory bank
def test_memory_weights_against_numpy():
    g = torch.Generator().manual_seed(0)
    bank = PromptMemory(size=10, neighbors=3, temperature=0.2)
    keys = [torch.rand(1, 3, 2, 2, generator=g) for _ in range(6)]
    values = [torch.rand(1, 3, 2, 2, generator=g) for _ in range(6)]
    for i, (k, v) in enumerate(zip(keys, values)):
        assert (bank.retrieve(k) is None) == (i < 3)
        bank.push(k, v)
    query = torch.rand(1, 3, 2, 2, generator=g)
    all_k = np.stack([k.numpy().reshape(-1) for k in keys]).astype(np.float64)
    q = query.numpy().reshape(-1).astype(np.float64)
    sims = all_k @ q / (np.linalg.norm(all_k, axis=1) * np.linalg.norm(q))
    top = np.argsort(-sims)[:3]
    w = np.exp(sims[top] / 0.2) / np.exp(sims[top] / 0.2).sum()
    expected = sum(w[i] * values[j].numpy().astype(np.float64) for i, j in enumerate(top))
    index, weights = bank.neighbours(query)
    assert sorted(index.tolist()) == sorted(top.tolist())
    np.testing.assert_allclose(np.sort(weights.numpy()), np.sort(w), rtol=1e-6)
    np.testing.assert_allclose(bank.retrieve(query).numpy(), expected, rtol=1e-6, atol=1e-7)


def test_memory_fifo_eviction_holds_size_plus_one():
    bank = PromptMemory(size=3, neighbors=1)
    lengths = []
    for i in range(6):
        bank.push(torch.full((2,), float(i + 1)), torch.tensor([float(i)]))
        lengths.append(len(bank))
    assert lengths == [1, 2, 3, 4, 4, 4]
    assert bank.keys[:, 0].tolist() == [3.0, 4.0, 5.0, 6.0]  # the two oldest were dropped, one per push
    assert [v.item() for v in bank.values] == [2.0, 3.0, 4.0, 5.0]


def test_memory_stores_copies_and_identical_keys_overwrite():
    bank = PromptMemory(size=5, neighbors=1)
    key, value = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.5])
    param = nn.Parameter(value.clone())
    bank.push(key, param)
    bank.push(torch.tensor([2.0, 1.0]), torch.tensor([9.0, 9.0]))
    with torch.no_grad():
        param.add_(1.0)  # the live prompt moves on: the stored value must not follow
    key.add_(5.0)
    assert bank.values[0].tolist() == [0.5, 0.5]
    assert bank.keys[0].tolist() == [1.0, 2.0]
    bank.push(torch.tensor([1.0, 2.0]), torch.tensor([7.0, 7.0]))
    assert len(bank) == 2
    assert bank.values[0].tolist() == [7.0, 7.0]  # overwritten in place, keeps its FIFO position
    restored = PromptMemory()
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.keys, bank.keys) and restored.size == 5
    assert all(torch.equal(a, b) for a, b in zip(restored.values, bank.values))


# ----------------------------------------------------------------------------- full VPTTA
def test_stream_matches_plain_reference():
    """Six images: warm-up t = 1..6, bank retrieval from image 3 on, eviction, persistent Adam state."""
    net = net3()
    xs = images(6)
    expected = reference_stream(copy.deepcopy(net), xs, size=2, k=2)
    adapter = VPTTA(prompt_size=S, memory_size=2, neighbors=2, safeguard=False)
    used = []
    for x, (logits_ref, prompt_ref) in zip(xs, expected):
        logits = adapter(x, net)
        used.append(adapter.last_stats["from_memory"])
        torch.testing.assert_close(adapter.prompt_for(net).prompt.detach(), prompt_ref, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(logits, logits_ref, atol=2e-5, rtol=1e-5)
    assert used == [False, False, True, True, True, True]
    assert len(adapter.memory_for(net)) == 3  # size + 1
    assert adapter.n_params(net) == 27


def test_only_the_prompt_changes_under_no_grad_and_eval():
    net = net3()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adapter = VPTTA(prompt_size=S, memory_size=2, neighbors=2, safeguard=False)
    with torch.no_grad():
        for x in images(5):
            out = adapter(x, net)
    assert out.shape == (1, 2, SIZE, SIZE) and not out.requires_grad
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in net.parameters())  # flags restored
    assert not net.training
    assert not torch.equal(adapter.prompt_for(net).prompt.detach(), torch.ones(1, 3, S, S))


def test_reset_clears_bank_prompt_optimizer_and_counter():
    net = net3()
    adapter = VPTTA(prompt_size=S, memory_size=2, neighbors=2)
    for x in images(4):
        adapter(x, net)
    adapter.reset()
    state = adapter.state_for(net)
    assert len(adapter.memory_for(net)) == 0 and state.seen == 0 and state.step == 0
    assert torch.equal(adapter.prompt_for(net).prompt.detach(), torch.ones(1, 3, S, S))
    assert len(state.optimizer.state) == 0
    # after a reset the stream restarts exactly as a fresh adapter
    xs = images(3, seed=9)
    fresh = VPTTA(prompt_size=S, memory_size=2, neighbors=2)
    fresh_net = net3()
    for x in xs:
        torch.testing.assert_close(adapter(x, net), fresh(x, fresh_net), atol=0, rtol=0)


def test_roll_channels_adapter_gives_identical_predictions():
    xs = images(5, seed=11)
    net_a, net_b = net3(), net3()
    clean = VPTTA(prompt_size=S, memory_size=2, neighbors=2)
    rolled = VPTTA(prompt_size=S, memory_size=2, neighbors=2, roll_channels=True)
    for x in xs:
        torch.testing.assert_close(clean(x, net_a), rolled(x, net_b), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(
        clean.prompt_for(net_a).prompt, torch.roll(rolled.prompt_for(net_b).prompt, -1, dims=1), atol=2e-5, rtol=1e-5
    )


def test_state_dict_round_trip_continues_identically():
    xs = images(6, seed=13)
    net = net3()
    adapter = VPTTA(prompt_size=S, memory_size=2, neighbors=2)
    for x in xs[:4]:
        adapter(x, net)
    saved = adapter.state_dict(net)
    other_net = net3()
    other = VPTTA(prompt_size=S, memory_size=2, neighbors=2)
    other.load_state_dict(other_net, saved)
    for x in xs[4:]:
        torch.testing.assert_close(adapter(x, net), other(x, other_net), atol=0, rtol=0)
    assert other.state_for(other_net).seen == adapter.state_for(net).seen  # the safeguard's state came along too
    assert other.state_for(other_net).guards == adapter.state_for(net).guards


def test_several_steps_initialise_once():
    net = net3()
    adapter = VPTTA(prompt_size=S, memory_size=2, neighbors=2, steps=3, safeguard=False)
    adapter(images(1)[0], net)
    state = adapter.state_for(net)
    assert next(iter(state.optimizer.state.values()))["step"].item() == 3
    assert state.seen == 1 and len(adapter.memory_for(net)) == 1
