"""Shared pytest setup: GPU tests skip cleanly on machines without CUDA, and a test of a backend whose package
is not installed (parametrised with `backend`, or in that backend's own test file) skips with that reason
instead of failing: DALI, decord and numba (the pyav backend's compiled loops) are in requirements.txt, but the
GPU check's NVDEC pack has none of them."""

import importlib.util
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


BACKEND_PACKAGES = {"dali": "nvidia.dali", "decord": "decord", "pyav": "numba"}  # backend -> the package it needs
BACKEND_FILES = {"test_pyav.py": "pyav"}  # test files whose every test uses one backend (test_kernels.py: importorskip)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None  # (finds it without importing it: no DALI start-up)
    except ModuleNotFoundError:  # a parent package (nvidia) is missing too
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    installed = {b: _installed(m) for b, m in BACKEND_PACKAGES.items()}
    for item in items:
        backend = getattr(item, "callspec", None) and item.callspec.params.get("backend")
        backend = backend or BACKEND_FILES.get(item.path.name)
        if backend in installed and not installed[backend]:
            item.add_marker(pytest.mark.skip(reason=f"backend {backend!r} needs {BACKEND_PACKAGES[backend]}, "
                                                    "which is not installed"))
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
