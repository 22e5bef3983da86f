"""lm-eval in the evaluate stage (evaluation.lm_eval) through the real CLI, on the tiny recipe with
the two local tasks of tests/fixtures/lm_eval (a multiple-choice and a generation task): its numbers
in metrics.json and the report, a kill -9 between its tasks resumed to the same numbers without
running the finished task again, and the refusals before any model loads."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY_RECIPE, cli_env, read_json, side_venv_python, sppo_cmd, sppo_run

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[evals]' (scripts/setup.sh does)")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ROOT / "tests" / "fixtures" / "lm_eval"
ON = ["T=1", "evaluation.lm_eval.enabled=true", "evaluation.lm_eval.tasks=[sums,sums_gen]",
      f"evaluation.lm_eval.include_path={TASKS}", "evaluation.lm_eval.num_fewshot=[sums=2]"]
KEYS = ("lm_eval_sums", "lm_eval_sums_stderr", "lm_eval_sums_gen", "lm_eval_sums_gen_stderr", "lm_eval")


def lm_eval_metrics(run: Path, t: int) -> dict:
    m = read_json(run / f"iter_{t:02d}" / "evaluate" / "metrics.json")
    return {k: m[k] for k in KEYS if k in m}


@pytest.fixture(scope="module")
def lm_run(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm_eval") / "runs"
    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *ON)
    return out / "tiny_sppo"


def test_each_policy_gets_lm_evals_numbers_with_their_standard_errors(lm_run):
    for t in (0, 1):
        m = lm_eval_metrics(lm_run, t)
        assert set(m) == set(KEYS), t
        sums = m["lm_eval"]["sums"]
        assert sums["num_fewshot"] == 2 and sums["samples"] == 16 and sums["metric"] == "acc,none"
        assert m["lm_eval_sums"] == sums["metrics"]["acc,none"]
        assert m["lm_eval_sums_stderr"] == sums["metrics"]["acc_stderr,none"] > 0
        # 16 documents: every score is a count of sixteenths
        assert (m["lm_eval_sums"] * 16) == pytest.approx(round(m["lm_eval_sums"] * 16))
        assert m["lm_eval"]["sums_gen"]["num_fewshot"] == 0 and m["lm_eval"]["sums_gen"]["metric"] == "exact_match,none"
    report = (lm_run / "report.md").read_text()
    assert "## lm-eval (lm-evaluation-harness 0.4." in report
    assert "| sums | acc | 2 | 16 |" in report and "| sums_gen | exact_match | 0 | 16 |" in report
    assert (lm_run / "lm_eval.png").stat().st_size > 1000


def test_a_kill_9_between_tasks_resumes_at_the_next_task_with_the_same_numbers(tiny_model, lm_run, tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen(sppo_cmd(TINY_RECIPE, f"output_dir={out}", *ON), env=cli_env(tiny_model),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = out / "tiny_sppo" / "iter_01" / "evaluate.partial" / "lm_eval"
    deadline = time.time() + 300
    while not (job / "results" / "sums.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before its second lm-eval task"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (job / "results" / "sums_gen.json").exists(), "the second task had finished: nothing was cut"
    first = (job / "results" / "sums.json").stat().st_mtime_ns
    deadline = time.time() + 10  # the worker dies with its parent (process/children.py)
    while _workers(job) and time.time() < deadline:
        time.sleep(0.2)
    assert not _workers(job), "the lm-eval worker outlived sppo-run"

    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *ON)
    done = out / "tiny_sppo" / "iter_01" / "evaluate" / "lm_eval"
    assert (done / "results" / "sums.json").stat().st_mtime_ns == first, "the finished task was run again"
    for t in (0, 1):
        assert lm_eval_metrics(out / "tiny_sppo", t) == lm_eval_metrics(lm_run, t)


def _workers(job: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"sppo_nemo.backends.lm_eval {job}"], capture_output=True, text=True)
    return out.stdout.split()


def test_an_unknown_task_is_refused_before_the_model_loads(tiny_model, tmp_path):
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={tmp_path}", *ON[:2], "evaluation.lm_eval.tasks=[sums,nope]",
                    f"evaluation.lm_eval.include_path={TASKS}", check=False)
    assert proc.returncode != 0
    assert "nope is not an lm-eval task" in proc.stderr and "include_path" in proc.stderr
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "tiny_sppo" / "iter_00" / "evaluate.partial" / "lm_eval" / "worker.log").read_text()
    assert "task sums" not in log  # refused before any task ran


def test_a_dataset_that_cannot_be_read_names_the_task_and_the_fetch_command(tiny_model, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "lost.yaml").write_text((TASKS / "sums.yaml").read_text().replace("task: sums", "task: lost")
                                     .replace("sums.jsonl", "missing.jsonl"))
    proc = sppo_run(tiny_model, TINY_RECIPE, f"output_dir={tmp_path / 'runs'}", *ON[:2], "evaluation.lm_eval.tasks=[lost]",
                    f"evaluation.lm_eval.include_path={tasks}", check=False)
    assert proc.returncode != 0
    assert "cannot read these tasks' datasets" in proc.stderr and "lost:" in proc.stderr
    assert "python -m sppo_nemo.backends.lm_eval fetch lost" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_vllm_backend_gives_the_numbers_of_the_hf_backend(tmp_path, monkeypatch):
    """evaluation.lm_eval.backend=vllm: lm-eval's vLLM model in the vLLM environment (scripts/vllm_venv.sh
    installs lm-eval there), fp32, on the tiny Llama of head size 32 (vLLM's CPU attention takes no
    smaller); its accuracies equal the hf backend's on both policies."""
    from sppo_nemo.testing import build_tiny_llama

    python = side_venv_python("vllm_venv.sh")
    model = build_tiny_llama(tmp_path / "tiny-llama-h32", hidden=64, heads=2, kv_heads=1)
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    vllm = ["evaluation.lm_eval.backend=vllm", f"generation.vllm.python={python}", "generation.vllm.enforce_eager=true",
            "generation.vllm.kv_cache_gib=1", "generation.vllm.dtype=fp32"]
    sppo_run(model, TINY_RECIPE, f"output_dir={tmp_path / 'hf'}", *ON)
    sppo_run(model, TINY_RECIPE, f"output_dir={tmp_path / 'vllm'}", *ON, *vllm, timeout=900)
    log = (tmp_path / "vllm" / "tiny_sppo" / "iter_01" / "evaluate" / "lm_eval" / "worker.log").read_text()
    assert "[cpu_model_runner.py" in log  # vLLM's CPU engine scored the requests
    for t in (0, 1):
        ours, theirs = (lm_eval_metrics(tmp_path / b / "tiny_sppo", t) for b in ("vllm", "hf"))
        assert ours == theirs, t
        assert ours["lm_eval"]["sums"]["samples"] == 16
