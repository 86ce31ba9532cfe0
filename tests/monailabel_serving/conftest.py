"""MONAI Label integration tests: they run in the environment that tools/monailabel_env.sh builds (CI's MONAI Label
stage); each module skips itself where MONAI Label is not installed (the unit suite)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
BUNDLES = ["grata_fundus_segmentation", "tent_fundus_segmentation", "source_only_fundus_segmentation"]
BUNDLES += ["vptta_fundus_segmentation", "dyna_fundus_segmentation"]
#: the served image size of the test copies (the bundles' 128 made 64 to keep the source training to seconds).
IMAGE_SIZE = 64


def sha256(path: Path) -> str:
    """The SHA-256 of a file (the source checkpoint must be the same before and after serving)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def app_with_bundles(root: Path, names: list[str], edit) -> Path:
    """``<root>/app``: the test app with a copy of each named bundle under ``model/`` (no eval, data or models), its
    ``inference.json`` changed by ``edit(config)`` (a deployment edit: MONAI Label reads inference.json as it is)."""
    app = root / "app"
    shutil.copytree(Path(__file__).parent / "app", app)
    for name in names:
        dst = app / "model" / name
        shutil.copytree(ROOT / "bundles" / name, dst, ignore=shutil.ignore_patterns("eval", "data", "models"))
        config = json.loads((dst / "configs" / "inference.json").read_text())
        edit(config)
        (dst / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    return app


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """An app folder with every bundle under ``model/`` (one source model shared, trained here on the embedded
    data), a studies folder of target-domain PNG images, and their ground-truth label maps."""
    from monai_tta.zoo.run import run_bundle

    root = tmp_path_factory.mktemp("monailabel")
    app = app_with_bundles(root, BUNDLES, lambda config: config.update(image_size=IMAGE_SIZE))
    first = app / "model" / BUNDLES[0]
    data = root / "data"
    overrides = {"dataset_dir": str(data), "output_dir": str(root / "eval"), "num_per_domain": 16, "epochs": 20}
    overrides.update({"val_interval": 1000, "batch_size": 4})
    run_bundle(first, ["inference.json", "source_training.json"], overrides, logging_file=False)
    for name in BUNDLES[1:]:
        (app / "model" / name / "models").mkdir()
        shutil.copyfile(first / "models" / "model.pt", app / "model" / name / "models" / "model.pt")
    datalist = json.loads((data / "datalist.json").read_text())
    studies = root / "studies"
    studies.mkdir()
    truth = {}
    for domain, count in (("source_train", 1), ("camera", 2), ("contrast", 1)):
        for item in datalist[domain][:count]:
            image = Path(data) / item["image"]
            shutil.copyfile(image, studies / image.name)
            mask = np.asarray(Image.open(Path(data) / item["label"]))
            truth[image.stem] = np.where(mask == 0, 2, np.where(mask < 255, 1, 0)).astype(np.uint8)
    return {"app": app, "studies": studies, "truth": truth}


#: the 3D bundles; their test copies are made tiny (half-resolution volumes, a 4-level UNet of 4..32 features).
BUNDLES_3D = ["grata_prostate_mr_segmentation", "tent_prostate_mr_segmentation", "source_only_prostate_mr_segmentation"]
TINY_3D = {"num_train": 3, "num_test": 2, "voxel_scale": 2.0, "pixdim": [4.0, 4.0, 6.0], "roi_size": [16, 16, 8]}
TINY_3D_NETWORK = {"channels": [4, 8, 16, 32], "num_res_units": 1}
#: the served volumes: two target sites of other orientations and spacings than the source (sagittal, oblique).
SITES_3D = ["thick_test", "sagittal_test", "oblique_test"]


@pytest.fixture(scope="session")
def served3d(tmp_path_factory):
    """An app folder with the 3D bundles under ``model/`` (their inference.json edited to the tiny geometry, one
    source model shared, trained here), a studies folder of NIfTI volumes of three target sites, and the masks that
    ``monai.bundle run`` of each bundle's ``inference.json`` wrote for those volumes."""
    from monai_tta.zoo.run import run_bundle

    root = tmp_path_factory.mktemp("monailabel3d")

    def tiny(config: dict) -> None:
        config.update({**TINY_3D, "target_domains": SITES_3D})
        config["network_def"].update(TINY_3D_NETWORK)

    app = app_with_bundles(root, BUNDLES_3D, tiny)
    data = root / "data"
    masks = {}
    for i, name in enumerate(BUNDLES_3D):
        bundle = app / "model" / name
        if i:
            (bundle / "models").mkdir()
            shutil.copyfile(app / "model" / BUNDLES_3D[0] / "models" / "model.pt", bundle / "models" / "model.pt")
        overrides = {"dataset_dir": str(data), "output_dir": str(root / "eval" / name), "source_training#epochs": 3}
        overrides["train_if_missing"] = i == 0  # the first bundle trains the source model the others copy
        run_bundle(bundle, ["inference.json"], {**overrides, "handlers#0#_disabled_": True}, logging_file=False)
        masks[name] = root / "eval" / name / "masks"
    datalist = json.loads((data / "datalist.json").read_text())
    studies = root / "studies"
    studies.mkdir()
    for site in SITES_3D:
        image = data / datalist[site][0]["image"]
        shutil.copyfile(image, studies / image.name)
    return {"app": app, "studies": studies, "masks": masks}


TGMA = "tgma_prostate_mr_segmentation"
#: the TGMA test copy: three tiny sites; the served model is adapted to endorectal from the source and thick models.
TINY_TGMA = {"num_train": 3, "num_test": 2, "voxel_scale": 2.0, "pixdim": [4.0, 4.0, 6.0], "slice_size": [16, 16]}
TINY_TGMA["data_sites"] = ["source", "thick", "endorectal"]


@pytest.fixture(scope="session")
def served_tgma(tmp_path_factory):
    """An app folder with the TGMA bundle under ``model/`` (inference.json edited to the tiny sites; its run adapts the
    served target model first, 1 source epoch and 2 adaptation epochs), the target site's test volumes as studies, and
    the masks ``monai.bundle run`` of inference.json wrote for them."""
    from monai_tta.zoo.run import run_bundle

    root = tmp_path_factory.mktemp("monailabel_tgma")

    def tiny(config: dict) -> None:
        config.update(TINY_TGMA)
        config["adaptation"].update({"models_dir": str(root / "sources"), "source_training#epochs": 1})
        config["adaptation"]["tgma#epochs"] = 2

    app = app_with_bundles(root, [TGMA], tiny)
    data = root / "data"
    overrides = {"dataset_dir": str(data), "output_dir": str(root / "eval")}
    run_bundle(app / "model" / TGMA, ["inference.json"], overrides, logging_file=False)
    datalist = json.loads((data / "datalist.json").read_text())
    studies = root / "studies"
    studies.mkdir()
    for item in datalist["endorectal_test"]:
        image = data / item["image"]
        shutil.copyfile(image, studies / image.name)
    return {"app": app, "studies": studies, "masks": root / "eval" / "masks"}
