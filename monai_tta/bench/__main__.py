"""``python -m monai_tta.bench``: see :mod:`monai_tta.bench.cli`."""

from __future__ import annotations

import sys

from monai_tta.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
