"""Issue 19: a caller that never signals a domain (the Model Zoo's evaluators, MONAI Label) gets per-patient adaptation
in the default setting; carrying adaptation over is an explicit opt-in."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.data import MetaTensor
from tiny import tiny_image, tiny_net

from monai_tta.adapters import SAR, GraTa, Tent


def _patient(seed: int, name: str) -> MetaTensor:
    return MetaTensor(tiny_image(seed=seed), meta={"filename_or_obj": name})


def _bn(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([net.bn.weight.detach(), net.bn.bias.detach()]).clone()


@pytest.mark.parametrize("cls", [Tent, GraTa, SAR])
def test_the_default_setting_adapts_each_named_case_from_the_source(cls, caplog):
    assert cls().setting == "domain"
    net, alone = tiny_net(), tiny_net()
    adapter = cls()
    with caplog.at_level(logging.WARNING, logger="monai_tta.adapters.base"):
        adapter(_patient(1, "a.nii.gz"), net)
        adapter(_patient(2, "b.nii.gz"), net)
    assert sum("per patient" in r.getMessage() for r in caplog.records) == 1  # said once
    assert adapter.last_stats["reset"] is True and adapter.last_stats["step"] == 1
    cls()(_patient(2, "b.nii.gz"), alone)  # patient b on its own, from the source model
    torch.testing.assert_close(_bn(net), _bn(alone), rtol=0, atol=0)


def test_continual_is_the_opt_in_that_carries_adaptation_over():
    net = tiny_net()
    adapter = Tent(setting="continual")
    adapter(_patient(1, "a.nii.gz"), net)
    adapter(_patient(2, "b.nii.gz"), net)
    assert adapter.last_stats["reset"] is False and adapter.last_stats["step"] == 2


def test_a_signalled_domain_and_a_plain_tensor_stream_keep_the_domain_setting():
    net = tiny_net()
    adapter = Tent()
    adapter.set_domain("site-1")
    adapter(_patient(1, "a.nii.gz"), net)
    adapter(_patient(2, "b.nii.gz"), net)
    assert adapter.last_stats["step"] == 2  # one domain: adaptation carries within it
    plain, stream_net = Tent(), tiny_net()
    plain(tiny_image(seed=1), stream_net)
    plain(tiny_image(seed=2), stream_net)
    assert plain.last_stats["step"] == 2  # plain tensors without a domain: one stream, as the published protocols
