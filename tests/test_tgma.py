"""TGMA: LFTM, ITM pooling, pseudo-label correction, selection and the adaptation loss against hand computations; the
runner (sources untouched, refresh); resume after a real kill."""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from tgma_runs import make_runner, sources, target_items
from tiny import tiny_net
from torch import nn

from monai_tta.tgma import (
    EnsembleDiceLoss,
    TGMARunner,
    WeightedEnsemble,
    attention_mask,
    corrected_pseudo_label,
    domain_transferability,
    evaluate_tgma,
    foreground_label,
    hard_foreground,
    instance_weights,
    lftm,
    perturb_unattended,
    pool_by_case,
    select_models,
    soft_dice_terms,
    spearman,
    tgma_trainer,
)

TESTS = Path(__file__).parent


class Steep(nn.Module):
    """Logit ``10 (x - 0.5)`` of the first input channel: foreground where the image is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * (x[:, :1] - 0.5)


# ----------------------------------------------------------------------------- LFTM
def test_attention_mask_is_the_dilated_foreground():
    prob = torch.zeros(1, 1, 5, 5)
    prob[0, 0, 2, 2] = 0.9
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:4, 1:4] = 1
    assert torch.equal(attention_mask(prob, "sigmoid", margin=1), expected)
    assert torch.equal(attention_mask(prob, "sigmoid", margin=0), (prob >= 0.5).float())
    # softmax: foreground = argmax is not the background channel, any class
    soft = torch.tensor([[[0.6, 0.2, 0.1]], [[0.3, 0.7, 0.1]], [[0.1, 0.1, 0.8]]]).unsqueeze(0)  # (1, 3, 1, 3)
    assert attention_mask(soft, "softmax", margin=0).flatten().tolist() == [0.0, 1.0, 1.0]
    # volumes (the 3D option): the same dilation in three dimensions
    vol = torch.zeros(1, 1, 5, 5, 5)
    vol[0, 0, 2, 2, 2] = 0.9
    cube = torch.zeros(1, 1, 5, 5, 5)
    cube[0, 0, 1:4, 1:4, 1:4] = 1
    assert torch.equal(attention_mask(vol, "sigmoid", margin=1), cube)


def test_perturbation_touches_only_the_unattended_pixels():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert perturb_unattended(x, keep, "mean").flatten().tolist() == [1.0, 3.0, 3.0, 6.0]
    std = math.sqrt(((x - 3.0) ** 2).mean().item())  # population std of the image: sqrt(3.5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    out = perturb_unattended(x, keep, "noise", strength=0.5, generator=torch.Generator().manual_seed(4))
    expected = x + (1 - keep) * noise * 0.5 * std
    torch.testing.assert_close(out, expected)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == 6.0


def test_soft_dice_and_lftm_by_hand():
    inter, total = soft_dice_terms(torch.tensor([[[1.0, 0.5, 0.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 0.0, 0.5]]]))
    assert inter.tolist() == [[1.0]] and total.tolist() == [[3.0]]
    # one bright pixel (0.9) on a dim image: the model attends to it alone (margin 0); the rest becomes the mean 0.3
    x = torch.tensor([[[[0.9, 0.1], [0.1, 0.1]]]])
    s = torch.sigmoid
    p = torch.tensor([s(torch.tensor(4.0)), s(torch.tensor(-4.0)), s(torch.tensor(-4.0)), s(torch.tensor(-4.0))])
    q = torch.tensor([s(torch.tensor(4.0)), s(torch.tensor(-2.0)), s(torch.tensor(-2.0)), s(torch.tensor(-2.0))])
    expected = (2 * (p * q).sum() + 1e-6) / (p.sum() + q.sum() + 1e-6)
    score = lftm(Steep(), x, activation="sigmoid", margin=0, perturbation="mean")
    torch.testing.assert_close(score, expected.reshape(1))
    # an attended image is not perturbed at all: LFTM = soft Dice of a prediction with itself
    bright = torch.full((1, 1, 2, 2), 0.9)
    pb = s(torch.tensor(4.0))
    torch.testing.assert_close(lftm(Steep(), bright, margin=0), ((2 * 4 * pb**2 + 1e-6) / (8 * pb + 1e-6)).reshape(1))


# ----------------------------------------------------------------------------- ITM, correction, DTM, selection
def test_itm_pools_the_slices_of_a_case():
    inter = torch.tensor([[[1.0], [0.0]], [[2.0], [1.0]], [[1.0], [1.0]]])  # 3 inputs x 2 models x 1 channel
    total = torch.tensor([[[4.0], [2.0]], [[5.0], [4.0]], [[2.0], [4.0]]])
    cases, itm = pool_by_case(inter, total, ["a", "a", "b"], smooth=0.0)
    assert cases == ["a", "b"]
    torch.testing.assert_close(itm, torch.tensor([[6 / 9, 2 / 6], [1.0, 0.5]]))
    torch.testing.assert_close(domain_transferability(itm), torch.tensor([(6 / 9 + 1) / 2, (2 / 6 + 0.5) / 2]))


def test_weighted_ensemble_and_argmax_by_hand():
    # 2 models, softmax over (background, class 1, class 2), one input of 2 pixels
    p1 = torch.tensor([[0.2, 0.5], [0.5, 0.1], [0.3, 0.4]])  # (C, pixels)
    p2 = torch.tensor([[0.1, 0.1], [0.1, 0.8], [0.8, 0.1]])
    probs = torch.stack([p1, p2]).reshape(2, 1, 3, 1, 2)
    itm = torch.tensor([[0.6, 0.2]])  # weights 0.75 / 0.25
    # pixel 0: 0.75*(0.2,0.5,0.3) + 0.25*(0.1,0.1,0.8) = (0.175, 0.4, 0.425) -> class 2
    # pixel 1: 0.75*(0.5,0.1,0.4) + 0.25*(0.1,0.8,0.1) = (0.4, 0.275, 0.325) -> background
    label = corrected_pseudo_label(probs, itm, "softmax")
    assert label.shape == (1, 2, 1, 2)
    assert label[0, :, 0].tolist() == [[0.0, 0.0], [1.0, 0.0]]
    # a plain mean would pick class 1 at pixel 1: (0.3, 0.45, 0.25)
    assert corrected_pseudo_label(probs, torch.tensor([[1.0, 1.0]]), "softmax")[0, :, 0].tolist() == [
        [0.0, 1.0],
        [1.0, 0.0],
    ]
    # sigmoid: weighted mean thresholded at 0.5; a row of zeros weighs the models equally
    sig = torch.tensor([0.9, 0.3]).reshape(2, 1, 1, 1, 1)
    assert corrected_pseudo_label(sig, torch.tensor([[0.2, 0.6]])).item() == 0.0  # 0.25*0.9 + 0.75*0.3 = 0.45
    assert corrected_pseudo_label(sig, torch.tensor([[0.6, 0.2]])).item() == 1.0  # 0.75
    assert corrected_pseudo_label(sig, torch.tensor([[0.0, 0.0]])).item() == 1.0  # 0.6
    torch.testing.assert_close(
        instance_weights(torch.tensor([[0.0, 0.0], [1.0, 3.0]])), torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    )


def test_selection_order_weights_and_ties():
    sel = select_models([0.5, 0.7, 0.7, 0.1])
    assert (sel.main, sel.auxiliary) == (1, (2,))  # tie between 1 and 2: the lower index first
    assert sel.weights == pytest.approx((0.5, 0.5))
    sel = select_models(torch.tensor([0.5, 0.7, 0.7, 0.1]), n_selected=3)
    assert sel.indices == (1, 2, 0) and sel.weights == pytest.approx((0.7 / 1.9, 0.7 / 1.9, 0.5 / 1.9))
    sel = select_models([0.2, 0.6])
    assert (
        sel.indices == (1, 0)
        and sel.weights == pytest.approx((0.75, 0.25))
        and sum(sel.weights) == pytest.approx(1.0, abs=1e-12)
    )
    assert select_models([0.0, 0.0, 0.0]).indices == (0, 1) and select_models([0.0, 0.0]).weights == (0.5, 0.5)
    with pytest.raises(ValueError, match="n_selected"):
        select_models([0.1, 0.2], n_selected=3)
    with pytest.raises(ValueError, match="finite"):
        select_models([0.1, float("nan")])


def test_spearman_and_labels():
    assert spearman([0.1, 0.3, 0.2], [10, 30, 20]) == pytest.approx(1.0)
    assert spearman([0.1, 0.3, 0.2], [30, 10, 20]) == pytest.approx(-1.0)
    assert math.isnan(spearman([0.1, 0.1], [1, 2]))
    y = torch.tensor([[[0, 1, 2]]])
    assert foreground_label(y, "softmax", 2)[:, 0].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert foreground_label(torch.tensor([[[0.0, 1.0]]]), "sigmoid", 1).tolist() == [[[0, 1]]]


# ----------------------------------------------------------------------------- adaptation
def test_adaptation_loss_against_plain_recomputation():
    nets = [tiny_net(1), tiny_net(2)]
    x = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    ensemble = WeightedEnsemble(nets, [3.0, 2.0]).eval()
    loss = EnsembleDiceLoss("sigmoid")(ensemble(x), y)
    p = 0.6 * torch.sigmoid(nets[0](x)) + 0.4 * torch.sigmoid(nets[1](x))
    dice = [(2 * (p[:, c] * y[:, c]).sum() + 1) / (p[:, c].sum() + y[:, c].sum() + 1) for c in range(2)]
    torch.testing.assert_close(loss, 1 - torch.stack(dice).mean())
    # softmax: the background channel is left out
    soft = WeightedEnsemble(nets, [1.0, 1.0], "softmax").eval()
    target = y[:, 1:]
    q = 0.5 * torch.softmax(nets[0](x), 1)[:, 1:] + 0.5 * torch.softmax(nets[1](x), 1)[:, 1:]
    expected = 1 - (2 * (q * target).sum() + 1) / (q.sum() + target.sum() + 1)
    torch.testing.assert_close(EnsembleDiceLoss("softmax")(soft(x), target), expected)


def test_trainer_step_is_a_plain_adam_step_on_both_members():
    nets = [tiny_net(1), tiny_net(2)]
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    y = (torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    manual = WeightedEnsemble(copy.deepcopy(nets), [0.7, 0.3]).train()
    opt = torch.optim.Adam(manual.parameters(), lr=1e-2)
    EnsembleDiceLoss()(manual(x), y).backward()
    opt.step()
    ensemble = WeightedEnsemble(nets, [0.7, 0.3])
    trainer = tgma_trainer(ensemble, [{"image": x, "label": y}], torch.optim.Adam(ensemble.parameters(), lr=1e-2))
    trainer.run()
    for (name, a), b in zip(ensemble.state_dict().items(), manual.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


# ----------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tgma")
    srcs = sources()
    before = {n: copy.deepcopy(m.state_dict()) for n, m in srcs.items()}
    runner = make_runner(out, srcs=srcs)
    results = runner.run(target_items())
    return results, copy.deepcopy(runner.ensemble.state_dict()), before, srcs


def test_runner_results_and_untouched_sources(reference_run):
    results, _, before, srcs = reference_run
    assert results["cases"] == ["case0", "case1", "case2"] and results["itm"].shape == (3, 3)
    torch.testing.assert_close(results["dtm"], results["itm"].mean(0))
    assert results["selection"]["indices"] == list(select_models(results["dtm"]).indices)
    assert results["pseudo"].shape == results["adapted_preds"].shape == (6, 2, 8, 8)
    assert results["source_preds"].shape == (3, 6, 2, 8, 8) and len(results["loss_per_epoch"]) == 3
    assert not any(isinstance(v, MetaTensor) for v in results.values())
    for name, model in srcs.items():  # the sources are never trained
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[name][key]), (name, key)
    rows, summary = evaluate_tgma(results, target_items())
    assert [r["case_id"] for r in rows] == ["case0", "case1", "case2"]
    best = max(["A", "B", "C"], key=lambda n: summary["source_dice"][n])
    assert summary["dice"]["oracle best source"]["T"] == pytest.approx(summary["dice"][best]["T"])
    # the source predictions are the models' own hard predictions
    x = torch.stack([item["image"] for item in target_items()])
    with torch.no_grad():
        own = hard_foreground(torch.sigmoid(srcs["B"](x)), "sigmoid")
    assert torch.equal(results["source_preds"][1], own.to(torch.uint8))


def test_rerun_in_a_finished_folder_changes_nothing_and_refuses_other_options(reference_run, tmp_path):
    results, state, _, _ = reference_run
    out = tmp_path / "run"
    first = make_runner(out).run(target_items())
    again = make_runner(out)
    second = again.run(target_items())
    assert torch.equal(first["adapted_preds"], second["adapted_preds"])
    for name in ("transferability.pt", "checkpoint.pt", "target_model.pt"):  # plain tensors only, no MetaTensor
        stored = torch.load(out / name, weights_only=False)
        assert not any(isinstance(v, MetaTensor) for v in stored.values()), name
    with pytest.raises(ValueError, match="other options, inputs or source weights"):
        make_runner(out, epochs=4).run(target_items())
    other = target_items()
    other[0]["image"] = other[0]["image"].flip(-1)
    with pytest.raises(ValueError, match="other options, inputs or source weights"):
        make_runner(out).run(other)


def test_refresh_and_softmax_multiclass(tmp_path):
    srcs = {n: tiny_net(s) for s, n in enumerate("ABCD")}  # 2 logits = softmax background + 1 class
    items = target_items()
    for item in items:
        item["label"] = item["label"][:1]
    runner = make_runner(
        tmp_path,
        srcs=srcs,
        activation="softmax",
        refresh=1,
        n_selected=3,
        itm_level="slice",
        epochs=2,
        checkpoint_interval=0,
    )
    results = runner.run(items)
    assert results["itm"].shape == (6, 4) and len(runner.ensemble.members) == 3
    assert results["pseudo"].shape == (6, 1, 8, 8)
    # the only checkpoint (end of epoch 1) holds the pseudo-labels refreshed with the adapted members at that point
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    ensemble = copy.deepcopy(runner.ensemble)
    ensemble.load_state_dict(ckpt["ensemble"])
    models = list(srcs.values())
    for member, k in zip(ensemble.members, results["selection"]["indices"]):
        models[k] = member
    images = torch.stack([item["image"] for item in items])
    expected = runner.transferability(images, [str(i) for i in range(6)], models)["pseudo"]
    assert torch.equal(ckpt["pseudo"], expected)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="at least 2 source"):
        TGMARunner([tiny_net(0)], tmp_path)
    with pytest.raises(ValueError, match="n_selected"):
        TGMARunner([tiny_net(0), tiny_net(1)], tmp_path, n_selected=3)


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from tgma_runs import make_runner, target_items

def kill(event, info):
    if event == {event!r} and info.get("iteration", 0) == {iteration}:
        os.kill(os.getpid(), signal.SIGKILL)

make_runner({out!r}, kill).run(target_items())
"""


