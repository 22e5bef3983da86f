"""Plain helpers the tests share: paths, the real CLI in a subprocess, reading a run's artifacts.

No fixtures and no hooks here (those live in the conftest files); import with
``from tests.helpers import ROOT, sppo_run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    from sppo_nemo import recipe

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
