"""A bundle that needs a source model says so: ``run`` trains a missing checkpoint only when asked
(``train_if_missing``), and otherwise names the checkpoint and the command that trains it."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_tta.flags import as_flag
from monai_tta.zoo.run import run_bundle
from monai_tta.zoo.source import ensure_source_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ["grata_fundus_segmentation", "grata_prostate_mr_segmentation", "dyna_fundus_segmentation"]


def causes(error: BaseException) -> str:
    """The messages of ``error`` and of every exception it was raised from."""
    text = []
    while error is not None:
        text.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(text)


def test_a_missing_checkpoint_is_not_trained_unless_asked(tmp_path):
    missing = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError) as error:
        ensure_source_checkpoint(missing, tmp_path, {"epochs": 1}, train=False)
    message = str(error.value)
    assert str(missing) in message and "--train_if_missing true" in message
    command = "python -m monai.bundle run --config_file \"['configs/inference.json','configs/source_training.json']\""
    assert f"`{command}`" in message  # the default place: the command needs no checkpoint options
    assert not missing.parent.exists()  # nothing trained, nothing written
    elsewhere = tmp_path / "weights" / "mine.pt"
    with pytest.raises(FileNotFoundError, match=f"--ckpt_dir {tmp_path / 'weights'} --ckpt_filename mine.pt"):
        ensure_source_checkpoint(elsewhere, tmp_path, train=False)


@pytest.mark.parametrize("value", ["false", "False", "no", "0", None, 0])
def test_the_command_lines_false_is_false(tmp_path, value):
    """``--train_if_missing false`` reaches the config as the string ``"false"`` (MONAI's bundle command line): it
    must not train."""
    missing = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError):
        ensure_source_checkpoint(missing, tmp_path, {"epochs": 1}, train=value)
    assert not missing.parent.exists()


def test_flags_are_read_or_refused_by_name():
    assert [as_flag(v) for v in (True, "true", "TRUE", " yes ", "on", "1", 1)] == [True] * 7
    assert [as_flag(v) for v in (False, "false", "No", "off", "0", "none", "", None, 0)] == [False] * 9
    for bad in ("maybe", 2, 0.5, [True]):
        with pytest.raises(ValueError, match="generate_data must be true or false"):
            as_flag(bad, "generate_data")


def test_an_existing_checkpoint_is_returned_as_it_is(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    assert ensure_source_checkpoint(ckpt, tmp_path, train=False) == ckpt
    assert ckpt.read_bytes() == b"weights"


@pytest.mark.parametrize("name", BUNDLES)
def test_a_bundle_run_without_its_source_model_stops_and_names_the_training_command(name, tmp_path):
    """The committed bundles default to ``train_if_missing: false``; the run stops before any adaptation."""
    overrides = {
        "generate_data": False,
        "source_checkpoint": str(tmp_path / "model.pt"),
        "output_dir": str(tmp_path / "eval"),
        "dataset_dir": str(tmp_path / "data"),
    }
    configs = ["inference.json", "daynight.json"] if name.startswith("dyna") else ["inference.json"]
    with pytest.raises(Exception) as error:  # noqa: B017 -- MONAI wraps the expression's error in its own
        run_bundle(ROOT / "bundles" / name, configs, overrides, logging_file=False)
    message = causes(error.value)
    assert f"the source checkpoint {tmp_path / 'model.pt'} does not exist" in message
    assert "configs/source_training.json" in message and "--train_if_missing true" in message
    assert not (tmp_path / "model.pt").exists()
