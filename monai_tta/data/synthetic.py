"""Embedded multi-domain generator of fundus-like optic disc/cup images.

The generator draws a fundus-like scene (dark circular field of view, textured orange-red retina, vessels radiating from
a bright yellowish optic disc with a brighter cup inside it) and then passes it through a simulated acquisition whose
parameters define the *domain*. All domains share one anatomy distribution; they differ only in how the image is
acquired (colour response, illumination, haze, resolution, field of view, noise), which mimics the scanner/camera
shifts of the real fundus benchmark. The parameter sets are plausible acquisition differences chosen by hand; none was
tuned to favour an adaptation method.

Masks use the encoding of the real fundus data (255 = background, 128 = disc rim, 0 = cup), so generated and real
data share one loading path (:class:`monai_tta.transforms.label.FundusMaskToChannels`).

Example::

    from monai_tta.data import generate_fundus_domains, load_datalist

    datalist_file = generate_fundus_domains("./data/synthetic_fundus", num_per_domain=40, image_size=128)
    sections = load_datalist(datalist_file)  # {"source_train": [...], "source_val": [...], "source": [...], ...}
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft as sp_fft
from scipy import ndimage

from monai_tta.data.generated import DATALIST_NAME, MANIFEST_NAME, as_json, is_complete, write_generated
from monai_tta.data.keys import DataKeys
from monai_tta.io import atomic_write

__all__ = [
    "FundusDomain",
    "SYNTHETIC_FUNDUS_DOMAINS",
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

SOURCE_DOMAIN = "source"

_MASK_BACKGROUND, _MASK_DISC, _MASK_CUP = 255, 128, 0
_REF_SIZE = 128.0  # pixel-valued parameters (blur, widths) are given at this image size and scaled with it
_MIN_SIZE = 32


@dataclass(frozen=True)
class FundusDomain:
    """Acquisition parameters of one synthetic domain.

    Pixel-valued parameters are expressed for a 128-pixel image and scaled with the image size, so a domain looks the
    same at any resolution. Every case draws its own small variation around these values (``jitter``).

    Args:
        description: one line saying what real acquisition difference the domain imitates.
        gain: global illumination (exposure) factor.
        vignetting: darkening towards the rim of the field of view, ``1 - vignetting * r**2``.
        uneven: strength of a random linear illumination gradient across the field of view.
        white_balance: per-channel (R, G, B) gains of the camera's colour response.
        crosstalk: channel mixing of the sensor, ``(1 - c) * I + c / 3``; 0 keeps the channels separate.
        gamma: exponent of the camera's tone curve (below 1 brightens mid-tones).
        contrast: contrast around the mean of the field of view (1 keeps it; the black level rises when below 1).
        haze: fraction of a uniform scattered-light veil of colour ``haze_color`` (media opacity such as cataract).
        haze_color: RGB colour of the veil.
        blur_sigma: Gaussian optical blur, pixels at 128.
        downsample: sensor resolution divisor (box-downsampled, then bilinear-upsampled back).
        noise_std: standard deviation of additive Gaussian sensor noise (intensities in [0, 1]).
        jpeg_step: quantisation step of JPEG-like 8x8 block DCT compression (0 disables it).
        fov_radius: radius of the circular field of view, as a fraction of half the image size.
        fov_shift: largest offset of the field of view centre, as a fraction of the image size.
        zoom: magnification of the anatomy (optic disc size, vessel widths).
        jitter: relative per-case variation of the acquisition parameters.
    """

    description: str
    gain: float = 1.0
    vignetting: float = 0.3
    uneven: float = 0.1
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crosstalk: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    haze: float = 0.0
    haze_color: tuple[float, float, float] = (0.85, 0.85, 0.9)
    blur_sigma: float = 0.0
    downsample: float = 1.0
    noise_std: float = 0.01
    jpeg_step: float = 0.0
    fov_radius: float = 0.95
    fov_shift: float = 0.0
    zoom: float = 1.0
    jitter: float = 0.05


SYNTHETIC_FUNDUS_DOMAINS: dict[str, FundusDomain] = {
    SOURCE_DOMAIN: FundusDomain(
        description="reference camera: neutral colour, mild vignetting, low sensor noise, wide centred field of view",
    ),
    "camera": FundusDomain(
        description="another camera model: cooler white balance, colour crosstalk, brighter tone curve (gamma 0.75)",
        white_balance=(0.8, 1.05, 1.35),
        crosstalk=0.15,
        gamma=0.75,
    ),
    "dim": FundusDomain(
        description="under-exposed capture (small pupil): low illumination, strong vignetting and uneven lighting, "
        "more sensor noise",
        gain=0.45,
        vignetting=0.7,
        uneven=0.3,
        gamma=1.15,
        noise_std=0.02,
    ),
    "contrast": FundusDomain(
        description="media opacity (cataract-like): scattered-light haze, reduced contrast, slight blur",
        contrast=0.6,
        haze=0.35,
        blur_sigma=0.6,
    ),
    "blur": FundusDomain(
        description="low-resolution device with compression: 3x lower resolution, optical blur, JPEG-like blocks",
        blur_sigma=1.0,
        downsample=3.0,
        noise_std=0.005,
        jpeg_step=0.06,
    ),
    "fov": FundusDomain(
        description="narrow, off-centre field of view (other optics and aiming), slightly magnified anatomy, "
        "stronger sensor noise",
        fov_radius=0.72,
        fov_shift=0.08,
        zoom=1.15,
        noise_std=0.04,
    ),
}
"""Registry of the synthetic domains, name -> parameters. Add an entry to define a new domain."""


def list_domains() -> list[str]:
    """Names of the registered synthetic domains, the source domain first.

    Returns:
        the keys of :data:`SYNTHETIC_FUNDUS_DOMAINS` in registry order.
    """
    return list(SYNTHETIC_FUNDUS_DOMAINS)


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < _MIN_SIZE:
        raise ValueError(f"image_size must be an int or (height, width), each >= {_MIN_SIZE}, got {image_size!r}.")
    return size  # type: ignore[return-value]


def _get_domain(domain: str | FundusDomain) -> FundusDomain:
    if isinstance(domain, FundusDomain):
        return domain
    if domain not in SYNTHETIC_FUNDUS_DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; available: {list_domains()}.")
    return SYNTHETIC_FUNDUS_DOMAINS[domain]


def _case_rng(seed: int, domain: str, case_index: int) -> np.random.Generator:
    # crc32 of the name (not the registry position) keeps a domain's images stable when domains are added
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(domain.encode()), int(case_index)]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random ``cells x cells`` grid blended with Gaussian weights up to ``shape``."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 2, cells + 2))

    def weights(n: int) -> np.ndarray:
        pos = np.linspace(1.0, cells + 1.0, n)[:, None] - np.arange(cells + 2)[None, :]
        wts = np.exp(-0.5 * (pos / 0.6) ** 2)
        return wts / wts.sum(axis=1, keepdims=True)

    noise = weights(shape[0]) @ grid @ weights(shape[1]).T
    return (noise / max(np.abs(noise).max(), 1e-6)).astype(np.float32)


def _ellipse_level(
    yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, semi_y: float, semi_x: float, angle: float
) -> np.ndarray:
    """Level set of a rotated ellipse: < 1 inside, 1 on the boundary."""
    dy, dx = yy - float(centre[0]), xx - float(centre[1])
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((u / semi_x) ** 2 + (v / semi_y) ** 2)


def _soft_edge(level: np.ndarray, radius: float, width: float) -> np.ndarray:
    """Opacity in [0, 1] falling from 1 to 0 across the level-1 boundary over about ``width`` pixels."""
    t = np.clip(0.5 + (1.0 - level) * radius / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _vessel_map(
    rng: np.random.Generator, shape: tuple[int, int], origin: np.ndarray, disc_radius: float, scale: float
) -> np.ndarray:
    """Vessel opacity in [0, 1]: a few random curves radiating from ``origin``, thinning along their length."""
    h, w = shape
    size = min(h, w)
    centreline = np.zeros(shape, dtype=bool)
    width = np.zeros(shape, dtype=np.float32)
    n_vessels = int(rng.integers(5, 9))
    angles = np.linspace(0.0, 2.0 * math.pi, n_vessels, endpoint=False) + rng.uniform(0.0, 2.0 * math.pi)
    angles = angles + rng.normal(0.0, 0.25, n_vessels)
    step = 0.5
    for theta0 in angles:
        length = rng.uniform(0.35, 0.75) * size
        n = max(int(length / step), 2)
        bend = rng.normal(0.0, 1.5) / size
        heading = theta0 + np.cumsum(bend * step + rng.normal(0.0, 0.03, n))
        start = origin + 0.3 * disc_radius * np.array([math.sin(theta0), math.cos(theta0)])
        py = start[0] + np.cumsum(step * np.sin(heading))
        px = start[1] + np.cumsum(step * np.cos(heading))
        w0 = rng.uniform(0.7, 1.5) * scale
        widths = w0 * (1.0 - 0.55 * np.arange(n) / n)
        iy, ix = np.rint(py).astype(int), np.rint(px).astype(int)
        keep = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        iy, ix, widths = iy[keep], ix[keep], widths[keep]
        centreline[iy, ix] = True
        np.maximum.at(width, (iy, ix), widths.astype(np.float32))
    if not centreline.any():
        return np.zeros(shape, dtype=np.float32)
    dist, (ny, nx) = ndimage.distance_transform_edt(~centreline, return_indices=True)
    local_width = np.maximum(width[ny, nx], 0.3)
    return np.exp(-((dist / local_width) ** 2)).astype(np.float32)


def _render_scene(
    rng: np.random.Generator, spec: FundusDomain, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Draw the anatomy. Returns (linear RGB scene, mask, fov opacity, fov centre, fov radius)."""
    h, w = shape
    size = float(min(h, w))
    scale = size / _REF_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])

    # camera: circular field of view
    fov_r = spec.fov_radius * size / 2.0
    fov_c = centre + rng.uniform(-1.0, 1.0, 2) * spec.fov_shift * size
    fov_level = np.hypot(yy - fov_c[0], xx - fov_c[1]) / fov_r
    fov = _soft_edge(fov_level, fov_r, 1.0 * scale).astype(np.float32)

    # anatomy: optic disc (vertically oval) with a nested cup
    r_disc = rng.uniform(0.085, 0.13) * size * spec.zoom
    ecc = rng.uniform(0.0, 0.12)
    disc_ay, disc_ax = r_disc * (1.0 + ecc / 2.0), r_disc * (1.0 - ecc / 2.0)
    disc_angle = rng.uniform(-0.3, 0.3)
    offset = np.array([rng.uniform(-0.08, 0.08), rng.uniform(0.06, 0.2)]) * size * spec.zoom
    disc_c = centre + offset
    room = fov_r - disc_ay - 3.0 * scale  # keep the whole disc inside the field of view
    rel = disc_c - fov_c
    if np.hypot(*rel) > max(room, 0.0):
        disc_c = fov_c + rel * max(room, 0.0) / np.hypot(*rel)
    cdr = rng.uniform(0.3, 0.7)
    cup_ay = cdr * disc_ay * rng.uniform(0.95, 1.05)
    cup_ax = cdr * disc_ax * rng.uniform(0.95, 1.05)
    shift_dir = rng.uniform(0.0, 2.0 * math.pi)
    cup_shift = rng.uniform(0.0, 0.5) * (1.0 - cdr) * disc_ax
    cup_c = disc_c + cup_shift * np.array([math.sin(shift_dir), math.cos(shift_dir)])
    cup_angle = disc_angle + rng.normal(0.0, 0.1)
    disc_level = _ellipse_level(yy, xx, disc_c, disc_ay, disc_ax, disc_angle)
    cup_level = _ellipse_level(yy, xx, cup_c, cup_ay, cup_ax, cup_angle)
    disc_mask = disc_level <= 1.0
    # the cup never reaches the disc boundary: keep a rim of at least about one pixel
    cup_mask = (cup_level <= 1.0) & (disc_level <= 1.0 - 1.0 / min(disc_ay, disc_ax))

    mask = np.full(shape, _MASK_BACKGROUND, dtype=np.uint8)
    mask[disc_mask] = _MASK_DISC
    mask[cup_mask] = _MASK_CUP

    # retina: pigmented orange-red background with large- and small-scale texture, darker macula
    base = (np.array([0.8, 0.36, 0.14]) * np.exp(rng.normal(0.0, 0.06, 3))).astype(np.float32)
    texture = 0.12 * _smooth_noise(rng, shape, 5) + 0.05 * _smooth_noise(rng, shape, max(int(size / 6), 8))
    img = base[None, None, :] * (1.0 + texture[..., None])
    fovea = disc_c + np.array([0.3 * r_disc, -rng.uniform(3.5, 4.5) * r_disc])
    macula = np.exp(-((yy - float(fovea[0])) ** 2 + (xx - float(fovea[1])) ** 2) / float(2.0 * (1.2 * r_disc) ** 2))
    img *= (1.0 - 0.3 * macula)[..., None]

    # optic disc and cup: bright yellowish, pale centre, soft boundaries
    disc_col = (np.array([1.0, 0.8, 0.5]) * np.exp(rng.normal(0.0, 0.04, 3))).astype(np.float32)
    cup_col = (np.array([1.0, 0.93, 0.75]) * np.exp(rng.normal(0.0, 0.03, 3))).astype(np.float32)
    disc_alpha = _soft_edge(disc_level, min(disc_ay, disc_ax), 1.5 * scale)[..., None]
    cup_alpha = _soft_edge(cup_level, min(cup_ay, cup_ax), 2.5 * scale)[..., None]
    rim_texture = 1.0 + 0.04 * texture[..., None]
    img = img * (1.0 - disc_alpha) + disc_col * rim_texture * disc_alpha
    img = img * (1.0 - cup_alpha) + cup_col * cup_alpha

    # vessels: dark red curves leaving the disc, drawn over it
    vessels = _vessel_map(rng, shape, disc_c, r_disc, scale * spec.zoom)
    img *= 1.0 - vessels[..., None] * np.array([0.45, 0.65, 0.55], dtype=np.float32)

    img *= fov[..., None]
    return img.astype(np.float32), mask, fov, fov_c, fov_r


