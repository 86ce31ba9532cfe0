"""DyNA: night components against plain computations, the crash-safe store, multi-day runs, crash and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from dyna_runs import N_STREAM, PER_DAY, cases, heldout, make_runner, source_net, source_state, stream
from tiny import TinyNet

from monai_tta.adapters import VPTTA
from monai_tta.adapters.dyna.night import (
    NightTrainer,
    PackedMaskedDiceBCELoss,
    confident_pseudo_label,
    ema_update_,
    random_flips,
)
from monai_tta.adapters.dyna.runner import DayNightRunner
from monai_tta.adapters.dyna.store import DayImageStore, night_schedule
from monai_tta.losses import dice_bce_loss, masked_dice_bce_loss

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted run: its report, its global student and its output folder."""
    out = tmp_path_factory.mktemp("uninterrupted")
    runner = make_runner(out)
    report = runner.run(stream(), heldout())
    return report, {k: v.clone() for k, v in runner.global_student.state_dict().items()}, out


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-5, msg=k)


def assert_same_report(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a["days"]) == len(b["days"])
    for key, value in a.items():
        if key != "days":
            assert b[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
    for ra, rb in zip(a["days"], b["days"]):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            assert rb[key] == pytest.approx(value, abs=1e-6), key


# ----------------------------------------------------------------------------- night components
def test_ema_update_matches_formula_on_params_and_buffers():
    a, b = TinyNet(3), TinyNet(3)
    b.train()
    b(torch.rand(2, 3, 8, 8))  # moves b's running statistics and num_batches_tracked
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    ema_update_(a, b, 0.9)
    for k, v in a.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before_a[k] + 0.1 * b.state_dict()[k], atol=1e-7, rtol=0)
        else:
            assert torch.equal(v, b.state_dict()[k])
    with pytest.raises(ValueError):
        ema_update_(a, b, 1.5)


def test_confident_pseudo_label_is_per_channel():
    prob = torch.tensor([[[[0.95, 0.5, 0.05, 0.92]], [[0.2, 0.08, 0.91, 0.89]]]])  # (1, 2, 1, 4)
    label, mask = confident_pseudo_label(prob, threshold=0.5, confidence=0.9)
    assert label.tolist() == [[[[1.0, 1.0, 0.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]]]
    assert mask.tolist() == [[[[1.0, 0.0, 1.0, 1.0]], [[0.0, 1.0, 1.0, 0.0]]]]
    with pytest.raises(ValueError):
        confident_pseudo_label(prob, confidence=0.3)


def test_masked_dice_bce_against_plain():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, generator=g)
    target = (torch.rand(2, 2, 4, 4, generator=g) > 0.5).float()
    mask = (torch.rand(2, 2, 4, 4, generator=g) > 0.3).float()
    p = torch.sigmoid(logits)
    keep = mask.bool()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))[keep].mean()
    dice = (2 * (p * target)[keep].sum() + 1) / (p[keep].sum() + target[keep].sum() + 1)
    expected = bce + 1 - dice
    torch.testing.assert_close(masked_dice_bce_loss(logits, target, mask), expected, atol=1e-6, rtol=1e-6)
    packed = torch.cat([target, mask], dim=1)
    torch.testing.assert_close(PackedMaskedDiceBCELoss()(logits, packed), expected, atol=1e-6, rtol=1e-6)
    # an empty mask gives zero loss and zero gradient; a full mask gives the unmasked loss
    z = logits.clone().requires_grad_(True)
    loss = masked_dice_bce_loss(z, target, torch.zeros_like(mask))
    loss.backward()
    assert loss.item() == 0.0 and z.grad.abs().max() == 0
    torch.testing.assert_close(
        masked_dice_bce_loss(logits, target, torch.ones_like(mask)), dice_bce_loss(logits, target), atol=1e-6, rtol=0
    )


def test_night_schedule_covers_each_image_once_per_epoch():
    idx = [3, 4, 5, 6, 7]
    batches = night_schedule(idx, batch_size=2, epochs=2, seed=1)
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1]
    assert sorted(sum(batches[:3], [])) == idx and sorted(sum(batches[3:], [])) == idx
    assert batches == night_schedule(idx, batch_size=2, epochs=2, seed=1)
    assert batches != night_schedule(idx, batch_size=2, epochs=2, seed=2)
    assert len(night_schedule(idx, batch_size=2, iterations=7, seed=1)) == 7
    assert night_schedule([], batch_size=2, iterations=3) == []


