"""Tests of the data layer: synthetic generator, fundus CSV loader, datalists and the label encodings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image
from scipy import ndimage

from monai_tta.data import (
    FUNDUS_DOMAINS,
    SOURCE_DOMAIN,
    SYNTHETIC_FUNDUS_DOMAINS,
    case_id_from_path,
    domain_stream,
    fundus_datalist,
    generate_fundus_domains,
    list_domains,
    load_datalist,
    load_fundus_csv_domain,
    synthesize_fundus_case,
)
from monai_tta.data.keys import DataKeys
from monai_tta.transforms.label import FundusMaskToChannels, FundusMaskToChannelsd, LabelEncoding

IMAGE, LABEL, DOMAIN, CASE_ID = (k.value for k in (DataKeys.IMAGE, DataKeys.LABEL, DataKeys.DOMAIN, DataKeys.CASE_ID))
SIZE, N_CASES = 64, 5


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """All registered domains, 5 cases each, 64x64, seed 0."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_fundus_domains(root, num_per_domain=N_CASES, image_size=SIZE, seed=0)


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------------
# synthetic generator


def test_registry_lists_source_and_targets():
    names = list_domains()
    assert names == list(SYNTHETIC_FUNDUS_DOMAINS)
    assert names[0] == SOURCE_DOMAIN == "source"
    assert len(names) >= 5
    assert {"camera", "dim", "contrast", "blur", "fov"} <= set(names)
    assert all(SYNTHETIC_FUNDUS_DOMAINS[n].description for n in names)


def test_same_seed_gives_identical_bytes_different_seed_differs(tmp_path):
    kwargs = {"num_per_domain": 3, "image_size": 48, "domains": ["source", "blur"]}
    a = generate_fundus_domains(tmp_path / "a", seed=7, **kwargs).parent
    b = generate_fundus_domains(tmp_path / "b", seed=7, **kwargs).parent
    c = generate_fundus_domains(tmp_path / "c", seed=8, **kwargs).parent
    files_a, files_b, files_c = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(files_a) == 2 * 3 * 2 + 2  # images + masks, datalist.json, manifest.json
    assert files_a == files_b
    images = [k for k in files_a if "/images/" in k]
    assert len(images) == 6
    assert all(files_a[k] != files_c[k] for k in images)
    # a domain's cases do not depend on which other domains are generated
    d = generate_fundus_domains(tmp_path / "d", seed=7, num_per_domain=3, image_size=48, domains=["blur"]).parent
    files_d = _tree_bytes(d)
    assert all(files_d[k] == files_a[k] for k in files_d if k.startswith("blur/"))
    # the files hold exactly what the in-memory renderer returns
    image, mask = synthesize_fundus_case("blur", 2, 48, seed=7)
    np.testing.assert_array_equal(_png(a / "blur/images/blur_0002.png"), image)
    np.testing.assert_array_equal(_png(a / "blur/masks/blur_0002.png"), mask)


def test_every_domain_has_nested_nonempty_masks(generated):
    root = generated.parent
    datalist = json.loads(generated.read_text())
    for name in list_domains():
        assert len(datalist[name]) == N_CASES
        for item in datalist[name]:
            image, mask = _png(root / item[IMAGE]), _png(root / item[LABEL])
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 128, 255}  # cup, rim and background all present
            disc, cup = mask < 255, mask == 0
            # the cup lies inside the disc with a rim around it: growing the cup by one pixel stays in the disc
            assert not (ndimage.binary_dilation(cup) & ~disc).any()
            assert 0.3**2 * 0.5 < cup.sum() / disc.sum() < 0.75**2 * 1.5  # cup/disc ratio 0.3-0.7, as areas
            # the optic disc is brighter than the retina around it, in every domain
            ring = ndimage.binary_dilation(disc, iterations=4) & ~disc
            brightness = image.astype(float).sum(axis=-1)
            assert brightness[disc].mean() > brightness[ring].mean()


