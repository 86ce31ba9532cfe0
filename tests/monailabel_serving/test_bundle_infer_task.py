"""Every bundle served by MONAI Label's own BundleInferTask (monailabel 0.8.5): image-only loading, a uint8 label map
that MONAI Label writes as PNG (0 background, 1 optic disc, 2 optic cup, the labels it reports), episodic serving (the
same image gives the same answer whatever came before), the source checkpoint untouched, no trainer offered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLES, sha256
from PIL import Image

pytest.importorskip("monailabel", reason="MONAI Label environment absent: build it with tools/monailabel_env.sh")


def disc_dice(label_map: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the optic disc including the cup (labels >= 1)."""
    p, t = label_map >= 1, truth >= 1
    return 2.0 * float((p & t).sum()) / max(float(p.sum() + t.sum()), 1.0)


def infer(task, image: Path) -> np.ndarray:
    label_file, result = task({"image": str(image), "device": "cpu"})
    assert result["label_names"] == {"optic disc": 1, "optic cup": 2}
    return np.asarray(Image.open(label_file))


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_infer_task_serves_label_maps_episodically(served, name):
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.train.bundle import BundleTrainTask

    bundle = served["app"] / "model" / name
    checkpoint = bundle / "models" / "model.pt"
    before = sha256(checkpoint)
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid() and task.labels == {"optic disc": 1, "optic cup": 2} and task.dimension == 2
    assert not BundleTrainTask(str(bundle), {}).is_valid()  # no trainer offered
    images = sorted(served["studies"].glob("*.png"))
    first = infer(task, images[0])
    others = [infer(task, image) for image in images[1:]]
    again = infer(task, images[0])
    dice = {}
    for image, label_map in zip(images, [first, *others]):
        truth = served["truth"][image.stem]
        assert label_map.dtype == np.uint8 and label_map.shape == truth.shape
        assert set(np.unique(label_map)) <= {0, 1, 2}
        dice[image.stem] = disc_dice(label_map, truth)
    print(name, dice)
    source = [k for k in dice if k.startswith("source")]
    assert len(source) == 1 and dice[source[0]] > 0.7  # the source domain: every method segments the disc
    if name != "source_only_fundus_segmentation":  # shifted domains: the adapting methods still do
        assert all(v > 0.7 for v in dice.values()), dice
    assert np.array_equal(again, first)  # episodic: what came before does not matter
    assert sha256(checkpoint) == before


def test_non_square_image_keeps_its_orientation(served, tmp_path):
    """MONAI Label writes (x, y) arrays: the label map of a non-square image has the image's rows and columns."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(served["app"] / "model" / "grata_fundus_segmentation"), {})
    image = sorted(served["studies"].glob("*.png"))[0]
    pixels = np.asarray(Image.open(image))
    Image.fromarray(np.ascontiguousarray(pixels[8:, :])).save(tmp_path / "crop.png")
    cropped = infer(task, tmp_path / "crop.png")
    full = infer(task, image)
    assert cropped.shape == pixels[8:, :].shape[:2]
    assert disc_dice(cropped, served["truth"][image.stem][8:, :]) > 0.7
    assert disc_dice(full, served["truth"][image.stem]) > 0.7


def test_continual_serving_is_an_opt_in(served, tmp_path):
    """With ``"setting": "continual"`` in inference.json the adapted state carries over between requests."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = tmp_path / "grata_continual"
    shutil.copytree(served["app"] / "model" / "grata_fundus_segmentation", bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["setting"] = "continual"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    task = BundleInferTask(str(bundle), {})
    image = sorted(served["studies"].glob("*.png"))[0]
    infer(task, image)
    inferer = task.inferer({"device": "cpu"})
    assert inferer.setting == "continual"
    (network,) = inferer.networks()  # the one network the task built
    assert inferer.state_for(network).step == 1
    infer(task, image)
    assert inferer.state_for(network).step == 2
