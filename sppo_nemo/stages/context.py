"""What every stage needs to know about the run, in one place: the recipe, the run directory,
the prompt splits, the stage folders, and the references that stages' inputs are made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sppo_nemo.formats.artifacts import Stage, content_changes, content_digest
from sppo_nemo.backends import policy_location
from sppo_nemo.schema.config import Recipe
from sppo_nemo.formats.data import Splits, load_prompts, make_splits, prompts_digest
from sppo_nemo.schema.protocols import Prompt, SamplingParams


@dataclass(frozen=True)
class Upstream:
    """A finished stage whose outputs a stage reads: its folder, and its output digest (the
    fingerprint's share). Making one of an unfinished stage raises FileNotFoundError."""

    path: Path
    digest: str

    def fingerprint(self) -> str:
        return self.digest


BASE_POLICY_CACHE = ".base_policy.json"  # in the run directory: π_1's file hashes (artifacts.content_digest)
MODEL_KEY = "model:"  # a base policy's fingerprint: MODEL_KEY + its content digest (a local directory) or hub id


@dataclass(frozen=True)
class PolicyRef:
    """π_t: where it is (a recipe's model string or a train stage's policy folder) and what
    identifies it in a fingerprint (the model string, or the digest of the training that made it)."""

    location: str
    key: str

    def fingerprint(self) -> str:
        return self.key


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[Prompt, ...]

    def fingerprint(self) -> str:
        return prompts_digest(list(self.prompts))


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    progress: bool = True  # show progress bars (tqdm decides on its own whether stderr is a tty)
    full_verify: bool = False  # hash every file of finished stages (default: size and mtime, hash what moved)
    # precision: auto resolved (sppo_nemo/loading/precision.py): what to print at start, and the recipe as written
    precision_lines: list[str] = field(default_factory=list, init=False)
    requested: Recipe | None = field(default=None, init=False)

    def __post_init__(self):
        """Every stage sees resolved precisions: ``auto`` never reaches a backend or a fingerprint."""
        from sppo_nemo.loading import precision

        if precision.auto_keys(self.recipe):
            from sppo_nemo.backends.machine import this_machine

            m = this_machine()
            self.requested = self.recipe
            self.recipe, self.precision_lines = precision.resolve(
                self.recipe, self.run_dir, m.cuda, m.cpu_bf16, m.cpu_reason, record=False)

    def record_precision(self) -> None:
        """Write the resolved precisions into the run directory if it holds none yet (a run's first stage)."""
        from sppo_nemo.loading import precision

        if self.requested is not None:
            from sppo_nemo.backends.machine import this_machine

            m = this_machine()
            precision.resolve(self.requested, self.run_dir, m.cuda, m.cpu_bf16, m.cpu_reason, record=True)

    @cached_property
    def splits(self) -> Splits:
        d = self.recipe.data
        return make_splits(load_prompts(d), d.eval_size if self.recipe.evaluation.enabled else 0,
                           d.split_size, self.recipe.T)

    def train_prompts(self, t: int) -> PromptSet:
        return PromptSet(tuple(self.splits.train[t - 1]))

    def eval_prompts(self) -> PromptSet:
        return PromptSet(tuple(self.splits.eval))

    def stage(self, t: int, name: str) -> Stage:
        return Stage(self.run_dir / f"iter_{t:02d}" / name)

    def upstream(self, t: int, name: str) -> Upstream:
        stage = self.stage(t, name)
        if not stage.done():
            raise FileNotFoundError(2, f"{stage.label} is not finished", str(stage.path))
        return Upstream(stage.path, stage.digest())

    @cached_property
    def base_policy(self) -> PolicyRef:
        """π_1, identified by its content when it is a local directory (weights replaced in place
        make every stage that read it stale), by its hub id otherwise; hashed once per run."""
        model = self.recipe.policy.model
        local = Path(policy_location(model))
        if local.is_dir():
            digest = content_digest(local, self.run_dir / BASE_POLICY_CACHE, self.full_verify)
            return PolicyRef(model, MODEL_KEY + digest)
        return PolicyRef(model, MODEL_KEY + model)

    def base_policy_changes(self, was, now) -> list[str]:
        """For a stale stage's message (artifacts.Stage.check): when a fingerprint value that holds π_1's
        content digest (a stage's policy, or the first of evaluate's policies) changed, the files of
        the base policy that changed since the stage was made; nothing for any other value."""
        old, new = _model_key(was), _model_key(now)
        local = Path(policy_location(self.recipe.policy.model))
        if old is None or new is None or old == new or not local.is_dir():
            return []
        files = content_changes(self.run_dir / BASE_POLICY_CACHE, old, new)
        if files is None:  # π_1 first hashed by an older sppo-nemo, which kept no file list
            return [f"the files of policy.model ({local}) changed since this stage was made (which ones was not "
                    f"recorded then)"]
        return [f"{local / rel}: {what} since this stage was made" for rel, what in files]

    def policy(self, t: int) -> PolicyRef:
        """π_t: the base model for t = 1, else the policy trained in iteration t − 1."""
        if t == 1:
            return self.base_policy
        train = self.upstream(t - 1, "train")
        return PolicyRef(str(train.path / "policy"), f"iter_{t - 1:02d}/train:{train.digest}")

    def sampling(self, evaluation: bool = False) -> SamplingParams:
        """Sampling parameters; the seed is set per chunk by the stage (seeds.derive_seed)."""
        s, e = self.recipe.sampling, self.recipe.evaluation
        if not evaluation:  # the training splits: no sample longer than trainer.max_length takes
            t = self.recipe.trainer
            binds = t.max_prompt_length + s.max_new_tokens > t.max_length
            return SamplingParams(s.temperature, s.top_p, s.max_new_tokens, 0, s.batch_size,
                                  t.max_length if binds else None)
        return SamplingParams(
            e.temperature if e.temperature is not None else s.temperature,
            e.top_p if e.top_p is not None else s.top_p,
            e.max_new_tokens if e.max_new_tokens is not None else s.max_new_tokens,
            0, s.batch_size,
        )

    def bar(self, total: int, desc: str):
        return progress_bar(self.progress)(total, desc)


def _model_key(value) -> str | None:
    """The content digest in a base policy's fingerprint value (or the first such of a list of them)."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str) and v.startswith(MODEL_KEY):
            return v[len(MODEL_KEY):]
    return None


def progress_bar(enabled: bool):
    """``bar(total, desc)``: a tqdm bar (tqdm decides on its own whether stderr is a tty), or none."""

    def bar(total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=None if enabled else True, leave=False, dynamic_ncols=True)

    return bar
