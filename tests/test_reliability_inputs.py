"""Bad input never poisons the model: clear errors in the adapter API, failed rows in every bundle, the run goes on."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_cases import (
    EXPECTED,
    EXPECTED_VOLUME,
    NIFTI_KINDS,
    PNG_KINDS,
    VOLUME_KINDS,
    write_bad_nifti_cases,
    write_bad_png_cases,
    write_bad_volume_cases,
)
from tiny import draw_square, tiny_bundle_overrides, tiny_image, tiny_mr_overrides, tiny_net, write_nifti_sites

from monai_tta.adapters import SAR, VPTTA, GraTa, NormAdapt, Tent
from monai_tta.adapters.dyna.store import DayImageStore
from monai_tta.data import load_datalist
from monai_tta.data.checks import InvalidCaseError
from monai_tta.reports import read_case_csv
from monai_tta.zoo.run import run_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
GRATA = BUNDLES / "grata_fundus_segmentation"
MR_GRATA = BUNDLES / "grata_prostate_mr_segmentation"
#: bundle -> its method name
BUNDLE_RUNS = {
    "grata_fundus_segmentation": "GraTa",
    "tent_fundus_segmentation": "TENT",
    "source_only_fundus_segmentation": "SourceOnly",
    "vptta_fundus_segmentation": "VPTTA",
    "dyna_fundus_segmentation": "DyNA",
}
#: DyNA on the tiny data: the last case of the domain held out, days of one good image, nights of one iteration
#: that train on every pixel (confidence 0.5) with a large step, so that each night changes the next day's model
DYNA_TINY = {
    "heldout_per_domain": 1,
    "images_per_day": 1,
    "night_epochs": 1,
    "night_batch_size": 1,
    "night_lr": 0.05,
    "confidence": 0.5,
}
ADAPTERS = {
    "GraTa": lambda: GraTa(setting="continual"),
    "TENT": lambda: Tent(),
    "SAR": lambda: SAR(margin=10.0),
    "VPTTA": lambda: VPTTA(image_size=8, memory_size=4, neighbors=2),
    "NormAdapt": lambda: NormAdapt(),
}


def _snapshot(adapter, net) -> dict:
    state = adapter.state_for(net)
    return {
        "net": {k: v.clone() for k, v in net.state_dict().items()},
        "optimizer": copy.deepcopy(state.optimizer.state_dict()) if state.optimizer is not None else None,
        "step": state.step,
        "seen": state.seen,
        "generator": adapter.generator.get_state().clone(),
        "vptta": copy.deepcopy(adapter.state_dict(net)) if hasattr(adapter, "state_dict") else None,
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _bad_tensors() -> dict[str, tuple[torch.Tensor, str]]:
    x = tiny_image()
    nan, inf = x.clone(), x.clone()
    nan[0, 0, 1, 2] = math.nan
    inf[0, 1, 3, 3] = math.inf
    return {
        "wrong_channels": (tiny_image(channels=3), "3 channels but the network takes 2"),
        "no_batch_axis": (x[0], r"expected a 2D image shaped \(B, C, \*spatial\) \(4 axes\), got shape \(2, 8, 8\)"),
        "nan": (nan, "1 NaN and 0 infinite voxels"),
        "inf": (inf, "0 NaN and 1 infinite voxels"),
        "constant": (torch.full_like(x, 0.3), "constant"),
        "integer": (x.long(), "dtype torch.int64"),
    }


@pytest.mark.parametrize("method", list(ADAPTERS))
def test_adapter_api_rejects_each_bad_input_and_keeps_its_state_bit_for_bit(method):
    torch.manual_seed(0)
    adapter, net = ADAPTERS[method](), tiny_net()
    adapter.set_domain("a")
    for i in range(2):  # some state to keep: optimizer moments, counters, memory
        adapter(tiny_image(seed=10 + i), net)
    before = _snapshot(adapter, net)
    adapter.set_domain("a")
    for name, (bad, message) in _bad_tensors().items():
        with pytest.raises(InvalidCaseError, match=message) as info:
            adapter(bad, net)
        assert "case 'input'" in str(info.value), name
        assert _same(_snapshot(adapter, net), before), f"{method}: state changed by the bad input {name}"
    good = adapter(tiny_image(seed=12), net)  # and it carries on
    assert torch.isfinite(good).all()


def test_tent_a_3d_tensor_without_batch_axis_names_the_fix():
    with pytest.raises(ValueError, match=r"add the missing batch or channel axis \(e\.g\. x\[None\]\)"):
        Tent()(tiny_image()[0], tiny_net())


def test_nonfinite_update_is_undone_and_recorded():
    net = tiny_net()
    adapter = Tent(setting="continual", lr=math.inf)  # Adam's first step is lr * m / (sqrt(v) + eps): not finite
    params = [p.detach().clone() for p in adapter.state_for(net).params]
    out = adapter(tiny_image(), net)
    stats = adapter.last_stats
    assert stats["nonfinite"] is True and stats["nonfinite_part"] == "parameter"
    assert all(torch.equal(p, q) for p, q in zip(adapter.state_for(net).params, params))
    assert adapter.state_for(net).step == 0 and not adapter.state_for(net).optimizer.state
    assert torch.isfinite(out).all()
    adapter.lr = 1e-3
    for group in adapter.state_for(net).optimizer.param_groups:
        group["lr"] = 1e-3
    adapter(tiny_image(seed=2), net)
    assert adapter.last_stats["nonfinite"] is False and adapter.state_for(net).step == 1


def test_nonfinite_loss_is_undone_even_with_finite_parameters():
    class NanLoss(Tent):
        def adapt(self, state, inputs, network):
            stats, logits = super().adapt(state, inputs, network)
            return {**stats, "loss": math.nan}, logits

    net = tiny_net()
    adapter = NanLoss(setting="continual")
    params = [p.detach().clone() for p in adapter.state_for(net).params]
    adapter(tiny_image(), net)
    assert adapter.last_stats["nonfinite_part"] == "loss"
    assert all(torch.equal(p, q) for p, q in zip(adapter.state_for(net).params, params))


# ----------------------------------------------------------------------------------------------- bundles
def _run(bundle: str, overrides: dict) -> list[dict]:
    if BUNDLE_RUNS[bundle] == "DyNA":
        run_bundle(
            BUNDLES / bundle, ["inference.json", "daynight.json"], {**overrides, **DYNA_TINY}, logging_file=False
        )
    else:
        run_bundle(BUNDLES / bundle, ["inference.json", "evaluate.json"], overrides, logging_file=False)
    return read_case_csv(Path(overrides["output_dir"]) / BUNDLE_RUNS[bundle] / "cases.csv")


def _check_dyna(clean: Path, mixed: Path, kinds: tuple[str, ...]) -> None:
    """The bad cases were never stored nor trained on: the same nights (loss, confident fraction, held-out Dice of
    the global student after each), the same global student, and only the good images in the day store."""
    reports = [json.loads((out / "DyNA" / "report.json").read_text()) for out in (clean, mixed)]
    assert reports[1]["n_failed"] == len(kinds) and reports[0]["n_failed"] == 0
    assert reports[1]["n_days"] == reports[0]["n_days"] == reports[1]["n_nights"]
    assert all(d["night_loss"] > 0 and d["mask_fraction"] == 1.0 for d in reports[0]["days"])  # the nights trained
    positional = {"start", "end", "n_failed"}  # where each day sits in the stream, and its failures
    for a, b in zip(*(r["days"] for r in reports)):
        assert {k: v for k, v in a.items() if k not in positional} == {
            k: v for k, v in b.items() if k not in positional
        }
    students = [
        torch.load(out / "DyNA" / "checkpoint.pt", weights_only=True)["global_student"] for out in (clean, mixed)
    ]
    assert _same(*students)
    stored = [len(DayImageStore(out / "DyNA" / "day_store")) for out in (clean, mixed)]
    assert stored[0] == stored[1] == reports[0]["n_images"]
    summary = (mixed / "DyNA" / "report.md").read_text()
    assert "| failed cases |" in summary and f"{len(kinds)} stream cases and 0 held-out cases could not" in summary


def _interleave(good: list[dict], bad: list[dict]) -> list[dict]:
    """good[0], half the bad cases, good[1], the other half, good[2], ...: the state must carry over the failures."""
    half = (len(bad) + 1) // 2
    parts = [good[0], *bad[:half], good[1], *bad[half:], *good[2:]]
    return parts


def _check_matrix(clean: list[dict], rows: list[dict], kinds: tuple[str, ...], expected: dict = EXPECTED) -> None:
    failed = {r["case_id"]: r for r in rows if r["status"] == "failed"}
    assert set(failed) == set(kinds)
    for kind in kinds:
        assert expected[kind] in failed[kind]["error"], (kind, failed[kind]["error"])
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["case_id"] for r in ok] == [r["case_id"] for r in clean]
    for a, b in zip(ok, clean):  # the failures left the adapter's state untouched: identical results after them
        numeric = {k: v for k, v in b.items() if isinstance(v, float)}
        assert {k: a[k] for k in numeric} == numeric


@pytest.fixture(scope="module")
def png_data(tmp_path_factory):
    """Tiny generated data (one target domain of 3 cases) with the source model trained, and a datalist where the
    8 bad PNG kinds sit between the good cases."""
    tmp = tmp_path_factory.mktemp("bad_png")
    tiny = tiny_bundle_overrides(tmp, ("camera",), 3)
    run_bundle(GRATA, ["inference.json"], {**tiny, "output_dir": str(tmp / "warmup")}, logging_file=False)
    datalist = Path(tiny["dataset_dir"]) / "datalist.json"
    good = load_datalist(datalist, sections=["camera"])["camera"]
    bad = write_bad_png_cases(tmp / "bad", good[0], "camera")
    mixed = json.loads(datalist.read_text())
    mixed["camera"] = _interleave(good, bad)
    path = tmp / "mixed_datalist.json"
    path.write_text(json.dumps(mixed))
    return tiny, path


@pytest.mark.integration
@pytest.mark.parametrize("bundle", list(BUNDLE_RUNS))
def test_each_bundle_records_each_bad_png_case_as_failed_and_goes_on(png_data, bundle, tmp_path):
    tiny, mixed = png_data
    clean = _run(bundle, {**tiny, "output_dir": str(tmp_path / "clean")})
    rows = _run(
        bundle, {**tiny, "output_dir": str(tmp_path / "mixed"), "generate_data": False, "datalist_file": str(mixed)}
    )
    _check_matrix(clean, rows, PNG_KINDS)
    method = BUNDLE_RUNS[bundle]
    if method == "DyNA":
        _check_dyna(tmp_path / "clean", tmp_path / "mixed", PNG_KINDS)
        return
    summary = json.loads((tmp_path / "mixed" / method / "summary.json").read_text())[method]
    assert summary["camera"]["n"] == 3 and summary["camera"]["n_failed"] == len(PNG_KINDS)


@pytest.fixture(scope="module")
def nifti_data(tmp_path_factory):
    """A user's 1-channel NIfTI data (the NIfTI overrides of the GraTa bundle) with the 4 NIfTI-only bad kinds."""
    tmp = tmp_path_factory.mktemp("bad_nifti")
    datalist = write_nifti_sites(tmp, draw_square, {"siteA": 1.0, "siteB": 0.5})
    content = json.loads(datalist.read_text())
    good = load_datalist(datalist, sections=["siteB"])["siteB"]
    bad = write_bad_nifti_cases(tmp / "bad", good[0], "siteB")
    content["siteB"] = _interleave(good, bad)
    mixed = tmp / "mixed_datalist.json"
    mixed.write_text(json.dumps(content))
    overrides = {
        "generate_data": False,
        "datalist_file": str(datalist),
        "target_domains": ["siteB"],
        "in_channels": 1,
        "out_channels": 1,
        "label_encoding": "binary",
        "channel_names": ["lesion"],
        "image_size": 32,
        # NibabelReader alone: given PILReader's reverse_indexing it fails and MONAI falls back to another reader
        "preprocessing#transforms#0": {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader"},
        "label_transforms#0": {"_target_": "LoadImaged", "keys": "label", "reader": "NibabelReader"},
        "source_checkpoint": str(tmp / "my_source.pt"),
        "source_training#epochs": 1,
        "train_if_missing": True,
        "handlers#0#_disabled_": True,
    }
    run_bundle(GRATA, ["inference.json"], {**overrides, "output_dir": str(tmp / "warmup")}, logging_file=False)
    return overrides, mixed


@pytest.mark.integration
@pytest.mark.parametrize("bundle", list(BUNDLE_RUNS))
def test_each_bundle_records_each_bad_nifti_case_as_failed_and_goes_on(nifti_data, bundle, tmp_path):
    overrides, mixed = nifti_data
    clean = _run(bundle, {**overrides, "output_dir": str(tmp_path / "clean")})
    rows = _run(bundle, {**overrides, "output_dir": str(tmp_path / "mixed"), "datalist_file": str(mixed)})
    _check_matrix(clean, rows, NIFTI_KINDS)
    if BUNDLE_RUNS[bundle] == "DyNA":
        _check_dyna(tmp_path / "clean", tmp_path / "mixed", NIFTI_KINDS)


@pytest.fixture(scope="module")
def volume_data(tmp_path_factory):
    """The tiny generated MR data (one target site of 2 volumes) with its source model, and a datalist where the
    11 bad volume kinds sit between the good volumes."""
    tmp = tmp_path_factory.mktemp("bad_volumes")
    overrides = {**tiny_mr_overrides(tmp), "target_domains": ["thick_test"]}
    prepare = {"prepare": ["$@prepare_data()", "$@ensure_source"]}  # data and source model, no adaptation
    run_bundle(MR_GRATA, ["inference.json"], {**overrides, **prepare}, run_id="prepare", logging_file=False)
    datalist = Path(overrides["dataset_dir"]) / "datalist.json"
    content = json.loads(datalist.read_text())
    good = load_datalist(datalist, sections=["thick_test"])["thick_test"]
    bad = write_bad_volume_cases(tmp / "bad", good[0], good[0]["domain"])
    content["thick_test"] = _interleave(good, bad)
    mixed = tmp / "mixed_datalist.json"
    mixed.write_text(json.dumps(content))
    return {**overrides, "generate_data": False}, mixed


@pytest.mark.parametrize(
    "bundle,method",
    [
        ("grata_prostate_mr_segmentation", "GraTa"),
        ("tent_prostate_mr_segmentation", "TENT"),
        ("source_only_prostate_mr_segmentation", "SourceOnly"),
    ],
)
@pytest.mark.integration
def test_each_3d_bundle_records_each_bad_volume_as_failed_and_goes_on(volume_data, bundle, method, tmp_path):
    overrides, mixed = volume_data
    configs = ["inference.json", "evaluate.json"]
    run_bundle(BUNDLES / bundle, configs, {**overrides, "output_dir": str(tmp_path / "clean")}, logging_file=False)
    mixed_run = {**overrides, "output_dir": str(tmp_path / "mixed"), "datalist_file": str(mixed)}
    run_bundle(BUNDLES / bundle, configs, mixed_run, logging_file=False)
    clean, rows = (read_case_csv(tmp_path / run / method / "cases.csv") for run in ("clean", "mixed"))
    assert len(clean) == 2
    _check_matrix(clean, rows, VOLUME_KINDS, EXPECTED_VOLUME)
    summary = json.loads((tmp_path / "mixed" / method / "summary.json").read_text())[method]
    assert summary["thick"]["n"] == 2 and summary["thick"]["n_failed"] == len(VOLUME_KINDS)


def test_validate_cased_checks_the_image_as_stored():
    from monai_tta.transforms.validation import ValidateCased

    check = ValidateCased(in_channels=3, spatial_dims=2, min_size=16, max_size=64)
    image = torch.rand(3, 32, 32)
    assert check({"image": image, "label": torch.zeros(2, 32, 32), "case_id": "a"})["image"] is image
    with pytest.raises(InvalidCaseError, match=r"case 'b': the label's spatial shape \(16, 16\)"):
        check({"image": image, "label": torch.zeros(2, 16, 16), "case_id": "b"})
    with pytest.raises(InvalidCaseError, match="far too large"):
        check({"image": torch.rand(3, 32, 65), "case_id": "c"})
    with pytest.raises(InvalidCaseError, match="np.ndarray|ndarray|channels"):
        check({"image": np.random.rand(2, 32, 32).astype(np.float32), "case_id": "d"})


# ----------------------------------------------------------------------------------------------- collapse safeguard
def test_safeguard_returns_to_the_source_state_when_the_parameters_run_away():
    net = tiny_net()
    adapter = Tent(setting="continual", lr=1.0)  # one Adam step moves each BN parameter by about 1: drift > 0.5
    source = [p.detach().clone() for p in adapter.state_for(net).params]
    adapter(tiny_image(), net)
    assert adapter.last_stats["safeguard"] is True and adapter.last_stats["safeguard_signal"] == "drift"
    state = adapter.state_for(net)
    assert all(torch.equal(p, q) for p, q in zip(state.params, source)) and state.step == 0
    assert not state.optimizer.state  # a fresh optimizer


def test_safeguard_is_on_for_gradient_methods_only_and_can_be_turned_off():
    net = tiny_net()
    tent = Tent(setting="continual")
    tent(tiny_image(), net)
    assert tent.last_stats["safeguard"] is False
    assert NormAdapt().safeguard is None and Tent(safeguard=False).safeguard is None
    off = Tent(setting="continual", lr=1.0, safeguard=False)
    off(tiny_image(), tiny_net())
    assert "safeguard" not in off.last_stats


def test_safeguard_entropy_and_area_signals():
    from monai_tta.guards import CollapseSafeguard

    guard = CollapseSafeguard(max_drift=None, warmup=2, momentum=0.0)
    state = guard.init_state()
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 0.5  # entropy near 1, area 0.5
    half[..., 2:, :] = -0.5
    assert [guard.check(state, half) for _ in range(3)] == [None, None, None]
    assert guard.check(state, half * 40) == "entropy"  # same area, certain everywhere
    guard.on_reset(state)
    guard = CollapseSafeguard(max_drift=None, entropy_ratio=None, area_ratio=4.0, warmup=2, momentum=0.0)
    assert [guard.check(state, half) for _ in range(2)] == [None, None]
    assert guard.check(state, torch.full((1, 1, 4, 4), -0.5)) == "area"  # nothing predicted any more
    with pytest.raises(ValueError, match="entropy_ratio"):
        CollapseSafeguard(entropy_ratio=2.0)


# ----------------------------------------------------------------------------------------------- safe choice
def test_safe_norm_reports_the_lowest_entropy_candidate_and_keeps_the_network():
    from monai_tta.adapters import SafeNorm
    from monai_tta.guards import mean_entropy

    x = tiny_image(size=8) * 3.0 + 1.0  # far from the source statistics
    candidates = {p: NormAdapt(norm={"regime": "mix", "prior": p})(x, tiny_net()) for p in (1.0, 0.5, 0.0)}
    entropies = {p: float(mean_entropy(z)) for p, z in candidates.items()}
    best = min(entropies, key=entropies.get)
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    safe = SafeNorm(signal="entropy")
    out = safe(x, net)
    assert safe.last_stats["safe_prior"] == best
    assert torch.equal(out, candidates[best])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(layer.prior == 1.0 for layer in safe.state_for(net).norms)  # the regime of the policy, restored
    with pytest.raises(ValueError, match="priors"):
        SafeNorm(priors=(1.5,))
