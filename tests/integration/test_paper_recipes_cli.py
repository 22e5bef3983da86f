"""The paper's recipes through the real CLI on a CPU machine without their weights, their data or
a GPU, as a user checks them before submitting: --validate (exit 0, saying the policy's shape is the
known one and the prompts are not cached), --dry-run (the whole plan, todo, and why the prompts
cannot be read here) and --estimate (hours per stage)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import RECIPES, sppo_cmd

pytestmark = pytest.mark.integration
PAPER = ["mistral_sppo_3iter", "llama3_sppo_3iter", "mistral_dpo_3iter", "mistral_ipo_3iter"]


def run(tmp_path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(sppo_cmd(*args, f"output_dir={tmp_path / 'runs'}"), env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", PAPER)
def test_a_paper_recipe_validates_dry_runs_and_estimates_offline(name, tmp_path):
    recipe = RECIPES / f"{name}.yaml"
    v = run(tmp_path, recipe, "--validate")
    assert v.returncode == 0, v.stderr
    assert "published architecture" in v.stderr and "prompts not checked" in v.stderr
    d = run(tmp_path, recipe, "--dry-run")
    assert d.returncode == 0, d.stderr
    states = [line.split(None, 1) for line in d.stdout.splitlines() if line.startswith("  iter_")]
    assert len(states) == 1 + 3 * 5 and all(s[1].startswith("todo") for s in states)
    assert "prompts not readable" in states[0][1] and "load_dataset('HuggingFaceH4/ultrafeedback_binarized'" in d.stdout
    e = run(tmp_path, recipe, "--estimate")
    assert e.returncode == 0, e.stderr
    assert "| **iteration** |" in e.stdout and "8 × H100" in e.stdout
    assert not (tmp_path / "runs").exists()  # none of the three writes a run directory
