"""A pelvis-like MR phantom in world coordinates: one patient's anatomy, sampled at any points of any scanner grid.

The phantom lives in millimetres in RAS+ world coordinates (x to the right, y anterior, z superior), the gland centre
near the origin. It has a body (skin, subcutaneous fat, a muscle ring, pelvic fat), two pelvic bones (dark cortex,
marrow) with the obturator muscles medial to them, a bladder (wall, urine) above and in front of the gland, a rectum
(wall, lumen) behind it, and a prostate-like gland: a thin dark capsule, a bright peripheral zone and a darker
transition zone lying anteriorly inside it, made heterogeneous by small-scale texture (benign hyperplasia). The
signal is T2-like, in [0, 1]. Every size, position, pose, shape perturbation and tissue intensity is drawn per patient
by :func:`draw_pelvis`; no scanner property enters here (see :mod:`monai_tta.data.mr_sites`).

Shapes are ellipsoids and elliptic cylinders (level sets: < 1 inside); smooth random fields are sums of random plane
waves, so the anatomy is continuous and the same patient can be sampled on any grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PERIPHERAL_ZONE",
    "TRANSITION_ZONE",
    "PelvisPhantom",
    "draw_pelvis",
    "phantom_label",
    "phantom_signal",
    "random_waves",
    "rotation_matrix",
    "smooth_field",
]

PERIPHERAL_ZONE, TRANSITION_ZONE = 1, 2
"""Label values, as in the Medical Segmentation Decathlon prostate task (0 is background)."""


def rotation_matrix(angle_x: float, angle_z: float) -> np.ndarray:
    """Rotation about the x (left-right) axis by ``angle_x``, then about z (superior) by ``angle_z`` (radians).

    Args:
        angle_x: angle about x, radians.
        angle_z: angle about z, radians.

    Returns:
        the float64 ``(3, 3)`` matrix ``Rz @ Rx``.
    """
    cx, sx, cz, sz = math.cos(angle_x), math.sin(angle_x), math.cos(angle_z), math.sin(angle_z)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    rot_z = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rot_z @ rot_x


def random_waves(rng: np.random.Generator, n: int, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
    """Random plane waves for :func:`smooth_field`.

    Args:
        rng: the random stream.
        n: number of waves.
        wavelength: their typical wavelength in millimetres (each within a factor 0.6-1.4, random direction).

    Returns:
        ``(k, phase)``: wave vectors ``(n, 3)`` (radians per millimetre) and phases ``(n,)``.
    """
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2.0 * math.pi / wavelength) * rng.uniform(0.6, 1.4, size=(n, 1))
    return k, rng.uniform(0.0, 2.0 * math.pi, size=n)


def smooth_field(points: np.ndarray, waves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A smooth random field at ``points``: ``sqrt(2 / n) * sum cos(k . x + phase)``, standard deviation 1 over phases.

    Args:
        points: world positions ``(N, 3)``, millimetres; the result has their dtype.
        waves: from :func:`random_waves`.

    Returns:
        the field values ``(N,)``.
    """
    k, phase = waves
    values = np.cos(points @ k.T.astype(points.dtype) + phase.astype(points.dtype))
    return values.sum(axis=1) * math.sqrt(2.0 / len(phase))


def _level(points: np.ndarray, centre, semi, rotation: np.ndarray | None = None) -> np.ndarray:
    """Ellipsoid level set: < 1 inside, 1 on the boundary (``rotation`` maps body axes to world axes)."""
    local = points - np.asarray(centre, dtype=points.dtype)
    if rotation is not None:
        local = local @ rotation.astype(points.dtype)
    local /= np.asarray(semi, dtype=points.dtype)
    return np.sqrt(np.einsum("ij,ij->i", local, local))


def _cylinder_level(points: np.ndarray, centre_xy, semi_xy) -> np.ndarray:
    """Elliptic cylinder along z: < 1 inside."""
    dx = (points[:, 0] - np.float32(centre_xy[0])) / np.float32(semi_xy[0])
    dy = (points[:, 1] - np.float32(centre_xy[1])) / np.float32(semi_xy[1])
    return np.sqrt(dx * dx + dy * dy)


