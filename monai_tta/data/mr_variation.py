"""Content variation of the pelvis phantom: another population's gland size and zonal share, and focal lesions.

:func:`draw_pelvis <monai_tta.data.mr_phantom.draw_pelvis>` draws the source population. A content site
(:class:`~monai_tta.data.mr_registry.MRContentSite`) then changes the drawn patient with :func:`vary_pelvis`, from a
stream of its own, so that the patient's other structures keep their values: the gland is scaled (the rectum and the
bladder move with its surface), the transition zone takes another share of it, and T2-dark lesions are placed in the
peripheral zone. The labels follow (a larger gland is a larger label; lesions keep their zone's label, as zonal
annotations include tumours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from monai_tta.data.mr_phantom import PelvisPhantom, rotation_matrix

__all__ = ["PelvisVariation", "vary_pelvis"]


@dataclass(frozen=True)
class PelvisVariation:
    """Per-case ranges (uniform, low and high) of a site's content change; the defaults change nothing.

    Args:
        gland_scale: factor on every semi-axis of the gland (its volume changes with the cube).
        tz_ratio: size of the transition zone relative to the gland (left-right), replacing the source's 0.55-0.8;
            ``None`` keeps the drawn one.
        lesions: number of focal lesions in the peripheral zone.
        lesion_radius: their mean semi-axis, millimetres (each axis 0.8-1.2 of it).
        lesion_signal: their T2 signal, in the phantom's [0, 1] tissue scale (peripheral zone 0.62-0.72).
    """

    gland_scale: tuple[float, float] = (1.0, 1.0)
    tz_ratio: tuple[float, float] | None = None
    lesions: tuple[int, int] = (0, 0)
    lesion_radius: tuple[float, float] = (4.0, 9.0)
    lesion_signal: tuple[float, float] = (0.22, 0.34)

    def is_identity(self) -> bool:
        """Whether this variation leaves every patient as drawn."""
        return self == PelvisVariation()


def _scaled(anatomy: PelvisPhantom, scale: float, tz_ratio: float | None) -> PelvisPhantom:
    """The gland scaled about its centre, the transition zone resized, the rectum and the bladder moved with the
    gland's surface (posterior and superior)."""
    g_old = np.asarray(anatomy.gland_semi)
    g_new = g_old * scale
    centre = np.asarray(anatomy.gland_centre)
    tz_semi = np.asarray(anatomy.tz_semi) * scale
    if tz_ratio is not None:
        tz_semi = tz_semi * (tz_ratio / (tz_semi[0] / g_new[0]))
    tz_centre = centre + (np.asarray(anatomy.tz_centre) - centre) * scale
    rx, ry = anatomy.rectum_centre
    bx, by, bz = anatomy.bladder_centre
    return replace(
        anatomy,
        gland_semi=tuple(float(v) for v in g_new),
        tz_semi=tuple(float(v) for v in tz_semi),
        tz_centre=tuple(float(v) for v in tz_centre),
        rectum_centre=(rx, float(ry - (g_new[1] - g_old[1]))),
        bladder_centre=(bx, by, float(bz + (g_new[2] - g_old[2]))),
    )


def _lesions(rng: np.random.Generator, anatomy: PelvisPhantom, variation: PelvisVariation) -> tuple:
    """Lesions in the posterior (peripheral) part of the gland, 55-80 % of the way to its surface."""
    rotation = rotation_matrix(*anatomy.gland_rotation)
    semi = np.asarray(anatomy.gland_semi)
    found = []
    for _ in range(int(rng.integers(variation.lesions[0], variation.lesions[1] + 1))):
        direction = np.array([rng.uniform(-0.9, 0.9), -1.0, rng.uniform(-0.6, 0.6)])
        direction /= np.linalg.norm(direction)
        local = direction * semi * rng.uniform(0.55, 0.8)
        centre = np.asarray(anatomy.gland_centre) + rotation @ local
        radius = rng.uniform(*variation.lesion_radius)
        axes = radius * rng.uniform(0.8, 1.2, 3)
        signal = rng.uniform(*variation.lesion_signal)
        found.append((tuple(float(v) for v in centre), tuple(float(v) for v in axes), float(signal)))
    return tuple(found)


def vary_pelvis(anatomy: PelvisPhantom, variation: PelvisVariation, rng: np.random.Generator) -> PelvisPhantom:
    """Apply a site's content change to one drawn patient.

    Args:
        anatomy: the patient as :func:`~monai_tta.data.mr_phantom.draw_pelvis` drew it.
        variation: the site's ranges.
        rng: the case's variation stream (not the anatomy's: the patient's other structures keep their values).

    Returns:
        the changed patient (``anatomy`` itself when ``variation`` changes nothing).

    Raises:
        ValueError: for a non-positive gland scale, a transition-zone ratio outside (0, 1) or a negative count.
    """
    if variation.is_identity():
        return anatomy
    if min(variation.gland_scale) <= 0 or min(variation.lesions) < 0:
        raise ValueError(f"PelvisVariation: gland_scale must be > 0 and lesions >= 0, got {variation}.")
    if variation.tz_ratio is not None and not 0 < min(variation.tz_ratio) <= max(variation.tz_ratio) < 1:
        raise ValueError(f"PelvisVariation: tz_ratio must lie in (0, 1), got {variation.tz_ratio}.")
    scale = rng.uniform(*variation.gland_scale)
    ratio = None if variation.tz_ratio is None else rng.uniform(*variation.tz_ratio)
    if not (math.isclose(scale, 1.0) and ratio is None):
        anatomy = _scaled(anatomy, scale, ratio)
    if max(variation.lesions) > 0:
        anatomy = replace(anatomy, lesions=_lesions(rng, anatomy, variation))
    return anatomy
