"""GraTa's fast path (batched / joint views) against the plain separate-forward structure written out here.

The reference below uses a fresh copy of the source network with plain ``nn.BatchNorm2d`` layers in training mode
(per-image statistics, no running statistics), one forward per view, and ``torch.optim.Adam``: nothing from
``monai_tta`` except the network class.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_tta.adapters import GraTa
from monai_tta.networks import SmallUNet

#: a base learning rate large enough that the updates are far above the comparison tolerances (GraTa's is 1e-4)
LR = 1e-2

VIEWS = {
    "identity": (lambda x: x, lambda y: y),
    "hflip": (lambda x: x.flip(-1), lambda y: y.flip(-1)),
    "vflip": (lambda x: x.flip(-2), lambda y: y.flip(-2)),
    "rot90": (lambda x: torch.rot90(x, 1, (-2, -1)), lambda y: torch.rot90(y, -1, (-2, -1))),
    "rot180": (lambda x: torch.rot90(x, 2, (-2, -1)), lambda y: torch.rot90(y, -2, (-2, -1))),
    "rot270": (lambda x: torch.rot90(x, 3, (-2, -1)), lambda y: torch.rot90(y, -3, (-2, -1))),
}


def strong(x: torch.Tensor) -> torch.Tensor:
    """Deterministic stand-in for the strong augmentation: a per-channel gain, squared, min-maxed per sample."""
    y = (x * torch.tensor([0.7, 1.2, 0.9], device=x.device).view(1, 3, 1, 1)) ** 2
    return (y - y.amin()) / (y.amax() - y.amin())


def source_net(seed: int = 0) -> nn.Module:
    """A SmallUNet (8-16 channels) with non-trivial BatchNorm affine values and running statistics."""
    torch.manual_seed(seed)
    net = SmallUNet(in_channels=3, out_channels=2, features=(8, 16))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def images(n: int = 2, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(1, 3, size, size, generator=g) for _ in range(n)]


def plain_bn_params(net: nn.Module) -> list[nn.Parameter]:
    params = []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
            params += [m.weight, m.bias]
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    return params


def entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return -(p * torch.log(p + 1e-6)).sum(1).mean()


def grads(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    for p in params:
        p.requires_grad_(True)
    out = torch.autograd.grad(loss, params)
    for p in params:
        p.requires_grad_(False)
    return list(out)


def plain_grata(
    net: nn.Module,
    stream: list[torch.Tensor],
    approximate: bool = False,
    predict_after: bool = True,
    lr: float = LR,
    strong_size: int | None = None,
):
    """GraTa with one forward per pass on a plain BatchNorm network; returns predictions and the final parameters."""
    params = plain_bn_params(net)
    adam = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    preds = []
    for x in stream:
        for p in params:
            p.requires_grad_(True)
        aux_logits = net(x)
        g_aux = grads(entropy(aux_logits), params)
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, g_aux):
                p.sub_(g)
            if approximate:
                pseudo = torch.sigmoid(aux_logits.detach())
            else:
                pseudo = torch.stack([torch.sigmoid(inv(net(fwd(x)))) for fwd, inv in VIEWS.values()]).mean(0)
        view = strong(x)
        if strong_size is not None:  # the approximate mode's reduced strong pass: both area-downsampled
            view = F.interpolate(view, size=(strong_size, strong_size), mode="area")
            pseudo = F.interpolate(pseudo, size=(strong_size, strong_size), mode="area")
        for p in params:
            p.requires_grad_(True)
        g_pse = grads(F.binary_cross_entropy_with_logits(net(view), pseudo), params)
        a, b = torch.cat([g.flatten() for g in g_aux]), torch.cat([g.flatten() for g in g_pse])
        cos = float((a * b).sum() / (a.norm() * b.norm() + 1e-12))
        with torch.no_grad():
            for p, v in zip(params, backup):
                p.copy_(v)
        for group in adam.param_groups:
            group["lr"] = lr * (cos + 1) ** 2 / 4
        for p, g in zip(params, g_pse):
            p.grad = g
        adam.step()
        with torch.no_grad():
            preds.append(net(x) if predict_after else aux_logits.detach())
    return preds, [p.detach().clone() for p in params]


def run_adapter(adapter: GraTa, net: nn.Module, stream: list[torch.Tensor]):
    preds = [adapter(x, net) for x in stream]
    return preds, [p.detach().clone() for p in adapter.state_for(net).params]


@pytest.mark.parametrize(
    "view_mode, view_chunk",
    [("auto", None), ("batched", None), ("batched", 2), ("batched", 4), ("joint", None), ("separate", None)],
)
def test_fast_path_equals_plain_separate_forwards(view_mode, view_chunk):
    stream = images()
    ref_preds, ref_params = plain_grata(source_net(), stream)
    adapter = GraTa(strong_augment=strong, view_mode=view_mode, view_chunk=view_chunk, lr=LR)
    preds, params = run_adapter(adapter, source_net(), stream)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5)
    for p, r in zip(preds, ref_preds):
        torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-5)
    # the update moved the parameters: the comparison is not between two untouched networks
    source = [p.detach() for p in plain_bn_params(source_net())]
    assert max(float((p - s).abs().max()) for p, s in zip(params, source)) > 1e-4


def test_default_view_mode_and_all_view_modes_agree_with_strong_style():
    default = GraTa()
    assert (default.mode, default.view_mode, default.predict_after_update) == ("exact", "auto", True)
    assert (default.view_chunk, default.cuda_graph) == (2, None)
    x = images(1)[0]
    assert default.resolved_view_mode(x) == "separate"  # CPU input
    assert default.resolved_view_mode(x.to("meta")) == "batched"  # any accelerator
    assert GraTa(view_mode="joint").resolved_view_mode(torch.cat([x, x])) == "separate"  # batching needs one image
    results = {}
    for mode in ("batched", "joint", "separate"):
        results[mode] = run_adapter(GraTa(view_mode=mode, seed=5, lr=LR), source_net(), images(2))
    for mode in ("batched", "joint"):
        for a, b in zip(results[mode][1], results["separate"][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        for a, b in zip(results[mode][0], results["separate"][0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture
def cuda_fp32():
    """CUDA with TF32 off and deterministic cuDNN algorithms, restored afterwards (TF32 rounds float32 operands to
    10 mantissa bits, far above the tolerances here)."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    yield torch.device("cuda")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic = flags


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "view_mode, view_chunk, cuda_graph",
    [
        ("auto", 2, None),  # the default on a GPU: views batched 2 at a time, CUDA graphs
        ("auto", None, False),
        ("batched", 2, True),
        ("joint", None, True),
        ("separate", None, False),
    ],
)
def test_fast_path_equals_plain_separate_forwards_on_cuda(view_mode, view_chunk, cuda_graph, cuda_fp32):
    """On a GPU, where ``"auto"`` batches the views and replays CUDA graphs: same parameters and predictions as the
    plain structure (the reference runs on the GPU too; different cuDNN kernels for batch 1 and 6 leave float32
    rounding differences)."""
    stream = [x.to(cuda_fp32) for x in images(3, size=64)]
    adapter = GraTa(strong_augment=strong, view_mode=view_mode, view_chunk=view_chunk, cuda_graph=cuda_graph, lr=LR)
    assert adapter.resolved_view_mode(stream[0]) == ("batched" if view_mode == "auto" else view_mode)
    assert adapter.uses_cuda_graph(stream[0]) == (cuda_graph is not False)
    ref_preds, ref_params = plain_grata(source_net().to(cuda_fp32), stream)
    net = source_net().to(cuda_fp32)
    preds, params = run_adapter(adapter, net, stream)
    extra = adapter.state_for(net).extra
    if cuda_graph is not False:  # one capture of the update and one of the prediction, replayed for every case
        assert extra["graph_update"].captures == 1 and extra["graph_predict"].captures == 1
        assert extra["graph_predict"].share_pool_with is extra["graph_update"]  # one memory pool for both graphs
        assert "graph_failed" not in extra
    else:
        assert "graph_update" not in extra
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-4)
    for p, r in zip(preds, ref_preds):
        torch.testing.assert_close(p, r, atol=1e-4, rtol=1e-4)
    source = [p.detach().to(cuda_fp32) for p in plain_bn_params(source_net())]
    assert max(float((p - s).abs().max()) for p, s in zip(params, source)) > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["exact", "approximate"])
