"""The source anchor (issue 18): the original source model as the last check of ``safe`` when the day model moves
(DyNA's nights), against hand-computed scores, and in DyNA's runs."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from dyna_runs import PER_DAY, heldout, source_net, stream
from torch import nn

from monai_tta.adapters import VPTTA
from monai_tta.adapters.dyna import DayNightRunner
from monai_tta.adapters.dyna.runner import case_dice
from monai_tta.guards import SafeChoice, SourceAnchor
from monai_tta.reports import read_case_csv

MEAN, VAR, GAMMA, BETA, EPS = 0.2, 1.5, 1.3, -0.1, 1e-5


def _bn_net() -> nn.Module:
    bn = nn.BatchNorm2d(1, eps=EPS)
    with torch.no_grad():
        bn.running_mean.fill_(MEAN)
        bn.running_var.fill_(VAR)
        bn.weight.fill_(GAMMA)
        bn.bias.fill_(BETA)
    return nn.Sequential(bn).eval()


def _bn_by_hand(x: torch.Tensor, q: float) -> torch.Tensor:
    """The BatchNorm of ``_bn_net`` with statistics ``q * source + (1 - q) * image``, written out."""
    m, v = x.mean(), x.var(unbiased=False)
    return (x - (q * MEAN + (1 - q) * m)) / torch.sqrt(q * VAR + (1 - q) * v + EPS) * GAMMA + BETA


def _entropy(z: torch.Tensor) -> float:
    p = torch.sigmoid(z)
    return float((-(p * torch.log(p) + (1 - p) * torch.log(1 - p))).mean() / math.log(2.0))


X = torch.tensor([[[[0.0, 1.0, 2.5, -1.0], [3.0, 0.5, 0.25, 2.0], [1.5, -0.5, 4.0, 1.0], [0.0, 2.0, 1.0, 3.5]]]])


@pytest.mark.parametrize("gain, keep", [(0.05, True), (0.015, False)])
def test_mixes_margin_by_hand(gain, keep):
    """``mixes``: the original source model scores its agreement with itself at statistics weight 0.75; the reported
    prediction (here the image's own statistics, ``safe_prior`` 0) keeps its recorded score less the mix margin; the
    source margin favours the anchor. 0.05 better keeps it (margin 0.03), 0.015 better does not (-0.005)."""
    anchor = SourceAnchor(_bn_net(), SafeChoice())
    z1, z75 = _bn_by_hand(X, 1.0), _bn_by_hand(X, 0.75)
    score = float((1 - (torch.sigmoid(z1) - torch.sigmoid(z75)).abs()).mean())
    reported = torch.full_like(X, 2.0)
    stats = {"safe_signal": "mixes", "safe_choice": "stats_0", "safe_prior": 0.0, "safe_score_stats_0": score + gain}
    logits, record = anchor.choose(X, reported, stats)
    assert record["safe_anchor_margin"] == pytest.approx(gain - 0.01 - 0.01, abs=1e-6)
    assert record["safe_anchor"] is (not keep)
    if keep:
        assert logits is reported
    else:
        torch.testing.assert_close(logits, z1)


def test_mixes_on_a_softmax_network_by_hand():
    """Softmax outputs (two exclusive classes): the anchor's ``mixes`` score is the mean over pixels of
    ``sum_c min(p_c, q_c)`` between the source model at statistics weight 1 and 0.75, computed here per channel by
    hand; the reported prediction is the source model's own statistics (``safe_prior`` 1: no mix margin)."""
    bn = nn.BatchNorm2d(2, eps=EPS)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([MEAN, -0.3]))
        bn.running_var.copy_(torch.tensor([VAR, 0.6]))
        bn.weight.copy_(torch.tensor([GAMMA, 0.8]))
        bn.bias.copy_(torch.tensor([BETA, 0.2]))
    anchor = SourceAnchor(nn.Sequential(bn).eval(), SafeChoice(activation="softmax"))
    x = torch.cat([X, X.flip(-1) * 0.5 + 1.0], dim=1)

    def by_hand(q: float) -> torch.Tensor:
        m, v = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
        rm, rv = bn.running_mean.view(1, 2, 1, 1), bn.running_var.view(1, 2, 1, 1)
        z = (x - (q * rm + (1 - q) * m)) / torch.sqrt(q * rv + (1 - q) * v + EPS)
        return z * bn.weight.view(1, 2, 1, 1) + bn.bias.view(1, 2, 1, 1)

    p, q = torch.softmax(by_hand(1.0), 1), torch.softmax(by_hand(0.75), 1)
    score = float(torch.minimum(p, q).sum(1).mean())
    stats = {"safe_signal": "mixes", "safe_choice": "method", "safe_prior": 1.0, "safe_score_method": score + 0.004}
    logits, record = anchor.choose(x, torch.zeros(1, 2, 4, 4), stats)
    assert record["safe_anchor_margin"] == pytest.approx(0.004 - 0.01, abs=1e-6)
    torch.testing.assert_close(logits, by_hand(1.0))


