"""``python -m monai_tta.zoo``: generate the bundle folders, export a bundle for the Model Zoo, run the zoo's checks.

Examples::

    python -m monai_tta.zoo generate              # write bundles/<name>/ from bundles/families/*
    python -m monai_tta.zoo generate --check      # exit 1 and list the differences if a committed file is stale
    python -m monai_tta.zoo export bundles/grata_fundus_segmentation /tmp/zoo/grata_fundus_segmentation \
        --url https://example.org/models/grata_fundus_segmentation
    python -m monai_tta.zoo check /tmp/zoo/grata_fundus_segmentation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monai_tta.zoo.checks import run_checks
from monai_tta.zoo.export import export_bundle
from monai_tta.zoo.generate import compare_generated, generate_all

DEFAULT_BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_tta.zoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write the bundle folders from their family sources")
    gen.add_argument("--bundles", type=Path, default=DEFAULT_BUNDLES, help="the bundles folder (default: the repo's)")
    gen.add_argument("--check", action="store_true", help="compare only; exit 1 when a committed file differs")
    exp = sub.add_parser("export", help="write a bundle folder as the Model Zoo wants it")
    exp.add_argument("bundle", type=Path)
    exp.add_argument("out", type=Path)
    exp.add_argument("--checkpoint", type=Path, default=None, help="ship these source weights instead of training")
    exp.add_argument("--url", default=None, help="required: the folder URL where model.pt and model.ts will be hosted")
    exp.add_argument("--train", default="{}", help="JSON overrides of the source training, e.g. '{\"epochs\": 5}'")
    chk = sub.add_parser("check", help="run the Model Zoo CI's checks on an exported bundle")
    chk.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)

    if args.command == "generate":
        if args.check:
            problems = compare_generated(args.bundles)
            print("\n".join(problems) if problems else "bundles are up to date")
            return 1 if problems else 0
        for folder in generate_all(args.bundles):
            print(f"generated {folder}")
        return 0
    if args.command == "export":
        try:
            out = export_bundle(args.bundle, args.out, args.checkpoint, json.loads(args.train), args.url)
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"exported {out}")
        return 0
    results = run_checks(args.bundle)
    for name, result in results.items():
        print(f"{name}: {result}")
    return 0 if all(r == "pass" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
