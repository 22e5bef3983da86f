"""The real `sppo-run` on a tiny random Llama: two iterations end to end, resume after kill -9,
refusal of stale stages, one stage alone, restart from a stage."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sppo_nemo.formats.artifacts import digest_files
from tests.helpers import (RECIPES, TINY_RECIPE, cli_env, load_recipe, read_json, read_jsonl, sppo_cmd,
                           sppo_run)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ["iter_00/evaluate"] + [f"iter_{t:02d}/{s}" for t in (1, 2)
                                 for s in ("generate", "annotate", "build", "train", "evaluate")]


def digests(run: Path) -> dict[str, str]:
    return {s: digest_files(run / s) for s in STAGES}


@pytest.fixture(scope="module")
def recipe(tiny_model):
    return load_recipe(TINY_RECIPE, tiny_model)


def test_every_stage_is_committed_under_its_name(reference_run: Path):
    for s in STAGES:
        assert (reference_run / s / "_DONE").is_file(), s
        assert read_json(reference_run / s / "manifest.json")["stage"] == s
    assert sorted(p.name for p in reference_run.glob("*.partial")) == []
    assert sorted(p.relative_to(reference_run).as_posix() for p in reference_run.glob("iter_*/*.partial")) == []


def test_the_resolved_recipe_is_the_recipe_run(tiny_model, reference_run: Path):
    ran = load_recipe(TINY_RECIPE, tiny_model, f"output_dir={reference_run.parent}")
    resolved = load_recipe(reference_run / "recipe.resolved.yaml", tiny_model)
    from sppo_nemo.loading.recipe import as_dict

    assert as_dict(resolved) == as_dict(ran)


def test_generate_annotate_build_follow_the_recipe_and_eq_3_5(recipe, reference_run: Path):
    run, r = reference_run, recipe
    split = [row["id"] for row in read_jsonl(RECIPES / "ci" / "prompts.jsonl")][
        r.data.eval_size:r.data.eval_size + r.data.split_size]  # split 1 follows the held-out prompts
    gen = read_jsonl(run / "iter_01/generate/responses.jsonl")
    assert [row["prompt_id"] for row in gen] == split
    assert all([s["index"] for s in row["samples"]] == list(range(r.K)) for row in gen)
    assert all(1 <= s["num_tokens"] <= r.sampling.max_new_tokens for row in gen for s in row["samples"])

    matrices = [np.array(row["matrix"]) for row in read_jsonl(run / "iter_01/annotate/matrices.jsonl")]
    assert len(matrices) == len(split)
    for m in matrices:
        assert m.shape == (r.K, r.K)
        np.testing.assert_allclose(m + m.T, np.ones((r.K, r.K)), atol=1e-6)  # P(a ≻ b) + P(b ≻ a) = 1
        np.testing.assert_array_equal(np.diag(m), 0.5)

    rows = read_jsonl(run / "iter_01/build/rows.jsonl")
    assert len(rows) == len(split) * r.K  # selection=all: K rows per prompt, in sample order
    for i, (g, m) in enumerate(zip(gen, matrices)):
        mine = rows[i * r.K:(i + 1) * r.K]
        assert [row["response"] for row in mine] == [s["text"] for s in g["samples"]]
        # eq. (3.5): P̂(y_k ≻ π_t | x) = (1/K) Σ_j P(y_k ≻ y_j | x), the diagonal ½ included
        np.testing.assert_allclose([row["win_prob"] for row in mine], m.mean(axis=1), atol=1e-6)
        assert np.mean([row["win_prob"] for row in mine]) == pytest.approx(0.5, abs=1e-6)


def test_train_writes_pi_t_plus_1_as_a_trained_hf_checkpoint(tiny_model, reference_run: Path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = reference_run / "iter_02/train/policy"
    AutoModelForCausalLM.from_pretrained(policy)
    assert AutoTokenizer.from_pretrained(policy).chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(policy / "model.safetensors")
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    changed = [k for k in before if not (after[k] == before[k]).all()]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2, changed


def test_evaluate_metrics_are_those_of_its_samples(reference_run: Path):
    run = reference_run
    first = read_json(run / "iter_01/evaluate/metrics.json")
    # at t = 1 the previous policy π_t is π_1: both comparisons are the same numbers
    assert first["win_rate_vs_previous"] == first["win_rate_vs_base"]
    assert first["win_rate_vs_previous_ci"] == first["win_rate_vs_base_ci"]
    m = read_json(run / "iter_02/evaluate/metrics.json")
    samples = [s for row in read_jsonl(run / "iter_02/evaluate/responses.jsonl") for s in row["samples"]]
    assert m["mean_tokens"] == pytest.approx(np.mean([s["num_tokens"] for s in samples]), rel=1e-12)
    assert m["finished_fraction"] == pytest.approx(np.mean([s["finished"] for s in samples]), rel=1e-12)
    judged = read_jsonl(run / "iter_02/evaluate/judgements.jsonl")
    for label in ("base", "previous"):
        per_prompt = [j["win_prob"] for j in judged if j["opponent"] == label]
        assert m[f"win_rate_vs_{label}"] == pytest.approx(np.mean(per_prompt), rel=1e-12)
        lo, hi = m[f"win_rate_vs_{label}_ci"]
        assert lo <= m[f"win_rate_vs_{label}"] <= hi
    lo, hi = m["kl_to_base_ci"]
    assert lo <= m["kl_to_base"] <= hi


def test_report_shows_the_metrics_and_a_plot(reference_run: Path):
    import matplotlib.image

    report = (reference_run / "report.md").read_text()
    for t in (1, 2):
        m = read_json(reference_run / f"iter_{t:02d}/evaluate/metrics.json")
        lo, hi = m["win_rate_vs_base_ci"]
        assert report.count(f"| {t} | π_{t + 1} | {m['win_rate_vs_base']:.3f} [{lo:.3f}, {hi:.3f}] |") == 1
    image = matplotlib.image.imread(reference_run / "winrate.png")
    assert image.ndim == 3 and len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # not blank


def test_rerun_redoes_nothing(tiny_model, reference_run: Path):
    before = {s: (reference_run / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}")
    assert proc.stdout.count("done, skipped") == len(STAGES)
    assert "0 stage(s) run" in proc.stdout
    after = {s: (reference_run / s / "manifest.json").stat().st_mtime_ns for s in STAGES}
    assert before == after


# A kill in the train stage is tests/integration/test_step_checkpoints.py's (at steps 2 and 17, byte-identical).
@pytest.mark.parametrize("victim", ["iter_02/generate.partial/sampling/chunks.jsonl"])
def test_kill_9_mid_stage_then_resume_gives_identical_artifacts(tiny_model, reference_run, tmp_path, victim):
    out = tmp_path / "runs"
    cmd = sppo_cmd(TINY_RECIPE, f"output_dir={out}")
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
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={reference_run.parent}", "trainer.lr=0.02", check=False)
    assert proc.returncode == 3
    # the recipe's key on a line of its own (the train stage's fingerprint nests it: trainer.trainer.lr)
    assert "  trainer.lr: was 0.01, now 0.02" in proc.stderr.splitlines(), proc.stderr
    assert "iter_01/train" in proc.stderr
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
