"""Adapters under automatic mixed precision, as MONAI's ``amp: true`` evaluators call them (CPU autocast here,
bfloat16): the update runs, the parameters stay float32 and move as in float32 (to bfloat16's precision)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_image, tiny_net

from monai_tta.adapters import SAR, GraTa, Tent


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
@pytest.mark.parametrize("cls", [Tent, GraTa, SAR])
def test_update_under_cpu_autocast(cls, activation):
    x = tiny_image()
    nets = {"amp": tiny_net(), "fp32": tiny_net()}
    extra = {"margin": 100.0} if cls is SAR else {}  # SAR's filter would drop this untrained net's case: no update
    adapters = {k: cls(activation=activation, setting="episodic", safeguard=False, **extra) for k in nets}
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = adapters["amp"](x, nets["amp"])
        ref = adapters["fp32"](x, nets["fp32"])
    assert not adapters["amp"].last_stats["nonfinite"]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert all(p.dtype == torch.float32 for p in nets["amp"].parameters())
    for p, q, s in zip(nets["amp"].bn.parameters(), nets["fp32"].bn.parameters(), tiny_net().bn.parameters()):
        assert not torch.equal(p, s)  # it adapted
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)  # bfloat16 logits (about 3 significant digits)
