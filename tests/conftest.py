"""Hooks for every test: no hub, and each test's tier marker from where it lives.

tests/unit → ``unit``, tests/integration → ``integration``, tests/gpu → ``gpu`` (skipped, with
the reason, when CUDA is not available). So ``pytest -m unit`` runs the fast tier alone and
``pytest tests`` runs every tier. Shared helpers live in tests/helpers.py.

The tests of the container-parity tier (tests/parity.py) are marked ``parity`` too, and there its
known failures on the image's versions become strict xfails.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TESTS = Path(__file__).resolve().parent
TIERS = {"unit": "unit", "integration": "integration", "gpu": "gpu"}  # folder → marker


def tier_of(path: Path) -> str | None:
    """The tier marker of a test file: the name of its top folder under tests/, if it is a tier."""
    try:
        top = Path(path).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return TIERS.get(top)


def cuda_missing() -> str | None:
    """Why CUDA tests cannot run here, or None when they can."""
    import torch

    if torch.version.cuda is None:
        return f"needs CUDA (gpu marker): this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "needs CUDA (gpu marker): torch sees no CUDA device on this machine"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: the container-parity tier (tests/parity.py; scripts/parity_tests.sh "
                                       "runs it on the NGC image's Python and versions)")


def _installed(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def pytest_collection_modifyitems(config, items):
    from tests import parity

    for item in items:
        tier = tier_of(item.path)
        if tier is not None and item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
        if parity.selected(item.nodeid):
            item.add_marker(pytest.mark.parity)
            known = parity.XFAIL.get(item.nodeid)
            if known and (_installed(known[0]) or "").startswith(known[1]):
                item.add_marker(pytest.mark.xfail(reason=known[2], strict=True))
    if os.environ.get("SPPO_PARITY_RUN") == "1":  # scripts/parity_tests.sh: a renamed test must not drop out unseen
        lost = parity.unmatched(item.nodeid for item in items)
        if lost:
            raise pytest.UsageError("tests/parity.py selects tests that were not collected (renamed or removed?): "
                                    + ", ".join(lost))
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = cuda_missing() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))
