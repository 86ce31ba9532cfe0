"""Embedded multi-domain generator of fundus-like optic disc/cup images.

The generator draws a fundus-like scene (dark circular field of view, textured orange-red retina, vessels radiating from
a bright yellowish optic disc with a brighter cup inside it; :mod:`monai_tta.data.fundus_scene`) and then passes it
through a simulated acquisition (:mod:`monai_tta.data.fundus_camera`) whose parameters define the *domain*
(:mod:`monai_tta.data.fundus_domains`). The default domains (:data:`SYNTHETIC_FUNDUS_DOMAINS`) share one anatomy
distribution and differ only in how the image is acquired (colour response, illumination, haze, resolution, field of
view, noise), which mimics the scanner/camera shifts of the real fundus benchmark. The content domains
(:data:`CONTENT_FUNDUS_DOMAINS`, preset ``"content"``) change what is imaged: field of view, share of foreground,
atypical findings, or only mildly the acquisition. The parameter sets are plausible differences chosen by hand; none
was tuned to favour an adaptation method (``docs/data/fundus_domains.md``).

Masks use the encoding of the real fundus data (255 = background, 128 = disc rim, 0 = cup), so generated and real
data share one loading path (:class:`monai_tta.transforms.label.FundusMaskToChannels`).

Example::

    from monai_tta.data import generate_fundus_domains, load_datalist

    datalist_file = generate_fundus_domains("./data/synthetic_fundus", num_per_domain=40, image_size=128)
    sections = load_datalist(datalist_file)  # {"source_train": [...], "source_val": [...], "source": [...], ...}
    content = generate_fundus_domains("./data/fundus_content", num_per_domain=8, domains="content")
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from monai_tta.data.fundus_camera import acquire
from monai_tta.data.fundus_domains import (
    CONTENT_FUNDUS_DOMAINS,
    FUNDUS_DOMAIN_PRESETS,
    SOURCE_DOMAIN,
    SYNTHETIC_FUNDUS_DOMAINS,
    FundusAnatomy,
    FundusContentDomain,
    FundusDomain,
    get_fundus_domain,
    list_domains,
    resolve_fundus_domains,
)
from monai_tta.data.fundus_scene import render_scene
from monai_tta.data.generated import DATALIST_NAME, MANIFEST_NAME, as_json, is_complete, write_generated
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write

__all__ = [
    "FundusDomain",
    "FundusAnatomy",
    "FundusContentDomain",
    "SYNTHETIC_FUNDUS_DOMAINS",
    "CONTENT_FUNDUS_DOMAINS",
    "FUNDUS_DOMAIN_PRESETS",
    "SOURCE_DOMAIN",
    "GENERATOR_VERSION",
    "DATALIST_NAME",
    "MANIFEST_NAME",
    "list_domains",
    "synthesize_fundus_case",
    "generate_fundus_domains",
]

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so cached folders are regenerated."""

_MIN_SIZE = 32
_FINDINGS_STREAM = 1  # the last entry of the seed of a case's second stream (atypical findings)


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < _MIN_SIZE:
        raise ValueError(f"image_size must be an int or (height, width), each >= {_MIN_SIZE}, got {image_size!r}.")
    return size  # type: ignore[return-value]


