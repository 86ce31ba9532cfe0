"""Tests of the content-shift domains (2D fundus) and sites (3D MR): defaults unchanged, presets, determinism, and
labels that follow the content change."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from monai_tta.data import (
    CONTENT_FUNDUS_DOMAINS,
    FUNDUS_DOMAIN_PRESETS,
    MANIFEST_NAME,
    MR_CONTENT_SITES,
    MR_SITE_PRESETS,
    MR_SITES,
    SOURCE_DOMAIN,
    SYNTHETIC_FUNDUS_DOMAINS,
    FundusAnatomy,
    PelvisVariation,
    generate_fundus_domains,
    generate_mr_sites,
    list_domains,
    list_mr_sites,
    load_datalist,
    synthesize_fundus_case,
    synthesize_mr_case,
)
from monai_tta.data.fundus_scene import MASK_BACKGROUND, MASK_CUP, render_scene
from monai_tta.data.mr_phantom import PERIPHERAL_ZONE, draw_pelvis, phantom_label, phantom_signal
from monai_tta.data.mr_variation import vary_pelvis

DEFAULT_FUNDUS = ["source", "camera", "dim", "contrast", "blur", "fov"]
DEFAULT_MR = ["source", "thick", "endorectal", "sagittal", "oblique", "bias"]

# sha256 (first 16 hex digits) of cases and manifests of the default domains and sites, recorded with the generator
# before the content domains were added: the defaults must stay byte-identical (the committed figures depend on them)
FUNDUS_DIGESTS = {
    "source": "033476bc2a2fcc9b",
    "camera": "1cf8847dcff41cec",
    "dim": "e4a66cd03dba6805",
    "contrast": "67c321893b6adb91",
    "blur": "722099e42bef3571",
    "fov": "90b683f20a4c4792",
}
MR_DIGESTS = {
    "source": "2f574189b13e8829",
    "thick": "dc3ebfc4f57fc3d9",
    "endorectal": "4e4f58fb1c317db3",
    "sagittal": "ec59e0cef30f6b38",
    "oblique": "53b2d6b37c482e24",
    "bias": "9350ae00e9f11ddd",
}
FUNDUS_MANIFEST_DIGEST, MR_MANIFEST_DIGEST = "3f2fb4cf083122f3", "da93edd07bcc8d2f"


def _digest(*arrays: np.ndarray) -> str:
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]


def _json_digest(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# the defaults do not change


def test_default_lists_are_unchanged():
    assert list_domains() == list(SYNTHETIC_FUNDUS_DOMAINS) == DEFAULT_FUNDUS == list(FUNDUS_DOMAIN_PRESETS["default"])
    assert list_mr_sites() == list(MR_SITES) == DEFAULT_MR == list(MR_SITE_PRESETS["default"])
    assert not set(CONTENT_FUNDUS_DOMAINS) & set(SYNTHETIC_FUNDUS_DOMAINS)
    assert not set(MR_CONTENT_SITES) & set(MR_SITES)


@pytest.mark.parametrize("domain", DEFAULT_FUNDUS)
def test_default_fundus_cases_are_byte_identical(domain):
    image, mask = synthesize_fundus_case(domain, 0, 48, seed=1)
    assert _digest(image, mask) == FUNDUS_DIGESTS[domain]


@pytest.mark.parametrize("site", DEFAULT_MR)
def test_default_mr_cases_are_byte_identical(site):
    image, label, affine = synthesize_mr_case(site, "test", 1, seed=0, voxel_scale=3.0)
    assert _digest(image, label, affine) == MR_DIGESTS[site]


def test_default_manifests_are_unchanged(tmp_path):
    generate_fundus_domains(tmp_path / "fundus", num_per_domain=2, image_size=48, seed=0, val_fraction=0.2)
    generate_mr_sites(tmp_path / "mr", num_train=2, num_test=1, val_fraction=0.25, voxel_scale=3.0, labels="zones")
    fundus = json.loads((tmp_path / "fundus" / MANIFEST_NAME).read_text())
    mr = json.loads((tmp_path / "mr" / MANIFEST_NAME).read_text())
    assert _json_digest(fundus) == FUNDUS_MANIFEST_DIGEST
    assert _json_digest(mr) == MR_MANIFEST_DIGEST


# ---------------------------------------------------------------------------------------------------------------------
# presets and names


def test_presets_list_the_source_first_then_the_content_domains():
    assert list_domains("content") == [SOURCE_DOMAIN, *CONTENT_FUNDUS_DOMAINS]
    assert list_domains("all") == [*DEFAULT_FUNDUS, *CONTENT_FUNDUS_DOMAINS]
    assert list_mr_sites("content") == [SOURCE_DOMAIN, *MR_CONTENT_SITES]
    assert list_mr_sites("all") == [*DEFAULT_MR, *MR_CONTENT_SITES]
    assert {"wide", "crop", "glaucoma", "myopic", "lesions", "mild"} <= set(CONTENT_FUNDUS_DOMAINS)
    assert {"pelvis", "cropped", "bph", "small", "lesion", "mild"} <= set(MR_CONTENT_SITES)
    assert all(spec.description for spec in [*CONTENT_FUNDUS_DOMAINS.values(), *MR_CONTENT_SITES.values()])
    with pytest.raises(ValueError, match="preset"):
        list_domains("nope")
    with pytest.raises(ValueError, match="preset"):
        list_mr_sites("nope")
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        synthesize_fundus_case("nope", 0, 32)
    with pytest.raises(ValueError, match="unknown MR site"):
        synthesize_mr_case("nope", "test", 0)


def test_fundus_content_preset_generates_deterministic_data(tmp_path):
    a = generate_fundus_domains(tmp_path / "a", num_per_domain=2, image_size=32, domains="content")
    b = generate_fundus_domains(tmp_path / "b", num_per_domain=2, image_size=32, domains="content")
    sections = load_datalist(a)
    assert json.loads(a.read_text())["domains"] == list_domains("content")
    assert [item["domain"] for item in sections["glaucoma"]] == ["glaucoma", "glaucoma"]
    assert "source_train" in sections
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.png"))
    assert len(files) == 2 * 2 * len(list_domains("content"))
    assert all((a.parent / f).read_bytes() == (b.parent / f).read_bytes() for f in files)
    manifest = json.loads((a.parent / "manifest.json").read_text())
    assert manifest["domains"]["glaucoma"]["anatomy"]["cup_to_disc"] == [0.6, 0.85]
    # a domain's cases do not depend on which others are generated
    c = generate_fundus_domains(tmp_path / "c", num_per_domain=2, image_size=32, domains=["lesions"])
    assert (c.parent / "lesions/images/lesions_0001.png").read_bytes() == (
        a.parent / "lesions/images/lesions_0001.png"
    ).read_bytes()


def test_mr_content_preset_generates_deterministic_data(tmp_path):
    kwargs = {"num_train": 1, "num_test": 1, "voxel_scale": 3.0, "sites": "content"}
    a = generate_mr_sites(tmp_path / "a", **kwargs)
    b = generate_mr_sites(tmp_path / "b", **kwargs)
    assert json.loads(a.read_text())["domains"] == list_mr_sites("content")
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.nii.gz"))
    assert len(files) == 2 * 2 * len(list_mr_sites("content"))
    assert all((a.parent / f).read_bytes() == (b.parent / f).read_bytes() for f in files)
    manifest = json.loads((a.parent / "manifest.json").read_text())
    assert manifest["sites"]["bph"]["anatomy"]["gland_scale"] == [1.3, 1.55]
    assert "anatomy" not in manifest["sites"]["pelvis"]  # an acquisition-geometry site: no patient change


# ---------------------------------------------------------------------------------------------------------------------
# the labels follow the content change


def _fundus_shares(domain: str, n: int = 6, size: int = 64) -> tuple[float, float]:
    """Mean disc share of the image and cup share of the disc over ``n`` cases."""
    disc, cup = [], []
    for index in range(n):
        _, mask = synthesize_fundus_case(domain, index, size)
        disc.append(float((mask != MASK_BACKGROUND).mean()))
        cup.append(float((mask == MASK_CUP).sum() / max((mask != MASK_BACKGROUND).sum(), 1)))
    return float(np.mean(disc)), float(np.mean(cup))


def test_fundus_field_of_view_and_cup_share_change_the_masks():
    disc_source, cup_source = _fundus_shares("source")
    disc_wide, _ = _fundus_shares("wide")
    disc_crop, _ = _fundus_shares("crop")
    _, cup_glaucoma = _fundus_shares("glaucoma")
    assert disc_wide < 0.6 * disc_source  # 0.65x zoom: about 0.42x the area
    assert disc_crop > 2.5 * disc_source  # 2x zoom: about 4x the area
    assert cup_glaucoma > 1.5 * cup_source
    image, _ = synthesize_fundus_case("crop", 0, 64)
    assert image[:4, :4].mean() > 20  # a crop has no dark border


def test_fundus_findings_change_the_image_not_the_mask():
    rng_seed = np.random.SeedSequence(5)
    for domain in ("myopic", "lesions"):
        spec = CONTENT_FUNDUS_DOMAINS[domain]
        plain = replace(spec, anatomy=replace(spec.anatomy, atrophy=0.0, exudates=(0, 0), haemorrhages=(0, 0)))
        with_findings = render_scene(np.random.default_rng(rng_seed), spec, (64, 64), np.random.default_rng(1))
        without = render_scene(np.random.default_rng(rng_seed), plain, (64, 64))
        np.testing.assert_array_equal(with_findings[1], without[1])
        assert not np.allclose(with_findings[0], without[0])
    with pytest.raises(ValueError, match="findings_rng"):
        render_scene(np.random.default_rng(0), CONTENT_FUNDUS_DOMAINS["lesions"], (64, 64))


def test_fundus_anatomy_defaults_are_the_source_ranges():
    assert FundusAnatomy().cup_to_disc == (0.3, 0.7)
    assert FundusAnatomy().exudates == (0, 0)


def _gland_ml(site: str, n: int = 3) -> tuple[float, float]:
    """Mean gland volume (mL) and foreground share of the volume over ``n`` test cases at voxel_scale 1.5."""
    volume, share = [], []
    for index in range(n):
        _, label, affine = synthesize_mr_case(site, "test", index, voxel_scale=1.5)
        voxel = abs(np.linalg.det(affine[:3, :3]))
        volume.append((label > 0).sum() * voxel / 1000.0)
        share.append(float((label > 0).mean()))
    return float(np.mean(volume)), float(np.mean(share))


def test_mr_gland_size_and_field_of_view_change_the_labels():
    ml_source, share_source = _gland_ml("source")
    ml_bph, _ = _gland_ml("bph")
    ml_small, _ = _gland_ml("small")
    _, share_pelvis = _gland_ml("pelvis")
    _, share_cropped = _gland_ml("cropped")
    assert ml_bph > 2.0 * ml_source and ml_small < 0.7 * ml_source
    assert share_pelvis < 0.25 * share_source and share_cropped > 3.0 * share_source
    image, label, _ = synthesize_mr_case("pelvis", "test", 0, voxel_scale=3.0)
    assert image.shape == label.shape == (40, 40, 13)


def test_mr_variation_moves_the_neighbours_and_keeps_the_rest():
    anatomy = draw_pelvis(np.random.default_rng(3))
    assert vary_pelvis(anatomy, PelvisVariation(), np.random.default_rng(0)) is anatomy
    big = vary_pelvis(anatomy, PelvisVariation(gland_scale=(1.5, 1.5), tz_ratio=(0.85, 0.85)), np.random.default_rng(0))
    np.testing.assert_allclose(big.gland_semi, np.asarray(anatomy.gland_semi) * 1.5)
    assert big.tz_semi[0] / big.gland_semi[0] == pytest.approx(0.85)
    grow_y, grow_z = 0.5 * anatomy.gland_semi[1], 0.5 * anatomy.gland_semi[2]
    assert big.rectum_centre[1] == pytest.approx(anatomy.rectum_centre[1] - grow_y)
    assert big.bladder_centre[2] == pytest.approx(anatomy.bladder_centre[2] + grow_z)
    assert big.tissue == anatomy.tissue and big.body_semi == anatomy.body_semi
    with pytest.raises(ValueError, match="tz_ratio"):
        vary_pelvis(anatomy, PelvisVariation(tz_ratio=(0.5, 1.2)), np.random.default_rng(0))


def test_mr_lesions_darken_the_peripheral_zone_and_keep_its_label():
    anatomy = draw_pelvis(np.random.default_rng(4))
    with_lesions = vary_pelvis(anatomy, PelvisVariation(lesions=(3, 3)), np.random.default_rng(0))
    assert len(with_lesions.lesions) == 3
    # points on a 1 mm grid around the gland
    axes = [np.arange(c - s - 2, c + s + 2, 1.0) for c, s in zip(anatomy.gland_centre, anatomy.gland_semi)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    np.testing.assert_array_equal(phantom_label(with_lesions, points), phantom_label(anatomy, points))
    before, after = phantom_signal(anatomy, points), phantom_signal(with_lesions, points)
    changed = before != after
    assert changed.sum() > 50
    assert np.all(phantom_label(anatomy, points)[changed] == PERIPHERAL_ZONE)
    assert after[changed].mean() < 0.6 * before[changed].mean()