@dataclass(frozen=True)
class PelvisPhantom:
    """One patient: the parameters of every structure, in world millimetres (drawn by :func:`draw_pelvis`).

    Cylinders (body, bones, obturators, rectum) run along z; ``*_semi`` are semi-axes, ``fat`` and ``muscle`` layer
    thicknesses, ``tz_*`` the transition zone, ``*_waves`` the smooth fields of the gland's shape perturbation
    (relative ``shape_amplitude``), of the tissue texture and of the transition zone's nodules; ``tissue`` maps each
    tissue to its signal in [0, 1]; ``lesions`` are focal findings of the peripheral zone, each
    ``(centre, semi-axes, signal)`` (none by default: :mod:`monai_tta.data.mr_variation` adds them).
    """

    body_centre: tuple[float, float]
    body_semi: tuple[float, float]
    fat: float
    muscle: float
    bone_x: float
    bone_semi: tuple[float, float]
    obturator_x: float
    bladder_centre: tuple[float, float, float]
    bladder_semi: tuple[float, float, float]
    rectum_centre: tuple[float, float]
    rectum_semi: tuple[float, float]
    gland_centre: tuple[float, float, float]
    gland_semi: tuple[float, float, float]
    gland_rotation: tuple[float, float]
    tz_centre: tuple[float, float, float]
    tz_semi: tuple[float, float, float]
    shape_waves: tuple[np.ndarray, np.ndarray]
    shape_amplitude: float
    texture_waves: tuple[np.ndarray, np.ndarray]
    nodule_waves: tuple[np.ndarray, np.ndarray]
    tissue: dict[str, float]
    lesions: tuple[tuple[tuple[float, float, float], tuple[float, float, float], float], ...] = ()


def draw_pelvis(rng: np.random.Generator) -> PelvisPhantom:
    """Draw one patient. Ranges (uniform) are plausible adult values, chosen by hand; the gland is about 38-50 mm
    wide, 26-34 mm deep and 30-40 mm high; the transition zone is 0.55-0.8 of its size, shifted anteriorly.

    Args:
        rng: the patient's random stream.

    Returns:
        the phantom.
    """
    u = rng.uniform
    gland_semi = (u(19.0, 25.0), u(13.0, 17.0), u(15.0, 20.0))
    gland_centre = (u(-4.0, 4.0), u(-4.0, 4.0), u(-4.0, 4.0))
    ratio = u(0.55, 0.8)  # transition zone size relative to the gland (grows with age)
    tz_semi = (gland_semi[0] * ratio, gland_semi[1] * ratio * u(0.9, 1.1), gland_semi[2] * ratio * u(0.9, 1.1))
    tz_centre = (
        gland_centre[0] + u(-1.5, 1.5),
        gland_centre[1] + u(0.15, 0.3) * gland_semi[1],  # anterior: the peripheral zone is thickest posteriorly
        gland_centre[2] + u(0.0, 0.15) * gland_semi[2],
    )
    rectum_semi = (u(14.0, 18.0), u(10.0, 14.0))
    rectum_centre = (u(-3.0, 3.0), gland_centre[1] - gland_semi[1] - rectum_semi[1] - u(1.0, 4.0))
    bladder_semi = (u(25.0, 35.0), u(18.0, 25.0), u(18.0, 25.0))
    bladder_centre = (u(-4.0, 4.0), gland_centre[1] + u(6.0, 14.0), gland_centre[2] + gland_semi[2] + u(12.0, 18.0))
    tissue = {
        "skin": u(0.4, 0.5),
        "fat": u(0.75, 0.85),
        "muscle": u(0.22, 0.3),
        "pelvic_fat": u(0.65, 0.75),
        "cortex": u(0.03, 0.08),
        "marrow": u(0.45, 0.55),
        "urine": u(0.9, 1.0),
        "wall": u(0.25, 0.35),
        "lumen": u(0.08, 0.15),
        "capsule": u(0.18, 0.26),
        "peripheral": u(0.62, 0.72),
        "transition": u(0.33, 0.43),
    }
    return PelvisPhantom(
        body_centre=(u(-3.0, 3.0), u(5.0, 12.0)),
        body_semi=(u(88.0, 100.0), u(62.0, 72.0)),
        fat=u(8.0, 16.0),
        muscle=u(10.0, 18.0),
        bone_x=u(58.0, 66.0),
        bone_semi=(u(10.0, 14.0), u(18.0, 24.0)),
        obturator_x=u(38.0, 44.0),
        bladder_centre=bladder_centre,
        bladder_semi=bladder_semi,
        rectum_centre=rectum_centre,
        rectum_semi=rectum_semi,
        gland_centre=gland_centre,
        gland_semi=gland_semi,
        gland_rotation=(u(-0.2, 0.2), u(-0.1, 0.1)),
        tz_centre=tz_centre,
        tz_semi=tz_semi,
        shape_waves=random_waves(rng, 6, 60.0),
        shape_amplitude=u(0.03, 0.07),
        texture_waves=random_waves(rng, 8, 25.0),
        nodule_waves=random_waves(rng, 8, 8.0),
        tissue=tissue,
    )