def _jpeg_like(img: np.ndarray, step: float) -> np.ndarray:
    """JPEG-like artefacts: 8x8 block DCT of YCbCr, coarser quantisation at high frequencies and for chroma."""
    h, w, _ = img.shape
    ph, pw = -h % 8, -w % 8
    rgb_to_ycc = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = np.pad(img @ rgb_to_ycc.T, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hb, wb = ycc.shape[0] // 8, ycc.shape[1] // 8
    blocks = ycc.reshape(hb, 8, wb, 8, 3).transpose(0, 2, 4, 1, 3)  # (hb, wb, c, 8, 8)
    coeffs = sp_fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    freq = np.add.outer(np.arange(8), np.arange(8))
    q = step * (1.0 + 0.5 * freq)[None, None, None] * np.array([1.0, 2.0, 2.0])[None, None, :, None, None]
    blocks = sp_fft.idctn(np.round(coeffs / q) * q, axes=(-2, -1), norm="ortho")
    ycc = blocks.transpose(0, 3, 1, 4, 2).reshape(hb * 8, wb * 8, 3)[:h, :w]
    return ycc @ np.linalg.inv(rgb_to_ycc).T


def _resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Box-downsample by ``factor`` then bilinear-upsample back to the original size (per channel)."""
    h, w, _ = img.shape
    small = (max(int(round(w / factor)), 1), max(int(round(h / factor)), 1))
    out = np.empty_like(img, dtype=np.float32)
    for c in range(img.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
        out[..., c] = np.asarray(channel.resize(small, Image.BOX).resize((w, h), Image.BILINEAR))
    return out


def _acquire(
    rng: np.random.Generator, spec: FundusDomain, scene: np.ndarray, fov: np.ndarray, fov_c: np.ndarray, fov_r: float
) -> np.ndarray:
    """Simulate the acquisition of ``scene`` (linear RGB in [0, 1]) by the domain's camera; returns uint8 RGB."""
    h, w, _ = scene.shape
    scale = min(h, w) / _REF_SIZE
    j = spec.jitter

    def jit(value: float) -> float:
        return float(value * math.exp(rng.normal(0.0, j)))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ry, rx = (yy - fov_c[0]) / fov_r, (xx - fov_c[1]) / fov_r
    direction = rng.uniform(0.0, 2.0 * math.pi)
    gradient = spec.uneven * rng.uniform(0.5, 1.0) * (math.cos(direction) * rx + math.sin(direction) * ry)
    illumination = jit(spec.gain) * (1.0 - spec.vignetting * np.clip(rx**2 + ry**2, 0.0, 1.0)) * (1.0 + gradient)
    img = scene * np.clip(illumination, 0.0, None)[..., None]

    if spec.haze > 0:
        haze = min(jit(spec.haze), 0.95)
        img = (1.0 - haze) * img + haze * np.asarray(spec.haze_color)[None, None, :] * fov[..., None]
    if spec.contrast != 1.0:
        inside = fov > 0.5
        mean = img[inside].mean(axis=0) if inside.any() else img.reshape(-1, 3).mean(axis=0)
        img = mean + min(jit(spec.contrast), 1.0) * (img - mean)
    if spec.blur_sigma > 0:
        sigma = jit(spec.blur_sigma) * scale
        img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
    if spec.downsample > 1:
        img = _resample(img, spec.downsample)

    mixing = (1.0 - spec.crosstalk) * np.eye(3) + spec.crosstalk / 3.0
    white_balance = np.asarray(spec.white_balance) * np.exp(rng.normal(0.0, j / 2.0, 3))
    img = (img @ mixing.T) * white_balance[None, None, :]
    img = np.clip(img, 0.0, None) ** jit(spec.gamma)

    if spec.noise_std > 0:
        img = img + rng.normal(0.0, spec.noise_std, img.shape)
    if spec.jpeg_step > 0:
        img = _jpeg_like(img, spec.jpeg_step)
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def synthesize_fundus_case(
    domain: str, case_index: int, image_size: int | Sequence[int] = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic case in memory.

    The result depends only on ``(seed, domain, case_index, image_size)`` and the domain's parameters.

    Args:
        domain: a name in :data:`SYNTHETIC_FUNDUS_DOMAINS`.
        case_index: index of the case within the domain (non-negative).
        image_size: ``int`` or ``(height, width)``, each at least 32.
        seed: non-negative base seed.

    Returns:
        ``(image, mask)``: ``image`` uint8 ``(H, W, 3)`` RGB; ``mask`` uint8 ``(H, W)`` in the fundus encoding
        (255 background, 128 disc rim, 0 cup).

    Raises:
        ValueError: for an unknown domain, a negative seed or case index, or a too small image size.
    """
    spec = _get_domain(domain)
    shape = _as_size(image_size)
    if int(seed) < 0 or int(case_index) < 0:
        raise ValueError(f"seed and case_index must be non-negative, got seed={seed}, case_index={case_index}.")
    rng = _case_rng(seed, domain, case_index)
    scene, mask, fov, fov_c, fov_r = _render_scene(rng, spec, shape)
    return _acquire(rng, spec, scene, fov, fov_c, fov_r), mask


def _manifest(seed: int, num_per_domain: int, shape: tuple[int, int], domains: list[str], val_fraction: float) -> dict:
    record = {
        "generator": "monai_tta.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_per_domain": int(num_per_domain),
        "image_size": list(shape),
        "val_fraction": float(val_fraction),
        "domains": {name: asdict(SYNTHETIC_FUNDUS_DOMAINS[name]) for name in domains},
    }
    return as_json(record)


def generate_fundus_domains(
    root: str | Path,
    num_per_domain: int = 40,
    image_size: int | Sequence[int] = 128,
    seed: int = 0,
    domains: Sequence[str] | None = None,
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
        domains: names from :data:`SYNTHETIC_FUNDUS_DOMAINS`; ``None`` generates all of them in registry order.
        overwrite: regenerate even when the folder is complete.
        val_fraction: fraction of the source cases put in ``source_val``, in [0, 1).

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        ValueError: for an unknown or repeated domain name, or invalid sizes, counts, seed or fraction.
    """
    if domains is None:
        names = list_domains()
    else:
        names = [str(d) for d in ([domains] if isinstance(domains, str) else domains)]
    if not names:
        raise ValueError("domains must name at least one domain.")
    for name in names:
        _get_domain(name)
    if len(set(names)) != len(names):
        raise ValueError(f"domains must not repeat a name, got {names}.")
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
