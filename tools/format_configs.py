"""Format bundle JSON configs: 4-space indent, short lists and objects kept on one line.

Usage: ``python tools/format_configs.py bundles/*/configs/*.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WIDTH = 110


def dumps(value, indent: int = 0) -> str:
    """JSON text of ``value``; a container whose one-line form fits in ``WIDTH`` stays on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or len(flat) + indent <= WIDTH or not value:
        return flat
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 4)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{dumps(v, indent + 4)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def main(paths: list[str]) -> int:
    for path in paths:
        p = Path(path)
        p.write_text(dumps(json.loads(p.read_text())) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
