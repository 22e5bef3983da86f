"""llm-blender itself as a Judge (``judge.backend: llm_blender``), for users who install it.

llm-blender 0.0.2 needs a transformers it supports (4.x: it imports ``TRANSFORMERS_CACHE``, gone in
transformers 5), so it usually lives in its own environment; this module imports it only when the
judge first scores something, never at ``import sppo_nemo``. Our own ``pairrm`` backend gives the
same logits (tests/integration/test_pairrm_equivalence.py) on the transformers this project uses.

It runs exactly what ``Blender.rank`` runs: the ranker's collator on each group of prompts and
``CrossCompareReranker._full_predict``, which scores every ordered pair of a prompt's K responses,
and turns the K×K logits into probabilities with the same two conventions as the ``pairrm``
backend (:mod:`sppo_nemo.maths.preference`): ``symmetric`` σ((C[i, j] − C[j, i]) / 2) (default) or
``score_diff`` σ(s_i − s_j) with llm-blender's aggregated scores s. Note that llm-blender's
collator sets the candidate budget from the longest source of a batch, so with ``batch_size`` > 1
a prompt's logits can depend on its batch neighbours; ``batch_size = 1`` (the default, as in the
reference SPPO scripts) scores each prompt on its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sppo_nemo.schema.errors import UserError
from sppo_nemo.maths.preference import PROBABILITIES, probabilities, scored_from_logits
from sppo_nemo.schema.protocols import Prompt, ProgressFn, check_judge_inputs, compare_by_matrices


class LLMBlenderError(UserError):
    """llm-blender is not installed where the run is, or the checkpoint is not a pairwise ranker."""


class LLMBlenderJudge:
    """:class:`~sppo_nemo.schema.protocols.Judge` running llm-blender's own PairRM code (module docstring)."""

    name = "llm_blender"

    def __init__(self, model: str = "llm-blender/PairRM", batch_size: int = 1, device: str = "auto",
                 dtype: str = "auto", probability: str = "symmetric"):
        if probability not in PROBABILITIES:
            raise ValueError(f"probability={probability!r}; use one of {PROBABILITIES}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in ("auto", "fp32", "fp16"):
            raise ValueError(f"dtype={dtype!r}; llm-blender runs auto (fp16 on CUDA, fp32 on CPU), fp32 or fp16")
        self.model_name = model
        self.batch_size = batch_size
        self.device_name = device
        self.dtype_name = dtype
        self.probability = probability
        self._blender = None

    def _load(self):
        if self._blender is not None:
            return self._blender
        try:
            import llm_blender
        except ImportError as e:
            raise LLMBlenderError(
                "judge.backend=llm_blender needs the llm-blender package and a transformers it supports "
                f"(transformers < 5): {e}. Install it in its own environment (see scripts/blender_venv.sh), "
                "or use judge.backend=pairrm, which loads the same checkpoints on current transformers.") from None
        import torch

        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        blender = llm_blender.Blender(blender_config=llm_blender.BlenderConfig(
            device=device, use_tqdm=False))
        blender.loadranker(self.model_name, device=device, fp16=self.dtype_name != "fp32")
        if blender.ranker_config.ranker_type != "pairranker":
            raise LLMBlenderError(f"judge.model: {self.model_name}: ranker_type "
                                  f"{blender.ranker_config.ranker_type!r}; only PairRM-style pairwise rankers give "
                                  "a preference matrix: point judge.model at a PairRM checkpoint")
        self._blender = blender
        return blender

    def logit_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                       progress: ProgressFn | None = None) -> list[np.ndarray]:
        """C[i, j] = PairRM's logit for (y_i, y_j) of each prompt, as ``Blender.rank`` computes it;
        ``progress`` is told the prompts of each finished group."""
        import torch

        check_judge_inputs(prompts, responses)
        out = [np.zeros((len(rs), len(rs))) for rs in responses]
        # the collator needs the same K within a batch: group prompts by K, keep order inside a group
        by_k: dict[int, list[int]] = {}
        for n, rs in enumerate(responses):
            if len(rs) >= 2:
                by_k.setdefault(len(rs), []).append(n)
        scored = sum(len(idx) for idx in by_k.values())
        if progress and scored < len(prompts):
            progress(len(prompts) - scored)
        if not by_k:
            return out
        blender = self._load()
        device = blender.ranker_config.device
        for idx in by_k.values():
            for start in range(0, len(idx), self.batch_size):
                group = idx[start:start + self.batch_size]
                items = [{"index": i, "source": prompts[n].text, "candidates": list(responses[n])}
                         for i, n in enumerate(group)]
                batch = blender.ranker_collator(items)
                batch = {k: v.to(device) for k, v in batch.items() if v is not None}
                with torch.no_grad():
                    logits = blender.ranker._full_predict(**batch)["logits"].float().cpu().numpy()
                for n, c in zip(group, logits):
                    out[n] = c.astype(np.float64)
                if progress:
                    progress(len(group))
        return out

    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                            progress: ProgressFn | None = None) -> list[np.ndarray]:
        """M[i, j] = P(y_i ≻ y_j | x) per prompt from llm-blender's logits (K ≤ 1: no model call)."""
        return [probabilities(c, self.probability) for c in self.logit_matrices(prompts, responses, progress)]

    def scored_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                        progress: ProgressFn | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(M, the aggregated score of each response) per prompt, from one pass of logits."""
        return scored_from_logits(self.logit_matrices(prompts, responses, progress), self.probability)

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a_i ≻ b_i | x_i), shape (n,): the [0, 1] entry of the 2×2 matrix of (a_i, b_i)."""
        return compare_by_matrices(self, prompts, a, b)

    def close(self) -> None:
        self._blender = None
