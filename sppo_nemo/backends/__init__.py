"""Backend choice: one plain `match` per role on the recipe, no registry.

Each backend module is imported only when chosen, so `import sppo_nemo` and the CPU path work
without the optional GPU packages.
"""

from __future__ import annotations

from pathlib import Path

from sppo_nemo.protocols import Generator, Judge, Trainer
from sppo_nemo.recipe import Recipe


def make_generator(recipe: Recipe, policy: str | Path) -> Generator:
    match recipe.generation.backend:
        case "hf":
            from sppo_nemo.backends.hf import HFGenerator

            return HFGenerator(str(policy), recipe.policy.system_prompt)
        case "game":
            from sppo_nemo.backends.game import GameGenerator, load_game

            return GameGenerator(load_game(recipe.game), policy)
        case other:
            raise ValueError(f"generation.backend={other!r} is not available")


def make_judge(recipe: Recipe) -> Judge:
    match recipe.judge.backend:
        case "offline":
            from sppo_nemo.backends.offline_judge import OfflineJudge

            return OfflineJudge(batch_size=recipe.judge.batch_size)
        case "pairrm":
            from sppo_nemo.backends.pairrm import PairRMJudge

            j = recipe.judge
            return PairRMJudge(model=j.model or "llm-blender/PairRM-hf", batch_size=j.batch_size,
                               max_batch_tokens=j.max_batch_tokens, dtype=j.dtype, device=j.device,
                               probability=j.probability, backbone=j.backbone)
        case "llm_blender":
            from sppo_nemo.backends.llm_blender_judge import LLMBlenderJudge

            j = recipe.judge
            return LLMBlenderJudge(model=j.model or "llm-blender/PairRM", batch_size=1, device=j.device,
                                   dtype=j.dtype, probability=j.probability)
        case "matrix":
            from sppo_nemo.backends.game import MatrixJudge, load_game

            return MatrixJudge(load_game(recipe.game))
        case other:
            raise ValueError(f"judge.backend={other!r} is not available")


def make_trainer(recipe: Recipe, iteration: int) -> Trainer:
    match recipe.trainer.backend:
        case "torch":
            from sppo_nemo.backends.torch_trainer import TorchTrainer

            return TorchTrainer(recipe.trainer, recipe.loss.type, recipe.eta, recipe.policy.system_prompt,
                                seed=recipe.seed * 1000 + iteration)
        case "megatron":
            from sppo_nemo.backends.megatron_launch import MegatronTrainer

            return MegatronTrainer(recipe.trainer, recipe.loss.type, recipe.eta, recipe.policy.system_prompt,
                                   seed=recipe.seed * 1000 + iteration, threads=recipe.threads)
        case "game":
            from sppo_nemo.backends.game import GameTrainer, load_game

            return GameTrainer(load_game(recipe.game), recipe.trainer, recipe.loss.type, recipe.eta,
                               seed=recipe.seed * 1000 + iteration)
        case other:
            raise ValueError(f"trainer.backend={other!r} is not available")


def resolve_base_policy(recipe: Recipe) -> str:
    if recipe.generation.backend == "game":
        return recipe.policy.model  # "game" (π_1 = game.init) or a game policy directory
    from sppo_nemo.backends.hf import resolve_policy

    return resolve_policy(recipe.policy.model)


def backend_fingerprint(recipe: Recipe) -> dict:
    """What the chosen backends add to every stage's fingerprint: nothing for the LM backends;
    for the game backends the game itself (matrix content, names, π_1), which no other recipe key
    records, so that changing the game makes every finished stage stale."""
    if recipe.generation.backend != "game":
        return {}
    from sppo_nemo.backends.game import load_game

    return {"game": load_game(recipe.game).identity()}
