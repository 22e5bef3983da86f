"""The megatron layout derived from a recipe, and the recipe value checks of trainer.megatron:
each problem names its exact key, layouts against the policy's shape included."""

from __future__ import annotations

import json
from dataclasses import astuple
from pathlib import Path

import pytest

from sppo_nemo.backends.megatron.layout import check, megatron_layout
from sppo_nemo.schema.config import MegatronConfig, PolicyConfig, Recipe, TrainerConfig

pytestmark = pytest.mark.unit


def cfg(batch_size=4, grad_accum=1, **m) -> TrainerConfig:
    return TrainerConfig(backend="megatron", batch_size=batch_size, grad_accum=grad_accum, megatron=MegatronConfig(**m))


@pytest.mark.parametrize("m,expect", [
    (dict(), (1, 1, 1, 1, 1)),
    (dict(tensor_parallel=2, pipeline_parallel=2), (2, 2, 1, 4, 1)),
    (dict(tensor_parallel=2, nproc_per_node=8), (2, 1, 4, 8, 1)),
    (dict(data_parallel=3), (1, 1, 3, 3, 1)),
    (dict(nproc_per_node=2, global_batch_size=16), (1, 1, 2, 2, 2)),  # 16 rows = 4 · accum · DP 2
    (dict(nnodes=2, nproc_per_node=8, tensor_parallel=8), (8, 1, 2, 16, 1)),
])
def test_layout_is_derived(m, expect) -> None:
    assert astuple(megatron_layout(cfg(**m))) == expect  # (TP, PP, DP, world, grad_accum)


def problems(model: str = "smollm2", batch_size: int = 4, grad_accum: int = 1, base_dir: Path = Path("."),
             **m) -> list[str]:
    r = Recipe(name="x", policy=PolicyConfig(model=model), trainer=cfg(batch_size, grad_accum, **m))
    return check(r, base_dir)


def test_a_valid_layout_has_no_problems() -> None:
    assert problems(tensor_parallel=3, pipeline_parallel=2) == []  # SmolLM2: 9 heads, 3 groups, 30 layers


@pytest.mark.parametrize("m,expect", [
    (dict(tensor_parallel=0), ["trainer.megatron.tensor_parallel: 0; must be at least 1"]),
    (dict(global_batch_size=0), ["trainer.megatron.global_batch_size: 0; must be at least 1 (or null)"]),
    (dict(tensor_parallel=3, nproc_per_node=8),
     ["trainer.megatron.nproc_per_node: 1 node(s) × 8 processes = 8 is not a multiple of "
      "tensor_parallel·pipeline_parallel = 3; world size must be TP·PP·DP"]),
    (dict(data_parallel=2, nproc_per_node=4),
     ["trainer.megatron.data_parallel: 2 but 4 processes / (TP·PP = 1) gives 4; world size must be TP·PP·DP, "
      "so drop data_parallel or fix it"]),
    (dict(nnodes=2), ["trainer.megatron.nproc_per_node: needed when nnodes > 1; set it to the processes "
                      "(usually GPUs) per node",
                      "trainer.megatron.launcher: torchrun starts one node; with nnodes=2 use launcher=srun "
                      "inside a Slurm allocation"]),
    (dict(global_batch_size=12, nproc_per_node=2),
     ["trainer.megatron.global_batch_size: 12 is not a multiple of batch_size·DP = 4·2; make it one"]),
    (dict(sequence_parallel=True), ["trainer.megatron.sequence_parallel: needs tensor_parallel > 1; set it false"]),
    (dict(tensor_parallel=2, pipeline_parallel=4),
     ["trainer.megatron.tensor_parallel: 9 attention heads are not divisible by tensor parallel 2; "
      "choose a layout that splits the model evenly",
      "trainer.megatron.tensor_parallel: 3 key/value heads (query groups) are not divisible by tensor parallel 2; "
      "choose a layout that splits the model evenly",
      "trainer.megatron.pipeline_parallel: 30 layers are not divisible by pipeline parallel 4; "
      "choose a layout that splits the model evenly"]),
])
def test_each_problem_names_its_key(m, expect) -> None:
    assert problems(**m) == expect


def test_grad_accum_contradicting_global_batch() -> None:
    assert problems(grad_accum=3, global_batch_size=8) == [
        "trainer.grad_accum: 3 contradicts global_batch_size 8 (= batch_size·DP·2); set only one of them"]


def test_the_policy_shape_is_read_from_its_config_relative_to_the_recipe(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100}))
    assert problems("./m", base_dir=tmp_path, tensor_parallel=2, pipeline_parallel=2) == []
    assert problems("./m", base_dir=tmp_path, tensor_parallel=4) == [
        "trainer.megatron.tensor_parallel: 2 key/value heads (query groups) are not divisible by tensor parallel 4; "
        "choose a layout that splits the model evenly"]
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "phi3"}))
    (msg,) = problems("./m", base_dir=tmp_path)
    assert msg.startswith("policy.model: model_type 'phi3' has no Megatron converter")
    assert "trainer.backend=torch" in msg
    (tmp_path / "m" / "config.json").write_text("{not json")
    (msg,) = problems("./m", base_dir=tmp_path)
    assert msg.startswith("policy.model: cannot read ./m/config.json")


def test_a_hub_id_policy_is_not_looked_up() -> None:
    assert problems("org/unknown-model", tensor_parallel=7) == []  # no network in the check


@pytest.mark.parametrize("model_cfg, window", [
    ({"model_type": "mistral", "sliding_window": 512}, 512),
    ({"model_type": "qwen3", "head_dim": 16, "use_sliding_window": True, "sliding_window": 512,
      "layer_types": ["full_attention", "sliding_attention"]}, 512),
])
def test_a_sliding_window_is_accepted_where_no_trained_sequence_is_longer(model_cfg, window, tmp_path: Path) -> None:
    """The layer spec attends over the whole prefix: a window acts only on a sequence longer than
    it, so trainer.max_length (the longest sequence trained) must fit in it."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 64, "vocab_size": 100, **model_cfg}))

    def at(max_length: int, **m) -> list[str]:
        t = TrainerConfig(backend="megatron", batch_size=4, max_prompt_length=64, max_length=max_length,
                          megatron=MegatronConfig(**m))
        return check(Recipe(name="x", policy=PolicyConfig(model="./m"), trainer=t), tmp_path)

    assert at(window) == [] and at(128, tensor_parallel=2) == []
    mt = model_cfg["model_type"]
    assert at(window + 1) == [
        f"trainer.max_length: {window + 1}; {mt} attends through a sliding window, which megatron's layer spec "
        f"does not apply: a window of {window} tokens acts on sequences longer than {window}; set "
        f"trainer.max_length ≤ {window} or train with trainer.backend=torch"]
    assert len(at(4096, tensor_parallel=4)) == 2  # the window and the 2 query groups against TP 4, both named
