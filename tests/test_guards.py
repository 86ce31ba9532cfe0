"""The guard protocol, exactly: when each hook runs, what each verdict does, typed state and its round trip."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass

import pytest
import torch
from tiny import tiny_image, tiny_net

from monai_tta.adapters import GraTa, NormAdapt, SafeNorm, Tent
from monai_tta.adapters.stats import StatKeys
from monai_tta.guards import (
    CollapseSafeguard,
    Guard,
    GuardContext,
    NonFiniteRollback,
    SafeChoice,
    Verdict,
    resolve_guards,
)
from monai_tta.inferers import SlidingWindowAdapter


@dataclass
class Counts:
    """A toy guard's typed state."""

    updates: int = 0
    cases: int = 0


class Recorder(Guard):
    """Logs every hook as ``(name, hook)`` and answers the verdicts it is given."""

    may_undo = True

    def __init__(self, name: str, log: list, **verdicts: Verdict) -> None:
        self.name, self.log, self.verdicts = name, log, verdicts

    def init_state(self) -> Counts:
        return Counts()

    def _hook(self, hook: str) -> Verdict:
        self.log.append((self.name, hook))
        return self.verdicts.get(hook, Verdict.PASS)

    def before_update(self, ctx: GuardContext, state: Counts) -> Verdict:
        return self._hook("before_update")

    def after_update(self, ctx: GuardContext, state: Counts) -> Verdict:
        state.updates += 1
        return self._hook("after_update")

    def choose(self, ctx: GuardContext, state: Counts) -> Verdict:
        state.cases += 1
        return self._hook("choose")

    def on_reset(self, state: Counts) -> None:
        self._hook("on_reset")

    def on_domain_change(self, state: Counts) -> None:
        self._hook("on_domain_change")


def params_of(adapter, net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in adapter.state_for(net).params]


def hooks(*names: str, who=("a", "b")) -> list[tuple[str, str]]:
    return [(w, n) for n in names for w in who]


# ------------------------------------------------------------------------------------------------- call order
def test_hooks_run_in_order_at_update_choose_reset_and_domain_change():
    log: list = []
    net = tiny_net()
    adapter = Tent(setting="domain", lr=1e-2, guards=[Recorder("a", log), Recorder("b", log)])
    adapter.set_domain("x")
    adapter(tiny_image(seed=1), net)
    assert log == hooks("before_update", "after_update", "choose")
    log.clear()
    adapter.set_domain("y")  # the domain setting: a reset, then a new domain, then the case
    adapter(tiny_image(seed=2), net)
    assert log == hooks("on_reset", "on_domain_change", "before_update", "after_update", "choose")
    log.clear()
    adapter.reset()  # an explicit reset also starts a new domain memory
    assert log == hooks("on_reset", "on_domain_change")
    log.clear()
    NormAdapt(guards=[Recorder("a", log), Recorder("b", log)])(tiny_image(), tiny_net())  # no update: no after_update
    assert log == hooks("before_update", "choose")


def test_episodic_and_continual_settings_call_on_reset_and_on_domain_change_as_they_reset():
    log: list = []
    net = tiny_net()
    episodic = Tent(setting="episodic", guards=[Recorder("a", log)])
    episodic.set_domain("x")
    episodic(tiny_image(seed=1), net)
    episodic.set_domain("y")
    episodic(tiny_image(seed=2), net)
    case = [("a", "before_update"), ("a", "after_update"), ("a", "choose")]
    assert log == [("a", "on_reset"), *case, ("a", "on_reset"), ("a", "on_domain_change"), *case]
    log.clear()
    continual = Tent(setting="continual", guards=[Recorder("a", log)])
    continual.set_domain("x")
    continual(tiny_image(seed=1), tiny_net())
    continual.set_domain("y")  # a new domain, but no reset
    continual(tiny_image(seed=2), tiny_net())
    assert log == [*case, ("a", "on_domain_change"), *case]