def square_minmax(x):
    """A deterministic strong view for the exact test."""
    y = x**2
    lo, hi = y.amin(dim=(1, 2, 3), keepdim=True), y.amax(dim=(1, 2, 3), keepdim=True)
    return (y - lo) / (hi - lo)


def test_night_iteration_against_plain_step():
    student, teacher = source_net(), source_net()
    with torch.no_grad():
        teacher.head.bias.add_(0.3)  # a teacher that differs from the student
    plain_student, plain_teacher = source_net(), source_net()
    plain_teacher.load_state_dict(teacher.state_dict())
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    plain_opt = torch.optim.Adam(plain_student.parameters(), lr=1e-2)
    x = torch.stack([c["image"] for c in cases(3, seed=4)])
    batches = [{"image": x, "seed": 123}]
    trainer = NightTrainer(
        "cpu", batches, student, teacher, opt, teacher_momentum=0.99, confidence=0.8, strong_augment=square_minmax
    )
    trainer.run()

    g = torch.Generator().manual_seed(123)
    coins = torch.rand(3, 2, generator=g) < 0.5
    weak = torch.stack(
        [img.flip([d for d, c in ((-2, ch), (-1, cw)) if c]) for img, (ch, cw) in zip(x, coins.tolist())]
    )
    plain_teacher.eval()
    with torch.no_grad():
        p = torch.sigmoid(plain_teacher(weak))
    label, mask = (p >= 0.5).float(), (torch.maximum(p, 1 - p) >= 0.8).float()
    plain_student.train()
    logits = plain_student(square_minmax(weak))
    q = torch.sigmoid(logits)
    bce = (F.binary_cross_entropy_with_logits(logits, label, reduction="none") * mask).sum() / mask.sum()
    dice = (2 * (q * mask * label * mask).sum() + 1) / ((q * mask).sum() + (label * mask).sum() + 1)
    plain_opt.zero_grad()
    (bce + 1 - dice).backward()
    plain_opt.step()
    with torch.no_grad():
        for k, v in plain_teacher.state_dict().items():
            s = plain_student.state_dict()[k]
            v.copy_(0.99 * v + 0.01 * s if v.is_floating_point() else s)

    torch.testing.assert_close(trainer.state.output["loss"].detach(), (bce + 1 - dice).detach(), atol=1e-6, rtol=0)
    assert trainer.state.output["mask_fraction"] == pytest.approx(float(mask.mean()))
    assert_same_state(student.state_dict(), plain_student.state_dict(), atol=1e-6)
    assert_same_state(teacher.state_dict(), plain_teacher.state_dict(), atol=1e-6)
    assert 0 < float(mask.mean()) < 1


def test_random_flips_are_flips():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    y = random_flips(x, torch.Generator().manual_seed(0))
    for a, b in zip(x, y):
        assert any(torch.equal(b, a.flip(d)) if d else torch.equal(b, a) for d in ([], [-1], [-2], [-2, -1]))


