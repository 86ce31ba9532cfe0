"""Data layer: the synthetic multi-domain fundus and multi-site MR generators, and loaders for real layouts."""

from __future__ import annotations

from .datalist import PATH_KEYS, DeferredData, case_id_from_path, domain_stream, load_datalist
from .fundus import FUNDUS_DOMAINS, fundus_csv_names, fundus_datalist, load_fundus_csv_domain
from .guarded import FAILURE_KEY, CaseStream, GuardedDataset, failure_reason, is_failure
from .mr_sites import (
    MR_GENERATOR_VERSION,
    MR_LABEL_MODES,
    MR_SITES,
    MR_SPLITS,
    MRSite,
    generate_mr_sites,
    list_mr_sites,
    mr_site_affine,
    synthesize_mr_case,
)
from .slices import SLICE_KEY, volume_slices
from .synthetic import (
    DATALIST_NAME,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SOURCE_DOMAIN,
    SYNTHETIC_FUNDUS_DOMAINS,
    FundusDomain,
    generate_fundus_domains,
    list_domains,
    synthesize_fundus_case,
)

__all__ = [
    "FAILURE_KEY",
    "CaseStream",
    "GuardedDataset",
    "failure_reason",
    "is_failure",
    "SLICE_KEY",
    "volume_slices",
    "DATALIST_NAME",
    "FUNDUS_DOMAINS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "MR_GENERATOR_VERSION",
    "MR_LABEL_MODES",
    "MR_SITES",
    "MR_SPLITS",
    "MRSite",
    "PATH_KEYS",
    "SOURCE_DOMAIN",
    "SYNTHETIC_FUNDUS_DOMAINS",
    "DeferredData",
    "FundusDomain",
    "case_id_from_path",
    "domain_stream",
    "fundus_csv_names",
    "fundus_datalist",
    "generate_fundus_domains",
    "generate_mr_sites",
    "list_domains",
    "list_mr_sites",
    "load_datalist",
    "load_fundus_csv_domain",
    "mr_site_affine",
    "synthesize_fundus_case",
    "synthesize_mr_case",
]