def _gland_levels(anatomy: PelvisPhantom, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level sets of the whole gland (with a smooth shape perturbation) and of the transition zone."""
    rotation = rotation_matrix(*anatomy.gland_rotation)
    gland = _level(points, anatomy.gland_centre, anatomy.gland_semi, rotation)
    # the perturbation factor is at least 1 - amplitude * sqrt(2 n): farther points stay outside, skip them (exact)
    n_waves = len(anatomy.shape_waves[1])
    near = gland * (1.0 - anatomy.shape_amplitude * math.sqrt(2.0 * n_waves)) <= 1.0
    gland[near] *= 1.0 + anatomy.shape_amplitude * smooth_field(points[near], anatomy.shape_waves)
    tz = _level(points, anatomy.tz_centre, anatomy.tz_semi, rotation)
    return gland, tz


def phantom_label(anatomy: PelvisPhantom, points: np.ndarray) -> np.ndarray:
    """Zone label at world ``points``.

    Args:
        anatomy: the patient.
        points: world positions ``(N, 3)``, millimetres.

    Returns:
        uint8 ``(N,)``: 0 background, 1 peripheral zone (with the capsule), 2 transition zone.
    """
    gland, tz = _gland_levels(anatomy, points)
    label = np.zeros(len(points), dtype=np.uint8)
    label[gland <= 1.0] = PERIPHERAL_ZONE
    label[(tz <= 1.0) & (gland <= 0.85)] = TRANSITION_ZONE  # the transition zone stays inside the peripheral zone
    return label


def phantom_signal(anatomy: PelvisPhantom, points: np.ndarray) -> np.ndarray:
    """T2-like tissue signal at world ``points`` (painter's order: later structures cover earlier ones).

    Args:
        anatomy: the patient.
        points: world positions ``(N, 3)``, millimetres.

    Returns:
        float32 ``(N,)`` in [0, 1]; air is 0.
    """
    t = anatomy.tissue
    x = points[:, 0]
    signal = np.zeros(len(points), dtype=np.float32)
    body = _cylinder_level(points, anatomy.body_centre, anatomy.body_semi)
    radius = min(anatomy.body_semi)

    def inner(depth: float) -> np.ndarray:
        return body <= 1.0 - depth / radius

    signal[body <= 1.0] = t["skin"]
    signal[inner(2.0)] = t["fat"]
    signal[inner(2.0 + anatomy.fat)] = t["muscle"]
    signal[inner(2.0 + anatomy.fat + anatomy.muscle)] = t["pelvic_fat"]
    y0 = anatomy.gland_centre[1]
    for side in (-1.0, 1.0):
        bone = _cylinder_level(points, (side * anatomy.bone_x, y0), anatomy.bone_semi)
        signal[bone <= 1.0] = t["cortex"]
        signal[bone <= 1.0 - 2.5 / min(anatomy.bone_semi)] = t["marrow"]
        obturator = _cylinder_level(points, (side * anatomy.obturator_x, y0), (7.0, 20.0))
        signal[(obturator <= 1.0) & (np.abs(x) < anatomy.bone_x - anatomy.bone_semi[0])] = t["muscle"]
    bladder = _level(points, anatomy.bladder_centre, anatomy.bladder_semi)
    signal[bladder <= 1.0] = t["wall"]
    signal[bladder <= 1.0 - 3.0 / min(anatomy.bladder_semi)] = t["urine"]
    rectum = _cylinder_level(points, anatomy.rectum_centre, anatomy.rectum_semi)
    signal[rectum <= 1.0] = t["wall"]
    signal[rectum <= 1.0 - 4.0 / min(anatomy.rectum_semi)] = t["lumen"]

    gland, tz = _gland_levels(anatomy, points)
    inside = np.flatnonzero(gland <= 1.0)
    gland, tz, where = gland[inside], tz[inside], points[inside]
    texture = smooth_field(where, anatomy.texture_waves)
    gland_signal = np.full(len(inside), t["capsule"])
    peripheral = gland <= 1.0 - 1.5 / min(anatomy.gland_semi)
    gland_signal[peripheral] = t["peripheral"] * (1.0 + 0.05 * texture[peripheral])
    transition = (tz <= 1.0) & (gland <= 0.85)
    nodules = smooth_field(where[transition], anatomy.nodule_waves)  # benign hyperplasia: heterogeneous transition zone
    gland_signal[transition] = t["transition"] * (1.0 + 0.04 * texture[transition] + 0.1 * nodules)
    for centre, semi, value in anatomy.lesions:  # focal T2-dark findings; they replace the peripheral zone's signal
        lesion = (_level(where, centre, semi) <= 1.0) & peripheral & ~transition
        gland_signal[lesion] = value * (1.0 + 0.05 * texture[lesion])
    signal[inside] = gland_signal
    return np.clip(signal, 0.0, 1.0)
