"""The real `sppo-run` with what users evaluate with: AlpacaEval outputs every iteration, an
evaluation prompt file, best-of-n at test time, and the report's columns; the plain evaluation
samples are the same with and without these keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_RECIPE, cli_env, read_json, read_jsonl, sppo_cmd, sppo_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# One small iteration of the CI recipe: 6 held-out prompts, 2 samples each, best-of-2.
SMALL = ["T=1", "data.eval_size=6", "data.split_size=16", "K=4", "trainer.epochs=1", "sampling.max_new_tokens=16"]
INSTRUCTIONS = [{"instruction": "What is 3 + 4?", "dataset": "arith"},
                {"instruction": "Name a colour."},
                {"instruction": "Say seven.", "dataset": "words"}]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("eval_outputs")
    prompts = out / "instructions.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS))
    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", "name=with_extras", *SMALL, "evaluation.best_of=2",
             f"evaluation.prompts={prompts}")
    # the same recipe without the new keys, its base evaluation only: the plain samples it must match
    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", "name=plain", *SMALL, "--stage", "iter_00/evaluate")
    return out / "with_extras", out / "plain"


def test_model_outputs_every_iteration(runs):
    run, _ = runs
    for t in (0, 1):
        stage = run / f"iter_{t:02d}/evaluate"
        outputs = read_json_list(stage / "model_outputs.json")
        responses = read_jsonl(stage / "responses.jsonl")
        assert len(outputs) == len(responses) == 6
        assert all(list(o) == ["instruction", "output", "generator", "dataset"] for o in outputs)
        assert [o["instruction"] for o in outputs] == [r["prompt"] for r in responses]
        assert [o["output"] for o in outputs] == [r["samples"][0]["text"] for r in responses]
        assert {o["generator"] for o in outputs} == {f"with_extras-iter{t}"}
        assert {o["dataset"] for o in outputs} == {"sppo-heldout"}


def test_the_prompt_file_is_sampled_and_written(runs):
    run, _ = runs
    for t in (0, 1):
        stage = run / f"iter_{t:02d}/evaluate"
        outputs = read_json_list(stage / "alpaca_eval_outputs.json")
        assert [o["instruction"] for o in outputs] == [r["instruction"] for r in INSTRUCTIONS]
        assert [o["dataset"] for o in outputs] == ["arith", "instructions", "words"]
        assert all(o["output"] for o in outputs) and {o["generator"] for o in outputs} == {f"with_extras-iter{t}"}
        assert read_json(stage / "metrics.json")["alpaca_eval_outputs"] == 3
        assert not list(stage.glob("sampling*"))  # the resumable states are gone


def test_best_of_is_the_judges_pick_and_is_reported(runs):
    run, _ = runs
    report = (run / "report.md").read_text()
    assert "best-of-2 vs π_1 [95% CI]" in report
    for t in (0, 1):
        stage = run / f"iter_{t:02d}/evaluate"
        m = read_json(stage / "metrics.json")
        lo, hi = m["win_rate_best_of_vs_base_ci"]
        assert 0 <= lo <= m["win_rate_best_of_vs_base"] <= hi <= 1
        assert f"| {m['win_rate_best_of_vs_base']:.3f} [{lo:.3f}, {hi:.3f}] |" in report
        candidates = read_jsonl(stage / "best_of_responses.jsonl")
        picks = read_jsonl(stage / "best_of.jsonl")
        kept = [row["samples"][p["kept"]] for row, p in zip(candidates, picks)]
        assert all(p["kept"] == int(np.argmax(p["win_rates"])) for p in picks)
        assert [o["output"] for o in read_json_list(stage / "best_of_outputs.json")] == [s["text"] for s in kept]
        assert m["best_of_mean_tokens"] == pytest.approx(np.mean([s["num_tokens"] for s in kept]))
        assert m["win_rate_best_of_vs_base"] == pytest.approx(np.mean([p["win_prob_vs_base"] for p in picks]))
    assert (run / "length.png").stat().st_size > 0 and "![response length](length.png)" in report


def test_the_plain_samples_do_not_change(runs):
    run, plain = runs
    assert (run / "iter_00/evaluate/responses.jsonl").read_bytes() == \
        (plain / "iter_00/evaluate/responses.jsonl").read_bytes()
    extra, base = read_json(run / "iter_00/evaluate/metrics.json"), read_json(plain / "iter_00/evaluate/metrics.json")
    assert {k: v for k, v in extra.items() if k in base} == base
    assert not (plain / "iter_00/evaluate/best_of_outputs.json").exists()


def test_the_prompt_file_sampling_resumes_after_kill_9(tiny_model, tmp_path):
    """70 instructions in chunks of sampling.batch_size=32: killed once the first chunk is logged,
    the rerun resumes and writes what an uninterrupted run writes."""
    prompts = tmp_path / "many.json"
    prompts.write_text(json.dumps([{"instruction": f"What is {i} + 7?"} for i in range(70)]))
    args = [TINY_RECIPE, *SMALL, f"evaluation.prompts={prompts}", "--stage", "iter_00/evaluate"]
    sppo_run(tiny_model, *args, f"output_dir={tmp_path / 'whole'}")
    out = tmp_path / "killed"
    proc = subprocess.Popen(sppo_cmd(*args, f"output_dir={out}"), env=cli_env(tiny_model),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "tiny_sppo/iter_00/evaluate.partial/sampling_prompts/chunks.jsonl"
    deadline = time.time() + 120
    while not log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "tiny_sppo/iter_00/evaluate/_DONE").exists()
    sppo_run(tiny_model, *args, f"output_dir={out}")
    name = "iter_00/evaluate/alpaca_eval_outputs.json"
    assert len(read_json_list(out / "tiny_sppo" / name)) == 70
    assert (out / "tiny_sppo" / name).read_bytes() == (tmp_path / "whole/tiny_sppo" / name).read_bytes()


def read_json_list(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, list)
    return data
