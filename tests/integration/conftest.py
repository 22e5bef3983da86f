import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes" / "ci" / "tiny_sppo.yaml"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from sppo_nemo.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


def cli_env(tiny_model: Path) -> dict:
    env = dict(os.environ)
    env["SPPO_TINY_MODEL"] = str(tiny_model)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    return env


def sppo_run(tiny_model: Path, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
    """The real console entry point, as a user runs it."""
    cmd = [sys.executable, "-m", "sppo_nemo", *map(str, args), "--no-progress"]
    proc = subprocess.run(cmd, env=cli_env(tiny_model), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def reference_run(tiny_model, tmp_path_factory) -> Path:
    """recipes/ci/tiny_sppo.yaml run once, uninterrupted: the reference for the other tests."""
    out = tmp_path_factory.mktemp("ref")
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}")
    assert "| iter |" in proc.stdout  # the per-iteration table
    return out / "tiny_sppo"
