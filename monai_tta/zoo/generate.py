"""Generate standalone bundle folders from one source per bundle family.

MONAI Label and the Model Zoo take one bundle folder at a time, so every committed bundle under ``bundles/`` is
standalone. The folders are not edited by hand: they are generated from a *family* source, and a test checks that the
committed files equal the generated ones.

A family is a folder ``bundles/families/<family>/`` holding::

    family.json     {"base": "base", "bundles": {"<bundle folder name>": ["<layer>", ...], ...}}
    base/           the files every bundle of the family starts from (LICENSE, configs/*, docs/*)
    <layer>/        a variant's files, laid over the base in the order listed
    parts/          Markdown fragments shared by the READMEs (optional)

A layer's JSON config is a plain MONAI overlay: the generator merges it with MONAI's own merge
(:class:`monai.bundle.ConfigParser` and :func:`monai.bundle.utils.merge_kv`, the loop of
``ConfigParser.load_config_files``), so a top-level key replaces the value, ``"inferer#setting"`` (``#`` or ``::``)
replaces one nested value, ``"+handlers"`` extends a list or updates a dict, and ``@``/``%`` references are kept as
written (they are resolved when the bundle runs). The same files merged at run time
(``python -m monai.bundle run --config_file "['base/configs/inference.json','tent/configs/inference.json']"``) give the
same config. The first file of a path is taken as written, so a config that is itself an overlay (``evaluate.json``,
merged after ``inference.json`` when the bundle runs) keeps its own ``#`` keys.

One thing is layout, not content: MONAI appends a key that is new to the config at the end; the generator writes it
before the next key of the same layer that the config already has (at the end if none), so that a generated config
reads top-down like a hand-written one. Any other file (a new JSON file, Markdown, LICENSE, ...) is added or replaces
the earlier one.

Markdown files then have ``{{ name }}`` replaced by ``parts/<name>.md`` and ``{{ bundle_name }}`` by the bundle's
folder name. JSON files are written in one format (:func:`config_text`). Registering a new family is adding its folder;
registering a new variant is one line in its ``family.json``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import MERGE_KEY, merge_kv

__all__ = [
    "BundleFamily",
    "config_text",
    "merge_config",
    "find_families",
    "generate_bundle",
    "generate_all",
    "compare_generated",
    "FAMILIES_DIR",
    "RUNTIME_DIRS",
]

#: where the family sources live, relative to the bundles folder.
FAMILIES_DIR = "families"
#: folders of a bundle that runs create (data, results, weights): never generated, never compared, never deleted.
RUNTIME_DIRS = ("eval", "data", "models")
#: width under which a JSON container stays on one line.
JSON_WIDTH = 110

_PART = re.compile(r"\{\{\s*([A-Za-z0-9_\-]+)\s*\}\}")
_ID_SEP = re.compile(r"#|::")


def config_text(value: Any, indent: int = 0) -> str:
    """JSON text of a bundle config: 4-space indent, a container whose one-line form fits in ``JSON_WIDTH`` stays on
    one line.

    Args:
        value: a JSON-serialisable value.
        indent: current indentation (used by the recursion).
    """
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or len(flat) + indent <= JSON_WIDTH or not value:
        return flat
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {config_text(v, indent + 4)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{config_text(v, indent + 4)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def _top_level(key: str) -> str | None:
    """The top-level key a layer's key sets, or ``None`` for a nested key (``a#b``)."""
    key = key[len(MERGE_KEY) :] if key.startswith(MERGE_KEY) else key
    return None if _ID_SEP.search(key) else key


def _top_down(before: Iterable[str], layer: Iterable[str]) -> list[str]:
    """Key order of a merged config: the keys so far in place, a key new to the config before the next key of the same
    layer that the config already has (at the end if none)."""
    order, pending = list(before), []
    for key in filter(None, map(_top_level, layer)):
        if key in order:
            at = order.index(key)
            order[at:at] = pending
            pending = []
        elif key not in pending:
            pending.append(key)
    return order + pending


def merge_config(base: Mapping[str, Any], override: Mapping[str, Any], source: str = "override") -> dict[str, Any]:
    """Merge a layer's config ``override`` into ``base`` with MONAI's merge (neither is modified).

    The content is what ``ConfigParser.load_config_files`` gives for the two files in order (each key of ``override``
    applied with :func:`monai.bundle.utils.merge_kv`); only the place of a new top-level key differs (see the module's
    docstring).

    Args:
        base: the config so far.
        override: the layer's keys: top-level keys replace, ``a#b#0`` keys replace one nested value, ``+a`` keys extend
            a list or update a dict.
        source: name of the override in error messages.

    Returns:
        the merged config.

    Raises:
        KeyError: if a key of ``override`` cannot be set in ``base`` (a nested key whose parent ``base`` does not
            define, or whose parent is not a dict or a long enough list).
    """
    parser = ConfigParser(config=copy.deepcopy(dict(base)))
    for key, value in copy.deepcopy(dict(override)).items():
        try:
            merge_kv(parser, key, value)
        except (KeyError, IndexError, ValueError) as e:
            raise KeyError(
                f"{source}: override {key!r} cannot be set: the configs below it do not define its parent, or the "
                f"parent is not a dict or a long enough list ({e})."
            ) from e
    merged = parser.get()
    return {key: merged[key] for key in _top_down(base, override)}