def test_a_reset_asked_in_choose_runs_before_the_next_guard_chooses():
    log: list = []
    net = tiny_net()
    source = params_of(Tent(), tiny_net())
    adapter = Tent(setting="continual", lr=1e-2, guards=[Recorder("a", log, choose=Verdict.RESET), Recorder("b", log)])
    adapter(tiny_image(), net)
    assert log[-4:] == [("a", "choose"), ("a", "on_reset"), ("b", "on_reset"), ("b", "choose")]
    assert all(torch.equal(p, q) for p, q in zip(params_of(adapter, net), source))
    assert adapter.state_for(net).step == 0 and adapter.last_stats[StatKeys.STEP] == 0


# ------------------------------------------------------------------------------------------------- verdicts
def test_a_guard_undoing_the_update_leaves_parameters_and_optimizer_bit_identical():
    net, ref_net = tiny_net(), tiny_net()
    adapter = Tent(setting="continual", lr=1e-2, guards=[Recorder("a", [], after_update=Verdict.UNDO)])
    plain = Tent(setting="continual", lr=1e-2, guards=[])
    before = params_of(adapter, net)
    out = adapter(tiny_image(), net)
    state = adapter.state_for(net)
    assert all(torch.equal(p, q) for p, q in zip(state.params, before))
    assert all(p.grad is None for p in state.params) and not state.optimizer.state and state.step == 0
    assert adapter.last_stats[StatKeys.STEP] == 0 and "loss" in adapter.last_stats  # the update ran, then was undone
    assert torch.equal(out, plain(tiny_image(), ref_net))  # TENT reports its forward made before the update


def test_a_guard_holding_the_update_skips_it_and_the_method_predicts():
    net = tiny_net()
    adapter = Tent(setting="continual", lr=1e-2, guards=[Recorder("a", [], before_update=Verdict.HOLD)])
    before = params_of(adapter, net)
    out = adapter(tiny_image(), net)
    assert all(torch.equal(p, q) for p, q in zip(params_of(adapter, net), before))
    assert "loss" not in adapter.last_stats and adapter.state_for(net).step == 0
    assert adapter.state_for(net).guards == [Counts(updates=0, cases=1)]
    assert torch.equal(out, NormAdapt()(tiny_image(), tiny_net()))  # a forward in the image's statistics


def test_undo_without_may_undo_is_refused():
    class Undoer(Guard):
        def after_update(self, ctx, state):
            return Verdict.UNDO

    with pytest.raises(RuntimeError, match="may_undo"):
        Tent(guards=[Undoer()])(tiny_image(), tiny_net())


