"""Tests of the multi-site MR generator and the standard MONAI 3D pipeline that reads it."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_tta.data import (
    MR_SITES,
    SOURCE_DOMAIN,
    generate_mr_sites,
    list_mr_sites,
    load_datalist,
    synthesize_mr_case,
)
from monai_tta.keys import DataKeys

IMAGE, LABEL, DOMAIN = DataKeys.IMAGE.value, DataKeys.LABEL.value, DataKeys.DOMAIN.value
SCALE = 2.0  # halves every side of the volumes: tests stay fast
N_TRAIN, N_TEST = 3, 2


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """All registered sites, 3 training and 2 test cases each, half resolution, seed 0."""
    root = tmp_path_factory.mktemp("mr_sites")
    return generate_mr_sites(root, num_train=N_TRAIN, num_test=N_TEST, voxel_scale=SCALE, val_fraction=1 / 3)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_registry_has_source_and_four_targets():
    names = list_mr_sites()
    assert names[0] == SOURCE_DOMAIN and len(names) >= 5 and names == list(MR_SITES)


def test_same_seed_same_bytes_other_seed_differs(generated, tmp_path):
    again = generate_mr_sites(tmp_path / "a", num_train=N_TRAIN, num_test=N_TEST, voxel_scale=SCALE, val_fraction=1 / 3)
    assert _tree_bytes(again.parent) == _tree_bytes(generated.parent)
    image0, label0, _ = synthesize_mr_case("thick", "test", 1, seed=0, voxel_scale=SCALE)
    image1, label1, _ = synthesize_mr_case("thick", "test", 1, seed=1, voxel_scale=SCALE)
    assert image0.shape == image1.shape and not np.array_equal(image0, image1) and not np.array_equal(label0, label1)


def test_every_site_has_train_val_test_cases(generated):
    content = json.loads(generated.read_text())
    assert content["domains"] == list_mr_sites()
    sections = load_datalist(generated)
    for site in list_mr_sites():
        assert [len(sections[f"{site}_{part}"]) for part in ("train", "val", "test")] == [2, 1, N_TEST]
        for part in ("train", "val", "test"):
            for item in sections[f"{site}_{part}"]:
                assert item[DOMAIN] == site and Path(item[IMAGE]).is_file() and Path(item[LABEL]).is_file()


def test_label_values(generated):
    sections = load_datalist(generated)
    for site in list_mr_sites():
        label = np.asarray(nib.load(sections[f"{site}_test"][0][LABEL]).dataobj)
        assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    _, gland, _ = synthesize_mr_case(SOURCE_DOMAIN, "train", 0, voxel_scale=SCALE, labels="gland")
    _, zones, _ = synthesize_mr_case(SOURCE_DOMAIN, "train", 0, voxel_scale=SCALE)
    np.testing.assert_array_equal(gland, (zones > 0).astype(np.uint8))