# ----------------------------------------------------------------------------- the store
def test_store_never_reads_partial_writes(tmp_path, monkeypatch):
    store = DayImageStore(tmp_path / "s")
    img = torch.rand(3, 4, 4)
    store.put(0, img, torch.ones(2, 4, 4, dtype=torch.uint8), day=0)
    store.put(1, img + 1, None, day=1)
    assert store.indices() == [0, 1] and store.indices(day=1) == [1]
    assert torch.equal(DayImageStore(tmp_path / "s").get(0)["image"], img)

    real_replace = os.replace

    def crash_on(name):
        def replace(src, dst):
            if Path(dst).name == name:
                raise OSError("simulated crash")
            real_replace(src, dst)

        return replace

    # a crash while writing the item file: nothing is listed, no temporary file is left behind
    monkeypatch.setattr(os, "replace", crash_on("00000002.pt"))
    with pytest.raises(OSError):
        store.put(2, img, None, day=1)
    # a crash after the item file but before the manifest: the complete file is still not visible
    monkeypatch.setattr(os, "replace", crash_on("manifest.json"))
    with pytest.raises(OSError):
        store.put(3, img, None, day=1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "s" / "items" / "00000003.pt").exists()
    # a truncated item file and a half-written temporary manifest, as a kill during a write leaves them
    (tmp_path / "s" / "items" / "00000004.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "s" / ".manifest.json.999.tmp").write_text('{"version": 1, "items": {"4": {"fil')
    reopened = DayImageStore(tmp_path / "s")
    assert reopened.indices() == [0, 1]
    for i in (2, 3, 4):
        assert i not in reopened
        with pytest.raises(KeyError):
            reopened.get(i)
    assert not list((tmp_path / "s").glob(".*.tmp"))
    # a later complete write of the same index is valid
    reopened.put(4, img * 2, None, day=1)
    assert torch.equal(DayImageStore(tmp_path / "s").get(4)["image"], img * 2)


# ----------------------------------------------------------------------------- runs
def crash(when):
    """A runner callback that raises (a simulated crash) at the first event where ``when(event, info)`` holds."""

    def callback(event, info):
        if when(event, info):
            raise RuntimeError(f"simulated crash at {event} {info}")

    return callback


def test_multi_day_run(reference_run):
    report, global_state, out = reference_run
    assert report["n_days"] == 3 and report["n_nights"] == 3 and report["n_images"] == N_STREAM
    days = report["days"]
    assert [(d["start"], d["end"]) for d in days] == [(0, 4), (4, 8), (8, 10)]
    assert [d["night_iterations"] for d in days] == [4, 4, 2]  # 2 epochs of ceil(n / 2) batches
    assert all(0 < d["mask_fraction"] <= 1 and d["night_loss"] > 0 for d in days)
    assert all(0 <= d["day_dice"] <= 1 and 0 <= d["heldout_dice"] <= 1 for d in days)
    assert report["initial_heldout_dice"] is not None and report["final_heldout_dice"] == days[-1]["heldout_dice"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    # the store holds every image with its day, and day 0's predictions are plain VPTTA on the source network
    store = DayImageStore(out / "day_store")
    assert store.indices() == list(range(N_STREAM))
    assert [store.get(i)["day"] for i in range(N_STREAM)] == [0] * 4 + [1] * 4 + [2] * 2
    vptta, net = VPTTA(prompt_size=3, memory_size=4, neighbors=2), source_net()
    for i, case in enumerate(stream()[:PER_DAY]):
        assert torch.equal(store.get(i)["image"], case["image"])
        pred = torch.sigmoid(vptta(case["image"][None], net))[0] >= 0.5
        assert torch.equal(store.get(i)["pred"], pred.to(torch.uint8))
    # the nights changed the model, and the global student is what a resumed call returns
    assert any(not torch.equal(global_state[k], v) for k, v in source_state().items())
    again = make_runner(out)
    assert again.run(stream(), heldout()) == report
    assert_same_state(again.network.state_dict(), global_state)


def test_crash_mid_night_and_mid_day_then_resume(tmp_path, reference_run):
    report, global_state, _ = reference_run

    # crash in the middle of the second night (after its 2nd intra-night checkpoint)
    with pytest.raises(RuntimeError):
        make_runner(tmp_path, crash(lambda e, i: e == "night_checkpoint" and i == {"day": 1, "iteration": 2})).run(
            stream(), heldout()
        )
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["day"], ckpt["night_iteration"]) == ("night", 1, 2)
    assert DayImageStore(tmp_path / "day_store").indices() == list(range(8))
    # resume, then crash in the middle of the third day (its second image is stored)
    with pytest.raises(RuntimeError):
        make_runner(tmp_path, crash(lambda e, i: e == "image" and i["index"] == 9)).run(stream(), heldout())
    assert DayImageStore(tmp_path / "day_store").indices() == list(range(10))
    # resume to the end with the same command
    runner = make_runner(tmp_path)
    resumed = runner.run(stream(), heldout())
    assert_same_report(resumed, report)
    assert_same_state(runner.global_student.state_dict(), global_state, atol=1e-6)
    store = DayImageStore(tmp_path / "day_store")
    assert all(torch.equal(store.get(i)["image"], c["image"]) for i, c in enumerate(stream()))
    with pytest.raises(ValueError):
        DayNightRunner(source_net(), tmp_path, images_per_day=3).run(stream())


def test_crash_on_first_day_resumes_with_the_same_object(tmp_path, reference_run):
    """The same runner object (its adapter already advanced) redoes the first day from the adapter's initial state."""
    report, global_state, _ = reference_run

    def callback(event, info):
        if event == "image" and info["index"] == 2:
            raise RuntimeError("simulated crash")

    runner = make_runner(tmp_path, callback)
    with pytest.raises(RuntimeError):
        runner.run(stream(), heldout())
    assert not (tmp_path / "checkpoint.pt").exists() and DayImageStore(tmp_path / "day_store").indices() == [0, 1, 2]
    runner.callback = None
    assert_same_report(runner.run(stream(), heldout()), report)
    assert_same_state(runner.global_student.state_dict(), global_state, atol=1e-6)


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from dyna_runs import make_runner, stream, heldout

def kill(event, info):
    if event == "night_checkpoint" and info == {{"day": 0, "iteration": 1}}:
        os.kill(os.getpid(), signal.SIGKILL)

make_runner({out!r}, kill).run(stream(), heldout())
"""


@pytest.mark.integration
def test_killed_process_resumes(tmp_path, reference_run):
    report, global_state, _ = reference_run
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(TESTS), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (ckpt["phase"], ckpt["day"], ckpt["night_iteration"]) == ("night", 0, 1)
    assert DayImageStore(out / "day_store").indices() == list(range(4))
    runner = make_runner(out)
    resumed = runner.run(stream(), heldout())
    assert_same_report(resumed, report)
    assert_same_state(runner.global_student.state_dict(), global_state, atol=1e-5)


# ----------------------------------------------------------------------------- bad cases
def mixed_stream() -> tuple[list[dict], dict[str, str]]:
    """The test stream with bad cases around and inside its days (the adapter rejects three, one is the failure record
    of a file that could not be read), and a piece of each one's recorded reason."""
    good = stream()
    nan = {"image": good[0]["image"].clone(), "label": good[0]["label"], "case_id": "nan_voxels"}
    nan["image"][1, 2, 3] = float("nan")
    bad = {
        "nan_voxels": nan,
        "grey": {"image": good[1]["image"][:1], "label": good[1]["label"], "case_id": "grey"},
        "constant": {"image": torch.full((3, 16, 16), 0.5), "case_id": "constant"},
        "unreadable": {"case_id": "unreadable", "domain": "all", "failure": "could not read the case's files (...)"},
    }
    reasons = {
        "nan_voxels": "the image has 1 NaN and 0 infinite voxels",
        "grey": "the image has 1 channels but the network takes 3",
        "constant": "the image is constant",
        "unreadable": "could not read the case's files (...)",
    }
    # day 1: nan, 4 good; day 2: grey, unreadable, 4 good; day 3: the last 2 good and a trailing bad case
    cases = [bad["nan_voxels"], *good[:4], bad["grey"], bad["unreadable"], *good[4:], bad["constant"]]
    return cases, reasons


def _rows(out) -> list[dict]:
    from monai_tta.reports import read_case_csv

    return read_case_csv(out / "cases.csv")


def test_bad_cases_are_failed_rows_never_stored_nor_trained_on_and_resume(tmp_path, reference_run):
    report, global_state, out = reference_run
    cases, reasons = mixed_stream()
    lost = {"case_id": "lost", "domain": "all", "failure": "the image file lost.png does not exist; check the datalist"}
    held = [*heldout(), lost]  # a held-out case that could not be loaded: listed, left out of the held-out Dice
    runner = make_runner(tmp_path / "mixed")
    mixed = runner.run(cases, held)
    assert mixed["heldout_failed"] == [lost]
    # the failures: rows with their reasons, in stream order, counted per day and in the report
    rows = _rows(tmp_path / "mixed")
    assert [r["status"] for r in rows] == ["failed"] + ["ok"] * 4 + ["failed"] * 2 + ["ok"] * 6 + ["failed"]
    failed = {r["case_id"]: r["error"] for r in rows if r["status"] == "failed"}
    assert failed.keys() == reasons.keys() and all(reasons[k] in failed[k] for k in reasons)
    assert mixed["n_failed"] == 4 and [d["n_failed"] for d in mixed["days"]] == [1, 2, 1]
    assert [(d["start"], d["end"], d["n_images"]) for d in mixed["days"]] == [(0, 5, 4), (5, 11, 4), (11, 14, 2)]
    # the good cases: the same days, nights and global student, bit for bit, as the run without the bad cases
    clean = _rows(out)
    assert [(r["day"], r["day_dice"]) for r in rows if r["status"] == "ok"] == [
        (r["day"], r["day_dice"]) for r in clean
    ]
    positional = {"start", "end", "n_failed"}
    for a, b in zip(mixed["days"], report["days"], strict=True):
        assert {k: v for k, v in a.items() if k not in positional} == {
            k: v for k, v in b.items() if k not in positional
        }
    assert_same_state(runner.global_student.state_dict(), global_state)
    store = DayImageStore(tmp_path / "mixed" / "day_store")
    assert store.indices() == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12]  # never a bad case

    # interrupted in the middle of the second day (after its failures), then in the middle of its night: resumed,
    # the same rows and report
    with pytest.raises(RuntimeError):
        make_runner(tmp_path / "resumed", crash(lambda e, i: e == "image" and i["index"] == 8)).run(cases, held)
    with pytest.raises(RuntimeError):
        make_runner(tmp_path / "resumed", crash(lambda e, i: e == "night_checkpoint" and i["day"] == 1)).run(
            cases, held
        )
    resumed = make_runner(tmp_path / "resumed")
    assert_same_report(resumed.run(cases, held), mixed)
    assert _rows(tmp_path / "resumed") == rows
    assert_same_state(resumed.global_student.state_dict(), global_state, atol=1e-6)


