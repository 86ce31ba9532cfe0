#!/usr/bin/env bash
# Build the MONAI Label 0.8.5 environment of the serving tests (tests/monailabel_serving/), from the package registry only.
#
#   bash tools/monailabel_env.sh [VENV]      # default VENV: .venv-monailabel (git-ignored)
#
# The venv is made with --system-site-packages so that the system torch (2.13.0), monai (1.6.1) and monai_tta are
# reused, not reinstalled; only what MONAI Label adds (and the pins below) lands in the venv. Running it again on an
# existing venv is quick (pip finds everything satisfied). Nothing is downloaded at run time by the tests.
#
# Why each pin:
#   monailabel==0.8.5       the newest release (2024-11); the version named in the bundles' supported_apps.
#   torch==2.13.0           the project's torch: monailabel's dependencies (monai[torchvision]) would otherwise pull a
#                           torchvision built for a newer torch, and pip would move torch with it.
#   torchvision==0.28.0     the torchvision release built against torch 2.13 (0.29 requires torch 2.14). PyPI only has
#                           its CUDA build, whose C++ ops cannot load next to the CPU torch build; torchvision 0.28
#                           then fails on import (it registers fake kernels for nms and qnms unconditionally).
#                           MONAI Label imports torchvision only for torchvision.utils (make_grid, save_image), so the
#                           venv gets a startup hook (torchvision_cpu_shim.py below) that declares those two schemas when
#                           torchvision's ops are missing; nothing calls the op.
#   numpy<2                 monailabel 0.8.5's compiled dependencies (numpymaxflow) are built against numpy 1.x; the
#                           resolver settles on numpy 1.26 anyway, the pin makes that explicit and stable.
#   pydicom==2.4.4          monailabel 0.8.5 imports pydicom 2.x APIs (pydicom 3 removed them); its own requirements.txt
#                           pins this release.
#   pynetdicom==2.0.2       the release that works with pydicom 2.4 (newer ones need pydicom 3); requirements.txt pin.
#   dicomweb-client==0.59.1 the server imports it at start; newer releases need pydicom 3; requirements.txt pin.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-monailabel}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PINS="$VENV/monailabel-pins.txt"
cat >"$PINS" <<PINS_EOF
monailabel==0.8.5
torch==2.13.0
torchvision==0.28.0
numpy<2
pydicom==2.4.4
pynetdicom==2.0.2
dicomweb-client==0.59.1
PINS_EOF
# PIP_CONSTRAINT of the machine (if any) still applies; ours is added on top.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$PINS" -r "$PINS"

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat >"$SITE/torchvision_cpu_shim.py" <<'SHIM_EOF'
"""Let the CUDA build of torchvision (the only one on PyPI) import next to a CPU build of torch.

Its C++ ops cannot load there, and torchvision 0.28 registers fake kernels for ``torchvision::nms`` and ``qnms`` on
import regardless, which fails when the ops do not exist. Just before that module runs, declare the two schemas if
torchvision's ops are missing (nothing calls them: MONAI Label uses torchvision.utils only). Installed by tools/monailabel_env.sh; only this venv has it.
"""

import importlib.abc
import sys


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision._meta_registrations":
            import torch
            import torchvision.extension

            if not torchvision.extension._has_ops() and not hasattr(torch.ops.torchvision, "nms"):
                _LIBRARIES.append(torch.library.Library("torchvision", "DEF"))
                for op in ("nms", "qnms"):
                    _LIBRARIES[-1].define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


_LIBRARIES = []
sys.meta_path.insert(0, _Finder())
SHIM_EOF
echo "import torchvision_cpu_shim" >"$SITE/torchvision_cpu_shim.pth"
"$VENV/bin/python" - <<'PY_EOF'
import importlib.metadata as md

import monai
import monailabel
import monailabel.tasks.infer.bundle  # imports torchvision
import numpy
import torch

assert monailabel.__version__.startswith("0.8.5"), monailabel.__version__
assert torch.__version__.split("+")[0] == "2.13.0", f"torch moved to {torch.__version__}"
print("monailabel", monailabel.__version__, "monai", monai.__version__, "torch", torch.__version__, "numpy", numpy.__version__)
for name in ("torchvision", "pydicom", "pynetdicom", "dicomweb-client", "fastapi", "uvicorn", "pytorch-ignite"):
    print(name, md.version(name))
PY_EOF
