"""Backend choice: one plain `match` per role, no registry.

A stage's inputs hold a *spec* per backend role (:class:`GeneratorSpec`, :class:`JudgeSpec`,
:class:`TrainerSpec`): everything the chosen backend reads from the recipe, and nothing else. The
spec's fingerprint is what enters the stage's manifest, so a key a backend reads cannot be missing
from the fingerprint. Each backend module is imported only when chosen, so `import sppo_nemo` and
the CPU path work without the optional GPU packages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.schema.config import SHIPPED_SMOLLM2, JudgeConfig, Recipe, TrainerConfig, VllmConfig, uses_games
from sppo_nemo.schema.protocols import Generator, Judge, Trainer
from sppo_nemo.maths.seeds import derive_seed


def check(r: Recipe, base_dir: Path) -> list[str]:
    """The chosen backends' own recipe checks (keys, shapes and files; no engine is imported), and a
    game file set where no game backend would read it."""
    p: list[str] = []
    games = uses_games(r)
    if games:
        from sppo_nemo.backends import game_file  # numpy only

        p += game_file.check(r, games, base_dir)
    elif r.game is not None:
        from sppo_nemo.backends.game_file import HINT

        p.append(f"game: set, but a game file applies only to the game backends ({HINT}); remove it")
    if r.trainer.backend == "megatron":
        from sppo_nemo.backends.megatron import layout  # no megatron import: shapes and counts only

        p += layout.check(r, base_dir)
    if r.generation.backend == "vllm":
        from sppo_nemo.backends.vllm import check as vllm_check  # no vllm import: keys and shapes

        p += vllm_check.check(r, base_dir)
    if r.evaluation.lm_eval.enabled:
        from sppo_nemo.backends.lm_eval import spec as lm_eval_spec  # no lm_eval import: keys and folders

        p += lm_eval_spec.check(r, base_dir)
    if r.evaluation.alpaca_eval.enabled:
        from sppo_nemo.backends.alpaca_eval import spec as alpaca_eval_spec  # keys and files only

        p += alpaca_eval_spec.check(r, base_dir)
    return p


@dataclass(frozen=True)
class GameRef:
    """The game file of the game backends, identified by its content (names, matrix, π_1)."""

    path: str

    def fingerprint(self) -> dict:
        from sppo_nemo.backends.game_file import load_game

        return load_game(self.path).identity()


def game_ref(r: Recipe) -> GameRef | None:
    return GameRef(r.game) if uses_games(r) and r.game is not None else None


def _recipe_key(key: str, section: str, renamed: dict[str, str]) -> str:
    """The recipe key a spec's (flattened) fingerprint key stands for, for a stale stage's message:
    ``renamed`` for keys read from elsewhere in the recipe, the game file's identity (``game``,
    ``game.matrix``) as it is, any other key under ``section``."""
    if key in renamed:
        return renamed[key]
    return key if key == "game" or key.startswith("game.") else section + key


@dataclass(frozen=True)
class GeneratorSpec:
    backend: str
    system_prompt: str | None
    max_prompt_length: int  # the trainer's: generation and scoring cut prompts as training does
    game: GameRef | None
    vllm: VllmConfig | None = None  # backend=vllm: the engines' keys
    max_model_len: int | None = None  # backend=vllm: the engines' context (backends.vllm.check.model_len)
    precision: str = "fp32"  # backend=hf: generation.precision

    def fingerprint(self) -> dict:
        out = {"backend": self.backend, "system_prompt": self.system_prompt,
               "max_prompt_length": self.max_prompt_length, "game": self.game.fingerprint() if self.game else None}
        if self.backend == "hf":  # generation.precision: the transformers generator's
            out["precision"] = self.precision
        # What changes vLLM's samples (eager vs compiled does, measured on CPU); engines do not (chunks
        # are engine-independent), nor memory sizes. max_model_len as the recipe says: the derived
        # value follows evaluation's length, which must not make the generate stages stale.
        if self.vllm is not None:
            v = self.vllm
            out["vllm"] = {"dtype": v.dtype, "enforce_eager": v.enforce_eager, "tensor_parallel": v.tensor_parallel,
                           "enable_prefix_caching": v.enable_prefix_caching, "max_model_len": v.max_model_len}
        return out

    @staticmethod
    def recipe_key(key: str) -> str:
        return _recipe_key(key, "generation.", {"system_prompt": "policy.system_prompt",
                                                "max_prompt_length": "trainer.max_prompt_length"})


@dataclass(frozen=True)
class JudgeSpec:
    judge: JudgeConfig
    game: GameRef | None

    def fingerprint(self) -> dict:
        return {**dataclasses.asdict(self.judge), "game": self.game.fingerprint() if self.game else None}

    @staticmethod
    def recipe_key(key: str) -> str:
        return _recipe_key(key, "judge.", {})


@dataclass(frozen=True)
class TrainerSpec:
    trainer: TrainerConfig
    loss_type: str
    eta: float
    system_prompt: str | None
    seed: int  # derive_seed(run seed, "train", t)
    threads: int | None  # the megatron workers of a node share the recipe's CPU threads
    game: GameRef | None
    ipo_form: str = "appendix_b"  # loss.ipo_form, read with loss.type=ipo only

    @property
    def loss_name(self) -> str:
        """The loss the trainer core computes (training.batch_loss): loss.type, and IPO's form."""
        return "ipo_azar" if self.loss_type == "ipo" and self.ipo_form == "azar" else self.loss_type

    def fingerprint(self) -> dict:
        keys = dataclasses.asdict(self.trainer)
        keys.pop("checkpoint_every")  # where checkpoints fall never changes what training makes
        out = {"loss.type": self.loss_type, "eta": self.eta, "system_prompt": self.system_prompt, "seed": self.seed,
               "game": self.game.fingerprint() if self.game else None}
        if self.loss_type == "ipo":
            out["loss.ipo_form"] = self.ipo_form
        if self.trainer.backend == "megatron":  # the megatron keys count only when that backend trains
            out["threads"] = self.threads
        else:
            keys.pop("megatron")
        return {"trainer": keys, **out}

    @staticmethod
    def recipe_key(key: str) -> str:
        """``trainer.lr`` for the train stage's ``trainer.trainer.lr``: the keys above are the recipe's
        own (trainer.*, loss.type, eta, seed, threads), but the system prompt."""
        return _recipe_key(key, "", {"system_prompt": "policy.system_prompt"})