def test_a_rank_folder_is_refused_by_a_rerun_with_another_number_of_ranks(tmp_path, monkeypatch):
    """Under torchrun a rank's block depends on the number of ranks: its folder records both, and a rerun with another
    count is refused even where the block's length is the same (checkpoint after the first day)."""
    import monai_tta.adapters.dyna.runner as daynight

    monkeypatch.setattr(daynight, "get_rank", lambda: 1)
    monkeypatch.setattr(daynight, "get_world_size", lambda: 2)

    def stop(event, info):
        if event == "night_checkpoint":
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        make_runner(tmp_path, stop).run(stream(), heldout())
    assert (tmp_path / "checkpoint.pt").is_file()
    monkeypatch.setattr(daynight, "get_world_size", lambda: 3)
    with pytest.raises(ValueError, match="'world_size': 2"):
        make_runner(tmp_path).run(stream(), heldout())


def test_rows_say_what_the_day_adapters_guards_chose(tmp_path):
    """Each ok row of cases.csv carries the day adapter's guard records of that case (issue 18): safe's candidate and
    statistics weight, whether it is the source and whether the step rule kept the update, the safeguard's fallback;
    a run without ``safe`` has no safe column."""
    from monai_tta.reports import read_case_csv

    seen = []

    def record(event, info):
        if event == "image":
            seen.append(dict(runner.day_adapter.last_stats))

    runner = DayNightRunner(
        source_net(),
        tmp_path / "safe",
        day_adapter=VPTTA(prompt_size=3, memory_size=4, neighbors=2, safe="case"),
        images_per_day=PER_DAY,
        night_epochs=0,
        callback=record,
    )
    runner.run(stream())
    rows = read_case_csv(tmp_path / "safe" / "cases.csv")
    assert len(rows) == len(seen) == N_STREAM
    for row, stats in zip(rows, seen, strict=True):
        assert row["safe_choice"] == stats["safe_choice"]
        assert row["safe_prior"] == pytest.approx(float(stats["safe_prior"]))
        for key in ("safe_source", "safe_step", "safeguard_fallback"):
            assert row[key] == str(bool(stats[key]))
    plain = DayNightRunner(source_net(), tmp_path / "plain", images_per_day=PER_DAY, night_epochs=0)
    plain.run(stream())
    assert not any(k.startswith("safe_") for k in read_case_csv(tmp_path / "plain" / "cases.csv")[0])
