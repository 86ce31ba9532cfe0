"""The anatomy of a synthetic fundus image: retina, optic disc and cup, vessels, and the atypical findings.

:func:`render_scene` draws one eye (linear RGB in [0, 1]) and its mask; the camera
(:mod:`monai_tta.data.fundus_camera`) then acquires it. The ranges come from the domain's :class:`FundusAnatomy`
(the default one for every default domain), the disc size and position also from its ``zoom``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from monai_tta.data.fundus_domains import FundusAnatomy, FundusContentDomain, FundusDomain

__all__ = ["MASK_BACKGROUND", "MASK_DISC", "MASK_CUP", "REF_SIZE", "domain_anatomy", "smooth_noise", "render_scene"]

MASK_BACKGROUND, MASK_DISC, MASK_CUP = 255, 128, 0
"""The fundus mask encoding (as the real benchmark's masks): background, disc rim, cup."""

REF_SIZE = 128.0
"""Pixel-valued parameters (blur, widths) are given at this image size and scaled with it."""

_DEFAULT_ANATOMY = FundusAnatomy()


def domain_anatomy(spec: FundusDomain) -> FundusAnatomy:
    """The anatomy ranges of a domain: its own for a :class:`FundusContentDomain`, else the default ones.

    Args:
        spec: the domain.

    Returns:
        its :class:`FundusAnatomy`.
    """
    return spec.anatomy if isinstance(spec, FundusContentDomain) else _DEFAULT_ANATOMY


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random ``cells x cells`` grid blended with Gaussian weights up to ``shape``.

    Args:
        rng: the random stream.
        shape: ``(height, width)``.
        cells: grid cells per side (more: finer noise).

    Returns:
        float32 ``shape``.
    """
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


def _atrophy(
    rng: np.random.Generator,
    img: np.ndarray,
    disc_level: np.ndarray,
    angle: np.ndarray,
    r_disc: float,
    scale: float,
    anatomy: FundusAnatomy,
) -> np.ndarray:
    """Peripapillary atrophy: a pale crescent outside the disc margin, widest on the temporal side (towards the
    fovea, left here), its colour the sclera's and the pigment's."""
    width = rng.uniform(*anatomy.atrophy_width)
    centre_angle = math.pi + rng.normal(0.0, 0.3)  # temporal
    reach = 1.0 + width * np.clip(np.cos(angle - centre_angle), 0.0, None) ** 0.7
    alpha = _soft_edge(disc_level / reach, r_disc, 1.5 * scale)[..., None]
    colour = (np.array([0.95, 0.78, 0.6]) * np.exp(rng.normal(0.0, 0.05, 3))).astype(np.float32)
    return img * (1.0 - alpha) + colour * alpha


def _spots(
    rng: np.random.Generator,
    img: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    fov_c: np.ndarray,
    fov_r: float,
    count: tuple[int, int],
    radius: tuple[float, float],
    colour: tuple[float, float, float],
    scale: float,
) -> np.ndarray:
    """Blend ``count`` round soft spots of ``colour`` (radius in pixels at 128) at random places of the field."""
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        r = rng.uniform(*radius) * scale
        rho, phi = 0.85 * fov_r * math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
        c = fov_c + rho * np.array([math.sin(phi), math.cos(phi)])
        level = np.hypot(yy - float(c[0]), xx - float(c[1])) / r
        alpha = _soft_edge(level, r, 0.7 * scale)[..., None]
        tint = (np.asarray(colour) * np.exp(rng.normal(0.0, 0.06, 3))).astype(np.float32)
        img = img * (1.0 - alpha) + tint * alpha
    return img


def render_scene(
    rng: np.random.Generator,
    spec: FundusDomain,
    shape: tuple[int, int],
    findings_rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Draw the anatomy of one case.

    Args:
        rng: the case's stream (field of view, disc, cup, retina, vessels), drawn in a fixed order, so that the
            default domains' images do not change when findings are added.
        spec: the domain (its ``fov_*`` and ``zoom``, and its :func:`domain_anatomy`).
        shape: ``(height, width)``.
        findings_rng: a second stream for the atypical findings (atrophy, exudates, haemorrhages); needed only when
            the anatomy has some. The mask does not depend on it.

    Returns:
        ``(linear RGB scene, mask, fov opacity, fov centre, fov radius)``.

    Raises:
        ValueError: if the anatomy has findings and ``findings_rng`` is None.
    """
    anatomy = domain_anatomy(spec)
    findings = anatomy.atrophy > 0 or max(anatomy.exudates) > 0 or max(anatomy.haemorrhages) > 0
    if findings and findings_rng is None:
        raise ValueError("render_scene: this domain has atypical findings; pass findings_rng.")
    h, w = shape
    size = float(min(h, w))
    scale = size / REF_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])

    # camera: circular field of view
    fov_r = spec.fov_radius * size / 2.0
    fov_c = centre + rng.uniform(-1.0, 1.0, 2) * spec.fov_shift * size
    fov_level = np.hypot(yy - fov_c[0], xx - fov_c[1]) / fov_r
    fov = _soft_edge(fov_level, fov_r, 1.0 * scale).astype(np.float32)

    # anatomy: optic disc (vertically oval) with a nested cup
    r_disc = rng.uniform(*anatomy.disc_radius) * size * spec.zoom
    ecc = rng.uniform(*anatomy.disc_eccentricity)
    disc_ay, disc_ax = r_disc * (1.0 + ecc / 2.0), r_disc * (1.0 - ecc / 2.0)
    disc_angle = rng.uniform(*anatomy.disc_angle)
    offset = np.array([rng.uniform(*anatomy.disc_offset_y), rng.uniform(*anatomy.disc_offset_x)]) * size * spec.zoom
    disc_c = centre + offset
    room = fov_r - disc_ay - 3.0 * scale  # keep the whole disc inside the field of view
    rel = disc_c - fov_c
    if np.hypot(*rel) > max(room, 0.0):
        disc_c = fov_c + rel * max(room, 0.0) / np.hypot(*rel)
    cdr = rng.uniform(*anatomy.cup_to_disc)
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

    mask = np.full(shape, MASK_BACKGROUND, dtype=np.uint8)
    mask[disc_mask] = MASK_DISC
    mask[cup_mask] = MASK_CUP

    # retina: pigmented orange-red background with large- and small-scale texture, darker macula
    base = (np.array([0.8, 0.36, 0.14]) * np.exp(rng.normal(0.0, 0.06, 3))).astype(np.float32)
    texture = 0.12 * smooth_noise(rng, shape, 5) + 0.05 * smooth_noise(rng, shape, max(int(size / 6), 8))
    img = base[None, None, :] * (1.0 + texture[..., None])
    fovea = disc_c + np.array([0.3 * r_disc, -rng.uniform(3.5, 4.5) * r_disc])
    macula = np.exp(-((yy - float(fovea[0])) ** 2 + (xx - float(fovea[1])) ** 2) / float(2.0 * (1.2 * r_disc) ** 2))
    img *= (1.0 - 0.3 * macula)[..., None]

    # atypical findings (their own stream): lesions on the retina, atrophy at the disc margin, under the disc
    if findings:
        img = _spots(findings_rng, img, yy, xx, fov_c, fov_r, anatomy.exudates, (0.6, 1.6), (1.0, 0.88, 0.4), scale)
        img = _spots(
            findings_rng, img, yy, xx, fov_c, fov_r, anatomy.haemorrhages, (1.5, 4.0), (0.4, 0.06, 0.04), scale
        )
        if findings_rng.uniform() < anatomy.atrophy:
            angle = np.arctan2(yy - float(disc_c[0]), xx - float(disc_c[1]))
            img = _atrophy(findings_rng, img, disc_level, angle, r_disc, scale * spec.zoom, anatomy)

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
