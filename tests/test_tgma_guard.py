"""TGMA's served model (issue 18): by default TGMA before adaptation; the guard (the adapted target model unless TGMA
before adaptation is as good by a label-free signal) against hand-computed scores on BatchNorm-only members, in
TorchScript, in the runner and in its report; the adapted model alone."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from tgma_runs import make_runner, target_items
from torch import nn

from monai_tta.norms import convert_norms, statistics_prior
from monai_tta.tgma import GUARDED, GuardedEnsemble, MixedBatchNorm, WeightedEnsemble, evaluate_tgma
from monai_tta.tgma.report import ADAPTED, GUARD_SOURCE, write_loso_summary, write_tgma_report

EPS = 1e-5
X = torch.tensor([[[[0.0, 1.0, 2.5, -1.0], [3.0, 0.5, 0.25, 2.0], [1.5, -0.5, 4.0, 1.0], [0.0, 2.0, 1.0, 3.5]]]])
X = torch.cat([X, 0.5 * X.flip(-1) - 1.0])  # two slices of one volume: the statistics are the batch's


def _bn(mean: float, var: float, gamma: float, beta: float, stats: bool = True) -> nn.Module:
    bn = nn.BatchNorm2d(1, eps=EPS, track_running_stats=stats)
    with torch.no_grad():
        if stats:
            bn.running_mean.fill_(mean)
            bn.running_var.fill_(var)
        bn.weight.fill_(gamma)
        bn.bias.fill_(beta)
    return nn.Sequential(bn).eval()


def _by_hand(x: torch.Tensor, q: float, mean: float, var: float, gamma: float, beta: float) -> torch.Tensor:
    """BatchNorm with statistics ``q * running + (1 - q) * batch``, written out."""
    m, v = x.mean(), x.var(unbiased=False)
    return (x - (q * mean + (1 - q) * m)) / torch.sqrt(q * var + (1 - q) * v + EPS) * gamma + beta


TARGET = [(1.0, 2.0, 0.7, 0.2), (0.5, 3.0, 1.1, -0.2)]  # (running mean, running var, gamma, beta) per member
SOURCE = [(0.2, 1.5, 1.3, -0.1), (-0.4, 0.8, 2.0, 0.3)]
WEIGHTS = [0.7, 0.3]


def _ensemble(members, stats: bool = True) -> WeightedEnsemble:
    return WeightedEnsemble([_bn(*m, stats=stats) for m in members], WEIGHTS).eval()


def _prob_by_hand(members, q: float) -> torch.Tensor:
    return sum(w * torch.sigmoid(_by_hand(X, q, *m)) for w, m in zip(WEIGHTS, members))


def _mixes_by_hand(members) -> float:
    p, near = _prob_by_hand(members, 1.0), _prob_by_hand(members, 0.75)
    return float((1 - (p - near).abs()).mean())


def test_mixed_batchnorm_is_the_adaptive_layer_at_each_weight():
    """The scriptable layer gives AdaptiveBatchNorm's output under statistics_prior, bit for bit; at weight 1 it is
    the plain inference BatchNorm (at weight 0 the adaptive layer takes the fused training kernel: equal to
    rounding)."""
    for q in (1.0, 0.75, 0.25, 0.0):
        plain = _bn(*TARGET[0])
        reference = convert_norms(copy.deepcopy(plain))
        mixed = MixedBatchNorm(plain[0], torch.tensor(q))
        with statistics_prior(reference, q), torch.no_grad():
            if q > 0:
                assert torch.equal(mixed(X), reference[0](X)), q
            torch.testing.assert_close(mixed(X), _by_hand(X, q, *TARGET[0]))
    assert torch.equal(MixedBatchNorm(_bn(*TARGET[0])[0], torch.ones(()))(X), _bn(*TARGET[0])(X))


@pytest.mark.parametrize("ratio, keep", [(0.5, True), (2.0, False)])
def test_mixes_score_and_margin_by_hand(ratio, keep):
    """Each ensemble scores its agreement with itself at statistics weight 0.75 (the batch's statistics); the target
    is kept when its score beats the source's by more than the source margin."""
    target_score, source_score = _mixes_by_hand(TARGET), _mixes_by_hand(SOURCE)
    gap = target_score - source_score
    assert gap > 0.01  # the target is the more settled one here
    guard = GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), source_margin=ratio * gap, serve="guarded").eval()
    assert guard.signal == "mixes"
    with torch.no_grad():
        out = guard(X)
    assert guard.last_target_score == pytest.approx(target_score, abs=1e-6)
    assert guard.last_source_score == pytest.approx(source_score, abs=1e-6)
    assert guard.last_margin == pytest.approx(gap - ratio * gap, abs=1e-6)
    assert guard.last_choice == ("target" if keep else "source")
    with torch.no_grad():  # the chosen ensemble's own output, exactly
        assert torch.equal(out, (_ensemble(TARGET) if keep else _ensemble(SOURCE))(X))
    assert float(guard.mix) == 1.0


