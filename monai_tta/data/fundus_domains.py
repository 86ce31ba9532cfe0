"""The domains of the synthetic fundus generator: their parameters, the registries and the named presets.

A domain is a :class:`FundusDomain` (how the image is *acquired*: colour response, illumination, haze, resolution,
field of view, noise) and, for a content domain, a :class:`FundusContentDomain` that also changes *what is imaged*
(:class:`FundusAnatomy`: the size and position of the optic disc, the cup-to-disc ratio, peripapillary atrophy,
retinal lesions).

Two registries: :data:`SYNTHETIC_FUNDUS_DOMAINS`, the default domains (the source and five acquisition shifts, what
the demo, the bundles and the committed benchmarks use; unchanged), and :data:`CONTENT_FUNDUS_DOMAINS`, target domains
whose difference from the source is content (field of view, share of foreground, atypical cases) or a mild
acquisition change, selectable by name or with the preset ``"content"`` (:data:`FUNDUS_DOMAIN_PRESETS`).
``docs/data/fundus_domains.md`` says what real difference each one models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from monai_tta.data.presets import preset_names, resolve_names

__all__ = [
    "SOURCE_DOMAIN",
    "FundusDomain",
    "FundusAnatomy",
    "FundusContentDomain",
    "SYNTHETIC_FUNDUS_DOMAINS",
    "CONTENT_FUNDUS_DOMAINS",
    "FUNDUS_DOMAIN_PRESETS",
    "list_domains",
    "get_fundus_domain",
    "resolve_fundus_domains",
]

SOURCE_DOMAIN = "source"


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
        fov_radius: radius of the circular field of view, as a fraction of half the image size (above 1.42 the
            circle contains the whole image: no dark border, as in a crop).
        fov_shift: largest offset of the field of view centre, as a fraction of the image size.
        zoom: magnification of the anatomy (optic disc size and position, vessel widths).
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


@dataclass(frozen=True)
class FundusAnatomy:
    """What is imaged: the per-case ranges (uniform, low and high) of the anatomy and the atypical findings.

    The defaults are the ranges of every default domain (the source's population). Lengths are fractions of the image
    size at ``zoom`` 1; the disc is vertically oval and lies nasally (to the right) of the image centre.

    Args:
        disc_radius: mean radius of the optic disc.
        disc_eccentricity: relative difference of its vertical and horizontal semi-axes.
        disc_angle: rotation of the oval, radians.
        disc_offset_y: vertical offset of the disc centre from the image centre.
        disc_offset_x: horizontal offset (positive: nasal) of the disc centre from the image centre.
        cup_to_disc: cup-to-disc diameter ratio.
        atrophy: probability that a case shows a peripapillary atrophy crescent (pale, on the temporal side of the
            disc); it is background in the mask.
        atrophy_width: largest width of the crescent, as a fraction of the disc radius.
        exudates: number of small bright yellow spots (hard exudates, drusen), background in the mask.
        haemorrhages: number of dark red blots (retinal haemorrhages), background in the mask.
    """

    disc_radius: tuple[float, float] = (0.085, 0.13)
    disc_eccentricity: tuple[float, float] = (0.0, 0.12)
    disc_angle: tuple[float, float] = (-0.3, 0.3)
    disc_offset_y: tuple[float, float] = (-0.08, 0.08)
    disc_offset_x: tuple[float, float] = (0.06, 0.2)
    cup_to_disc: tuple[float, float] = (0.3, 0.7)
    atrophy: float = 0.0
    atrophy_width: tuple[float, float] = (0.3, 0.7)
    exudates: tuple[int, int] = (0, 0)
    haemorrhages: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class FundusContentDomain(FundusDomain):
    """A domain that also changes the anatomy (:class:`FundusAnatomy`); its acquisition fields as
    :class:`FundusDomain`.

    Args:
        anatomy: the anatomy ranges and findings of the domain's cases.
    """

    anatomy: FundusAnatomy = field(default_factory=FundusAnatomy)


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
"""The default domains, name -> parameters, the source first (the demo, bundles and committed benchmarks)."""

CONTENT_FUNDUS_DOMAINS: dict[str, FundusDomain] = {
    "wide": FundusContentDomain(
        description="wide-angle camera (about 45-50 degrees instead of 30-35): the same retina at 0.65x, a smaller "
        "disc among more retina, vessels and the macula; source camera otherwise",
        zoom=0.65,
    ),
    "crop": FundusContentDomain(
        description="tight disc-centred crop (a region of interest exported around the optic nerve head): disc "
        "magnified 2x near the image centre, no dark border, little background; source camera otherwise",
        fov_radius=1.6,
        zoom=2.0,
        anatomy=FundusAnatomy(disc_offset_y=(-0.04, 0.04), disc_offset_x=(-0.04, 0.04)),
    ),
    "glaucoma": FundusContentDomain(
        description="glaucoma-enriched population: large cups (cup-to-disc ratio 0.6-0.85, a thin rim), so the cup "
        "takes a larger share of the disc; source camera",
        anatomy=FundusAnatomy(cup_to_disc=(0.6, 0.85)),
    ),
    "myopic": FundusContentDomain(
        description="myopic eyes: tilted, more oval and rotated discs with a pale peripapillary atrophy crescent on "
        "the temporal side (background in the mask) in 80% of cases; source camera",
        anatomy=FundusAnatomy(
            disc_eccentricity=(0.15, 0.35), disc_angle=(-0.7, 0.7), atrophy=0.8, atrophy_width=(0.3, 0.8)
        ),
    ),
    "lesions": FundusContentDomain(
        description="retinopathy: bright yellow exudates (4-14) and dark red haemorrhages (2-6) scattered over the "
        "retina, all background in the mask; source camera",
        anatomy=FundusAnatomy(exudates=(4, 14), haemorrhages=(2, 6)),
    ),
    "mild": FundusDomain(
        description="mild acquisition change (another unit of the source camera, other flash setting): 10% less "
        "light, slightly warmer white balance, a little more noise",
        gain=0.9,
        white_balance=(1.04, 1.0, 0.94),
        gamma=1.05,
        noise_std=0.015,
    ),
}
"""Target domains whose difference from the source is content (or a mild acquisition change), name -> parameters."""

FUNDUS_DOMAIN_PRESETS: dict[str, tuple[str, ...]] = {
    "default": tuple(SYNTHETIC_FUNDUS_DOMAINS),
    "content": (SOURCE_DOMAIN, *CONTENT_FUNDUS_DOMAINS),
    "all": (*SYNTHETIC_FUNDUS_DOMAINS, *CONTENT_FUNDUS_DOMAINS),
}
"""Named lists of domains, the source first: ``default`` (unchanged), ``content`` and ``all``."""


def list_domains(preset: str = "default") -> list[str]:
    """Names of the domains of a preset, the source domain first.

    Args:
        preset: a key of :data:`FUNDUS_DOMAIN_PRESETS`: ``"default"`` (the keys of :data:`SYNTHETIC_FUNDUS_DOMAINS`
            in registry order), ``"content"`` (the source and :data:`CONTENT_FUNDUS_DOMAINS`) or ``"all"``.

    Returns:
        the domain names.

    Raises:
        ValueError: for an unknown preset.
    """
    return preset_names(
        preset, FUNDUS_DOMAIN_PRESETS, SYNTHETIC_FUNDUS_DOMAINS, CONTENT_FUNDUS_DOMAINS, "fundus domain"
    )


def get_fundus_domain(domain: str | FundusDomain) -> FundusDomain:
    """The parameters of a domain: a name from either registry (the default one first), or a domain as is.

    Args:
        domain: a name in :data:`SYNTHETIC_FUNDUS_DOMAINS` or :data:`CONTENT_FUNDUS_DOMAINS`, or a
            :class:`FundusDomain`.

    Returns:
        the :class:`FundusDomain`.

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(domain, FundusDomain):
        return domain
    for registry in (SYNTHETIC_FUNDUS_DOMAINS, CONTENT_FUNDUS_DOMAINS):
        if domain in registry:
            return registry[domain]
    raise ValueError(
        f"unknown synthetic domain {domain!r}; available: {list_domains('all')} "
        f"(or a preset: {list(FUNDUS_DOMAIN_PRESETS)})."
    )


def resolve_fundus_domains(domains: str | Sequence[str] | None) -> list[str]:
    """The domain names of a request: ``None`` is the default preset, a preset name its list, else the names.

    Args:
        domains: ``None``, a preset name, one domain name, or a sequence of domain names.

    Returns:
        the names, each validated.

    Raises:
        ValueError: for an unknown or repeated name, or an empty list.
    """
    return resolve_names(domains, FUNDUS_DOMAIN_PRESETS, list_domains, get_fundus_domain, "domains")
