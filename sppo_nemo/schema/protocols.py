"""The small interfaces every backend implements, and the records that cross them.

A stage receives one of these objects and never asks which backend it is. Nothing here
imports a heavy dependency: numpy is the only array type that crosses a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Prompt:
    """One prompt x of the data set, with what an offline judge may use to rate answers."""

    id: str
    text: str
    reference: str | None = None  # a reference answer, for judges that compare against one
    answer: str | None = None  # a short checkable final answer (a number, a word), if any


@dataclass(frozen=True)
class Sample:
    """One response y ~ π(·|x) as the generator returned it."""

    prompt_id: str
    index: int  # k in 0..K-1
    text: str
    num_tokens: int
    finished: bool  # True when generation stopped on end-of-turn, False when cut at max tokens
    # The sampled token ids, the end-of-turn id last when it was sampled (len == num_tokens): what
    # training and scoring score. None: a record made from text alone (a file of an older run).
    ids: list[int] | None = None


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    batch_size: int
    # trainer.max_length where a prompt plus max_new_tokens can exceed it (the generate stage's
    # samples then stop where training would cut them); None where it cannot bind, or in evaluation
    max_length: int | None = None


ProgressFn = Callable[[int], None]  # called with the number of items just finished


class Generator(Protocol):
    """Samples responses from one policy checkpoint (an HF directory): what the generate and
    evaluate stages call, implemented by every generator backend (hf, vllm, game)."""

    def sample(self, prompts: Sequence[Prompt], num_samples: int, params: SamplingParams, state: Path,
               seed_tag: tuple, progress: ProgressFn | None = None) -> list[list[Sample]]:
        """What the stages call: ``num_samples`` samples per prompt, in prompt and index order,
        resumable from the folder ``state`` (the generator's own files; the stage removes it after),
        seeded from ``seed_tag`` by position (``seeds.derive_seed``), never by how the work was run.
        The in-process backends chunk ``generate`` (``sampling.chunked_sample``)."""
        ...

    def kl_terms(self, base: str, prompts: Sequence[Prompt], responses: Sequence[Sample],
                 precision: str = "fp32") -> np.ndarray:
        """Per (prompt, response), shape (n, 3): log π(y|x), log π_base(y|x) (``base``: the base
        policy's loadable location, ``backends.policy_location``), and the exact per-position KL
        Σ_h KL(π(·|x, y_<h) ‖ π_base(·|x, y_<h)) over the response's positions (non-negative)."""
        ...

    def cut_prompts(self, prompts: Sequence[Prompt]) -> int:
        """How many prompts are longer than the policy takes, and so cut from the left (as the
        trainer cuts them) by sampling and scoring."""
        ...

    def run_facts(self) -> dict:
        """What the last ``sample`` call did that belongs in the stage's result (the vLLM backend:
        engines, vLLM version, chunks read back from its logs); {} for the in-process backends."""
        ...

    def exact_metrics(self, prompts: Sequence[Prompt], history: Sequence[str | Path]) -> dict:
        """Figures computed exactly rather than from samples, for the evaluate stage's metrics:
        a finite game's duality gaps of π_{t+1} and of the average policy (``history``: π_1 … π_{t+1});
        {} for a language model."""
        ...

    def close(self) -> None:
        """Free the model (a stage loads at most one policy at a time)."""
        ...


class InProcessGenerator(Protocol):
    """What :func:`sppo_nemo.backends.sampling.chunked_sample` needs of the generators that sample in this
    process (hf, game): one fixed chunk of prompts at a time."""

    def generate(
        self,
        prompts: Sequence[Prompt],
        num_samples: int,
        params: SamplingParams,
        progress: ProgressFn | None = None,
    ) -> list[list[Sample]]:
        """Return, for each prompt, ``num_samples`` samples in index order.

        Deterministic for a given (prompts, params): batches are fixed by position and each
        batch is seeded from ``params.seed`` and its position, so a resumed run that calls this
        on the remaining prompts of a fixed batch grid reproduces an uninterrupted run.
        """
        ...


class Judge(Protocol):
    """A general preference oracle P(y ≻ y' | x); not necessarily a Bradley-Terry model."""

    name: str

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i ≻ b_i | x_i) for each i, shape (n,), with compare(b, a) == 1 - compare(a, b)."""
        ...

    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                            progress: ProgressFn | None = None) -> list[np.ndarray]:
        """For each prompt the K×K matrix M[i, j] = P(y_i ≻ y_j | x), M + Mᵀ = 1, diagonal ½.

        The annotate stage calls this on chunks of prompts (its chunk log makes it resumable);
        a judge batches and places the work on its devices as it sees fit. ``progress`` is told
        the number of prompts finished."""
        ...

    def scored_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                        progress: ProgressFn | None = None) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per prompt, M as :meth:`preference_matrices` gives it, and the judge's aggregated score of
        each response where it has logits to aggregate (PairRM's; preference.scored_from_logits),
        else None. The annotate stage keeps both."""
        ...

    def close(self) -> None:
        """Free the model and any worker processes."""
        ...


@dataclass(frozen=True)
class PointRow:
    """A training row of the SPPO square loss (eq. 3.7): (x, y, P̂(y ≻ π_t | x))."""

    prompt_id: str
    prompt: str
    response: str
    finished: bool
    win_prob: float
    log_z: float | None = None  # None: the constant η/2 of eq. 3.6
    response_ids: list[int] | None = None  # the sampled ids (Sample.ids); None: tokenised from the text


@dataclass(frozen=True)
class PairRow:
    """A training row of the pairwise losses (eq. B.1, B.2, B.3): (x, y_w, y_l)."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_finished: bool
    rejected_finished: bool
    pair_prob: float  # P(y_w ≻ y_l | x)
    chosen_ids: list[int] | None = None  # the sampled ids (Sample.ids); None: tokenised from the text
    rejected_ids: list[int] | None = None


@dataclass
class TrainResult:
    metrics: list[dict] = field(default_factory=list)  # one dict per optimizer step
    summary: dict = field(default_factory=dict)


class Trainer(Protocol):
    """Fits π_{t+1} from π_t on the rows of one iteration, π_t serving as the reference."""

    def train(
        self,
        policy_dir: Path,
        rows_file: Path,
        output_dir: Path,
        progress: ProgressFn | None = None,
        ref_progress: ProgressFn | None = None,
        state_dir: Path | None = None,
    ) -> TrainResult:
        """Write π_{t+1}, fitted on the rows of ``rows_file`` (rows.jsonl, sppo_nemo/formats/rows.py), as an HF
        checkpoint (safetensors, config, tokenizer) into output_dir. ``state_dir`` (the stage's partial
        folder) holds what a killed stage resumes from: step checkpoints (sppo_nemo/formats/step_checkpoints.py),
        for the trainers that write them."""
        ...


def check_preference_matrix(m: np.ndarray, atol: float = 1e-6) -> None:
    """Raise ValueError unless m is a valid K×K preference matrix (M + Mᵀ = 1, entries in [0,1])."""
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"preference matrix must be square, got shape {m.shape}")
    if not np.all((m >= -atol) & (m <= 1 + atol)):
        raise ValueError("preference matrix entries must lie in [0, 1]")
    if not np.allclose(m + m.T, 1.0, atol=atol):
        raise ValueError("preference matrix must satisfy P(i≻j) + P(j≻i) = 1")


def check_texts(texts: Sequence[object], label: str) -> None:
    """Raise TypeError naming the first entry of ``texts`` that is not a str (``label[i]``)."""
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{label}[{i}] must be str, got {type(t).__name__}")


def check_prompts(prompts: Sequence[object]) -> None:
    """Raise TypeError naming the first entry that is not a Prompt-like record with a str text."""
    for i, p in enumerate(prompts):
        if not isinstance(getattr(p, "text", None), str):
            raise TypeError(f"prompts[{i}] must be a Prompt with a str text, got {type(p).__name__}"
                            + (f" with text of type {type(p.text).__name__}" if hasattr(p, "text") else ""))


def check_judge_inputs(prompts: Sequence[object], responses: Sequence[Sequence[object]]) -> None:
    """What every Judge.preference_matrices checks first: equal lengths, Prompt records, and a
    list of str per prompt, or an error naming the index (``responses[n][i]``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(responses)} response lists")
    check_prompts(prompts)
    for n, rs in enumerate(responses):
        if isinstance(rs, str):
            raise TypeError(f"responses[{n}] must be a list of str, got a str")
        check_texts(rs, f"responses[{n}]")


def compare_by_matrices(judge: Judge, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """P(a_i ≻ b_i | x_i) as the [0, 1] entry of the 2×2 matrix of (a_i, b_i): ``compare`` for a
    judge whose ``preference_matrices`` is its one source of truth."""
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
    mats = judge.preference_matrices(prompts, [[x, y] for x, y in zip(a, b)])
    return np.array([m[0, 1] for m in mats], dtype=np.float64).reshape(len(prompts))