def test_domains_differ_in_appearance(generated):
    root = generated.parent
    datalist = json.loads(generated.read_text())
    means = {
        name: np.mean([_png(root / item[IMAGE]).reshape(-1, 3).mean(axis=0) for item in datalist[name]], axis=0)
        for name in list_domains()
    }
    src = means[SOURCE_DOMAIN]
    assert means["dim"].sum() < 0.5 * src.sum()  # under-exposed
    assert means["camera"][2] > 1.5 * src[2]  # bluer white balance
    assert means["contrast"].sum() > src.sum()  # haze lifts the intensities
    assert means["fov"].sum() < src.sum()  # narrower field of view: more black border


def test_datalist_sections_and_split(generated):
    root = generated.parent
    raw = json.loads(generated.read_text())
    assert raw["domains"] == list_domains()
    n_val = round(N_CASES * 0.2)
    assert raw["source_train"] + raw["source_val"] == raw[SOURCE_DOMAIN]
    assert len(raw["source_val"]) == n_val
    for name in list_domains():
        for index, item in enumerate(raw[name]):
            assert item == {
                IMAGE: f"{name}/images/{name}_{index:04d}.png",
                LABEL: f"{name}/masks/{name}_{index:04d}.png",
                DOMAIN: name,
                CASE_ID: f"{name}_{index:04d}",
            }
    sections = load_datalist(generated)
    assert list(sections) == ["source_train", "source_val", *list_domains()]
    first = sections["camera"][0]
    assert first[IMAGE] == str(root / "camera/images/camera_0000.png")
    assert first[LABEL] == str(root / "camera/masks/camera_0000.png")
    assert first[DOMAIN] == "camera" and first[CASE_ID] == "camera_0000"
    assert {item[DOMAIN] for item in sections["source_val"]} == {SOURCE_DOMAIN}


def test_regeneration_is_skipped_unless_needed(tmp_path):
    kwargs = {"num_per_domain": 2, "image_size": 40, "domains": ["dim"]}
    datalist = generate_fundus_domains(tmp_path, seed=1, **kwargs)
    image = tmp_path / "dim/images/dim_0001.png"
    original = image.read_bytes()
    image.write_bytes(b"tampered")
    assert generate_fundus_domains(tmp_path, seed=1, **kwargs) == datalist
    assert image.read_bytes() == b"tampered"  # manifest matches and the file exists: skipped
    generate_fundus_domains(tmp_path, seed=1, overwrite=True, **kwargs)
    assert image.read_bytes() == original
    image.unlink()
    generate_fundus_domains(tmp_path, seed=1, **kwargs)  # a missing file triggers regeneration
    assert image.read_bytes() == original
    generate_fundus_domains(tmp_path, seed=2, **kwargs)  # another seed: regenerated
    assert image.read_bytes() != original
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"domains": ["source", "no_such_domain"]},
        {"domains": ["dim", "dim"]},
        {"domains": []},
        {"image_size": 16},
        {"image_size": (64, 64, 64)},
        {"num_per_domain": 0},
        {"seed": -1},
        {"val_fraction": 1.0},
    ],
)
def test_generator_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_fundus_domains(tmp_path, **{"num_per_domain": 1, "image_size": 32, **kwargs})


def test_rectangular_images():
    image, mask = synthesize_fundus_case("fov", 0, (48, 80), seed=3)
    assert image.shape == (48, 80, 3) and mask.shape == (48, 80)
    assert (mask == 0).any()