def test_default_margin_and_a_tie_goes_to_the_source():
    """The default margin is safe's (0.01); identical ensembles tie, and the tie goes to the source."""
    guard = GuardedEnsemble(_ensemble(TARGET), _ensemble(TARGET), serve="guarded").eval()
    assert guard.source_margin == 0.01
    with torch.no_grad():
        out = guard(X)
    assert guard.last_choice == "source" and guard.last_margin == pytest.approx(-0.01, abs=1e-9)
    assert guard.last_target_score == guard.last_source_score
    torch.testing.assert_close(out, _prob_by_hand(TARGET, 1.0), rtol=0, atol=1e-6)


def _entropy(p: torch.Tensor) -> float:
    return float((-(p * torch.log(p) + (1 - p) * torch.log(1 - p))).mean() / math.log(2.0))


@pytest.mark.parametrize("signal, stats", [("mixes", False), ("entropy", True)])
def test_entropy_without_running_statistics_or_when_asked(signal, stats):
    """Without running statistics every mix is the same forward: the guard scores minus the mean entropy of what the
    ensembles return (as safe does); so does signal="entropy"."""
    guard = GuardedEnsemble(_ensemble(TARGET, stats), _ensemble(SOURCE, stats), signal=signal, serve="guarded")
    guard.eval()
    assert guard.signal == "entropy"
    with torch.no_grad():
        out = guard(X)
        p_target, p_source = _ensemble(TARGET, stats)(X), _ensemble(SOURCE, stats)(X)
    expected = -_entropy(p_target) - (-_entropy(p_source) + 0.01)
    assert guard.last_margin == pytest.approx(expected, abs=1e-6)
    assert torch.equal(out, p_target if expected > 0 else p_source)


@pytest.mark.parametrize("serve", ["guarded", "before", "adapted"])
def test_torchscript_gives_the_same_choice_and_output(tmp_path, serve):
    """The served model is scripted: the choice and the output survive scripting, saving and loading."""
    guard = GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), serve=serve).eval()
    with torch.no_grad():
        out = guard(X)
    torch.jit.save(torch.jit.script(guard), str(tmp_path / "guard.ts"))
    loaded = torch.jit.load(str(tmp_path / "guard.ts"))
    with torch.no_grad():
        assert torch.equal(loaded(X), out)
    assert loaded.last_choice == guard.last_choice and loaded.last_margin == guard.last_margin
    moved = copy.deepcopy(guard).double()  # a cast moves every buffer on its own; the mix weight is shared again
    with torch.no_grad():
        moved(X.double())
    assert moved.last_margin == pytest.approx(guard.last_margin, abs=1e-6)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="must match"):
        GuardedEnsemble(_ensemble(TARGET), WeightedEnsemble([_bn(*SOURCE[0])], [1.0]))
    with pytest.raises(ValueError, match="source_margin"):
        GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), source_margin=-1.0)
    with pytest.raises(ValueError):
        GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), signal="flip")
    with pytest.raises(ValueError, match="guard"):  # look_up_option names the unknown value and the options
        GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), serve="guard")


def test_runner_guards_each_case_and_leaves_the_method_alone(tmp_path):
    """With safe on, every case is predicted by the guard (one record per case, the chosen ensemble's prediction);
    the adapted model and its predictions are those of the run with safe off, which has no guard column."""
    items = target_items()
    on = make_runner(tmp_path / "on").run(items)
    off = make_runner(tmp_path / "off", safe="false").run(items)
    assert torch.equal(on["adapted_preds"], off["adapted_preds"]) and "guarded_preds" not in off
    assert [r["case_id"] for r in on["guard"]] == ["case0", "case1", "case2"]
    for record, case in zip(on["guard"], range(3)):
        chosen = on["adapted_preds"] if record["choice"] == "target" else on["selected_preds"]
        idx = [2 * case, 2 * case + 1]
        assert torch.equal(on["guarded_preds"][idx], chosen[idx]), record
        assert (record["margin"] > 0) == (record["choice"] == "target")
    rows, summary = evaluate_tgma(on, items)
    assert summary["methods"][-2:] == [ADAPTED, GUARDED]
    sources = sum(r["choice"] == "source" for r in on["guard"])
    assert summary["guard_source"] == {"T": sources} and summary["cases"] == {"T": 3}
    assert [r["guard_choice"] for r in rows] == [r["choice"] for r in on["guard"]]
    assert GUARDED not in evaluate_tgma(off, items)[1]["methods"]
    report = write_tgma_report(on, items, tmp_path / "on")["json"]
    paths = write_loso_summary({"T": report}, tmp_path)
    loso = json.loads(paths["json"].read_text())
    assert loso["T"][GUARD_SOURCE] == loso["mean"][GUARD_SOURCE] == f"{sources}/3"
    assert loso["T"][GUARDED] == pytest.approx(summary["dice"][GUARDED]["overall"])
    assert GUARDED in paths["markdown"].read_text()