@dataclass(frozen=True)
class BundleFamily:
    """A family source: a base folder and the layers of each bundle.

    Attributes:
        root: the family folder (``bundles/families/<family>``).
        base: the base folder.
        bundles: bundle folder name to its layer folders, in the order they are laid.
    """

    root: Path
    base: Path
    bundles: dict[str, tuple[Path, ...]]

    @classmethod
    def load(cls, root: str | Path) -> BundleFamily:
        """Read ``<root>/family.json``.

        Raises:
            FileNotFoundError: if ``family.json``, the base or a layer folder is missing.
        """
        root = Path(root)
        spec_file = root / "family.json"
        if not spec_file.is_file():
            raise FileNotFoundError(f"{root} is not a bundle family: {spec_file} is missing.")
        spec = json.loads(spec_file.read_text())
        base = root / spec.get("base", "base")
        bundles = {name: tuple(root / layer for layer in layers) for name, layers in spec["bundles"].items()}
        for folder in (base, *[p for layers in bundles.values() for p in layers]):
            if not folder.is_dir():
                raise FileNotFoundError(f"{spec_file} names {folder.name!r}, but {folder} is not a folder.")
        return cls(root=root, base=base, bundles=bundles)

    def files(self, bundle: str) -> dict[str, bytes]:
        """The generated files of ``bundle``: relative path to content.

        Raises:
            KeyError: if the family has no such bundle.
        """
        if bundle not in self.bundles:
            raise KeyError(f"family {self.root.name!r} has no bundle {bundle!r}; it has {sorted(self.bundles)}.")
        texts: dict[str, Any] = {}
        for layer in (self.base, *self.bundles[bundle]):
            for path in sorted(p for p in layer.rglob("*") if p.is_file()):
                rel = path.relative_to(layer).as_posix()
                if path.suffix == ".json":
                    value = ConfigParser.load_config_file(path)
                    texts[rel] = merge_config(texts[rel], value, str(path)) if rel in texts else value
                else:
                    texts[rel] = path.read_bytes()
        parts_dir = self.root / "parts"
        parts = {p.stem: p.read_text() for p in parts_dir.glob("*.md")} if parts_dir.is_dir() else {}
        parts["bundle_name"] = bundle
        out: dict[str, bytes] = {}
        for rel, value in texts.items():
            if rel.endswith(".json"):
                out[rel] = (config_text(value) + "\n").encode()
            elif rel.endswith(".md"):
                out[rel] = _expand_parts(value.decode(), parts, rel).encode()
            else:
                out[rel] = value
        return out


def _expand_parts(text: str, parts: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in parts:
            raise KeyError(f"{where}: no part {name!r} (parts: {sorted(parts)}).")
        return _expand_parts(parts[name], parts, f"{where} > {name}").rstrip("\n")

    return _PART.sub(replace, text)


def find_families(bundles_dir: str | Path) -> list[BundleFamily]:
    """Every family under ``<bundles_dir>/families``, sorted by name."""
    root = Path(bundles_dir) / FAMILIES_DIR
    return [BundleFamily.load(p.parent) for p in sorted(root.glob("*/family.json"))]


def _existing_files(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in RUNTIME_DIRS and "__pycache__" not in p.parts
    }


def generate_bundle(family: BundleFamily, bundle: str, out_dir: str | Path) -> Path:
    """Write ``bundle`` of ``family`` into ``out_dir`` (the bundle folder itself); stale generated files are removed,
    the runtime folders (:data:`RUNTIME_DIRS`) are left alone.

    Returns:
        the bundle folder.
    """
    out_dir = Path(out_dir)
    files = family.files(bundle)
    for rel in _existing_files(out_dir) - set(files):
        (out_dir / rel).unlink()
    for rel, content in files.items():
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_bytes() != content:
            target.write_bytes(content)
    for folder in sorted((p for p in out_dir.rglob("*") if p.is_dir()), reverse=True):
        if folder.relative_to(out_dir).parts[0] not in RUNTIME_DIRS and not any(folder.iterdir()):
            folder.rmdir()
    return out_dir


def generate_all(bundles_dir: str | Path, only: Iterable[str] | None = None) -> list[Path]:
    """Generate every bundle of every family under ``bundles_dir`` (or only the bundles named in ``only``)."""
    bundles_dir = Path(bundles_dir)
    wanted = set(only) if only is not None else None
    written = []
    for family in find_families(bundles_dir):
        for bundle in family.bundles:
            if wanted is None or bundle in wanted:
                written.append(generate_bundle(family, bundle, bundles_dir / bundle))
    return written


def compare_generated(bundles_dir: str | Path) -> list[str]:
    """What differs between the committed bundle folders and the generated ones (empty when they are equal).

    Returns:
        one line per difference: ``<bundle>/<file>: missing | differs | not generated (stale)``.
    """
    bundles_dir = Path(bundles_dir)
    problems = []
    for family in find_families(bundles_dir):
        for bundle in family.bundles:
            folder = bundles_dir / bundle
            files = family.files(bundle)
            for rel, content in sorted(files.items()):
                path = folder / rel
                if not path.is_file():
                    problems.append(f"{bundle}/{rel}: missing")
                elif path.read_bytes() != content:
                    problems.append(f"{bundle}/{rel}: differs")
            stale = sorted(_existing_files(folder) - set(files))
            problems += [f"{bundle}/{rel}: not generated (stale)" for rel in stale]
    return problems
