"""What users evaluate with: AlpacaEval's output format, the evaluation prompt file, the best-of-n
choice, the evaluate stage's fingerprint without the optional keys, and the report's extra parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.formats.alpaca import (FIELDS, generator_name, output_records, read_eval_prompts, read_outputs,
                                      write_outputs)
from sppo_nemo.formats.artifacts import canonical, write_json
from sppo_nemo.stages.context import Context
from sppo_nemo.formats.data import DataError
from sppo_nemo.run.report import table, write_report
from sppo_nemo.stages import evaluate, fingerprint

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- AlpacaEval format
def test_outputs_round_trip_in_alpaca_eval_order(tmp_path):
    records = output_records(["Name a prime.", "Say ü"], ["7", "ü — yes"], "demo-iter1", ["sppo-heldout", "koala"])
    write_outputs(tmp_path / "out.json", records)
    text = (tmp_path / "out.json").read_text(encoding="utf-8")
    assert "ü — yes" in text  # UTF-8, not escaped
    data = json.loads(text)
    assert [list(d) for d in data] == [list(FIELDS)] * 2
    assert data[1] == {"instruction": "Say ü", "output": "ü — yes", "generator": "demo-iter1", "dataset": "koala"}
    assert read_outputs(tmp_path / "out.json") == records


def test_a_malformed_outputs_file_is_named(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "output": 3, "generator": "g",
                                                    "dataset": "d"}]))
    with pytest.raises(DataError, match="entry 1"):
        read_outputs(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="lengths differ"):
        output_records(["a"], [], "g", ["d"])


def test_generator_names():
    assert generator_name("tiny_sppo", 0) == "tiny_sppo-iter0"
    assert generator_name("tiny_sppo", 2, 16) == "tiny_sppo-iter2-best-of-16"


# ----------------------------------------------------------------------------- evaluation.prompts
def test_a_json_list_such_as_alpaca_eval_json(tmp_path):
    path = tmp_path / "alpaca_eval.json"
    path.write_text(json.dumps([
        {"instruction": "What is 2+2?", "output": "4", "generator": "gpt4", "dataset": "helpful_base"},
        {"instruction": "Write a haiku.", "output": "...", "generator": "gpt4"},
    ], indent=4))
    ep = read_eval_prompts(path)
    assert [p.text for p in ep.prompts] == ["What is 2+2?", "Write a haiku."]
    assert ep.datasets == ("helpful_base", "alpaca_eval")  # the file's stem where an entry names none
    assert len({p.id for p in ep.prompts}) == 2


def test_a_jsonl_file_with_another_field(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"q": "one?", "dataset": "a"}\n\n{"q": "two?"}\n')
    ep = read_eval_prompts(path, "q")
    assert [p.text for p in ep.prompts] == ["one?", "two?"] and ep.datasets == ("a", "mine")
    with pytest.raises(DataError, match=r"mine.jsonl:1: field 'instruction'.*evaluation.prompt_field"):
        read_eval_prompts(path)


@pytest.mark.parametrize("content, match", [
    ("[{\"instruction\": \"a\"}, 3]", "entry 2: expected a JSON object"),
    ("[{\"instruction\": \"a\"},", "not valid JSON"),
    ("[]", "no prompts"),
])
def test_bad_prompt_files_are_named(tmp_path, content, match):
    (tmp_path / "p.json").write_text(content)
    with pytest.raises(DataError, match=match):
        read_eval_prompts(tmp_path / "p.json")


def test_a_parquet_file_that_is_not_parquet_is_named_for_the_run_and_the_evaluation(tmp_path):
    from sppo_nemo.schema.config import DataConfig
    from sppo_nemo.formats.data import load_prompts

    fake = tmp_path / "p.parquet"
    fake.write_text('{"instruction": "a", "prompt": "a"}\n')
    with pytest.raises(DataError, match=r"p\.parquet: not a readable Parquet file \(.*\); it looks like JSON lines"):
        load_prompts(DataConfig(prompts=str(fake), split_size=1))
    with pytest.raises(DataError, match=r"p\.parquet: not a readable Parquet file"):
        read_eval_prompts(fake)


def test_the_prompt_file_is_fingerprinted_by_content(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.json"
    a.write_text('{"instruction": "x", "dataset": "d"}\n')
    b.write_text('[{"instruction": "x", "dataset": "d"}]')
    assert read_eval_prompts(a).fingerprint() == read_eval_prompts(b).fingerprint()
    b.write_text('[{"instruction": "x", "dataset": "e"}]')
    assert read_eval_prompts(a).fingerprint() != read_eval_prompts(b).fingerprint()


# ----------------------------------------------------------------------------- best-of-n
def test_best_of_keeps_the_largest_win_rate_among_the_n():
    m = np.array([[0.5, 0.2, 0.9],
                  [0.8, 0.5, 0.4],
                  [0.1, 0.6, 0.5]])  # P̂ = [1.6, 1.7, 1.2] / 3: sample 1 beats the field, not sample 0's 0.9
    assert evaluate.best_index(m) == 1
    assert evaluate.best_index(np.full((4, 4), 0.5)) == 0  # ties: the first
    assert evaluate.best_index(np.array([[0.3, 0.0], [1.0, 0.9]])) == 1  # the diagonal counts as ½


# ----------------------------------------------------------------------------- fingerprints
def finish(ctx: Context, t: int, name: str, files: dict[str, str]) -> None:
    stage = ctx.stage(t, name)
    work = stage.begin({"test": True})
    for rel, content in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(content)
    stage.commit({"test": True}, 0.0)


def context(tmp_path: Path, *overrides: str, check_data: bool = True) -> Context:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    r = recipe_mod.load(ROOT / "recipes" / "smollm2_sppo_3iter.yaml",
                        [f"output_dir={tmp_path}", f"policy.model={model}", *overrides], check_data=check_data)
    return Context(r, tmp_path / r.name, progress=False)


@pytest.fixture
def ctx(tmp_path) -> Context:
    c = context(tmp_path, "evaluation.kl_precision=fp32")  # the default recipe sets it to bf16
    finish(c, 0, "evaluate", {"responses.jsonl": "base"})
    finish(c, 1, "train", {"policy/config.json": "{}"})
    return c


def test_the_optional_keys_enter_the_fingerprint(ctx, tmp_path):
    base = canonical(fingerprint(evaluate.inputs(ctx, 0)))
    assert (base["extras.best_of"], base["extras.prompts"], base["extras.kl_precision"]) == (None, None, "fp32")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "x"}\n')
    other = context(tmp_path, "evaluation.best_of=4", f"evaluation.prompts={prompts}")
    fp = canonical(fingerprint(evaluate.inputs(other, 0)))
    assert fp["extras.best_of"] == 4 and fp["extras.prompts"] == read_eval_prompts(prompts).fingerprint()
    assert fp["judge.backend"] == other.recipe.judge.backend  # best-of ranks π_1's samples at iteration 0
    assert {k for k in fp if not k.startswith(("extras.prompts", "judge"))} == {
        k for k in base if k not in ("judge", "extras.prompts")}
    prompts.write_text('{"instruction": "y"}\n')
    assert canonical(fingerprint(evaluate.inputs(other, 0)))["extras.prompts"] != fp["extras.prompts"]
    bf16 = canonical(fingerprint(evaluate.inputs(context(tmp_path, "evaluation.kl_precision=bf16"), 0)))
    assert bf16["extras.kl_precision"] == "bf16" and set(bf16) == set(base)


# ----------------------------------------------------------------------------- report
ROW = {"iteration": 1, "win_rate_vs_base": 0.61, "win_rate_vs_base_ci": [0.55, 0.67], "win_rate_vs_previous": 0.6,
       "win_rate_vs_previous_ci": [0.5, 0.7], "mean_tokens": 20.0, "finished_fraction": 1.0, "kl_to_base": 0.1}


def test_the_best_of_column_only_when_present():
    plain = table([{"iteration": 0, "mean_tokens": 10.0}, ROW])
    assert "best-of" not in plain
    best = dict(ROW, best_of=4, win_rate_best_of_vs_base=0.7, win_rate_best_of_vs_base_ci=[0.6, 0.8],
                best_of_mean_tokens=25.0)
    lines = table([{"iteration": 0, "mean_tokens": 10.0}, best]).splitlines()
    assert "best-of-4 vs π_1 [95% CI] | best-of-4 tokens |" in lines[0]
    assert lines[3].startswith("| 1 | π_2 | 0.610 [0.550, 0.670] |")
    assert lines[3].endswith("| 0.700 [0.600, 0.800] | 25.0 |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_the_report_shows_both_kl_estimates_and_reads_an_older_run_as_log_ratio():
    now = dict(ROW, kl_to_base=0.2, kl_to_base_ci=[0.15, 0.25], kl_to_base_log_ratio=0.18,
               kl_to_base_log_ratio_ci=[-0.1, 0.4])
    older = dict(ROW, kl_to_base=0.3, kl_to_base_ci=[0.1, 0.5])  # evaluated before the exact KL: a log-ratio
    lines = table([{"iteration": 0, "mean_tokens": 10.0}, now, older]).splitlines()
    assert "| KL(π‖π_1) [95% CI] | log-ratio [95% CI] |" in lines[0]
    assert "| 0.200 [0.150, 0.250] | 0.180 [-0.100, 0.400] |" in lines[3]
    assert "| – | 0.300 [0.100, 0.500] |" in lines[4]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_report_includes_the_cost_estimate_and_the_length_plot(ctx):
    pytest.importorskip("matplotlib")
    ctx.stage(1, "train").remove()
    stage = ctx.stage(0, "evaluate")
    stage.remove()
    work = stage.begin({"test": True})
    write_json(work / "metrics.json", {"iteration": 0, "mean_tokens": 12.0, "finished_fraction": 1.0})
    write_outputs(work / "model_outputs.json", [])
    stage.commit({"test": True}, 0.0)
    write_report(ctx)
    report = (ctx.run_dir / "report.md").read_text()
    assert "## Cost estimate" not in report and "iter_00/evaluate/model_outputs.json" in report
    assert (ctx.run_dir / "length.png").stat().st_size > 0
    (ctx.run_dir / "estimate.md").write_text("# Cost estimate: demo\n\nAbout 3 GPU-hours.\n\n## The run\n\n"
                                             "```\n# a comment\n```\n")
    write_report(ctx)
    report = (ctx.run_dir / "report.md").read_text()
    # nested under the report's own heading: its title dropped, its sections one level down, code kept
    assert "## Cost estimate\n\nAbout 3 GPU-hours.\n\n### The run\n\n```\n# a comment\n```\n" in report
    assert "Cost estimate: demo" not in report
    assert "| 0 | π_1 |" in report


def test_a_missing_prompt_file_is_named_before_anything_runs(tmp_path):
    bad = f"evaluation.prompts={tmp_path / 'nope.json'}"
    with pytest.raises(recipe_mod.RecipeError, match=r"evaluation.prompts: .*nope.json is not a file"):
        context(tmp_path, bad)  # the recipe check reads the file: exit 2 before anything runs
    c = context(tmp_path, bad, check_data=False)  # and the stage, should the file go after the check
    with pytest.raises(DataError, match=r"evaluation.prompts: .*nope.json is not a file; .*alpaca_eval.json"):
        evaluate.inputs(c, 0)
    (tmp_path / "nope.json").write_text('[{"prompt": "x"}]')
    with pytest.raises(recipe_mod.RecipeError, match=r"evaluation.prompts: .*nope.json entry 1: field 'instruction'"):
        context(tmp_path, bad)
    with pytest.raises(DataError, match=r"evaluation.prompts: .*nope.json entry 1: field 'instruction'"):
        evaluate.inputs(c, 0)


def test_the_games_have_no_prompt_file(tmp_path):
    overrides = [f"output_dir={tmp_path}", f"evaluation.prompts={tmp_path / 'p.jsonl'}"]
    for check_data in (True, False):  # the game backends' own check: whether or not data files are read
        with pytest.raises(recipe_mod.RecipeError, match="evaluation.prompts: the game backends"):
            recipe_mod.load(ROOT / "recipes" / "games" / "rps_sppo.yaml", overrides, check_data=check_data)


def test_a_relative_prompt_file_is_read_from_the_recipe_s_folder(tmp_path, monkeypatch):
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "alpaca.jsonl").write_text('{"instruction": "Say hi."}\n')
    (tmp_path / "r.yaml").write_text(f"base: {ROOT / 'recipes' / 'smollm2_sppo_3iter.yaml'}\nname: r\n"
                                     f"evaluation:\n  prompts: evals/alpaca.jsonl\n")
    monkeypatch.chdir(ROOT)  # not the recipe's folder
    r = recipe_mod.load(tmp_path / "r.yaml")
    assert r.evaluation.prompts == str((tmp_path / "evals" / "alpaca.jsonl").resolve())