def test_monai_pipeline_reads_generated_case(generated):
    root = generated.parent
    item = load_datalist(generated, sections="contrast")["contrast"][3]
    expected_image, expected_mask = synthesize_fundus_case("contrast", 3, SIZE, seed=0)
    keys = [IMAGE, LABEL]
    # PILReader(reverse_indexing=False) keeps the numpy (row, column) layout of the PNG
    pipeline = Compose(
        [
            LoadImaged(keys, reader="PILReader", reverse_indexing=False),
            EnsureChannelFirstd(keys),
            FundusMaskToChannelsd(LABEL),
        ]
    )
    out = pipeline(dict(item))
    assert tuple(out[IMAGE].shape) == (3, SIZE, SIZE) and tuple(out[LABEL].shape) == (2, SIZE, SIZE)
    assert isinstance(out[LABEL], MetaTensor) and out[LABEL].dtype == torch.float32
    np.testing.assert_array_equal(out[IMAGE].numpy(), expected_image.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(out[LABEL][0].numpy(), (expected_mask < 255).astype(np.float32))
    np.testing.assert_array_equal(out[LABEL][1].numpy(), (expected_mask == 0).astype(np.float32))
    assert out[LABEL].meta["filename_or_obj"] == str(root / "contrast/masks/contrast_0003.png")
    # MONAI's default PNG reading (reverse_indexing=True) gives the transposed (x, y) layout
    default = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), FundusMaskToChannelsd(LABEL)])(dict(item))
    np.testing.assert_array_equal(default[LABEL][1].numpy(), (expected_mask == 0).T.astype(np.float32))


# ---------------------------------------------------------------------------------------------------------------------
# fundus CSV layout


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_csv(path: Path, rows: list[tuple[str, str]], header: str = "image,mask") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + [f"{a},{b}" for a, b in rows]) + "\n")


TINY_MASK = np.array([[255, 255, 255, 255], [255, 128, 128, 255], [255, 128, 0, 255], [255, 255, 255, 255]], np.uint8)


@pytest.fixture
def fundus_root(tmp_path) -> Path:
    """Tiny layout: RIM_ONE_r3 with train/test CSVs in the root (reference), REFUGE_Valid with one CSV in its folder."""
    image = np.full((4, 4, 3), 90, np.uint8)
    for rel in ["RIM_ONE_r3/train/image/a.png", "RIM_ONE_r3/train/image/b.png", "RIM_ONE_r3/test/image/c.png"]:
        _write_png(tmp_path / rel, image)
    _write_png(tmp_path / "RIM_ONE_r3/train/mask/a.png", TINY_MASK)
    _write_png(tmp_path / "RIM_ONE_r3/train/mask/b-1.tif", TINY_MASK)  # CSV says b.tif: the reference reads b-1.tif
    _write_png(tmp_path / "RIM_ONE_r3/test/mask/c.tif", TINY_MASK)  # no c-1.tif: kept as listed
    _write_csv(
        tmp_path / "RIM_ONE_r3_train.csv",
        [("RIM_ONE_r3/train/image/a.png", "RIM_ONE_r3/train/mask/a.png"),
         ("RIM_ONE_r3/train/image/b.png", "RIM_ONE_r3/train/mask/b.tif")],
    )  # fmt: skip
    _write_csv(tmp_path / "RIM_ONE_r3_test.csv", [("RIM_ONE_r3/test/image/c.png", "RIM_ONE_r3/test/mask/c.tif")])
    for name in ["x", "y"]:
        _write_png(tmp_path / f"REFUGE_Valid/{name}/img.png", image)  # same stem twice
        _write_png(tmp_path / f"REFUGE_Valid/{name}/mask.png", TINY_MASK)
    _write_csv(
        tmp_path / "REFUGE_Valid/REFUGE_Valid.csv",
        [("REFUGE_Valid/y/img.png", "REFUGE_Valid/y/mask.png"), ("REFUGE_Valid/x/img.png", "REFUGE_Valid/x/mask.png")],
        header=" image , mask ",
    )
    return tmp_path


def test_fundus_csv_domain_concatenates_train_then_test(fundus_root):
    items = load_fundus_csv_domain(fundus_root, "RIM_ONE_r3")
    r = str(fundus_root)
    assert items == [
        {IMAGE: f"{r}/RIM_ONE_r3/train/image/a.png", LABEL: f"{r}/RIM_ONE_r3/train/mask/a.png", DOMAIN: "RIM_ONE_r3",
         CASE_ID: "a"},
        {IMAGE: f"{r}/RIM_ONE_r3/train/image/b.png", LABEL: f"{r}/RIM_ONE_r3/train/mask/b-1.tif",
         DOMAIN: "RIM_ONE_r3", CASE_ID: "b"},
        {IMAGE: f"{r}/RIM_ONE_r3/test/image/c.png", LABEL: f"{r}/RIM_ONE_r3/test/mask/c.tif", DOMAIN: "RIM_ONE_r3",
         CASE_ID: "c"},
    ]  # fmt: skip
    # reading again gives the same list: the .tif rewrite is not compounded (no b-1-1.tif)
    assert load_fundus_csv_domain(fundus_root, "RIM_ONE_r3") == items


