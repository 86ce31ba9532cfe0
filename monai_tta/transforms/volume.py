"""The standard MONAI 3D pipeline for NIfTI volumes: load, reorient, resample, normalise; and its inverse for masks.

:func:`volume_preprocessing` is the pre-processing of the model zoo's 3D bundles (e.g. ``spleen_ct_segmentation``):
``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd`` -> ``Spacingd`` -> intensity normalisation ->
optionally ``ResizeWithPadOrCropd``. Every transform has ``allow_missing_keys``, so one pipeline serves labelled
cases (training, evaluation) and image-only requests (inference). :func:`volume_postprocessing` maps a prediction
back to the input's space with ``Invertd`` and writes it with ``SaveImaged``: the mask has the input's shape, affine
and orientation, so it overlays the input in any viewer.

Example::

    pre = volume_preprocessing(pixdim=(2.0, 2.0, 2.0))
    post = volume_postprocessing(pre, output_dir="./masks")
    data = pre({"image": "case.nii.gz"})
    data["pred"] = inferer(data["image"][None], network)[0]
    post(data)  # ./masks/case_seg.nii.gz, in case.nii.gz's space
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ResizeWithPadOrCropd,
    SaveImaged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.utils import look_up_option

from monai_tta.data.keys import DataKeys

__all__ = [
    "VOLUME_READERS",
    "VOLUME_NORMALIZATIONS",
    "VOLUME_ACTIVATIONS",
    "volume_preprocessing",
    "volume_postprocessing",
]

VOLUME_READERS = ("NibabelReader", "ITKReader")
"""Readers for ``LoadImaged``; both give the array and a RAS affine, so the pipeline's output does not depend on it."""

VOLUME_NORMALIZATIONS = ("percentile", "zscore")
"""``percentile``: the 1st-99th percentile range to [0, 1] (not clipped); ``zscore``: mean 0, std 1 over non-zero
voxels."""

VOLUME_ACTIVATIONS = ("softmax", "sigmoid")
"""``softmax``: one channel per class, argmax to a label map; ``sigmoid``: one channel per label, threshold 0.5."""


def volume_preprocessing(
    pixdim: Sequence[float] | float = (2.0, 2.0, 2.0),
    reader: str = "NibabelReader",
    normalize: str = "percentile",
    axcodes: str = "RAS",
    spatial_size: Sequence[int] | int | None = None,
    image_key: str = DataKeys.IMAGE.value,
    label_key: str = DataKeys.LABEL.value,
) -> Compose:
    """The MONAI pre-processing of 3D volumes (and their labels, where present).

    Steps: ``LoadImaged`` (``reader``), ``EnsureChannelFirstd``, ``Orientationd(axcodes)``, ``Spacingd(pixdim)``
    (bilinear for the image, nearest for the label), the intensity normalisation of the image, and, when
    ``spatial_size`` is given, ``ResizeWithPadOrCropd`` (centred; padding value 0). Every step is invertible or
    intensity-only, so ``Invertd`` maps a prediction back to the input's space.

    The default normalisation is ``percentile``: MR intensities are in arbitrary units whose scale and offset differ
    per scanner, and both normalisations remove any such linear change; percentiles are also robust to the few very
    bright voxels of a coil's near field or of urine, which shift a mean and standard deviation, and they put air near
    0 so that the padding value 0 means background. ``zscore`` (``NormalizeIntensityd(nonzero=True)``, as nnU-Net
    normalises MR) is the alternative; voxels that are exactly 0 (zero-filled outside a field of view) are left out.

    Args:
        pixdim: target voxel spacing in millimetres, one value or one per axis.
        reader: ``"NibabelReader"`` or ``"ITKReader"``.
        normalize: ``"percentile"`` or ``"zscore"``.
        axcodes: target orientation (nibabel axis codes).
        spatial_size: if given, crop or pad the result to this size (one value or one per axis) so that volumes of
            every site batch together; ``None`` keeps the size that the field of view and ``pixdim`` give.
        image_key: key of the image path.
        label_key: key of the label path; a data dictionary without it is processed as image-only.

    Returns:
        the ``Compose``; ``Invertd`` can invert it for ``image_key``.

    Raises:
        ValueError: for an unknown reader or normalisation.
    """
    reader = look_up_option(reader, VOLUME_READERS)
    normalize = look_up_option(normalize, VOLUME_NORMALIZATIONS)
    keys = [image_key, label_key]
    transforms = [
        LoadImaged(keys=keys, reader=reader, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
        Orientationd(keys=keys, axcodes=axcodes, labels=None, allow_missing_keys=True),  # labels from the meta "space"
        Spacingd(keys=keys, pixdim=pixdim, mode=("bilinear", "nearest"), allow_missing_keys=True),
    ]
    if normalize == "percentile":
        transforms.append(
            ScaleIntensityRangePercentilesd(
                keys=image_key, lower=1.0, upper=99.0, b_min=0.0, b_max=1.0, clip=False, channel_wise=True
            )
        )
    else:
        transforms.append(NormalizeIntensityd(keys=image_key, nonzero=True, channel_wise=True))
    if spatial_size is not None:
        transforms.append(ResizeWithPadOrCropd(keys=keys, spatial_size=spatial_size, allow_missing_keys=True))
    return Compose(transforms)


def volume_postprocessing(
    preprocessing: Compose,
    output_dir: str,
    activation: str = "softmax",
    output_postfix: str = "seg",
    pred_key: str = DataKeys.PRED.value,
    image_key: str = DataKeys.IMAGE.value,
    separate_folder: bool = False,
) -> Compose:
    """Map a network's output back to the input's space and write it as a NIfTI mask.

    Steps (as in the model zoo's 3D bundles): ``Activationsd``, ``Invertd`` (probabilities are resampled with linear
    interpolation, then discretised, which gives smoother boundaries than inverting a label map), ``AsDiscreted``
    (argmax or threshold 0.5) and ``SaveImaged`` (uint8, no resampling: the inverted prediction already has the
    input's grid, so the file gets the input's affine and shape). The file is
    ``<output_dir>/<input name>_<output_postfix>.nii.gz``.

    Args:
        preprocessing: the pre-processing that produced the network's input, e.g. from :func:`volume_preprocessing`.
        output_dir: folder of the written masks.
        activation: ``"softmax"`` (channels are classes, argmax) or ``"sigmoid"`` (channels are labels, > 0.5).
        output_postfix: appended to the input's file name.
        pred_key: key of the prediction, channel-first ``(C, spatial...)`` in the pre-processed space.
        image_key: key of the pre-processed image, whose transform history ``Invertd`` undoes.
        separate_folder: write each mask in a sub-folder named after its input (``SaveImaged``'s option).

    Returns:
        the ``Compose``.

    Raises:
        ValueError: for an unknown activation.
    """
    activation = look_up_option(activation, VOLUME_ACTIVATIONS)
    softmax = activation == "softmax"
    return Compose(
        [
            Activationsd(keys=pred_key, softmax=softmax, sigmoid=not softmax),
            Invertd(
                keys=pred_key,
                transform=preprocessing,
                orig_keys=image_key,
                nearest_interp=False,
                to_tensor=True,
            ),
            AsDiscreted(keys=pred_key, argmax=softmax, threshold=None if softmax else 0.5),
            SaveImaged(
                keys=pred_key,
                output_dir=output_dir,
                output_postfix=output_postfix,
                output_dtype=np.uint8,
                resample=False,
                separate_folder=separate_folder,
                print_log=False,
            ),
        ]
    )
