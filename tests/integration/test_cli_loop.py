"""The real `sppo-run` on a tiny random Llama: two iterations end to end, resume after kill -9,
refusal of stale stages, one stage alone, restart from a stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sppo_nemo.artifacts import digest_files

from .conftest import TINY_RECIPE, cli_env, sppo_run

pytestmark = pytest.mark.slow

STAGES = ["iter_00/evaluate"] + [f"iter_{t:02d}/{s}" for t in (1, 2)
                                 for s in ("generate", "annotate", "build", "train", "evaluate")]


def digests(run: Path) -> dict[str, str]:
    return {s: digest_files(run / s) for s in STAGES}


def test_two_iterations_write_every_artifact(reference_run: Path):
    run = reference_run
    assert (run / "recipe.resolved.yaml").is_file()
    assert (run / "report.md").read_text().count("| 2 | π_3 |") == 1
    assert (run / "winrate.png").stat().st_size > 1000
    for s in STAGES:
        assert (run / s / "_DONE").is_file(), s
        assert json.loads((run / s / "manifest.json").read_text())["fingerprint"]
    gen = [json.loads(line) for line in (run / "iter_01/generate/responses.jsonl").read_text().splitlines()]
    assert len(gen) == 24 and all(len(row["samples"]) == 4 for row in gen)
    matrices = [json.loads(line)["matrix"] for line in (run / "iter_01/annotate/matrices.jsonl").read_text().splitlines()]
    assert all(abs(m[0][1] + m[1][0] - 1) < 1e-6 for m in matrices)
    rows = (run / "iter_01/build/rows.jsonl").read_text().splitlines()
    assert len(rows) == 24 * 4  # selection=all: K rows per prompt
    policy = run / "iter_02/train/policy"
    assert (policy / "model.safetensors").is_file() and (policy / "config.json").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(policy)
    assert AutoTokenizer.from_pretrained(policy).chat_template
    metrics = json.loads((run / "iter_02/evaluate/metrics.json").read_text())
    for key in ("win_rate_vs_base", "win_rate_vs_previous", "kl_to_base", "mean_tokens"):
        assert key in metrics


def test_rerun_redoes_nothing(tiny_model, reference_run: Path):
    before = {s: (reference_run / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}")
    assert proc.stdout.count("done, skipped") == len(STAGES)
    assert "0 stage(s) run" in proc.stdout
    after = {s: (reference_run / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    assert before == after


@pytest.mark.parametrize("victim", ["iter_01/train.partial", "iter_02/generate.partial/samples.log.jsonl"])
def test_kill_9_mid_stage_then_resume_gives_identical_artifacts(tiny_model, reference_run, tmp_path, victim):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "sppo_nemo", str(TINY_RECIPE), f"output_dir={out}", "--no-progress"]
    proc = subprocess.Popen(cmd, env=cli_env(tiny_model), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "tiny_sppo" / victim
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = out / "tiny_sppo"
    finished_before = {s: (run / s / "manifest.json").stat().st_mtime_ns
                       for s in STAGES if (run / s / "_DONE").exists()}
    assert finished_before, "nothing had finished before the kill"
    assert not (run / victim.split("/")[0] / victim.split("/")[1].split(".")[0] / "_DONE").exists()

    resumed = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}")
    for s, mtime in finished_before.items():
        assert (run / s / "manifest.json").stat().st_mtime_ns == mtime, f"{s} was redone"
    assert resumed.stdout.count("done, skipped") == len(finished_before)
    assert digests(run) == digests(reference_run)


def test_changed_recipe_names_the_key_and_touches_nothing(tiny_model, reference_run):
    before = digests(reference_run)
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}", "trainer.lr=0.01", check=False)
    assert proc.returncode == 3
    assert "trainer.lr" in proc.stderr and "iter_01/train" in proc.stderr
    assert "--restart-from" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digests(reference_run) == before


def test_dry_run_lists_the_plan(tiny_model, reference_run):
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}", "--dry-run")
    assert proc.stdout.count(" done") == len(STAGES)
    stale = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}", "--dry-run", "sampling.top_p=0.9")
    assert "iter_01/generate" in stale.stdout and "STALE" in stale.stdout and "sampling.top_p" in stale.stdout


def test_one_stage_alone_and_restart_from(tiny_model, reference_run, tmp_path):
    out = tmp_path / "runs"
    # a stage whose inputs are missing is refused with a clear message
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", "--stage", "iter_01/train", check=False)
    assert proc.returncode == 1 and "not finished" in proc.stderr
    # the first stages alone, one at a time
    for s in ("iter_00/evaluate", "iter_01/generate"):
        sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", "--stage", s)
    run = out / "tiny_sppo"
    assert (run / "iter_01/generate/_DONE").exists() and not (run / "iter_01/annotate").exists()
    assert digest_files(run / "iter_01/generate") == digest_files(reference_run / "iter_01/generate")
    # restart from a finished stage redoes it (same result) and runs the rest
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", "--restart-from", "iter_01/generate")
    assert "removing iter_01/generate" in proc.stdout
    assert digests(run) == digests(reference_run)