def test_cuda_graph_replays_equal_eager_calls(mode, cuda_fp32):
    """The graphs replay the eager kernels: same updates, same predictions, case after case (default StrongStyle)."""
    stream = [x.to(cuda_fp32) for x in images(4, size=64)]
    results = []
    for cuda_graph in (False, True):
        adapter = GraTa(mode=mode, cuda_graph=cuda_graph, predict_after_update=True, lr=LR, seed=3)
        results.append(run_adapter(adapter, source_net().to(cuda_fp32), stream))
    (eager_preds, eager_params), (graph_preds, graph_params) = results
    for a, b in zip(graph_params, eager_params):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(graph_preds, eager_preds):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("predict_after, scale, size", [(False, None, 16), (True, None, 16), (False, 1.0, None)])
def test_approximate_mode_matches_its_definition(predict_after, scale, size):
    stream = images()
    ref_preds, ref_params = plain_grata(
        source_net(), stream, approximate=True, predict_after=predict_after, strong_size=size
    )
    adapter = GraTa(
        strong_augment=strong, mode="approximate", predict_after_update=predict_after, strong_scale=scale, lr=LR
    )
    preds, params = run_adapter(adapter, source_net(), stream)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, atol=1e-6, rtol=1e-5)
    for p, r in zip(preds, ref_preds):
        torch.testing.assert_close(p, r, atol=1e-5, rtol=1e-5)