def _counted(ensemble: WeightedEnsemble, calls: list[str], name: str) -> WeightedEnsemble:
    ensemble.register_forward_hook(lambda *_: calls.append(name))
    return ensemble


@pytest.mark.parametrize("serve, choice", [("adapted", "target"), ("before", "source")])
def test_adapted_and_before_serve_one_ensemble_with_one_forward(serve, choice):
    """serve="adapted": the target model's prediction; serve="before": the untouched ensemble's; one forward of that
    ensemble alone, whatever the scores."""
    calls: list[str] = []
    target, source = _counted(_ensemble(SOURCE), calls, "target"), _counted(_ensemble(TARGET), calls, "source")
    guard = GuardedEnsemble(target, source, serve=serve).eval()
    with torch.no_grad():
        out = guard(X)
    assert torch.equal(out, _ensemble(SOURCE if choice == "target" else TARGET)(X))
    assert calls == [choice] and guard.last_choice == choice


def test_default_serves_tgma_before_adaptation():
    """The default (issue 18, stop 25) is TGMA before adaptation, where the guard would keep the target model."""
    guard = GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE)).eval()
    assert guard.serve == "before"
    with torch.no_grad():
        assert torch.equal(guard(X), _ensemble(SOURCE)(X))
        guarded = GuardedEnsemble(_ensemble(TARGET), _ensemble(SOURCE), serve="guarded").eval()
        guarded(X)
    assert guarded.last_choice == "target"  # the scores of test_mixes_score_and_margin_by_hand


def test_save_target_model_writes_both_ensembles(tmp_path):
    """The served checkpoint holds the adapted ensemble as target and the run's untouched selected sources, with the
    same weights, as source; without the sources it names what is missing."""
    from monai_tta.tgma import SliceWiseNetwork, save_target_model

    adapted = _ensemble(TARGET)
    state = {k: v.clone() for k, v in adapted.state_dict().items()}
    torch.save({"ensemble": state, "names": ["b", "a"]}, tmp_path / "target_model.pt")
    sources = {"a": _bn(*SOURCE[1]), "b": _bn(*SOURCE[0]), "c": _bn(0.0, 1.0, 1.0, 0.0)}

    def served() -> SliceWiseNetwork:
        blank = [(0.0, 1.0, 1.0, 0.0)] * 2
        return SliceWiseNetwork(GuardedEnsemble(_ensemble(blank), _ensemble(blank)))

    network = served()
    save_target_model(tmp_path / "target_model.pt", network, tmp_path / "model.pt", sources)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.equal(saved["net.source.weights"], state["weights"])
    for key, value in state.items():
        assert torch.equal(saved[f"net.target.{key}"], value), key
    for j, name in enumerate(["b", "a"]):
        for key, value in sources[name].state_dict().items():
            assert torch.equal(saved[f"net.source.members.{j}.{key}"], value), (name, key)
    loaded = served()
    loaded.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(loaded.net.source(X), _ensemble(SOURCE)(X))
    with pytest.raises(ValueError, match=r"\['b'\]"):
        save_target_model(tmp_path / "target_model.pt", served(), tmp_path / "other.pt", {"a": sources["a"]})


@pytest.mark.parametrize("override, serve", [(None, "before"), ("adapted", "adapted"), ("guarded", "guarded")])
def test_bundle_serves_tgma_before_adaptation_unless_told(override, serve):
    """inference.json's network serves TGMA before adaptation by default; `--serve` picks the others."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(
        Path(__file__).parents[1] / "bundles" / "tgma_prostate_mr_segmentation" / "configs" / "inference.json"
    )
    if override is not None:
        parser["serve"] = override
    assert parser.get_parsed_content("network_def").net.serve == serve
