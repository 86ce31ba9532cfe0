"""The TTA overlay (``configs/tta.json``, ``docs/zoo.md``) on Model Zoo segmentation bundles, GraTa and TENT each:
it runs, updates only normalisation parameters, uses the bundle's activation (softmax where the bundle is softmax),
adapts per patient, and writes masks in the plain run's grid and affine.

The configs are ours (``tests/zoo_style/<name>/configs``: the zoo bundles' networks, pre/post-processing, inferer
and ``amp`` written in our own format), or the real zoo configs when a folder of them is given: the environment
variable ``MONAI_TTA_ZOO_CONFIGS`` (a folder holding ``<name>/configs``) or ``../shared/zoo_bundles/<name>/configs``.
The networks are shrunk and the windows made small (``TINY``) so that each run takes seconds on a CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from zoo_overlay import BUNDLES, prepare_bundle, run_bundle, same_grids

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CASES, SIZE = 2, 20
#: per bundle: smaller networks and windows than the zoo's (the structure, norms and activation are the bundle's).
TINY = {
    "spleen_ct_segmentation": {"network_def#channels": [4, 8, 16, 32, 64]},
    "prostate_mri_anatomy": {"network_def#channels": [4, 8, 16, 32, 64, 64], "network_def#num_res_units": 1},
    "brats_mri_segmentation": {"network_def#init_filters": 8},
    "swin_unetr_btcv_segmentation": {"network_def#feature_size": 12, "network_def#depths": [1, 1, 1, 1]},
    "pancreas_ct_dints_segmentation": {"dints_space#channel_mul": 0.25, "dints_space#num_blocks": 3},
}
ROI = {"swin_unetr_btcv_segmentation": 64}  # SwinUNETR's deepest stage needs more than 1 voxel per patch
CLASSES = {
    "spleen_ct_segmentation": 2,
    "prostate_mri_anatomy": 3,
    "swin_unetr_btcv_segmentation": 14,
    "pancreas_ct_dints_segmentation": 3,
}


def configs_of(name: str) -> Path:
    """The real zoo configs when given (environment variable, then ``../shared/zoo_bundles``), else ours."""
    given = os.environ.get("MONAI_TTA_ZOO_CONFIGS")
    candidates = [Path(given) / name / "configs"] if given else []
    candidates += [
        ROOT.parent / "shared" / "zoo_bundles" / name / "configs",
        ROOT / "tests" / "zoo_style" / name / "configs",
    ]
    return next(c for c in candidates if c.is_dir())


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    """One prepared bundle folder and its plain run per bundle, shared by the GraTa and TENT runs."""
    cache = {}

    def get(name):
        if name not in cache:
            roi = ROI.get(name, 32)
            extra = {**TINY[name], "inferer#roi_size": [roi] * 3}
            work = tmp_path_factory.mktemp("zoo")
            bundle, overrides = prepare_bundle(
                name, configs_of(name), work, size=SIZE, cases=CASES, network_overrides=extra
            )
            cache[name] = bundle, overrides, run_bundle(bundle, overrides)
        return cache[name]

    return get


@pytest.mark.parametrize("method", ["tent", "grata"])
@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_overlay_adapts_correctly(name, method, plain_runs):
    bundle, overrides, plain = plain_runs(name)
    adapted = run_bundle(bundle, overrides, method, num_patches=2)
    spec = BUNDLES[name]
    assert len(plain.masks) == CASES and same_grids(plain.masks, adapted.masks)
    assert adapted.changed and adapted.changed <= adapted.norms, sorted(adapted.changed - adapted.norms)[:5]
    assert adapted.activation == spec.activation
    assert [s["reset"] for s in adapted.stats] == [True] * CASES  # per patient: back to the source before each one
    assert [s["step"] for s in adapted.stats] == [1] * CASES
    if method == "tent" and spec.activation == "softmax":  # the categorical entropy: at most ln(classes)
        assert all(0.0 < s["loss"] <= math.log(CLASSES[name]) + 1e-5 for s in adapted.stats)