@pytest.mark.parametrize("signal", ["entropy", "consensus", "source"])
def test_entropy_and_the_relative_signals_compare_by_entropy(signal):
    """``entropy`` compares minus the mean entropies; ``consensus`` and ``source``, which score a candidate against the
    others, do too. The reported prediction at the half mix pays half the mix margin."""
    anchor = SourceAnchor(_bn_net(), SafeChoice(signal=signal))
    reported = torch.linspace(-6.0, 6.0, 16).reshape(1, 1, 4, 4)
    stats = {"safe_signal": signal, "safe_choice": "stats_0.5", "safe_prior": 0.5, "safe_score_stats_0.5": 123.0}
    _, record = anchor.choose(X, reported, stats)
    expected = -_entropy(reported) - 0.005 - (-_entropy(_bn_by_hand(X, 1.0)) + 0.01)
    assert record["safe_anchor_margin"] == pytest.approx(expected, abs=1e-6)


def test_without_running_statistics_mixes_is_the_entropy_and_nothing_is_lowered():
    """A network without running statistics: every mix is the same forward, so ``mixes`` reads as the entropy (as in
    ``safe``) and no mix margin applies."""
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.bias.fill_(-0.2)
    anchor = SourceAnchor(nn.Sequential(conv, nn.GroupNorm(1, 1)), SafeChoice())
    reported = torch.linspace(-5.0, 5.0, 16).reshape(1, 1, 4, 4)
    stats = {"safe_signal": "entropy", "safe_choice": "stats_0", "safe_prior": 0.0, "safe_score_stats_0": -0.3}
    _, record = anchor.choose(X, reported, stats)
    y = X * 0.5 - 0.2
    source = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + 1e-5)
    assert record["safe_anchor_margin"] == pytest.approx(-_entropy(reported) + _entropy(source) - 0.01, abs=1e-6)


def test_the_anchor_is_a_frozen_copy():
    net = _bn_net()
    anchor = SourceAnchor(net, SafeChoice())
    assert not anchor.differs_from(_bn_net())
    with torch.no_grad():
        net[0].running_mean.fill_(3.0)
    assert anchor.differs_from(net)
    torch.testing.assert_close(anchor.predict(X), _bn_by_hand(X, 1.0))


def _runner(out, safe="case", **kwargs) -> DayNightRunner:
    return DayNightRunner(
        source_net(),
        out,
        day_adapter=VPTTA(prompt_size=3, memory_size=4, neighbors=2, safe=safe),
        images_per_day=PER_DAY,
        night_epochs=2,
        night_batch_size=2,
        night_lr=5e-2,
        seed=7,
        **kwargs,
    )


@pytest.mark.parametrize("safe, anchored", [("case", "True"), ({"source_margin": 0.0, "mix_margin": 0.0}, "False")])
def test_dyna_days_after_a_night_are_checked_against_the_original_source(tmp_path, caplog, safe, anchored):
    """Day 0's model is the source: no anchor. After a night every ok row carries the anchor's record, and a row where
    the original source model won scores exactly the source model's Dice on that case. On this tiny run the source
    margin decides: with it the original source model wins, without the margins the day model's predictions do."""
    with caplog.at_level(logging.WARNING, logger="monai_tta.adapters.dyna.report"):
        report = _runner(tmp_path / "run", safe=safe).run(stream(), heldout())
    rows = read_case_csv(tmp_path / "run" / "cases.csv")
    n_source = sum(r["safe_anchor"] == "True" for r in rows)
    assert report["source_anchor_per_group"] == {"all": [n_source, sum(r["day"] > 0 for r in rows)]}
    warned = [m for m in caplog.messages if "the original source model was reported on" in m]
    assert len(warned) == (2 if anchored == "True" else 0)  # days 2 and 3, all their cases
    assert all(r["safe_anchor"] == "" for r in rows if r["day"] == 0)
    later = [r for r in rows if r["day"] > 0]
    assert later and all(r["safe_anchor"] in ("True", "False") for r in later)
    assert any(r["safe_anchor"] == anchored for r in later)
    net = source_net()
    for row, case in zip(rows, stream(), strict=True):
        if row["safe_anchor"] == "True":
            with torch.no_grad():
                pred = torch.sigmoid(net(case["image"][None])) >= 0.5
            assert row["day_dice"] == pytest.approx(case_dice(pred, case["label"][None]))
            assert row["safe_anchor_margin"] <= 0.0
        elif row["safe_anchor"] == "False":
            assert row["safe_anchor_margin"] > 0.0


def test_dyna_anchor_options_and_resume(tmp_path):
    """``source_anchor=True`` needs ``safe`` and a string is refused (``false`` on a bundle's command line); ``False``
    leaves it out; a run interrupted after its first night resumes
    to the rows of an uninterrupted run (the anchor's source model comes back from the checkpoint)."""
    with pytest.raises(ValueError, match="needs a day adapter with safe"):
        DayNightRunner(source_net(), tmp_path / "x", day_adapter=VPTTA(prompt_size=3), source_anchor=True)
    with pytest.raises(TypeError, match="source_anchor must be True, False or None"):
        _runner(tmp_path / "x", source_anchor="false")
    _runner(tmp_path / "off", source_anchor=False).run(stream())
    assert "safe_anchor" not in read_case_csv(tmp_path / "off" / "cases.csv")[0]

    _runner(tmp_path / "whole").run(stream())

    def stop(event, info):
        if event == "night" and info["day"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path / "resumed", callback=stop).run(stream())
    _runner(tmp_path / "resumed").run(stream())
    assert read_case_csv(tmp_path / "resumed" / "cases.csv") == read_case_csv(tmp_path / "whole" / "cases.csv")