def _case_rng(seed: int, domain: str, case_index: int, *stream: int) -> np.random.Generator:
    # crc32 of the name (not the registry position) keeps a domain's images stable when domains are added
    entropy = [int(seed), zlib.crc32(domain.encode()), int(case_index), *stream]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def synthesize_fundus_case(
    domain: str, case_index: int, image_size: int | Sequence[int] = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic case in memory.

    The result depends only on ``(seed, domain, case_index, image_size)`` and the domain's parameters.

    Args:
        domain: a name in :data:`SYNTHETIC_FUNDUS_DOMAINS` or :data:`CONTENT_FUNDUS_DOMAINS`.
        case_index: index of the case within the domain (non-negative).
        image_size: ``int`` or ``(height, width)``, each at least 32.
        seed: non-negative base seed.

    Returns:
        ``(image, mask)``: ``image`` uint8 ``(H, W, 3)`` RGB; ``mask`` uint8 ``(H, W)`` in the fundus encoding
        (255 background, 128 disc rim, 0 cup).

    Raises:
        ValueError: for an unknown domain, a negative seed or case index, or a too small image size.
    """
    spec = get_fundus_domain(str(domain))
    shape = _as_size(image_size)
    if int(seed) < 0 or int(case_index) < 0:
        raise ValueError(f"seed and case_index must be non-negative, got seed={seed}, case_index={case_index}.")
    rng = _case_rng(seed, domain, case_index)
    findings_rng = _case_rng(seed, domain, case_index, _FINDINGS_STREAM)
    scene, mask, fov, fov_c, fov_r = render_scene(rng, spec, shape, findings_rng)
    return acquire(rng, spec, scene, fov, fov_c, fov_r), mask


def _manifest(seed: int, num_per_domain: int, shape: tuple[int, int], domains: list[str], val_fraction: float) -> dict:
    record = {
        "generator": "monai_tta.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_per_domain": int(num_per_domain),
        "image_size": list(shape),
        "val_fraction": float(val_fraction),
        "domains": {name: asdict(get_fundus_domain(name)) for name in domains},
    }
    return as_json(record)


def generate_fundus_domains(
    root: str | Path,
    num_per_domain: int = 40,
    image_size: int | Sequence[int] = 128,
    seed: int = 0,
    domains: str | Sequence[str] | None = None,
    overwrite: bool = False,
    val_fraction: float = 0.2,
) -> Path:
    """Write a multi-domain synthetic fundus data set and its MONAI datalist.

    Layout under ``root``::

        <domain>/images/<domain>_<index:04d>.png   uint8 RGB
        <domain>/masks/<domain>_<index:04d>.png    uint8 grey, 255 background / 128 disc rim / 0 cup
        datalist.json                              MONAI datalist, paths relative to root
        manifest.json                              generator version, seed, sizes and domain parameters

    ``datalist.json`` holds ``"domains"`` (the generated domain names, in order), one section per domain (items with
    ``image``, ``label``, ``domain``, ``case_id``) and, when the source domain is generated, ``"source_train"`` and
    ``"source_val"``: the first ``1 - val_fraction`` and the last ``val_fraction`` of the source cases.

    Each case is drawn from its own generator seeded by ``(seed, domain name, case index)``, so the same arguments
    give byte-identical files, and a domain's images do not depend on which other domains are generated.
    When ``manifest.json`` matches the request and every listed file exists, nothing is rewritten (unless
    ``overwrite``). Files of an earlier, different request that the new datalist does not list are left in place.

    Args:
        root: output folder (created if needed).
        num_per_domain: number of cases per domain (>= 1).
        image_size: ``int`` or ``(height, width)``, each at least 32.
        seed: non-negative base seed.
        domains: names from :data:`SYNTHETIC_FUNDUS_DOMAINS` or :data:`CONTENT_FUNDUS_DOMAINS`, or a preset name
            of :data:`FUNDUS_DOMAIN_PRESETS` (``"content"``: the source and the content domains; ``"all"``);
            ``None`` generates the default domains in registry order.
        overwrite: regenerate even when the folder is complete.
        val_fraction: fraction of the source cases put in ``source_val``, in [0, 1).

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        ValueError: for an unknown or repeated domain name, or invalid sizes, counts, seed or fraction.
    """
    names = resolve_fundus_domains(domains)
    shape = _as_size(image_size)
    if int(num_per_domain) < 1:
        raise ValueError(f"num_per_domain must be >= 1, got {num_per_domain}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")

    root = Path(root)
    manifest = _manifest(seed, num_per_domain, shape, names, val_fraction)
    datalist_file = root / DATALIST_NAME
    if not overwrite and is_complete(root, manifest):
        return datalist_file

    datalist: dict = {
        "name": "synthetic_fundus",
        "description": "Synthetic fundus-like optic disc/cup images; masks: 255 background, 128 disc rim, 0 cup.",
        "domains": names,
    }
    sections: dict[str, list[dict]] = {}
    for name in names:
        (root / name / "images").mkdir(parents=True, exist_ok=True)
        (root / name / "masks").mkdir(parents=True, exist_ok=True)
        items = []
        for index in range(int(num_per_domain)):
            case_id = f"{name}_{index:04d}"
            image, mask = synthesize_fundus_case(name, index, shape, seed)
            image_rel, mask_rel = f"{name}/images/{case_id}.png", f"{name}/masks/{case_id}.png"
            for array, rel in ((image, image_rel), (mask, mask_rel)):  # atomic: ranks of a sharded run may race here
                atomic_write(root / rel, lambda f, a=array: Image.fromarray(a).save(f, format="PNG", compress_level=1))
            items.append(
                {
                    DataKeys.IMAGE.value: image_rel,
                    DataKeys.LABEL.value: mask_rel,
                    DataKeys.DOMAIN.value: name,
                    DataKeys.CASE_ID.value: case_id,
                }
            )
        sections[name] = items
    if SOURCE_DOMAIN in sections:
        source = sections[SOURCE_DOMAIN]
        n_train = max(len(source) - int(round(len(source) * float(val_fraction))), 1)
        datalist["source_train"] = source[:n_train]
        datalist["source_val"] = source[n_train:]
    datalist.update(sections)
    return write_generated(root, datalist, manifest)