def test_fundus_single_csv_domain_and_datalist(fundus_root):
    datalist = fundus_datalist(fundus_root, domains=("REFUGE_Valid", "RIM_ONE_r3"))
    assert list(datalist) == ["REFUGE_Valid", "RIM_ONE_r3"]
    refuge = datalist["REFUGE_Valid"]
    assert [item[IMAGE] for item in refuge] == [
        str(fundus_root / "REFUGE_Valid/y/img.png"),
        str(fundus_root / "REFUGE_Valid/x/img.png"),
    ]
    # repeated stems fall back to the root-relative path
    assert [item[CASE_ID] for item in refuge] == ["REFUGE_Valid/y/img", "REFUGE_Valid/x/img"]
    assert {item[DOMAIN] for item in refuge} == {"REFUGE_Valid"}
    assert FUNDUS_DOMAINS == ("RIM_ONE_r3", "REFUGE", "ORIGA", "REFUGE_Valid", "Drishti_GS")
    # a listed item goes through the same MONAI pipeline as generated data
    out = Compose(
        [LoadImaged([IMAGE, LABEL], reader="PILReader", reverse_indexing=False), EnsureChannelFirstd([IMAGE, LABEL]),
         FundusMaskToChannelsd(LABEL)]
    )(refuge[0])  # fmt: skip
    disc = [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    cup = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(out[LABEL].numpy(), np.array([disc, cup], np.float32))


def test_fundus_tif_rewrite_can_be_disabled(fundus_root):
    with pytest.raises(FileNotFoundError, match=r"b\.tif"):
        load_fundus_csv_domain(fundus_root, "RIM_ONE_r3", tif_mask_suffix=None)
    items = load_fundus_csv_domain(fundus_root, "RIM_ONE_r3", tif_mask_suffix=None, check_files=False)
    assert items[1][LABEL] == str(fundus_root / "RIM_ONE_r3/train/mask/b.tif")


def test_fundus_csv_errors(fundus_root, tmp_path_factory):
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        load_fundus_csv_domain(fundus_root / "no_such_root", "RIM_ONE_r3")
    with pytest.raises(FileNotFoundError, match="ORIGA_train.csv"):
        load_fundus_csv_domain(fundus_root, "ORIGA")
    _write_csv(fundus_root / "Drishti_GS_train.csv", [])
    with pytest.raises(FileNotFoundError, match="Drishti_GS_test.csv"):
        load_fundus_csv_domain(fundus_root, "Drishti_GS")
    _write_csv(fundus_root / "REFUGE.csv", [("a.png", "a.png")], header="img,label")
    with pytest.raises(ValueError, match="columns"):
        load_fundus_csv_domain(fundus_root, "REFUGE")
    (fundus_root / "RIM_ONE_r3/test/image/c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"RIM_ONE_r3/test/image/c\.png"):
        load_fundus_csv_domain(fundus_root, "RIM_ONE_r3")
    items = load_fundus_csv_domain(fundus_root, "RIM_ONE_r3", check_files=False)
    assert items[2][IMAGE] == str(fundus_root / "RIM_ONE_r3/test/image/c.png")
    with pytest.raises(ValueError):
        fundus_datalist(fundus_root, domains=("RIM_ONE_r3", "RIM_ONE_r3"))


# ---------------------------------------------------------------------------------------------------------------------
# generic datalists


def test_load_datalist_nifti_any_channels(tmp_path):
    image = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    label = np.zeros((6, 5, 4, 2), np.uint8)  # two channels, channel last as NIfTI stores them
    label[1:3, 1:4, 1:3, 0] = 1
    label[2, 2, 2, 1] = 1
    (tmp_path / "siteA").mkdir()  # a folder named like a domain: must not turn "domain": "siteA" into a path
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "siteA/case_01.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "siteA/case_01_seg.nii.gz")
    absolute = str(tmp_path / "siteA/case_01.nii.gz")
    content = {
        "domains": ["siteA", "siteB"],
        "siteA": [{IMAGE: "siteA/case_01.nii.gz", LABEL: "siteA/case_01_seg.nii.gz"}],
        "siteB": [{IMAGE: absolute, DOMAIN: "siteA", CASE_ID: "custom", "extra": 3}],
        "test": ["siteA/case_01.nii.gz"],
    }
    path = tmp_path / "lists" / "multi_site.json"
    path.parent.mkdir()
    path.write_text(json.dumps(content))

    sections = load_datalist(path, base_dir=tmp_path)
    assert list(sections) == ["siteA", "siteB"]  # metadata and the list of strings are skipped
    assert sections["siteA"] == [
        {IMAGE: absolute, LABEL: str(tmp_path / "siteA/case_01_seg.nii.gz"), DOMAIN: "siteA", CASE_ID: "case_01"}
    ]
    assert sections["siteB"] == [{IMAGE: absolute, DOMAIN: "siteA", CASE_ID: "custom", "extra": 3}]
    # without base_dir, relative paths are relative to the JSON's folder
    relative_to_json = os.path.join(path.parent, "siteA/case_01.nii.gz")
    assert load_datalist(path, sections=["siteA"])["siteA"][0][IMAGE] == relative_to_json
    # a Decathlon-style list of image paths, when asked for
    assert load_datalist(path, sections="test", base_dir=tmp_path)["test"] == [
        {IMAGE: absolute, DOMAIN: "test", CASE_ID: "case_01"}
    ]

    keys = [IMAGE, LABEL]
    out = Compose([LoadImaged(keys), EnsureChannelFirstd(keys)])(sections["siteA"][0])
    assert tuple(out[IMAGE].shape) == (1, 6, 5, 4) and tuple(out[LABEL].shape) == (2, 6, 5, 4)
    np.testing.assert_array_equal(out[IMAGE][0].numpy(), image)
    np.testing.assert_array_equal(out[LABEL].numpy(), label.transpose(3, 0, 1, 2).astype(np.float32))


def test_load_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_datalist(tmp_path / "missing.json")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"a": [{IMAGE: "x.png"}], "meta": 3, "bad": [{LABEL: "y.png"}]}))
    with pytest.raises(ValueError, match="'nope'"):
        load_datalist(path, sections=["a", "nope"])
    with pytest.raises(ValueError, match="section 'meta'"):
        load_datalist(path, sections="meta")
    with pytest.raises(ValueError, match="no 'image'"):
        load_datalist(path, sections="bad")


