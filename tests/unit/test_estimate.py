"""`sppo-run RECIPE --estimate` (sppo_nemo/loading/estimate.py): the parameter count of the paper's models,
the work and hours of a hand-worked tiny case, and the command line. No model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppo_nemo.loading import estimate as est
from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.cli import main
from sppo_nemo.formats.hub import KNOWN_CONFIGS

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"
PAPER = ROOT / "recipes" / "mistral_sppo_3iter.yaml"

# V 10, H 4, 2 layers, 2 heads of d = 2, 1 key/value head, I 8, untied. Per layer: Q and O 2·4·2·2 = 32,
# K and V 2·4·1·2 = 16, MLP 3·4·8 = 96, norms 2·4 = 8: 152. Embedding 40 + 2·152 + final norm 4 + head 40 = 388.
TINY = {"model_type": "llama", "vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 8, "tie_word_embeddings": False}
TINY_N = 388
# Round constants: 1 TFLOP/s peak; vLLM 10 tok/s per GPU for the 388-parameter model (the rate scales
# by DECODE_REF_PARAMS / N); training at 50%, PairRM at 25% of peak.
TABLE = {"test": est.GpuModel("test", 1.0, 0.5, 10 * TINY_N / est.DECODE_REF_PARAMS, 0.25)}


def test_parameter_count_of_a_hand_worked_config():
    assert est.param_count(TINY) == TINY_N
    assert est.param_count({**TINY, "tie_word_embeddings": True}) == TINY_N - 40  # no separate head


def test_parameter_count_of_the_papers_models():
    mistral = est.param_count(KNOWN_CONFIGS["mistralai/Mistral-7B-Instruct-v0.2"])
    llama = est.param_count(KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B-Instruct"])
    assert mistral == 7_241_732_096 and abs(mistral / 7.24e9 - 1) < 0.005
    assert llama == 8_030_261_248 and abs(llama / 8.03e9 - 1) < 0.005


def tiny_recipe(tmp_path: Path, *overrides: str):
    model = tmp_path / "tiny_model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(TINY))
    return recipe_mod.load(SHIPPED, [f"policy.model={model}", f"output_dir={tmp_path / 'runs'}", "T=3", "K=3",
                                     "data.split_size=10", "data.eval_size=2", "sampling.max_new_tokens=6",
                                     "trainer.max_prompt_length=8", "trainer.max_length=12", *overrides],
                           check_data=False)


def run_estimate(tmp_path: Path, *overrides: str, gpus: int = 2) -> est.Estimate:
    r = tiny_recipe(tmp_path, *overrides)
    return est.estimate(r, tmp_path / "runs" / r.name, gpus, "test", table=TABLE)


def test_a_hand_worked_iteration(tmp_path):
    # 10 prompts, K = 3, prompt 8/2 = 4 tokens, response 6 (the max_new_tokens bound), 2 GPUs.
    e = run_estimate(tmp_path)
    gen, ann, build, train, ev = e.stages
    assert e.n_params == TINY_N and "tiny_model/config.json" in e.shape_source
    # generate: 10·3·6 = 180 tokens at 10 tok/s × 2 GPUs = 9 s
    assert gen.generated == 180 and gen.seconds == pytest.approx(9.0)
    # annotate: 10·3·2 = 60 ordered pairs; a pair is 4 + 2·6 = 16 PairRM tokens (no truncation):
    # 2·0.4e9·16 = 1.28e10 FLOP, 7.68e11 in all, at 0.25·1e12·2 = 5e11 FLOP/s: 1.536 s
    assert ann.comparisons == 60 and ann.flops == pytest.approx(7.68e11) and ann.seconds == pytest.approx(1.536)
    assert build.seconds == 0
    # train: sppo best_worst, 2 rows of 1 sequence per prompt of min(4 + 6, 12) = 10 tokens: 200 tokens;
    # 6·388·200·1 epoch + 2·388·200 reference = 465,600 + 155,200 = 620,800 FLOP at 0.5·1e12·2 = 1e12 FLOP/s
    assert train.trained == 200 and train.flops == pytest.approx(620_800) and train.seconds == pytest.approx(6.208e-7)
    # evaluate: 2 held-out prompts × 1 sample × 6 = 12 tokens (0.6 s); 2 opponents × 2 samples × 2 orders = 8
    # pairs, 8·1.28e10 = 1.024e11 FLOP (0.2048 s); KL scoring 2 policies · 2·388 · 2 samples · 10 tokens
    # = 31,040 FLOP (3.104e-8 s)
    assert ev.generated == 12 and ev.comparisons == 8
    assert ev.flops == pytest.approx(1.024e11 + 31_040)
    assert ev.seconds == pytest.approx(0.6 + 0.2048 + 3.104e-8)
    # iteration: 9 + 1.536 + 6.208e-7 + 0.8048000310 s; run: 3 of them + iter_00/evaluate (12 tokens, 0.6 s)
    per_iteration = 9 + 1.536 + 6.208e-7 + 0.6 + 0.2048 + 3.104e-8
    assert e.iteration_seconds == pytest.approx(per_iteration)
    assert e.base_eval.generated == 12 and e.base_eval.comparisons == 0
    assert e.run_seconds == pytest.approx(3 * per_iteration + 0.6)


def test_rows_epochs_and_best_of(tmp_path):
    # selection=all: K = 3 rows per prompt, 10·3·10 = 300 tokens
    assert run_estimate(tmp_path, "loss.selection=all").stages[3].trained == 300
    # dpo: 1 pair row of 2 sequences, 10·1·2·10 = 200 tokens; 2 epochs: 6·388·200·2 + 2·388·200 = 1,086,400
    dpo = run_estimate(tmp_path, "loss.type=dpo", "trainer.epochs=2").stages[3]
    assert dpo.trained == 200 and dpo.flops == pytest.approx(1_086_400)
    # best-of-3 beside 2 plain samples: 2·(2 + 3)·6 = 60 tokens; comparisons 2·(3·2 + 2·2) = 20 for best-of
    # (rank the 3, judge the kept one against π_1's 2 samples in two orders) + 2 opponents·2·2 samples·2 = 16
    e = run_estimate(tmp_path, "evaluation.samples_per_prompt=2", "evaluation.best_of=3")
    assert e.stages[4].generated == 60 and e.stages[4].comparisons == 36
    assert e.base_eval.generated == 60 and e.base_eval.comparisons == 20
    # evaluation off: no evaluate stage, no iter_00/evaluate
    off = run_estimate(tmp_path, "evaluation.enabled=false", "data.eval_size=0")
    assert [s.stage for s in off.stages] == ["generate", "annotate", "build", "train"] and off.base_eval is None


def test_a_finished_generate_stage_gives_the_measured_length(tmp_path):
    r = tiny_recipe(tmp_path)
    stage = tmp_path / "runs" / r.name / "iter_01" / "generate"
    stage.mkdir(parents=True)
    (stage / "manifest.json").write_text(json.dumps({"digest": "d", "result": {"mean_tokens": 5.0}}))
    assert est.estimate(r, stage.parents[1], 2, "test", table=TABLE).stages[0].generated == 180  # no _DONE: the bound
    (stage / "_DONE").write_text("ok\n")
    e = est.estimate(r, stage.parents[1], 2, "test", table=TABLE)
    assert e.stages[0].generated == 10 * 3 * 5 and e.workload.response_source.startswith("measured mean")


def test_tensor_parallel_engines():
    # TP 2 over 5 GPUs: 2 engines, 4 GPUs generating at 10 tok/s each; fewer GPUs than one engine: refused
    rt = est.rates(TINY_N, TABLE["test"], 5, 2)
    assert (rt.engines, rt.decode) == (2, pytest.approx(40.0))
    with pytest.raises(est.UsageError, match="tensor_parallel=2"):
        est.rates(TINY_N, TABLE["test"], 1, 2)


def test_an_unknown_shape_names_what_is_missing(tmp_path):
    r = tiny_recipe(tmp_path)
    cfg = dict(TINY)
    del cfg["intermediate_size"]
    (Path(r.policy.model) / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(est.ShapeUnknown, match="lacks intermediate_size.*config.json"):
        est.estimate(r, tmp_path, 2, "h100")
    assert est.write_estimate(r, tmp_path / "run") is None and not (tmp_path / "run").exists()


def test_write_estimate_writes_the_markdown(tmp_path):
    r = tiny_recipe(tmp_path)
    path = est.write_estimate(r, tmp_path / "run")
    assert path == tmp_path / "run" / "estimate.md"
    assert path.read_text() == est.estimate_markdown(r, tmp_path / "run")


# ------------------------------------------------------------------ the command line


def test_cli_estimate_prints_hours(tmp_path, capsys):
    assert main([str(SHIPPED), "--estimate", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| generate |" in out and "| **total** | **" in out and " h |" in out
    assert "8 × H100 SXM" in out and "N = 134,515,008" in out and "max_prompt_length/2" in out
    assert not (tmp_path / "smollm2_sppo_3iter").exists()  # runs nothing, writes nothing


def test_cli_estimate_needs_no_data_and_takes_gpus(tmp_path, capsys):
    assert main([str(SHIPPED), "--estimate", "--gpus", "16", "--gpu", "a100", f"output_dir={tmp_path}",
                 f"data.prompts={tmp_path / 'absent.jsonl'}"]) == 0
    assert "16 × A100 80GB" in capsys.readouterr().out


def test_cli_gpus_without_estimate_is_a_usage_error(capsys):
    assert main([str(SHIPPED), "--gpus", "4"]) == 2
    assert "--estimate" in capsys.readouterr().err


def test_cli_unknown_shape_exits_1_with_the_fix(tmp_path, capsys):
    assert main([str(SHIPPED), "--estimate", "policy.model=someone/unknown-model", f"output_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "someone/unknown-model" in err and "huggingface-cli download" in err


def test_the_paper_setting(tmp_path, capsys):
    """The paper's iteration (20k prompts, K = 5, 512 new tokens, Mistral-7B, 8 H100s) as overrides of
    the shipped recipe: printed, with its bottleneck named if over an hour, whatever the constants give."""
    assert main([str(SHIPPED), "--estimate", f"output_dir={tmp_path}", "policy.model=mistralai/Mistral-7B-Instruct-v0.2",
                 "data.split_size=20000", "K=5", "sampling.max_new_tokens=512", "trainer.max_prompt_length=512",
                 "trainer.max_length=1024"]) == 0
    out = capsys.readouterr().out
    assert "N = 7,241,732,096" in out and "| generate | 51,200,000 |" in out and "| annotate |  | 400,000 |" in out
    assert "| train |  |  | 30,720,000 |" in out  # 20k prompts · 2 rows · (256 + 512) tokens
    assert "bottleneck is" in out or "Within an hour per iteration" in out


@pytest.mark.skipif(not PAPER.exists(), reason=f"{PAPER.name} is not in recipes/")
def test_the_paper_recipe_estimates_offline(tmp_path, capsys):
    """recipes/mistral_sppo_3iter.yaml estimates without its hub dataset or the weights."""
    assert main([str(PAPER), "--estimate", f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "Mistral-7B-Instruct-v0.2" in out and "| **iteration** |" in out and "| **total** |" in out


# --------------------------------------------------------------------------- --validate's cost warning
def test_a_K_far_beyond_practice_is_a_warning_naming_the_comparisons_per_prompt(tmp_path):
    from sppo_nemo.loading.recipe_checks import cost_warnings

    assert cost_warnings(tiny_recipe(tmp_path, "K=5"), tmp_path) == []
    assert cost_warnings(tiny_recipe(tmp_path, "K=64"), tmp_path) == []
    (warning,) = cost_warnings(tiny_recipe(tmp_path, "K=5000"), tmp_path)
    assert warning.startswith("K: 5000 responses per prompt, far beyond the paper's K = 5")
    assert "K·(K−1) = 24,995,000 comparisons per prompt, 249,950,000 an iteration of data.split_size=10" in warning
    assert "of it judging" in warning and "If K is a typo, fix it" in warning


def test_judging_that_dwarfs_generation_is_a_warning_below_the_K_bound(tmp_path):
    from sppo_nemo.loading.recipe_checks import cost_warnings

    # the 388-parameter policy generates in no time; 200,000 prompts × 4,032 comparisons take hours
    (warning,) = cost_warnings(tiny_recipe(tmp_path, "K=64", "data.split_size=200000"), tmp_path)
    assert warning.startswith("K: 64 responses per prompt, and judging them dwarfs generating them")
    assert "4,032 comparisons per prompt" in warning and "100% of it judging" in warning


def test_cli_validate_prints_the_warning_and_still_passes(capsys):
    assert main([str(SHIPPED), "K=5000", "--validate"]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("# warning: "))
    assert line.startswith("# warning: K: 5000 responses per prompt") and "24,995,000 comparisons per prompt" in line
    assert err.rstrip().endswith("valid")
    assert main([str(SHIPPED), "--validate"]) == 0
    assert "warning" not in capsys.readouterr().err
