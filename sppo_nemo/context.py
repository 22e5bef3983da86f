"""What every stage needs to know about the run, in one place."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

from sppo_nemo.artifacts import Stage
from sppo_nemo.data import Splits, load_prompts, make_splits
from sppo_nemo.protocols import SamplingParams
from sppo_nemo.recipe import Recipe


def derive_seed(*parts) -> int:
    """A 31-bit seed from the run seed and a stage tag, stable across machines and resumes."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    progress: bool = True  # show progress bars (tqdm decides on its own whether stderr is a tty)
    _base_policy: str | None = field(default=None, repr=False)

    @cached_property
    def splits(self) -> Splits:
        d = self.recipe.data
        return make_splits(load_prompts(d), d.eval_size if self.recipe.evaluation.enabled else 0,
                           d.split_size, self.recipe.T)

    def stage(self, t: int, name: str) -> Stage:
        return Stage(self.run_dir / f"iter_{t:02d}" / name)

    @property
    def base_policy(self) -> str:
        if self._base_policy is None:
            from sppo_nemo.backends import resolve_base_policy

            self._base_policy = resolve_base_policy(self.recipe)
        return self._base_policy

    def policy(self, t: int) -> str:
        """π_t: the base model for t = 1, else the policy trained in iteration t − 1."""
        if t == 1:
            return self.base_policy
        return str(self.stage(t - 1, "train").path / "policy")

    def policy_key(self, t: int) -> str:
        """What identifies π_t in a fingerprint: the recipe's model, or the digest of its training."""
        if t == 1:
            return f"model:{self.recipe.policy.model}"
        return f"iter_{t - 1:02d}/train:{self.stage(t - 1, 'train').digest()}"

    def sampling(self, evaluation: bool = False) -> SamplingParams:
        """Sampling parameters; the seed is set per chunk by generate.sample_resumable."""
        seed = 0
        s, e = self.recipe.sampling, self.recipe.evaluation
        if not evaluation:
            return SamplingParams(s.temperature, s.top_p, s.max_new_tokens, seed, s.batch_size)
        return SamplingParams(
            e.temperature if e.temperature is not None else s.temperature,
            e.top_p if e.top_p is not None else s.top_p,
            e.max_new_tokens if e.max_new_tokens is not None else s.max_new_tokens,
            seed, s.batch_size,
        )

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=None if self.progress else True, leave=False,
                    dynamic_ncols=True)


def plan(recipe: Recipe) -> Iterator[tuple[int, str]]:
    """(iteration, stage) in execution order; iteration 0 evaluates the base policy π_1."""
    from sppo_nemo.stages import STAGES

    if recipe.evaluation.enabled:
        yield 0, "evaluate"
    for t in range(1, recipe.T + 1):
        for name in STAGES:
            if name == "evaluate" and not recipe.evaluation.enabled:
                continue
            yield t, name
