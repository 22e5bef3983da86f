"""AlpacaEval 2.0's judge: the prompt of its ``weighted_alpaca_eval_gpt4_turbo`` annotator and the
preference read from the judge's answer (alpaca_eval 0.6.6, ``evaluators_configs/
alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt`` and ``completion_parsers.logprob_parser``,
Apache-2.0; the prompt text is theirs, quoted so that a judge sees what AlpacaEval's judge sees).

The judge sees the two outputs labelled ``m`` and ``M`` and answers with one token. AlpacaEval puts
the reference as output 1 and the model as output 2, and swaps them for a pseudo-random half of the
instructions so that a judge's preference for a position cancels. The preference is read from the
first token's log-probabilities: with p = P(m) / (P(m) + P(M)), the probability that output 1 is
better, preference = 2 − p (1: the reference wins, 2: the model wins), flipped to 3 − (2 − p) = 1 + p
when the outputs were swapped. When neither label is among the returned log-probabilities the
preference is unknown (NaN) and the instruction is left out, as AlpacaEval leaves it out.

Ours differs in one place: which instructions are swapped. AlpacaEval seeds Python's ``random`` per
instruction; we swap where the first byte of the instruction's SHA-256 is odd, which is fixed across
machines and versions.
"""

from __future__ import annotations

import hashlib
import math

LABELS = ("m", "M")  # output 1, output 2

SYSTEM = ("You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) "
          "based on the quality of their responses to a given instruction. This process will be used to create a "
          "leaderboard reflecting the most accurate and human-preferred answers.")

USER = '''I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding outputs. Your task is to assess these responses, and select the model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": """{instruction}""",
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": """{output_1}"""
    }},
    {{
        "model_identifier": "M",
        "output": """{output_2}"""
    }}
}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated the best output. Answer by providing the model identifier of the best model. We will use your output as the name of the best model, so make sure your output only contains one of the following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier'''


def swapped(instruction: str) -> bool:
    """Whether the model's output is shown first (as ``m``) for this instruction."""
    return hashlib.sha256(instruction.encode("utf-8")).digest()[0] % 2 == 1


def messages(instruction: str, model_output: str, reference_output: str) -> list[dict]:
    """The judge's chat: the reference as output 1 and the model as output 2, unless swapped."""
    first, second = (model_output, reference_output) if swapped(instruction) else (reference_output, model_output)
    user = USER.format(instruction=instruction, output_1=first, output_2=second)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def preference(top_logprobs: dict[str, float], was_swapped: bool) -> float:
    """AlpacaEval's preference in [1, 2] (2: the model wins) from the first answer token's
    log-probabilities by token; NaN when neither label is there."""
    lp = {t: top_logprobs[t] for t in LABELS if t in top_logprobs}
    if not lp:
        return math.nan
    peak = max(lp.values())
    mass = {t: math.exp(v - peak) for t, v in lp.items()}
    p_first = mass.get("m", 0.0) / sum(mass.values())
    pref = 2.0 - p_first
    return 3.0 - pref if was_swapped else pref
