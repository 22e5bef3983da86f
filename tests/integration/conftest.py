"""Fixtures of the integration tier: the tiny random Llama and one reference run of the CI recipe."""

from pathlib import Path

import pytest

# Re-exported for test modules that still import them from here; new code imports tests.helpers.
from tests.helpers import ROOT, TINY_RECIPE, cli_env, sppo_run

__all__ = ["ROOT", "TINY_RECIPE", "cli_env", "sppo_run", "tiny_model", "reference_run"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sppo_nemo.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def reference_run(tiny_model, tmp_path_factory) -> Path:
    """recipes/ci/tiny_sppo.yaml run once, uninterrupted: the reference for the other tests."""
    out = tmp_path_factory.mktemp("ref")
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}")
    assert "| iter |" in proc.stdout  # the per-iteration table
    return out / "tiny_sppo"