def test_case_id_from_path():
    assert case_id_from_path("/data/case_001.nii.gz") == "case_001"
    assert case_id_from_path("a/b/img.v2.png") == "img.v2"
    assert case_id_from_path("scan.NII.GZ") == "scan"


def test_domain_stream_order_rounds_and_copies():
    datalist = {"A": [{IMAGE: "a0", DOMAIN: "A"}, {IMAGE: "a1", DOMAIN: "A"}], "B": [{IMAGE: "b0"}], "C": []}
    stream = domain_stream(datalist, ["B", "A"], rounds=2)
    assert stream == [
        {IMAGE: "b0", DOMAIN: "B"},
        {IMAGE: "a0", DOMAIN: "A"},
        {IMAGE: "a1", DOMAIN: "A"},
        {IMAGE: "b0", DOMAIN: "B"},
        {IMAGE: "a0", DOMAIN: "A"},
        {IMAGE: "a1", DOMAIN: "A"},
    ]
    stream[0][IMAGE] = "changed"
    assert datalist["B"][0] == {IMAGE: "b0"}
    assert domain_stream(datalist, "A") == datalist["A"]
    with pytest.raises(ValueError, match="rounds"):
        domain_stream(datalist, ["A"], rounds=0)
    with pytest.raises(ValueError, match="'D'"):
        domain_stream(datalist, ["A", "D"])
    with pytest.raises(ValueError):
        domain_stream(datalist, [])