def test_a_guard_may_replace_the_prediction_and_share_the_source_models_forward():
    seen = []

    class Source(Guard):
        def choose(self, ctx, state):
            seen.append(ctx.source_logits())
            ctx.logits, ctx.source_prediction = ctx.source_logits(), True
            return Verdict.PASS

    ref = tiny_net()  # eval mode: the source model (source weights, running statistics)
    x = tiny_image(size=8)
    out = Tent(setting="continual", lr=1e-2, guards=[Source(), Source()])(x, tiny_net())
    assert seen[0] is seen[1]  # computed once per case, shared by the guards
    with torch.no_grad():
        assert torch.allclose(out, ref(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------- typed state
def test_state_dict_round_trips_the_method_guards_and_domain_bookkeeping():
    xs = [tiny_image(seed=s) for s in range(5)]
    net = tiny_net()
    guards = [NonFiniteRollback(), Recorder("a", []), CollapseSafeguard(), SafeChoice(per="domain")]
    adapter = Tent(setting="domain", lr=1e-2, guards=guards)
    for i, x in enumerate(xs[:3]):
        adapter.set_domain("a" if i < 2 else "b")
        adapter(x, net)
    adapter.set_domain("c")  # a pending reset and a domain change are saved too
    buffer = io.BytesIO()
    torch.save(adapter.state_dict(net), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain values only
    other_net = tiny_net()
    other = Tent(setting="domain", lr=1e-2, guards=copy.deepcopy(guards))
    other.load_state_dict(other_net, saved)
    assert other.state_for(other_net).guards == adapter.state_for(net).guards
    assert adapter.state_for(net).guards[1] == Counts(updates=3, cases=3)
    for x in xs[3:]:
        assert torch.equal(adapter(x, net), other(x, other_net))
        assert adapter.last_stats == other.last_stats
    assert other.state_for(other_net).guards == adapter.state_for(net).guards
    with pytest.raises(ValueError, match="other guards"):
        Tent(guards=[]).load_state_dict(tiny_net(), saved)


def test_collapse_and_safe_states_are_typed_and_cleared_by_their_events():
    net = tiny_net()
    adapter = Tent(setting="continual", lr=1e-2, safe="domain")
    adapter.set_domain("a")
    adapter(tiny_image(seed=1), net)
    _, collapse, safe = adapter.state_for(net).guards
    assert collapse.probes == 1 and collapse.gap is not None and safe.cases == 1 and len(safe.sums) > 1
    adapter.set_domain("b")
    adapter(tiny_image(seed=2), net)
    _, collapse, safe = adapter.state_for(net).guards
    assert collapse.probes == 1 and safe.cases == 1  # restarted by the new domain
    adapter.reset()
    assert adapter.state_for(net).guards[2] == SafeChoice().init_state()
    assert (collapse.cases, collapse.gap, collapse.probes, collapse.fallback) == (0, None, 0, False)


# ------------------------------------------------------------------------------------------------- configuration
def test_defaults_and_shorthands_build_todays_guard_lists():
    assert Tent().guards == (NonFiniteRollback(), CollapseSafeguard())
    assert NormAdapt().guards == (NonFiniteRollback(),) and NormAdapt().safeguard is None
    assert NormAdapt(safeguard=True, safe="domain").guards == (
        NonFiniteRollback(),
        CollapseSafeguard(),
        SafeChoice(per="domain"),
    )
    assert Tent(safeguard=False, safe=True).guards == (NonFiniteRollback(), SafeChoice())
    assert SafeNorm().guards == (NonFiniteRollback(), SafeChoice(priors=(0.5, 0.0), activation="sigmoid"))
    assert Tent(guards=[None, NonFiniteRollback()]).guards == (NonFiniteRollback(),)


def test_a_shorthand_given_with_a_guard_list_changes_the_guard_of_its_kind_in_place():
    listed = [NonFiniteRollback(), CollapseSafeguard(warmup=2), SafeChoice()]
    assert resolve_guards(listed, safeguard=False) == (NonFiniteRollback(), SafeChoice())
    assert resolve_guards(listed, safeguard=True) == tuple(listed)  # kept as configured
    assert resolve_guards(listed, safeguard={"probe_every": 2}, safe="domain") == (
        NonFiniteRollback(),
        CollapseSafeguard(probe_every=2),
        SafeChoice(per="domain"),
    )
    assert resolve_guards([NonFiniteRollback(), SafeChoice()], safeguard=True) == (
        NonFiniteRollback(),
        CollapseSafeguard(),
        SafeChoice(),
    )  # added where the defaults put it: before the safe choice
    assert resolve_guards([SafeChoice()], safe=False) == ()
    with pytest.raises(TypeError, match="Guard"):
        Tent(guards=["rollback"])


def test_activation_is_validated_against_the_methods_objective():
    assert Tent().activation == "sigmoid" and Tent(activation="softmax").activation == "softmax"
    assert NormAdapt(activation="softmax").activation == "softmax"
    with pytest.raises(ValueError, match="sigmoid"):
        Tent(activation="tanh")
    assert GraTa(activation="softmax").activation == "softmax"  # GraTa's objective has both forms (issue 19)

    class SigmoidOnly(Tent):
        activations = ("sigmoid",)

    with pytest.raises(ValueError, match="SigmoidOnly's objective is defined for sigmoid outputs"):
        SigmoidOnly(activation="softmax")


def test_a_guard_that_needs_whole_inputs_is_refused_on_patches_before_anything_changes():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.BatchNorm3d(2)).eval()

    class WholeOnly(Guard):
        whole_inputs_only = True

    adapter = Tent(guards=[WholeOnly()])
    with pytest.raises(ValueError, match="WholeOnly works on whole-input predictions"):
        SlidingWindowAdapter(adapter, roi_size=(8, 8, 8))(torch.rand(1, 1, 8, 8, 8), net)
    assert adapter.state_for(net).seen == 0
