"""The paper's recipes (recipes/{mistral,llama3}_*_3iter.yaml) say what section 4.1 and appendix C
say, and check their layouts on a machine without the weights: the shapes of the two base models
are known offline (sppo_nemo/formats/hub.py KNOWN_CONFIGS), so a layout that cannot split them is refused."""

from __future__ import annotations

import dataclasses

import pytest

from sppo_nemo.loading import recipe
from sppo_nemo.backends.megatron.arch import arch_from_hf_config
from sppo_nemo.backends.megatron.layout import megatron_layout
from sppo_nemo.formats.hub import KNOWN_CONFIGS, config_source, policy_config
from tests.helpers import RECIPES

pytestmark = pytest.mark.unit
PAPER = ["mistral_sppo_3iter", "llama3_sppo_3iter", "mistral_dpo_3iter", "mistral_ipo_3iter"]


def load(name: str, *overrides: str):
    return recipe.load(RECIPES / f"{name}.yaml", list(overrides), check_data=False)


def test_the_mistral_recipe_states_the_papers_setting():
    r = load("mistral_sppo_3iter")
    assert (r.T, r.K, r.eta) == (3, 5, 1000.0)
    assert r.policy.model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert r.data.prompts == "hf:HuggingFaceH4/ultrafeedback_binarized" and r.data.split_size == 20000
    assert (r.loss.type, r.loss.selection, r.loss.rank_by) == ("sppo", "best_worst", "score")
    assert (r.sampling.temperature, r.sampling.top_p) == (1.0, 1.0)
    assert r.judge.backend == "pairrm"
    t = r.trainer
    assert (t.lr, t.warmup_ratio, t.schedule, t.epochs, t.schedule_epochs) == (5e-7, 0.1, "linear", 1, 18)
    assert (t.max_prompt_length, t.max_length, t.precision) == (512, 1024, "bf16")
    lay = megatron_layout(t)
    # appendix C's batch of 64 prompts: SPPO's best_worst makes two point rows a prompt
    assert lay.world == 8 and t.batch_size * lay.grad_accum * lay.data == 128 == 2 * 64
    assert r.generation.backend == "vllm"


@pytest.mark.parametrize("name, loss, extra", [
    ("llama3_sppo_3iter", "sppo", {}),
    ("mistral_dpo_3iter", "dpo", {}),
    ("mistral_ipo_3iter", "ipo", {"ipo_form": "azar"}),
])
def test_the_other_paper_recipes_differ_only_where_they_say(name, loss, extra):
    base, r = load("mistral_sppo_3iter"), load(name)
    assert r.loss.type == loss and r.loss.selection == "best_worst" and r.loss.rank_by == "score"
    for key, value in extra.items():
        assert getattr(r.loss, key) == value
    assert r.data == base.data and r.sampling == base.sampling
    if loss == "sppo":
        assert r.trainer == base.trainer
    else:  # one pair row a prompt: 64 rows a step are the SPPO recipe's 64 prompts (128 point rows)
        assert r.trainer.megatron.global_batch_size == 64 == base.trainer.megatron.global_batch_size // 2
        pair_trainer = dataclasses.replace(r.trainer, megatron=dataclasses.replace(
            r.trainer.megatron, global_batch_size=base.trainer.megatron.global_batch_size))
        assert pair_trainer == base.trainer
    if name.startswith("llama3"):
        assert r.policy.model == "meta-llama/Meta-Llama-3-8B-Instruct"


@pytest.mark.parametrize("model, params", [("mistralai/Mistral-7B-Instruct-v0.2", 7.24e9),
                                           ("meta-llama/Meta-Llama-3-8B-Instruct", 8.03e9)])
def test_known_shapes_are_the_published_ones(model, params):
    arch = arch_from_hf_config(KNOWN_CONFIGS[model])
    h, f, L, V = arch.hidden_size, arch.ffn_hidden_size, arch.num_layers, arch.vocab_size
    kv = arch.num_query_groups * arch.kv_channels
    n = 2 * V * h + L * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h) + h
    assert n == pytest.approx(params, rel=5e-3)
    assert policy_config(model, RECIPES) == KNOWN_CONFIGS[model]
    assert "published architecture" in config_source(model, RECIPES)


@pytest.mark.parametrize("name", ["mistral_sppo_3iter", "llama3_sppo_3iter"])
def test_a_layout_that_cannot_split_the_known_shape_is_refused_offline(name):
    with pytest.raises(recipe.RecipeError) as e:
        load(name, "trainer.megatron.tensor_parallel=3", "trainer.megatron.nproc_per_node=3",
             "trainer.megatron.global_batch_size=null", "trainer.megatron.sequence_parallel=false")
    assert any("32 attention heads are not divisible by tensor parallel 3" in p for p in e.value.problems)
    with pytest.raises(recipe.RecipeError) as e:
        load(name, "trainer.megatron.pipeline_parallel=3", "trainer.megatron.nproc_per_node=6",
             "trainer.megatron.global_batch_size=null")
    assert any("32 layers are not divisible by pipeline parallel 3" in p for p in e.value.problems)
    with pytest.raises(recipe.RecipeError) as e:
        load(name, "generation.vllm.tensor_parallel=3")
    assert any("generation.vllm.tensor_parallel: 3 does not divide" in p for p in e.value.problems)
