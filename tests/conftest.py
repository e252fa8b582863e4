"""Shared pytest setup: GPU tests skip cleanly on machines without CUDA."""

import gc
import sys
from pathlib import Path

import pytest

# Tests import the project's top-level modules (model, pipeline, train, ...) from the repository root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _collect_finished_dali_pipelines():
    """Free DALI pipelines whose loaders are gone, after every test.

    A DaliLoader and its pipeline form a reference cycle (the external source is a bound method of the
    loader), so only the cycle collector frees them, and with them DALI's worker threads. A later test that
    forks decord DataLoader workers while such threads run risks a child that inherits a held lock.
    """
    yield
    gc.collect()