# ---------------------------------------------------------------------------------------------------------------------
# label encodings

FUNDUS_MASK = np.array([[[255, 128, 0], [7, 255, 0]]], dtype=np.uint8)  # (1, 2, 3)
FUNDUS_EXPECTED = np.array([[[0, 1, 1], [1, 0, 1]], [[0, 0, 1], [0, 0, 1]]], dtype=np.float32)


def test_fundus_encoding_numpy_and_torch():
    out = FundusMaskToChannels()(FUNDUS_MASK)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, FUNDUS_EXPECTED)
    out_t = FundusMaskToChannels()(torch.as_tensor(FUNDUS_MASK))
    assert type(out_t) is torch.Tensor and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), FUNDUS_EXPECTED)
    out_u8 = FundusMaskToChannels(dtype=np.uint8)(FUNDUS_MASK)
    assert out_u8.dtype == np.uint8
    np.testing.assert_array_equal(out_u8, FUNDUS_EXPECTED.astype(np.uint8))


def test_fundus_encoding_keeps_meta_and_3d():
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    mask = MetaTensor(torch.full((1, 2, 2, 2), 255.0), affine=affine, meta={"filename_or_obj": "m.nii.gz"})
    mask[0, 0, 0, 0] = 0
    mask[0, 1, 1, 1] = 100
    out = FundusMaskToChannels()(mask)
    assert isinstance(out, MetaTensor) and tuple(out.shape) == (2, 2, 2, 2)
    assert out.meta["filename_or_obj"] == "m.nii.gz"
    torch.testing.assert_close(out.affine, affine.to(out.affine.dtype))
    disc = torch.zeros(2, 2, 2)
    disc[0, 0, 0] = disc[1, 1, 1] = 1
    cup = torch.zeros(2, 2, 2)
    cup[0, 0, 0] = 1
    torch.testing.assert_close(out.as_tensor(), torch.stack([disc, cup]))


def test_binary_and_onehot_encodings():
    labels = np.array([[[0, 1, 2], [3, 0, 2]]], dtype=np.int64)
    binary = FundusMaskToChannels(encoding="binary")(labels)
    np.testing.assert_array_equal(binary, np.array([[[0, 1, 1], [1, 0, 1]]], np.float32))
    onehot = FundusMaskToChannels(encoding=LabelEncoding.ONEHOT, num_classes=3)(labels)
    expected = np.array(
        [[[0, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1]], [[0, 0, 0], [1, 0, 0]]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(onehot, expected)
    assert FundusMaskToChannels("onehot", num_classes=3).out_channels == 3
    assert FundusMaskToChannels("binary").out_channels == 1
    assert FundusMaskToChannels().out_channels == 2


def test_label_encoding_errors():
    with pytest.raises(ValueError, match="encoding"):
        FundusMaskToChannels(encoding="softmax")
    with pytest.raises(ValueError, match="num_classes"):
        FundusMaskToChannels(encoding="onehot")
    with pytest.raises(ValueError, match="one channel"):
        FundusMaskToChannels()(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="one channel"):
        FundusMaskToChannels()(np.zeros((4,), np.uint8))


def test_dict_transform():
    data = {LABEL: FUNDUS_MASK, "other": FUNDUS_MASK, IMAGE: np.ones((3, 2, 3))}
    out = FundusMaskToChannelsd([LABEL, "missing"], allow_missing_keys=True)(data)
    np.testing.assert_array_equal(out[LABEL], FUNDUS_EXPECTED)
    assert out["other"] is FUNDUS_MASK and out[IMAGE] is data[IMAGE]
    assert data[LABEL] is FUNDUS_MASK  # the input dictionary is not modified
    binary = FundusMaskToChannelsd(LABEL, encoding="binary")(data)
    np.testing.assert_array_equal(binary[LABEL], (FUNDUS_MASK > 0).astype(np.float32))
    with pytest.raises(KeyError):
        FundusMaskToChannelsd("missing")(data)
