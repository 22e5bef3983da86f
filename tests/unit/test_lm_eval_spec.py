"""evaluation.lm_eval without lm-eval: the recipe checks (all problems at once), the resolved few-shot
counts, the fingerprint, the headline metric, the metrics the stage writes, and the cost estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppo_nemo.backends.lm_eval import controller
from sppo_nemo.backends.lm_eval.spec import check, headline, lm_eval_limit, lm_eval_spec
from sppo_nemo.loading import lm_eval_cost
from sppo_nemo.loading.recipe import load
from sppo_nemo.schema.config import LEADERBOARD_TASKS, LmEvalConfig, Recipe
from sppo_nemo.stages.evaluate import Extras

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def recipe(**lm) -> Recipe:
    r = Recipe(name="t")
    r.evaluation.lm_eval = LmEvalConfig(enabled=True, **lm)
    return r


def test_the_default_is_the_leaderboard_at_its_few_shot_counts():
    spec = lm_eval_spec(recipe())
    assert dict(spec.tasks) == {"arc_challenge": 25, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5,
                                "hellaswag": 10, "mmlu": 5}
    assert [t for t, _ in spec.tasks] == list(LEADERBOARD_TASKS)
    assert lm_eval_spec(Recipe(name="t")) is None  # off unless enabled


def test_a_count_given_wins_and_a_task_of_ones_own_takes_its_default():
    spec = lm_eval_spec(recipe(tasks=["arc_challenge", "mine"], num_fewshot=["arc_challenge=0"]))
    assert spec.tasks == (("arc_challenge", 0), ("mine", None))


def test_every_problem_is_reported_at_once(tmp_path):
    r = recipe(tasks=["a", "a"], num_fewshot=["a=x", "b=2"], limit=2.5, batch_size=0,
               include_path=str(tmp_path / "nowhere"))
    r.evaluation.enabled = False
    problems = "\n".join(check(r, tmp_path))
    for words in ("evaluation.enabled is false", "a named twice", "'a=x'; write each item as task=N",
                  "b not in evaluation.lm_eval.tasks", "limit: 2.5", "batch_size: 0", "is not a folder"):
        assert words in problems, words
    assert check(recipe(tasks=["x"], limit=0.5), tmp_path) == []
    assert check(recipe(tasks=["x"], limit=100), tmp_path) == []


def test_a_recipe_file_anchors_include_path_at_its_own_folder(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "r.yaml").write_text("name: r\ndata:\n  split_size: 10\n"
                                     "evaluation:\n  lm_eval:\n    enabled: true\n    include_path: tasks\n")
    r = load(tmp_path / "r.yaml", [], check_data=False)
    assert r.evaluation.lm_eval.include_path == str(tmp_path / "tasks")


def test_the_game_backends_refuse_it():
    from sppo_nemo.backends import check as backend_check

    r = recipe()
    r.generation.backend, r.judge.backend, r.trainer.backend, r.policy.model = "game", "matrix", "game", "game"
    assert "the game backends' policies are distributions over a finite set" in "\n".join(backend_check(r, ROOT))


def test_the_fingerprint_follows_the_task_files_and_is_absent_when_off(tmp_path):
    (tmp_path / "t.yaml").write_text("task: t\n")
    spec = lm_eval_spec(recipe(tasks=["t"], include_path=str(tmp_path)))
    before = spec.fingerprint()
    (tmp_path / "t.yaml").write_text("task: t\nnum_fewshot: 1\n")
    assert spec.fingerprint() != before
    assert "lm_eval" not in Extras("r").fingerprint()  # runs from before the key existed stay fresh
    assert "lm_eval" in Extras("r", lm_eval=spec).fingerprint()


def test_limit_is_a_count_or_a_fraction():
    assert lm_eval_limit(None) is None and lm_eval_limit(100.0) == 100 and isinstance(lm_eval_limit(100.0), int)
    assert lm_eval_limit(0.25) == 0.25


def test_the_headline_is_the_leaderboards_metric_with_its_standard_error():
    arc = {"alias": "arc_challenge", "acc,none": 0.5, "acc_stderr,none": 0.01, "acc_norm,none": 0.55,
           "acc_norm_stderr,none": 0.02}
    assert headline("arc_challenge", arc) == ("acc_norm,none", 0.55, 0.02)
    assert headline("mine", {"f1,none": 0.3, "f1_stderr,none": "N/A", "sample_len": 3}) == ("f1,none", 0.3, None)
    assert headline("mine", {"alias": "mine"}) is None


def test_the_stage_metrics_count_a_groups_documents_through_its_nested_groups():
    spec = lm_eval_spec(recipe(tasks=["mmlu"]))
    result = {"results": {"mmlu": {"alias": "mmlu", "acc,none": 0.6, "acc_stderr,none": 0.004}},
              "group_subtasks": {"mmlu": ["mmlu_stem", "mmlu_other"], "mmlu_stem": ["mmlu_algebra"],
                                 "mmlu_other": ["mmlu_law", "mmlu_nutrition"]},
              "n-samples": {"mmlu_algebra": {"effective": 100}, "mmlu_law": {"effective": 30},
                            "mmlu_nutrition": {"effective": 5}},
              "n-shot": {"mmlu": 5}, "lm_eval_version": "0.4.13"}
    m = controller.metrics(spec, {"mmlu": result})
    assert m["lm_eval_mmlu"] == 0.6 and m["lm_eval_mmlu_stderr"] == 0.004 and m["lm_eval_version"] == "0.4.13"
    assert m["lm_eval"]["mmlu"] == {"num_fewshot": 5, "samples": 135, "metric": "acc,none",
                                    "metrics": {"acc,none": 0.6, "acc_stderr,none": 0.004}}


def test_the_vllm_backend_takes_generation_vllms_interpreter_and_engine_keys(tmp_path):
    r = recipe(backend="vllm")
    r.generation.vllm.python, r.generation.vllm.dtype, r.generation.vllm.tensor_parallel = "/v/python", "fp32", 2
    spec = lm_eval_spec(r)
    assert spec.backend == "vllm" and spec.precision == "fp32"
    assert (spec.engine.python, spec.engine.tensor_parallel_size, spec.engine.kv_cache_gib) == ("/v/python", 2, None)
    hf = lm_eval_spec(recipe())
    assert hf.engine is None and hf.precision == r.generation.precision
    # the backend and its dtype are in the fingerprint (they move the numbers); the interpreter and TP are not
    assert spec.fingerprint()["backend"] == "vllm" and hf.fingerprint()["backend"] == "hf"
    r.generation.vllm.python, r.generation.vllm.tensor_parallel = "/w/python", 4
    assert lm_eval_spec(r).fingerprint() == spec.fingerprint()


def test_the_estimate_counts_forwards_per_document_and_names_what_it_cannot():
    n = 7e9
    w = lm_eval_cost.work(LmEvalConfig(enabled=True, tasks=["winogrande", "mine"]), n)
    assert w.flops == pytest.approx(2 * n * 1267 * 2 * 200)  # documents × options × tokens, 2·N a token
    assert w.tasks == ("winogrande",) and w.uncounted == ("mine",)
    half = lm_eval_cost.work(LmEvalConfig(enabled=True, tasks=["winogrande"], limit=0.5), n)
    assert half.flops == pytest.approx(w.flops / 2)
    other = lm_eval_cost.work(LmEvalConfig(enabled=True, tasks=["winogrande"], num_fewshot=["winogrande=0"]), n)
    assert other.uncounted == ("winogrande",)  # the table's tokens are for the leaderboard's count
    gsm = lm_eval_cost.work(LmEvalConfig(enabled=True, tasks=["gsm8k"], limit=10), n)
    assert gsm.generated == 10 * 130.0
    # one GPU at 35% of 989 TFLOP/s; 1,300 tokens at a tenth of 5,000 tok/s
    assert lm_eval_cost.seconds(gsm, 989.0, 5000.0) == pytest.approx(gsm.flops / (989e12 * 0.35) + 1300 / 500)
    # vLLM on an engine of 2 GPUs: the forwards on both, generation at vLLM's own rate on both
    assert lm_eval_cost.seconds(gsm, 989.0, 5000.0, "vllm", 2) == pytest.approx(
        gsm.flops / (2 * 989e12 * 0.35) + 1300 / 10000)
