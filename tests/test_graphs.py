"""CapturedCall: eager on the CPU, captured once per input signature and replayed on CUDA."""

from __future__ import annotations

import pytest
import torch

from monai_tta.adapters import GraTa
from monai_tta.adapters.grata.graphs import CapturedCall

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def affine(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = x @ w + 1.0
    return y, y.sum()


def test_cpu_inputs_run_eagerly_every_call():
    calls = []

    def fn(x, w):
        calls.append(1)
        return affine(x, w)

    runner = CapturedCall(fn)
    w = torch.tensor([[2.0, 0.0], [1.0, -1.0]])
    for x in (torch.ones(3, 2), torch.arange(6.0).view(3, 2)):
        y, total = runner(x, w)
        torch.testing.assert_close(y, x @ w + 1.0)
        assert float(total) == pytest.approx(float((x @ w + 1.0).sum()))
    assert len(calls) == 2 and runner.graph is None and runner.captures == 0
    with pytest.raises(ValueError, match="warmup"):
        CapturedCall(fn, warmup=-1)


def test_grata_uses_graphs_on_cuda_only():
    x = torch.zeros(1, 3, 8, 8)
    assert not GraTa().uses_cuda_graph(x) and not GraTa(cuda_graph=True).uses_cuda_graph(x)
    if torch.cuda.is_available():
        assert GraTa().uses_cuda_graph(x.cuda()) and not GraTa(cuda_graph=False).uses_cuda_graph(x.cuda())


@needs_cuda
def test_capture_once_replay_with_new_inputs_and_recapture_on_new_shape():
    runner = CapturedCall(affine, warmup=1)
    w = torch.randn(4, 4, device="cuda")
    for _ in range(3):
        x = torch.randn(2, 4, device="cuda")
        y, _ = runner(x, w)
        torch.testing.assert_close(y, x @ w + 1.0)
    assert runner.captures == 1
    x = torch.randn(5, 4, device="cuda")
    torch.testing.assert_close(runner(x, w)[0], x @ w + 1.0)
    assert runner.captures == 2