class CallCounter:
    """Counts the network's forward calls and the samples they process; records which parameters require grad."""

    def __init__(self, net: nn.Module) -> None:
        self.calls, self.samples, self.frozen_ok = 0, 0, True
        net.register_forward_pre_hook(self.hook)
        self.net = net

    def hook(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.samples += args[0].shape[0]
        if not torch.is_grad_enabled():
            return
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                self.frozen_ok &= not any(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize(
    "kwargs, calls, samples",
    [
        ({}, 9, 9),  # on the CPU "auto" runs the views one by one
        ({"view_mode": "batched"}, 6, 9),  # entropy, 3 batches of 2 views (the default chunk), strong, final
        ({"view_mode": "batched", "view_chunk": None}, 4, 9),  # entropy, 6 views in one batch, strong, final
        ({"view_mode": "batched", "view_chunk": 4}, 5, 9),  # entropy, views 4 + 2, strong, final
        ({"view_mode": "joint"}, 3, 9),  # entropy, views + strong in one batch, final
        ({"view_mode": "separate"}, 9, 9),
        ({"mode": "approximate"}, 2, 2),  # entropy (reported), strong (at half size)
        ({"mode": "approximate", "predict_after_update": True}, 3, 3),
    ],
)
def test_forward_passes_and_frozen_layers(kwargs, calls, samples):
    net = source_net()
    counter = CallCounter(net)
    adapter = GraTa(strong_augment=strong, safeguard=False, **kwargs)  # the published update's passes (no probe)
    with torch.no_grad():  # as MONAI evaluators and MONAI Label call inferers
        adapter(images(1)[0], net)
    assert (counter.calls, counter.samples) == (calls, samples)
    assert counter.frozen_ok  # no convolution weight is differentiated during the update
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert convs and all(p.grad is None for m in convs for p in m.parameters())
    # requires_grad flags are restored after the call
    assert all(p.requires_grad for p in net.parameters())


def test_invalid_options_raise():
    with pytest.raises(ValueError):
        GraTa(mode="fast")
    with pytest.raises(ValueError):
        GraTa(view_mode="all")
    with pytest.raises(ValueError):
        GraTa(strong_scale=0.5)  # the exact mode runs the strong view at full size
    with pytest.raises(ValueError):
        GraTa(mode="approximate", strong_scale=0.0)
    for chunk in (0, 1.5, True):
        with pytest.raises(ValueError, match="view_chunk"):
            GraTa(view_chunk=chunk)


def test_approximate_strong_size_is_a_multiple_of_the_network_divisor():
    adapter = GraTa(mode="approximate", strong_scale=0.3)
    net = SmallUNet(features=(8, 16, 32))  # size_divisor 4
    assert adapter.strong_size((64, 40), net) == (20, 12)
    assert adapter.strong_size((16, 16), net) == (8, 8)  # never below twice the divisor (2x2 coarsest features)
    assert adapter.strong_size((4, 4), net) == (4, 4)  # nor above the input size
    assert adapter.strong_size((64, 40), nn.Identity()) == (19, 12)
