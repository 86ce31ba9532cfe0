"""The 3D bundles served by MONAI Label's own BundleInferTask (monailabel 0.8.5) and its real server: a NIfTI volume
in, a uint8 NIfTI label map out in the volume's own grid and affine (0 background, 1 peripheral zone, 2 transition
zone), equal to the mask ``monai.bundle run`` writes for the same volume, episodic, the source checkpoint untouched."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BUNDLES_3D, TGMA, sha256
from monailabel_server import get, running_server

pytest.importorskip("monailabel", reason="MONAI Label environment absent: build it with tools/monailabel_env.sh")

LABELS = {"peripheral zone": 1, "transition zone": 2}


def bundle_mask(masks: Path, volume: Path) -> nib.Nifti1Image:
    stem = volume.name[: -len(".nii.gz")]
    (path,) = masks.glob(f"{stem}_*.nii.gz")
    return nib.load(path)


@pytest.mark.parametrize("name", BUNDLES_3D)
def test_bundle_infer_task_serves_the_bundle_runs_masks(served3d, name):
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = served3d["app"] / "model" / name
    checkpoint = bundle / "models" / "model.pt"
    before = sha256(checkpoint)
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid() and task.labels == LABELS and task.dimension == 3
    volumes = sorted(served3d["studies"].glob("*.nii.gz"))
    answers = []
    for volume in [*volumes, volumes[0]]:
        label_file, result = task({"image": str(volume), "device": "cpu"})
        assert result["label_names"] == LABELS
        answers.append(nib.load(label_file))
    for volume, answer in zip(volumes, answers):
        source = nib.load(volume)
        expected = bundle_mask(served3d["masks"][name], volume)
        served = np.asarray(answer.dataobj)
        assert served.dtype == np.uint8 and served.shape == source.shape  # the input's own grid
        np.testing.assert_allclose(answer.affine, source.affine, atol=1e-4)
        assert set(np.unique(served)) <= {0, 1, 2} and (served > 0).any()
        np.testing.assert_array_equal(served, np.asarray(expected.dataobj).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(answers[-1].dataobj), np.asarray(answers[0].dataobj))  # episodic
    assert sha256(checkpoint) == before


def test_server_infers_a_nifti_label_map(served3d, tmp_path):
    name = BUNDLES_3D[0]
    with running_server(served3d["app"], served3d["studies"], [name], tmp_path / "server.log") as (base, info):
        assert list(info["models"]) == [name] and info["trainers"] == {}
        assert info["models"][name]["labels"] == LABELS and info["models"][name]["dimension"] == 3
        volume = sorted(served3d["studies"].glob("*.nii.gz"))[0]
        study = volume.name[: -len(".nii.gz")]
        body = get(f"{base}/infer/{name}?image={study}&output=image", data=b"{}")
        answer_file = tmp_path / ("answer.nii.gz" if body[:2] == b"\x1f\x8b" else "answer.nii")  # gzip or not
        answer_file.write_bytes(body)
        answer = nib.load(answer_file)
        expected = bundle_mask(served3d["masks"][name], volume)
        np.testing.assert_array_equal(np.asarray(answer.dataobj).astype(np.uint8), np.asarray(expected.dataobj))
        np.testing.assert_allclose(answer.affine, nib.load(volume).affine, atol=1e-4)


def test_bundle_infer_task_serves_tgmas_model(served_tgma, tmp_path):
    """TGMA's inference.json through MONAI Label: the served model (made by the bundle's run; by default TGMA before
    adaptation) gives the bundle run's masks, in the volume's grid and affine; the server lists and serves it."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = served_tgma["app"] / "model" / TGMA
    checkpoint = bundle / "models" / "model.pt"
    before = sha256(checkpoint)
    task = BundleInferTask(str(bundle), {})
    assert task.is_valid() and task.labels == LABELS and task.dimension == 3
    volumes = sorted(served_tgma["studies"].glob("*.nii.gz"))
    answers = [nib.load(task({"image": str(v), "device": "cpu"})[0]) for v in [*volumes, volumes[0]]]
    for volume, answer in zip(volumes, answers):
        source = nib.load(volume)
        served = np.asarray(answer.dataobj)
        assert served.dtype == np.uint8 and served.shape == source.shape
        np.testing.assert_allclose(answer.affine, source.affine, atol=1e-4)
        expected = np.asarray(bundle_mask(served_tgma["masks"], volume).dataobj).astype(np.uint8)
        np.testing.assert_array_equal(served, expected)
    np.testing.assert_array_equal(np.asarray(answers[-1].dataobj), np.asarray(answers[0].dataobj))
    assert sha256(checkpoint) == before
    with running_server(served_tgma["app"], served_tgma["studies"], [TGMA], tmp_path / "server.log") as (base, info):
        assert list(info["models"]) == [TGMA] and info["models"][TGMA]["dimension"] == 3
        study = volumes[0].name[: -len(".nii.gz")]
        body = get(f"{base}/infer/{TGMA}?image={study}&output=image", data=b"{}")
        answer_file = tmp_path / ("answer.nii.gz" if body[:2] == b"\x1f\x8b" else "answer.nii")
        answer_file.write_bytes(body)
        expected = np.asarray(bundle_mask(served_tgma["masks"], volumes[0]).dataobj).astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(nib.load(answer_file).dataobj).astype(np.uint8), expected)
