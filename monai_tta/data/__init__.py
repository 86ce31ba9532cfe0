"""Data layer: the synthetic multi-domain fundus generator and loaders for real layouts (fundus CSVs, datalists)."""

from __future__ import annotations

from .datalist import PATH_KEYS, case_id_from_path, domain_stream, load_datalist
from .fundus import FUNDUS_DOMAINS, fundus_csv_names, fundus_datalist, load_fundus_csv_domain
from .guarded import FAILURE_KEY, CaseStream, GuardedDataset, failure_reason
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
    "DATALIST_NAME",
    "FUNDUS_DOMAINS",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "PATH_KEYS",
    "SOURCE_DOMAIN",
    "SYNTHETIC_FUNDUS_DOMAINS",
    "FundusDomain",
    "case_id_from_path",
    "domain_stream",
    "fundus_csv_names",
    "fundus_datalist",
    "generate_fundus_domains",
    "list_domains",
    "load_datalist",
    "load_fundus_csv_domain",
    "synthesize_fundus_case",
]