def test_crash_after_each_stage_resumes_to_the_same_model(tmp_path, reference_run):
    results, state, _, _ = reference_run
    for event in ("transferability", "checkpoint", "target_model"):

        def crash(name, info, event=event):
            if name == event:
                raise RuntimeError("simulated crash")

        with pytest.raises(RuntimeError):
            make_runner(tmp_path / event, crash).run(target_items())
        runner = make_runner(tmp_path / event)
        resumed = runner.run(target_items())
        for key, value in state.items():
            torch.testing.assert_close(runner.ensemble.state_dict()[key], value, atol=0, rtol=0, msg=key)
        assert torch.equal(resumed["adapted_preds"], results["adapted_preds"])


@pytest.mark.integration
def test_killed_process_resumes_to_the_same_model(tmp_path, reference_run):
    results, state, _, _ = reference_run
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(TESTS), out=str(out), event="checkpoint", iteration=4)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (out / "target_model.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 4
    runner = make_runner(out)
    resumed = runner.run(target_items())
    for key, value in state.items():
        torch.testing.assert_close(runner.ensemble.state_dict()[key], value, atol=0, rtol=0, msg=key)
    assert torch.equal(resumed["adapted_preds"], results["adapted_preds"])
    assert resumed["loss_per_epoch"] == pytest.approx(results["loss_per_epoch"], abs=0)
