"""GraTa's strong augmentation and the flip/rotation views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_tta.transforms import (
    FLIP_ROT_VIEWS,
    StrongStyle,
    StrongStyled,
    apply_view,
    gaussian_blur_channel,
    invert_view,
    minmax_per_sample,
)

OFF = dict(prob_brightness=0.0, prob_contrast=0.0, prob_gamma=0.0, prob_noise=0.0, prob_blur=0.0)


def image(seed=0, shape=(2, 3, 12, 12)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_views_are_inverted_exactly_and_match_rot90():
    x = image(shape=(1, 2, 5, 5))
    for view in FLIP_ROT_VIEWS:
        assert torch.equal(invert_view(apply_view(x, view), view), x)
    assert torch.equal(apply_view(x, "rot90"), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(apply_view(x, "rot270"), torch.rot90(x, 3, dims=(-2, -1)))
    with pytest.raises(ValueError, match="view"):
        apply_view(x, "rot45")


def test_all_steps_off_is_the_per_sample_minmax():
    x = image()
    out = StrongStyle(**OFF)(x)
    torch.testing.assert_close(out, minmax_per_sample(x))
    flat = out.flatten(1)
    assert torch.equal(flat.min(1).values, torch.zeros(2)) and torch.equal(flat.max(1).values, torch.ones(2))


def test_output_range_input_untouched_and_seeded():
    x = image()
    before = x.clone()
    aug = StrongStyle(prob_brightness=1, prob_contrast=1, prob_gamma=1, prob_noise=1, prob_blur=1)
    a = aug(x, generator=torch.Generator().manual_seed(3))
    b = aug(x, generator=torch.Generator().manual_seed(3))
    c = aug(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_gamma_keeps_each_channel_range_and_contrast_stays_inside_it():
    x = image(shape=(1, 3, 12, 12))[0]
    g = torch.Generator().manual_seed(0)
    for step in ("prob_gamma", "prob_contrast"):
        aug = StrongStyle(**{**OFF, step: 1.0})
        y = aug.augment_one(x, g)
        lo, hi = x.amin(dim=(1, 2)), x.amax(dim=(1, 2))
        if step == "prob_gamma":
            torch.testing.assert_close(y.amin(dim=(1, 2)), lo, atol=1e-6, rtol=0)
            torch.testing.assert_close(y.amax(dim=(1, 2)), hi, atol=1e-6, rtol=0)
        else:
            assert bool((y.amin(dim=(1, 2)) >= lo - 1e-7).all() and (y.amax(dim=(1, 2)) <= hi + 1e-7).all())
        assert not torch.equal(y, x)


def test_noise_std_is_within_its_range():
    x = image(shape=(1, 3, 64, 64))[0]
    y = StrongStyle(**{**OFF, "prob_noise": 1.0}).augment_one(x, torch.Generator().manual_seed(1))
    assert 0.0 < float((y - x).std()) < 0.05 * 1.1


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_blur_matches_scipy_reflect(sigma):
    x = image(shape=(1, 1, 15, 13))[0, 0]
    expected = ndimage.gaussian_filter(x.double().numpy(), sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur_channel(x.double(), sigma).numpy(), expected, atol=1e-10)


def test_dict_version_and_bad_probability():
    d = StrongStyled(keys="image", **OFF)({"image": image(shape=(1, 3, 8, 8))[0], "label": 1})
    assert d["image"].shape == (3, 8, 8) and d["label"] == 1
    with pytest.raises(ValueError, match="prob_noise"):
        StrongStyle(prob_noise=1.5)


def test_channels_to_label_map_inverts_the_fundus_and_onehot_encodings():
    from monai.data import MetaTensor

    from monai_tta.transforms import ChannelsToLabelMap, ChannelsToLabelMapd, FundusMaskToChannels

    mask = torch.tensor([[[255, 128, 0], [255, 0, 128]]], dtype=torch.uint8)  # background, rim, cup
    channels = FundusMaskToChannels()(mask)
    label_map = ChannelsToLabelMap()(MetaTensor(channels, meta={"filename_or_obj": "a.png"}))
    assert label_map.dtype == torch.uint8 and label_map.shape == (1, 2, 3)
    assert label_map.tolist() == [[[0, 1, 2], [0, 2, 1]]] and label_map.meta["filename_or_obj"] == "a.png"
    onehot = FundusMaskToChannels("onehot", num_classes=3)(np.array([[[0, 3, 1, 2]]]))
    out = ChannelsToLabelMapd("pred")({"pred": onehot})["pred"]
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.tolist() == [[[0, 3, 1, 2]]]
    with pytest.raises(ValueError, match="channel-first"):
        ChannelsToLabelMap()(torch.zeros(4))


def test_string_items_aside_lets_spacingd_run_on_a_served_nifti_and_be_inverted(tmp_path):
    """MONAI Label puts ``image_path`` (a string) next to the image; plain ``Spacingd`` fails on it for NIfTI files."""
    import nibabel as nib
    from monai.transforms import LoadImaged, Spacingd

    from monai_tta.transforms import StringItemsAsided

    path = tmp_path / "volume.nii.gz"
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4), affine), str(path))
    data = LoadImaged("image", ensure_channel_first=True, image_only=False)({"image": str(path)})
    data["image_path"] = str(path)
    spacing = Spacingd("image", pixdim=(2.0, 2.0, 2.0), mode="nearest")
    with pytest.raises(AttributeError):
        spacing(dict(data))
    wrapped = StringItemsAsided(spacing)
    out = wrapped(dict(data))
    assert out["image_path"] == str(path) and tuple(out["image"].shape) == (1, 4, 4, 4)
    assert torch.equal(out["image"], spacing({"image": data["image"]})["image"])
    back = wrapped.inverse(out)
    assert back["image_path"] == str(path) and tuple(back["image"].shape) == (1, 8, 6, 4)
    with pytest.raises(ValueError, match="MapTransform"):
        StringItemsAsided(lambda d: d)
