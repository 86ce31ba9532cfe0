"""Bundle families and the Model Zoo: generate the standalone bundle folders, export a bundle as the zoo wants it, and
make the zoo CI's checks offline (``python -m monai_tta.zoo --help``)."""

from __future__ import annotations

from monai_tta.flags import as_flag
from monai_tta.zoo.checks import SCHEMA_FILE, SCHEMA_MD5, ZOO_CHECKS, check_code_format, run_checks
from monai_tta.zoo.export import export_bundle, exported_requirements
from monai_tta.zoo.generate import (
    FAMILIES_DIR,
    RUNTIME_DIRS,
    BundleFamily,
    compare_generated,
    config_text,
    find_families,
    generate_all,
    generate_bundle,
    merge_config,
)
from monai_tta.zoo.run import record_config, run_bundle
from monai_tta.zoo.source import ensure_source_checkpoint, load_source_model
from monai_tta.zoo.style import format_for_zoo, zoo_json_text, zoo_python_text

__all__ = [
    "as_flag",
    "run_bundle",
    "record_config",
    "ensure_source_checkpoint",
    "load_source_model",
    "SCHEMA_FILE",
    "SCHEMA_MD5",
    "ZOO_CHECKS",
    "check_code_format",
    "run_checks",
    "export_bundle",
    "exported_requirements",
    "FAMILIES_DIR",
    "RUNTIME_DIRS",
    "BundleFamily",
    "compare_generated",
    "config_text",
    "find_families",
    "generate_all",
    "generate_bundle",
    "merge_config",
    "format_for_zoo",
    "zoo_json_text",
    "zoo_python_text",
]
