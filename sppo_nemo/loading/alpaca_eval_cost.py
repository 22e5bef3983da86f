"""What ``evaluation.alpaca_eval`` adds to ``--estimate``: the judge's requests on each evaluated policy.

One request per judged instruction: AlpacaEval 2.0's prompt (:data:`TEMPLATE_TOKENS`) holding the
instruction and two outputs (the policy's and the reference's), answered with one token. The
instructions are evaluation.prompts' (counted when the file is readable, else AlpacaEval's 805,
assumed), or the held-out prompts (one output each, ``model_outputs.json``). Iteration 0 judges
nothing when the reference is π_1 itself; with a reference file π_1 is judged too, once.

- An endpoint: the requests and their input tokens, the quantities a provider bills, priced for
  AlpacaEval's own judge (``gpt-4-turbo``) at OpenAI's list price; another model's price is not known
  here and the table gives its tokens. The time is AlpacaEval's measured 228 s per 1,000 examples for
  its ``weighted_alpaca_eval_gpt4_turbo`` annotator (alpaca_eval's evaluators leaderboard,
  ``src/alpaca_eval/evaluators_configs/README.md``), taken for any endpoint (assumed).
- A local judge (vLLM on generation.vllm.tensor_parallel GPUs): a prefill of 2·N_judge FLOPs a token
  at the PairRM judge's assumed fraction of peak; N_judge from the judge's config.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.schema.config import AlpacaEvalConfig

# AlpacaEval 2.0's prompt with its three slots empty (sppo_nemo/backends/alpaca_eval/prompt.py: system
# and user text, 1,306 characters, chat template excluded), in tokens of the SmolLM2 tokenizer shipped
# here (tests/unit/test_estimate_evaluations.py counts it); other BPE tokenizers differ by some percent.
TEMPLATE_TOKENS = 287
ALPACA_EVAL_INSTRUCTIONS = 805  # AlpacaEval's evaluation set
CHARS_PER_TOKEN = 4.0  # for lengths read from files in characters: an English-text rule of thumb
# US dollars per million input and output tokens: OpenAI's list price of gpt-4-turbo.
PRICES = {"gpt-4-turbo": (10.0, 30.0)}
ENDPOINT_SECONDS_PER_1000 = 228.0  # AlpacaEval's measured time of its GPT-4 Turbo annotator


@dataclass(frozen=True)
class JudgeWork:
    requests: float  # per evaluated policy
    input_tokens: float  # per request
    instructions_source: str
    reference_source: str


def work(c: AlpacaEvalConfig, instructions: tuple[float, float, str], response_tokens: float,
         reference_tokens: float | None) -> JudgeWork:
    """The judge's requests on one policy. ``instructions``: (count, mean tokens, where from) of the
    judged instructions (:func:`sppo_nemo.loading.estimate.workload` finds them); ``reference_tokens``:
    the reference file's mean output length, None for π_1's (as long as the policy's)."""
    count, instruction, source = instructions
    ref = response_tokens if reference_tokens is None else reference_tokens
    ref_source = ("π_1's outputs, as long as the policy's" if reference_tokens is None
                  else f"{c.reference}: mean {reference_tokens:.0f} tokens (read)")
    return JudgeWork(float(count), TEMPLATE_TOKENS + instruction + response_tokens + ref, source, ref_source)


def endpoint_cost(c: AlpacaEvalConfig, w: JudgeWork) -> tuple[float | None, float, str]:
    """(US dollars per policy, or None where no price is known; seconds per policy; the sources).
    Hand-worked: 805 requests of 1,000 input tokens and one answer token to gpt-4-turbo cost
    805 · (1,000 · 10 + 1 · 30) / 10⁶ = $8.07 and take 0.805 · 228 = 183.5 s."""
    seconds = ENDPOINT_SECONDS_PER_1000 * w.requests / 1000
    timing = f"{ENDPOINT_SECONDS_PER_1000:g} s per 1,000 as AlpacaEval measured its GPT-4 Turbo judge"
    if c.model not in PRICES:
        return None, seconds, f"{c.model}: no price known here; {timing} (assumed)"
    inp, out = PRICES[c.model]
    dollars = w.requests * (w.input_tokens * inp + out) / 1e6
    return dollars, seconds, f"${inp:g} and ${out:g} per million input and output tokens, OpenAI's list price; {timing}"


def local_flops(w: JudgeWork, judge_params: int) -> float:
    """The local judge's prefill FLOPs per policy (its one answer token is not counted)."""
    return 2 * judge_params * w.requests * w.input_tokens


def prompt_file_size(r) -> tuple[int, float, str]:
    """evaluation.prompts' instructions and their mean length (characters / 4) when the file is
    readable here, else AlpacaEval's 805 at the held-out prompts' assumed length."""
    from sppo_nemo.formats.alpaca import recipe_eval_prompts
    from sppo_nemo.schema.errors import UserError

    try:
        prompts = recipe_eval_prompts(r).prompts
    except UserError:
        prompts = ()
    if not prompts:
        return (ALPACA_EVAL_INSTRUCTIONS, r.trainer.max_prompt_length / 2,
                f"evaluation.prompts not readable here: AlpacaEval's {ALPACA_EVAL_INSTRUCTIONS} instructions assumed")
    mean = sum(len(p.text) for p in prompts) / len(prompts) / CHARS_PER_TOKEN
    return len(prompts), mean, f"evaluation.prompts: {len(prompts):,} instructions (read)"


def describe(w: JudgeWork, dollars: float | None, note: str, policies: int) -> list[str]:
    """The estimate's paragraph on the judge; ``note`` empty for a local judge (no bill)."""
    lines = [f"AlpacaEval judge: {w.requests:,.0f} requests per evaluated policy ({w.instructions_source}), each "
             f"about {w.input_tokens:,.0f} input tokens (its prompt {TEMPLATE_TOKENS}, the instruction, the "
             f"policy's output and the reference's: {w.reference_source}) and one answer token; {policies} "
             f"policies judged in the run."]
    if dollars is not None:
        lines.append(f"Its bill: ${dollars:,.2f} per policy, ${dollars * policies:,.2f} for the run ({note}).")
    elif note:
        lines.append(f"Its bill: {w.requests * w.input_tokens * policies / 1e6:,.2f} M input tokens for the run at "
                     f"your provider's price ({note}).")
    return lines + [""]


def read_reference_tokens(path: str) -> float | None:
    """The reference file's mean output length in tokens (characters / :data:`CHARS_PER_TOKEN`), or
    None when it cannot be read here."""
    from sppo_nemo.formats.alpaca import read_outputs
    from sppo_nemo.schema.errors import UserError

    try:
        records = read_outputs(Path(path))
    except (UserError, OSError):
        return None
    lengths = [len(rec.get("output") or "") for rec in records]
    return sum(lengths) / len(lengths) / CHARS_PER_TOKEN if lengths else None
