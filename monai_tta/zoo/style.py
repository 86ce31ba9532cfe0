"""The Model Zoo's code-format rules, to write an export that passes them and to check a folder against them.

The settings are the zoo's (``Project-MONAI/model-zoo`` at ``dfae206d``, 2024-10-11), written here as command-line
options rather than copied files: its code-format CI runs ``runtests.sh --codeformat`` from the repository root, i.e.

- ``black --skip-magic-trailing-comma`` with ``pyproject.toml``'s ``line-length = 120``, ``target-version =
  ['py37', 'py38', 'py39']``;
- ``isort --check`` with ``setup.cfg``'s ``profile = black``, ``line_length = 120``, ``known_first_party = models``;
- ``flake8`` with ``setup.cfg``'s ``select``, ``ignore`` and ``per_file_ignores`` (:data:`FLAKE8_ARGS`) and the
  plugins of its ``requirements-dev.txt`` (bugbear, comprehensions, executable, pep8-naming);
- the pre-commit hooks of ``.pre-commit-config.yaml`` (``pre-commit-hooks`` v4.6.0) that concern an export's text:
  ``pretty-format-json --no-sort-keys --indent=4``, ``trailing-whitespace``, ``end-of-file-fixer``,
  ``mixed-line-ending``.

``pretty-format-json`` wants exactly ``json.dumps(value, indent=4, ensure_ascii=True)`` plus a newline (every element on
its own line): :func:`zoo_json_text`. The bundles in this repository keep the shorter format of
:func:`monai_tta.zoo.config_text`; the export rewrites its JSON files with :func:`zoo_json_text` and its Python files
with :func:`zoo_python_text` (isort, then black, as the zoo's ``--autofix``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "BLACK_ARGS",
    "ISORT_ARGS",
    "FLAKE8_ARGS",
    "FORMAT_TOOLS",
    "zoo_json_text",
    "zoo_python_text",
    "format_for_zoo",
]

#: ``black`` options of the zoo's code-format check.
BLACK_ARGS = ("--line-length", "120", "--skip-magic-trailing-comma", "-t", "py37", "-t", "py38", "-t", "py39")
#: ``isort`` options of the zoo's ``setup.cfg``.
ISORT_ARGS = ("--profile", "black", "--line-length", "120", "--project", "models")
#: ``flake8`` options of the zoo's ``setup.cfg``.
FLAKE8_ARGS = (
    "--select",
    "B,C,E,F,N,P,T4,W,B9",
    "--max-line-length",
    "120",
    "--ignore",
    "E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419",
    "--per-file-ignores",
    "__init__.py:F401 __main__.py:F401",
)
#: the packages that format and check (the ``test`` extra pins them).
FORMAT_TOOLS = ("black", "isort", "flake8", "pre_commit_hooks")


def zoo_json_text(value: Any) -> str:
    """The text ``pretty-format-json --no-sort-keys --indent=4`` leaves unchanged."""
    return json.dumps(value, indent=4, ensure_ascii=True) + "\n"


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"the export formats its code as the Model Zoo checks it and needs {module!r}: "
            "pip install 'monai_tta[test]' (or black and isort)."
        ) from e


def zoo_python_text(source: str) -> str:
    """``source`` with its imports sorted and its code formatted as the zoo's isort and black settings want.

    Raises:
        ImportError: if black or isort is not installed.
    """
    black, isort = _require("black"), _require("isort")
    with tempfile.TemporaryDirectory() as root:  # no first-party package there, as in the zoo's repository root
        config = isort.Config(profile="black", line_length=120, known_first_party=["models"], src_paths=(root,))
        text = isort.code(source, config=config)
    versions = {black.TargetVersion.PY37, black.TargetVersion.PY38, black.TargetVersion.PY39}
    mode = black.Mode(target_versions=versions, line_length=120, magic_trailing_comma=False)
    try:
        return black.format_str(text, mode=mode)
    except black.NothingChanged:  # pragma: no cover - older black versions
        return text


def format_for_zoo(folder: str | Path) -> list[Path]:
    """Rewrite every ``.json`` and ``.py`` file under ``folder`` in the zoo's format (in place).

    Returns:
        the files whose text changed.
    """
    changed = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix not in (".json", ".py"):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            new = zoo_json_text(json.loads(text))
        else:
            new = zoo_python_text(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed
