"""Tests of the multi-site MR generator and the standard MONAI 3D pipeline that reads it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_tta.data import (
    MR_SITES,
    SOURCE_DOMAIN,
    case_id_from_path,
    generate_mr_sites,
    list_mr_sites,
    load_datalist,
    mr_site_affine,
    synthesize_mr_case,
)
from monai_tta.data.keys import DataKeys
from monai_tta.data.mr_phantom import draw_pelvis, phantom_label, phantom_signal
from monai_tta.transforms import volume_postprocessing, volume_preprocessing

# ITK's SWIG bindings warn once per type on import under Python >= 3.11; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")

IMAGE, LABEL, PRED, DOMAIN = (k.value for k in (DataKeys.IMAGE, DataKeys.LABEL, DataKeys.PRED, DataKeys.DOMAIN))
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


def test_phantom_zones_at_hand_picked_points():
    phantom = replace(
        draw_pelvis(np.random.default_rng(0)),
        gland_centre=(0.0, 0.0, 0.0),
        gland_semi=(20.0, 15.0, 18.0),
        gland_rotation=(0.0, 0.0),
        shape_amplitude=0.0,
        tz_centre=(0.0, 4.0, 0.0),
        tz_semi=(10.0, 10.0, 9.0),
    )
    points = np.array(
        [
            [0.0, 4.0, 0.0],  # transition zone centre
            [0.0, -12.0, 0.0],  # posterior gland, outside the transition zone: peripheral zone
            [19.9, 0.0, 0.0],  # just inside the gland's right surface (in the capsule)
            [20.1, 0.0, 0.0],  # just outside
            [9.9, 4.0, 0.0],  # inside the transition zone's ellipsoid (0.99), gland level 0.56
            [0.0, 9.9, 0.0],  # transition zone (0.59), gland level 0.66
            [0.0, 13.5, 0.0],  # in the zone's ellipsoid (0.95) but gland level 0.9 > 0.85: kept peripheral
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(phantom_label(phantom, points), [2, 1, 1, 0, 2, 2, 1])
    signal = phantom_signal(phantom, points)
    assert signal.dtype == np.float32 and signal[2] == np.float32(phantom.tissue["capsule"])
    assert signal[1] > signal[0]  # T2: bright peripheral zone, darker transition zone


def test_site_affine_centres_the_field_of_view():
    centre = np.array([3.0, -2.0, 5.0])
    for site, spec in MR_SITES.items():
        affine = mr_site_affine(site, centre)
        shape = np.array([round(f / s) for f, s in zip(spec.fov, spec.spacing)])
        np.testing.assert_allclose(affine[:3, :3] @ ((shape - 1) / 2) + affine[:3, 3], centre, atol=1e-9)


def test_anatomy_does_not_depend_on_the_site_parameters(monkeypatch):
    image, label, affine = synthesize_mr_case("thick", "train", 2, voxel_scale=SCALE)
    changed = replace(MR_SITES["thick"], scale=77.0, offset=5.0, noise=0.2, bias=0.5, contrast=2.0, endorectal=3.0)
    monkeypatch.setitem(MR_SITES, "thick", changed)
    image2, label2, affine2 = synthesize_mr_case("thick", "train", 2, voxel_scale=SCALE)
    np.testing.assert_array_equal(label2, label)
    np.testing.assert_array_equal(affine2, affine)
    assert not np.array_equal(image2, image)


def test_sites_differ_in_geometry(generated):
    sections = load_datalist(generated)
    thickness, codes = set(), set()
    for site, spec in MR_SITES.items():
        volume = nib.load(sections[f"{site}_test"][0][IMAGE])
        spacing = np.asarray(spec.spacing) * SCALE
        np.testing.assert_allclose(volume.header.get_zooms(), spacing, rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3], axis=0), spacing, rtol=1e-6)
        assert volume.shape == tuple(int(round(f / s)) for f, s in zip(spec.fov, spacing))
        assert "".join(nib.aff2axcodes(volume.affine)) == spec.orientation
        assert volume.header["sform_code"] == 1 and volume.header["qform_code"] == 1
        thickness.add(spec.spacing[2])
        codes.add(spec.orientation)
        slice_axis = volume.affine[:3, 2] / np.linalg.norm(volume.affine[:3, 2])
        tilt = np.degrees(np.arccos(np.clip(np.abs(slice_axis).max(), 0.0, 1.0)))
        np.testing.assert_allclose(tilt, spec.tilt, atol=1e-4)
    assert len(thickness) >= 4 and {"RAS", "LPS", "ASL"} <= codes
    assert MR_SITES["sagittal"].orientation[2] in "LR"  # slices across left-right: a sagittal stack
    assert MR_SITES["oblique"].tilt > 0


def test_sites_differ_in_intensity(generated):
    sections = load_datalist(generated)
    gland_median = {}
    for site, spec in MR_SITES.items():
        image = np.asarray(nib.load(sections[f"{site}_test"][0][IMAGE]).dataobj)
        label = np.asarray(nib.load(sections[f"{site}_test"][0][LABEL]).dataobj)
        assert image.dtype == np.int16
        gland_median[site] = float(np.median(image[label > 0]))
        assert 0.2 < (gland_median[site] - spec.offset) / spec.scale < 2.0  # the site's scale is applied
        if spec.noise_kind == "rician":
            assert image.min() >= 0  # magnitude images
    assert gland_median["endorectal"] > 4.0 * gland_median["thick"]
    oblique = np.asarray(nib.load(sections["oblique_test"][0][IMAGE]).dataobj)
    assert oblique.min() > MR_SITES["oblique"].offset / 2  # the export intercept lifts the air


def test_cached_folder_is_reused_and_a_new_request_rewrites(tmp_path):
    datalist = generate_mr_sites(tmp_path, num_train=1, num_test=1, sites=["source"], voxel_scale=3.0)
    image = Path(load_datalist(datalist)["source_test"][0][IMAGE])
    stamp = image.stat().st_mtime_ns
    assert generate_mr_sites(tmp_path, num_train=1, num_test=1, sites=["source"], voxel_scale=3.0) == datalist
    assert image.stat().st_mtime_ns == stamp
    image.unlink()  # an incomplete folder (a killed run) is generated again
    generate_mr_sites(tmp_path, num_train=1, num_test=1, sites=["source"], voxel_scale=3.0)
    before = image.read_bytes()
    assert not list(tmp_path.rglob(".*.tmp"))
    generate_mr_sites(tmp_path, num_train=1, num_test=1, sites=["source"], voxel_scale=3.0, seed=4)
    assert image.read_bytes() != before
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sites": ["nowhere"]}, "unknown MR site"),
        ({"sites": ["source", "source"]}, "repeat"),
        ({"labels": "lobes"}, "lobes"),
        ({"num_test": 0}, "num_test"),
        ({"voxel_scale": 0.0}, "voxel_scale"),
    ],
)
def test_bad_requests_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_mr_sites(tmp_path, **{"num_train": 1, "num_test": 1, "voxel_scale": 3.0, **kwargs})


# ---------------------------------------------------------------------------------------------------------------------
# the standard MONAI 3D pipeline


def test_both_readers_give_the_same_ras_arrays(generated):
    sections = load_datalist(generated)
    for site, spec in MR_SITES.items():
        item = sections[f"{site}_test"][0]
        nib_out = volume_preprocessing(pixdim=3.0, reader="NibabelReader")(dict(item))
        itk_out = volume_preprocessing(pixdim=3.0, reader="ITKReader")(dict(item))
        assert nib_out[IMAGE].shape == itk_out[IMAGE].shape == nib_out[LABEL].shape
        np.testing.assert_allclose(itk_out[IMAGE].affine, nib_out[IMAGE].affine, atol=1e-5)
        np.testing.assert_allclose(itk_out[IMAGE], nib_out[IMAGE], atol=1e-5)
        disagree = float((itk_out[LABEL] != nib_out[LABEL]).float().mean())
        # an oblique affine's direction cosines are float32 in the file and ITK re-orthonormalises them (1e-7 apart
        # from nibabel's); at spacing ratios such as 4 mm -> 3 mm many nearest-neighbour samples are exact ties, a few
        # of which flip
        assert disagree == 0.0 if spec.tilt == 0 else disagree < 5e-3
        assert nib.aff2axcodes(nib_out[IMAGE].affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.linalg.norm(nib_out[IMAGE].affine[:3, :3], axis=0), 3.0, rtol=1e-6)
        # percentile scaling: 1st percentile -> 0, 99th -> 1
        np.testing.assert_allclose(nib_out[IMAGE].quantile(torch.tensor([0.01, 0.99])), [0.0, 1.0], atol=1e-5)


@pytest.mark.parametrize(
    "site, reader, spatial_size",
    [("source", "NibabelReader", None), ("sagittal", "ITKReader", (24, 24, 24)), ("oblique", "NibabelReader", None)],
)
def test_round_trip_writes_masks_in_the_input_space(generated, tmp_path, site, reader, spatial_size):
    item = load_datalist(generated)[f"{site}_test"][0]
    pre = volume_preprocessing(pixdim=3.0, reader=reader, normalize="zscore", spatial_size=spatial_size)
    data = pre({IMAGE: item[IMAGE]})  # an image-only request
    assert LABEL not in data and data[IMAGE].shape[0] == 1
    if spatial_size is not None:
        assert tuple(data[IMAGE].shape[1:]) == spatial_size
    label = pre(dict(item))[LABEL]
    data[PRED] = torch.cat([(label == c).float() for c in range(3)]) * 10.0  # logits of a perfect network
    volume_postprocessing(pre, output_dir=str(tmp_path))(data)
    written = nib.load(tmp_path / f"{case_id_from_path(item[IMAGE])}_seg.nii.gz")
    source_image, source_label = nib.load(item[IMAGE]), nib.load(item[LABEL])
    assert written.shape == source_image.shape
    np.testing.assert_allclose(written.affine, source_image.affine, atol=1e-4)
    mask = np.asarray(written.dataobj)
    assert mask.dtype == np.uint8
    # resampled there and back: boundaries move by at most a voxel
    assert float((mask == np.asarray(source_label.dataobj)).mean()) > 0.99
