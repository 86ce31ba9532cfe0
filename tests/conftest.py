"""Shared test set-up: the helper modules on the path, one torch thread per test, and the test tiers.

Tiers: ``python -m pytest`` runs the fast unit tier; tests marked ``integration`` (bundle runs, subprocesses,
``torchrun``, MONAI Label) run with ``python -m pytest -m integration`` (see ``markers`` in pyproject.toml). Every test
under ``monailabel_serving/`` is in the integration tier.

Helpers shared by several test modules live in modules that are not test modules (``tiny.py``, ``bad_cases.py``,
``tgma_runs.py``, ``dyna_runs.py``, ...); no test module imports another test module.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

MONAI_LABEL_TESTS = Path(__file__).parent / "monailabel_serving"


def pytest_collection_modifyitems(config, items):
    """Put the MONAI Label tests (their own environment, a real server) in the integration tier."""
    for item in items:
        if MONAI_LABEL_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny networks on a 2-core machine: one thread is faster and steadier (and runs are reproducible)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
