"""Format bundle JSON configs: 4-space indent, short lists and objects kept on one line (the format of the generated
bundles, :func:`monai_tta.zoo.config_text`).

Usage: ``python tools/format_configs.py bundles/families/*/*/configs/*.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from monai_tta.zoo import config_text


def main(paths: list[str]) -> int:
    for path in paths:
        p = Path(path)
        p.write_text(config_text(json.loads(p.read_text())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