def generator_spec(r: Recipe) -> GeneratorSpec:
    if r.generation.backend == "vllm":
        from sppo_nemo.backends.vllm.check import model_len

        return GeneratorSpec("vllm", r.policy.system_prompt, r.trainer.max_prompt_length, None,
                             r.generation.vllm, model_len(r))
    return GeneratorSpec(r.generation.backend, r.policy.system_prompt, r.trainer.max_prompt_length, game_ref(r),
                         precision=r.generation.precision)


def judge_spec(r: Recipe) -> JudgeSpec:
    return JudgeSpec(r.judge, game_ref(r))


def trainer_spec(r: Recipe, t: int) -> TrainerSpec:
    return TrainerSpec(r.trainer, r.loss.type, r.eta, r.policy.system_prompt, derive_seed(r.seed, "train", t),
                       r.threads, game_ref(r), r.loss.ipo_form)


def make_generator(spec: GeneratorSpec, policy: str) -> Generator:
    match spec.backend:
        case "hf":
            from sppo_nemo.backends.hf import HFGenerator

            return HFGenerator(policy_location(policy), spec.system_prompt, spec.max_prompt_length,
                               dtype=spec.precision)
        case "vllm":
            from sppo_nemo.backends.vllm.controller import VLLMGenerator

            return VLLMGenerator(policy_location(policy), spec.vllm, spec.max_model_len, spec.system_prompt,
                                 spec.max_prompt_length)
        case "game":
            from sppo_nemo.backends.game import GameGenerator
            from sppo_nemo.backends.game_file import load_game

            return GameGenerator(load_game(spec.game.path), policy)
    raise ValueError(f"generation.backend={spec.backend!r} is not available")


def make_judge(spec: JudgeSpec) -> Judge:
    j = spec.judge
    match j.backend:
        case "offline":
            from sppo_nemo.backends.offline_judge import OfflineJudge

            return OfflineJudge(batch_size=j.batch_size)
        case "pairrm":
            from sppo_nemo.backends.pairrm.judge import PairRMJudge

            return PairRMJudge(model=j.model or "llm-blender/PairRM-hf", batch_size=j.batch_size,
                               max_batch_tokens=j.max_batch_tokens, dtype=j.dtype, device=j.device,
                               probability=j.probability, backbone=j.backbone, pairs=j.pairs)
        case "llm_blender":
            from sppo_nemo.backends.llm_blender_judge import LLMBlenderJudge

            return LLMBlenderJudge(model=j.model or "llm-blender/PairRM", batch_size=1, device=j.device,
                                   dtype=j.dtype, probability=j.probability)
        case "matrix":
            from sppo_nemo.backends.game import MatrixJudge
            from sppo_nemo.backends.game_file import load_game

            return MatrixJudge(load_game(spec.game.path))
    raise ValueError(f"judge.backend={j.backend!r} is not available")


def make_trainer(spec: TrainerSpec) -> Trainer:
    c = spec.trainer
    match c.backend:
        case "torch":
            from sppo_nemo.backends.torch_trainer import TorchTrainer

            return TorchTrainer(c, spec.loss_name, spec.eta, spec.system_prompt, seed=spec.seed)
        case "megatron":
            from sppo_nemo.backends.megatron.controller import MegatronTrainer

            return MegatronTrainer(c, spec.loss_name, spec.eta, spec.system_prompt, seed=spec.seed, threads=spec.threads)
        case "game":
            from sppo_nemo.backends.game import GameTrainer
            from sppo_nemo.backends.game_file import load_game

            return GameTrainer(load_game(spec.game.path), c, spec.loss_name, spec.eta, seed=spec.seed)
    raise ValueError(f"trainer.backend={c.backend!r} is not available")


def policy_location(model: str) -> str:
    """A loadable location for a policy string: the shipped SmolLM2 (converted once into the cache),
    a game's π_1 or policy directory (as it is), a checkpoint directory or a hub id (as it is)."""
    if model == SHIPPED_SMOLLM2:
        from sppo_nemo.backends.hf import smollm2_checkpoint

        return str(smollm2_checkpoint())
    return model

