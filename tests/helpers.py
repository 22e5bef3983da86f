"""Plain helpers the tests share: paths, the real CLI in a subprocess, reading a run's artifacts.

No fixtures and no hooks here (those live in the conftest files); import with
``from tests.helpers import ROOT, sppo_run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TINY_RECIPE = RECIPES / "ci" / "tiny_sppo.yaml"


def cli_env(tiny_model: Path) -> dict:
    """The environment of a CLI subprocess: the tiny model for ``${oc.env:SPPO_TINY_MODEL}``, no hub."""
    env = dict(os.environ)
    env["SPPO_TINY_MODEL"] = str(tiny_model)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    return env


def sppo_cmd(*args) -> list[str]:
    """The real console entry point, as a user runs it (without progress bars)."""
    return [sys.executable, "-m", "sppo_nemo", *map(str, args), "--no-progress"]


def sppo_run(tiny_model: Path, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    """Run ``sppo-run ARGS`` to the end; with ``check``, a non-zero exit fails with its output."""
    cmd = sppo_cmd(*args)
    proc = subprocess.run(cmd, env=cli_env(tiny_model), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def load_recipe(path: Path, tiny_model: Path, *overrides: str):
    """The typed recipe a CLI run of ``path`` with ``overrides`` uses (SPPO_TINY_MODEL set)."""
    from sppo_nemo.loading import recipe

    before = os.environ.get("SPPO_TINY_MODEL")
    os.environ["SPPO_TINY_MODEL"] = str(tiny_model)
    try:
        return recipe.load(path, list(overrides), check_data=False)
    finally:
        if before is None:
            del os.environ["SPPO_TINY_MODEL"]
        else:
            os.environ["SPPO_TINY_MODEL"] = before


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


NETWORK_ERRORS = ("Network is unreachable", "Failed to establish a new connection", "Temporary failure in name "
                  "resolution", "Name or service not known", "Connection refused", "ConnectTimeoutError",
                  "ReadTimeoutError", "Max retries exceeded", "No route to host", "ProxyError")


def side_venv_python(script: str) -> Path:
    """The interpreter of a side virtualenv that ``scripts/<script>`` builds once per machine (the
    llm-blender and vLLM environments); skips the test, saying why, when the package registry is
    unreachable, and fails with the build's log on any other error. Import pytest lazily: helpers
    stay plain functions."""
    import pytest

    start = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / script)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        log = proc.stdout + proc.stderr
        if any(e in log for e in NETWORK_ERRORS):
            pytest.skip(f"scripts/{script} cannot build its virtualenv: the package registry is unreachable\n"
                        + log[-2000:])
        pytest.fail(f"scripts/{script} failed:\n" + log[-4000:])
    venv = Path(proc.stdout.strip().splitlines()[-1])
    print(f"\n{venv.name} ready in {time.perf_counter() - start:.1f}s: {venv}")
    return venv / "bin" / "python"
