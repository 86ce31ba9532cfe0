"""The sites of the MR generator: their acquisition parameters, the registries and the named presets.

A site is an :class:`MRSite` (a simulated scanner and protocol: grid, orientation, field of view, intensity, bias,
noise) and, for a content site, an :class:`MRContentSite` that also changes the patients
(:class:`~monai_tta.data.mr_variation.PelvisVariation`: gland size, zonal share, lesions).

Two registries: :data:`MR_SITES`, the default sites (the source and five acquisition shifts: what the demo, the
bundles and the committed benchmarks use; unchanged), and :data:`MR_CONTENT_SITES`, target sites whose difference from
the source is content (field of view and coverage, share of foreground, atypical findings) or a mild acquisition
change, selectable by name or with the preset ``"content"`` (:data:`MR_SITE_PRESETS`). ``docs/data/mr_sites.md``
says what real difference each one models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monai.utils import look_up_option

from monai_tta.data.fundus_domains import SOURCE_DOMAIN
from monai_tta.data.mr_variation import PelvisVariation
from monai_tta.data.presets import preset_names, resolve_names

__all__ = [
    "MRSite",
    "MRContentSite",
    "MR_SITES",
    "MR_CONTENT_SITES",
    "MR_SITE_PRESETS",
    "AXIS_CODES",
    "list_mr_sites",
    "get_mr_site",
    "resolve_mr_sites",
]

AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
"""Axis code -> (world axis, sign), nibabel style (RAS+ world)."""


@dataclass(frozen=True)
class MRSite:
    """Acquisition parameters of one simulated MR site (scanner and protocol).

    Lengths are millimetres. ``spacing`` and ``fov`` are given in the stored voxel order ``(i, j, k)``; ``k`` is the
    slice axis. Every case draws its own small variation of the intensity parameters (``jitter``) and its own
    field-of-view placement (``fov_shift``).

    Args:
        description: one line saying what real acquisition the site imitates.
        orientation: the stored axis codes, nibabel style (``"RAS"``: ``i`` runs to the right, ``j`` to anterior,
            ``k`` to superior; ``"LPS"`` is the DICOM/ITK order; a permutation such as ``"ASL"`` is a sagittal stack).
        spacing: voxel size ``(i, j, k)``; ``k`` is the slice thickness (contiguous slices, no gap).
        fov: extent of the field of view along ``(i, j, k)``; the grid has ``round(fov / spacing)`` voxels per axis.
        tilt: oblique acquisition, degrees of rotation of the voxel grid about the left-right world axis.
        scale: intensity units per unit of tissue signal (scanners store arbitrary units).
        offset: intensity added after scaling (an export's intercept).
        contrast: exponent of the tissue signal (below 1 flattens the T2 contrast, above 1 steepens it).
        bias: standard deviation of the log of a smooth multiplicative bias field (receive-coil inhomogeneity).
        bias_wavelength: spatial wavelength of that field.
        endorectal: gain of an endorectal receive coil: signal times ``1 + endorectal * exp(-d / 15 mm)``, ``d`` the
            distance to the rectal lumen.
        noise: noise standard deviation, relative to the tissue signal range [0, 1].
        noise_kind: ``"rician"`` (magnitude image of complex Gaussian noise: a positive, Rayleigh-distributed floor in
            air) or ``"gaussian"`` (additive).
        fov_shift: largest offset of the field of view's centre from the gland centre, per world axis.
        jitter: relative per-case variation of ``scale``, ``bias`` and ``noise``.
    """

    description: str
    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    fov: tuple[float, float, float] = (120.0, 120.0, 72.0)
    tilt: float = 0.0
    scale: float = 1000.0
    offset: float = 0.0
    contrast: float = 1.0
    bias: float = 0.1
    bias_wavelength: float = 200.0
    endorectal: float = 0.0
    noise: float = 0.02
    noise_kind: str = "rician"
    fov_shift: float = 5.0
    jitter: float = 0.05


MR_SITES: dict[str, MRSite] = {
    SOURCE_DOMAIN: MRSite(
        description="3T, pelvic phased-array coil, axial T2 stored RAS; 2.0 mm in-plane, 3.0 mm slices, "
        "120 mm field of view, mild bias, Rician noise 2%",
    ),
    "thick": MRSite(
        description="1.5T, axial, stored LPS (DICOM order); thick 4.5 mm slices, coarser 2.4 mm in-plane, wider "
        "150 mm field of view showing the body outline, lower SNR (Rician 5%), flatter contrast, scale 400",
        orientation="LPS",
        spacing=(2.4, 2.4, 4.5),
        fov=(150.0, 150.0, 81.0),
        scale=400.0,
        contrast=0.8,
        noise=0.05,
    ),
    "endorectal": MRSite(
        description="3T with an endorectal coil: bright signal at the rectum falling off anteriorly; stored LAS; "
        "fine 1.6 mm in-plane, 3.6 mm slices, small 100 mm field of view, scale 3000",
        orientation="LAS",
        spacing=(1.6, 1.6, 3.6),
        fov=(100.0, 100.0, 72.0),
        scale=3000.0,
        endorectal=2.0,
        noise=0.015,
    ),
    "sagittal": MRSite(
        description="sagittal T2 stack stored with permuted axes (ASL: i anterior, j superior, k left); 1.8 mm "
        "in-plane (A-P, S-I), 4.0 mm slices across left-right, steeper contrast",
        orientation="ASL",
        spacing=(1.8, 1.8, 4.0),
        fov=(120.0, 108.0, 100.0),
        contrast=1.25,
        bias=0.15,
    ),
    "oblique": MRSite(
        description="oblique axial tilted 12 degrees about left-right (perpendicular to the rectal wall), stored LPS; "
        "Gaussian noise 3% and an export intercept of +200, scale 800",
        orientation="LPS",
        spacing=(2.0, 2.0, 3.0),
        fov=(120.0, 120.0, 75.0),
        tilt=12.0,
        scale=800.0,
        offset=200.0,
        noise=0.03,
        noise_kind="gaussian",
    ),
    "bias": MRSite(
        description="older 1.5T body-coil protocol with strong intensity inhomogeneity (bias 0.35); narrow 90 mm field "
        "of view cutting the body; thinner 2.5 mm slices at 1.8 mm in-plane; stored RAS, scale 1500",
        spacing=(1.8, 1.8, 2.5),
        fov=(90.0, 90.0, 66.0),
        scale=1500.0,
        bias=0.35,
        bias_wavelength=150.0,
        noise=0.03,
    ),
}
"""The default sites, name -> parameters, the source site first (the demo, bundles and committed benchmarks)."""


@dataclass(frozen=True)
class MRContentSite(MRSite):
    """A site whose patients differ from the source population (:class:`PelvisVariation`); its acquisition fields as
    :class:`MRSite`.

    Args:
        anatomy: the site's content change, applied to every drawn patient.
    """

    anatomy: PelvisVariation = field(default_factory=PelvisVariation)


MR_CONTENT_SITES: dict[str, MRSite] = {
    "pelvis": MRSite(
        description="large field of view of the whole pelvis (240 x 240 mm, 120 mm of coverage: bladder, bones, "
        "body outline and air), as a staging or body-coil survey; source scanner and voxels, centred within 10 mm",
        fov=(240.0, 240.0, 120.0),
        fov_shift=10.0,
    ),
    "cropped": MRSite(
        description="a volume cropped tightly around the gland (72 x 64 x 54 mm): a region of interest exported by "
        "a detection stage or a reduced-coverage acquisition; source scanner and voxels",
        fov=(72.0, 64.0, 54.0),
        fov_shift=3.0,
    ),
    "bph": MRContentSite(
        description="older men with benign prostatic hyperplasia: glands 1.3-1.55x larger (about 2.2-3.7x the "
        "volume) with a transition zone of 0.8-0.9 that compresses the peripheral zone; 84 mm of coverage",
        fov=(120.0, 120.0, 84.0),
        anatomy=PelvisVariation(gland_scale=(1.3, 1.55), tz_ratio=(0.8, 0.9)),
    ),
    "small": MRContentSite(
        description="young men (or after 5-alpha-reductase therapy): glands 0.72-0.85x smaller (about 0.4-0.6x the "
        "volume) with a small transition zone (0.45-0.6); source scanner",
        anatomy=PelvisVariation(gland_scale=(0.72, 0.85), tz_ratio=(0.45, 0.6)),
    ),
    "lesion": MRContentSite(
        description="patients with cancer: 1-3 focal T2-dark lesions (8-18 mm) in the peripheral zone, labelled "
        "as their zone; source scanner",
        anatomy=PelvisVariation(lesions=(1, 3)),
    ),
    "mild": MRSite(
        description="mild acquisition change: the source scanner model at another centre (other coil unit and "
        "reconstruction): contrast 1.08, bias 0.13, Rician noise 2.5 %, scale 1200",
        scale=1200.0,
        contrast=1.08,
        bias=0.13,
        noise=0.025,
    ),
}
"""Target sites whose difference from the source is content (or a mild acquisition change), name -> parameters."""

MR_SITE_PRESETS: dict[str, tuple[str, ...]] = {
    "default": tuple(MR_SITES),
    "content": (SOURCE_DOMAIN, *MR_CONTENT_SITES),
    "all": (*MR_SITES, *MR_CONTENT_SITES),
}
"""Named lists of sites, the source first: ``default`` (unchanged), ``content`` and ``all``."""


def list_mr_sites(preset: str = "default") -> list[str]:
    """Names of the sites of a preset, the source site first.

    Args:
        preset: a key of :data:`MR_SITE_PRESETS`: ``"default"`` (the keys of :data:`MR_SITES` in registry order),
            ``"content"`` (the source and :data:`MR_CONTENT_SITES`) or ``"all"``.

    Returns:
        the site names.

    Raises:
        ValueError: for an unknown preset.
    """
    return preset_names(preset, MR_SITE_PRESETS, MR_SITES, MR_CONTENT_SITES, "MR site")


def get_mr_site(site: str) -> MRSite:
    """The parameters of a site from either registry (the default one first), checked.

    Args:
        site: a name in :data:`MR_SITES` or :data:`MR_CONTENT_SITES`.

    Returns:
        the :class:`MRSite`.

    Raises:
        ValueError: for an unknown site, or a site whose orientation or noise kind is invalid.
    """
    for registry in (MR_SITES, MR_CONTENT_SITES):
        if site in registry:
            spec = registry[site]
            break
    else:
        raise ValueError(
            f"unknown MR site {site!r}; available: {list_mr_sites('all')} (or a preset: {list(MR_SITE_PRESETS)})."
        )
    codes = spec.orientation.upper()
    if len(codes) != 3 or sorted(AXIS_CODES[c][0] for c in codes if c in AXIS_CODES) != [0, 1, 2]:
        raise ValueError(f"MR site {site!r}: orientation {spec.orientation!r} must name each of L/R, A/P, S/I once.")
    look_up_option(spec.noise_kind, ("rician", "gaussian"))
    return spec


def resolve_mr_sites(sites: str | Sequence[str] | None) -> list[str]:
    """The site names of a request: ``None`` is the default preset, a preset name its list, else the names.

    Args:
        sites: ``None``, a preset name, one site name, or a sequence of site names.

    Returns:
        the names, each validated.

    Raises:
        ValueError: for an unknown or repeated name, or an empty list.
    """
    return resolve_names(sites, MR_SITE_PRESETS, list_mr_sites, get_mr_site, "sites")
