"""The real MONAI Label server (``monailabel start_server``) on 127.0.0.1 serving every bundle: ``/info`` lists them
with their labels and no trainer, ``/infer`` returns a uint8 PNG label map of a study image for each; the server is
stopped by its PID."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import BUNDLES
from monailabel_server import get, running_server
from PIL import Image

pytest.importorskip("monailabel", reason="MONAI Label environment absent: build it with tools/monailabel_env.sh")


def test_server_infers_a_label_map(served, tmp_path):
    with running_server(served["app"], served["studies"], BUNDLES, tmp_path / "server.log") as (base, info):
        assert sorted(info["models"]) == sorted(BUNDLES) and info["trainers"] == {}
        image = sorted(served["studies"].glob("source*.png"))[0]  # every method segments the source domain
        truth = served["truth"][image.stem]
        for name in BUNDLES:
            assert info["models"][name]["labels"] == {"optic disc": 1, "optic cup": 2}
            body = get(f"{base}/infer/{name}?image={image.stem}&output=image", data=b"{}")
            label_map = np.asarray(Image.open(io.BytesIO(body)))
            assert label_map.dtype == np.uint8 and label_map.shape == truth.shape
            assert set(np.unique(label_map)) <= {0, 1, 2} and (label_map == 2).any()
            disc, true_disc = label_map >= 1, truth >= 1
            assert 2 * (disc & true_disc).sum() / (disc.sum() + true_disc.sum()) > 0.7, name
