"""The container-parity tier: which tests run again on the image's stack, and what fails there.

The product ships in the NGC NeMo 26.06 image (Python 3.12, megatron-core 0.18.0, transformers
5.8.1, NeMo-Run 0.10.0), while the main suite runs on Python 3.11 with megatron-core 0.16.1, a
newer transformers and NeMo-Run 0.11. ``scripts/parity_tests.sh`` builds that stack once per
machine (``scripts/parity_venv.sh``) and runs the tests selected here in it: the megatron backend
(conversion, TP/PP/DP, packing, the export), the HF packing and generation paths, and the NeMo-Run
launch layer. ``tests/conftest.py`` marks them ``parity`` in either environment and applies
:data:`XFAIL` where the installed versions match.

The selection is a sample, sized to add about 8 minutes to CI on 2 cores: where a test is
parametrised over layouts, the layouts that exercise a different part of megatron-core (its own
attention, RoPE scaling, tensor/pipeline/data parallel, recompute, tied embeddings, overlapped
gradient reduction, bf16 with the distributed optimizer) are kept and repeats of the same path
left to the main suite.

Plain Python, no imports of the package or of pytest: ``python tests/parity.py`` prints the test
files to collect (one a line) for the runner.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

# fnmatch patterns over node ids relative to the checkout root; a bare file path selects the file.
SELECTION = (
    # in-process: conversion tables against a real GPTModel, layout checks, the controller, packed
    # micro-batches; the HF packing layout and generation with transformers' cache
    "tests/unit/test_megatron_controller.py",
    "tests/unit/test_megatron_convert.py",
    "tests/unit/test_megatron_layout.py",
    "tests/unit/test_megatron_packed.py",
    "tests/unit/test_packed_logps.py",
    "tests/unit/test_packing.py",
    "tests/unit/test_hf_generation.py",
    # the NeMo-Run launch layer: plans, job scripts, records, status
    "tests/unit/test_launch.py",
    # megatron workers under torchrun over gloo
    "tests/integration/test_megatron.py::test_hf_megatron_hf_same_logits_and_identical_weights[[]llama_gqa-2-sdpa[]]",
    "tests/integration/test_megatron.py::test_hf_megatron_hf_same_logits_and_identical_weights[[]llama_gqa-1-local[]]",
    "tests/integration/test_megatron.py::test_hf_megatron_hf_same_logits_and_identical_weights[[]gpt2-1-sdpa[]]",
    "tests/integration/test_megatron.py::test_hf_megatron_hf_same_logits_and_identical_weights[[]llama31_scaled-1-sdpa[]]",
    "tests/integration/test_megatron.py::test_hf_megatron_hf_same_logits_and_identical_weights[[]qwen3-2-sdpa[]]",
    "tests/integration/test_megatron.py::test_qwen3_tp2_matches_tp1_tokens_and_gradients_qk_norms_included",
    "tests/integration/test_megatron.py::test_parallel_layout_matches_tp1_tokens_and_gradients[[]tp2[]]",
    "tests/integration/test_megatron.py::test_parallel_layout_matches_tp1_tokens_and_gradients[[]pp2[]]",
    "tests/integration/test_megatron.py::test_parallel_layout_matches_tp1_tokens_and_gradients[[]tied_pp2[]]",
    "tests/integration/test_megatron.py::test_parallel_layout_matches_tp1_tokens_and_gradients[[]tp2_recompute[]]",
    "tests/integration/test_megatron.py::test_megatron_training_matches_torch_backend[[]tp2[]]",
    "tests/integration/test_megatron.py::test_megatron_training_matches_torch_backend[[]dp2_overlap[]]",
    "tests/integration/test_megatron.py::test_megatron_bf16_tp2_fits_and_exports_bf16",
    "tests/integration/test_megatron.py::test_without_cuda_or_the_test_patches_the_error_points_to_the_torch_backend",
    "tests/integration/test_megatron.py::test_cli_tiny_recipe_runs_end_to_end_with_megatron_tp2",
    # step checkpoints through megatron-core's dist_checkpointing: a killed job resumes bit-identical
    "tests/integration/test_megatron_checkpoints.py::test_killed_megatron_job_resumes_at_its_checkpoint_bit_identical",
    # the streamed export of a 254 MB model at TP 2 × PP 2 (4 ranks): byte-identical, bounded memory
    "tests/integration/test_megatron_export.py::*[[]tp2_pp2*",
    # shared-prompt packing: megatron (TP, PP, DP, its own attention; the worker's passes) and HF
    "tests/integration/test_megatron_packing.py::test_packed_logps_loss_and_gradients_equal_unpacked[[]sppo-tp2[]]",
    "tests/integration/test_megatron_packing.py::test_packed_logps_loss_and_gradients_equal_unpacked[[]sppo-dp2[]]",
    "tests/integration/test_megatron_packing.py::test_packed_logps_loss_and_gradients_equal_unpacked[[]sppo-local[]]",
    "tests/integration/test_megatron_packing.py::test_packed_logps_loss_and_gradients_equal_unpacked[[]dpo-pp2[]]",
    "tests/integration/test_megatron_packing.py::test_worker_reference_pass_and_steps_packed_equal_unpacked[[]sppo-tp2[]]",
    "tests/integration/test_megatron_packing.py::test_worker_reference_pass_and_steps_packed_equal_unpacked[[]dpo-pp2[]]",
    "tests/integration/test_torch_trainer_packing.py",
    # NeMo-Run's executors: chained jobs on the local two-node Slurm (skipped, saying why, without
    # one), a local chain, the docker chain's dry run, the generated sbatch scripts
    "tests/integration/test_slurm.py::test_chained_jobs_reproduce_the_inline_run",
    "tests/integration/test_slurm.py::test_the_local_executor_runs_a_fresh_chain_to_its_end",
    "tests/integration/test_slurm.py::test_a_failed_stage_stops_the_local_chain_*",
    "tests/integration/test_slurm.py::test_the_docker_executor_builds_the_whole_chain_*",
    "tests/integration/test_slurm.py::test_the_example_scripts_in_launchers_are_what_nemo_run_generates",
)

# node id → (distribution, version prefix, reason): expected to fail (strict) where that
# distribution's installed version starts with the prefix. Empty: the whole tier passes.
XFAIL: dict[str, tuple[str, str, str]] = {}


def _matches(nodeid: str, pattern: str) -> bool:
    return fnmatchcase(nodeid, pattern) or nodeid.startswith(pattern + "::")


def selected(nodeid: str) -> bool:
    """Whether a collected test (its node id, relative to the checkout root) belongs to the tier."""
    return any(_matches(nodeid, p) for p in SELECTION)


def unmatched(nodeids) -> list[str]:
    """The patterns of :data:`SELECTION` that select none of ``nodeids`` (a renamed test)."""
    ids = list(nodeids)
    return [p for p in SELECTION if not any(_matches(n, p) for n in ids)]


def files() -> list[str]:
    """The test files the selection lives in, in order."""
    return list(dict.fromkeys(p.split("::")[0] for p in SELECTION))


if __name__ == "__main__":
    print("\n".join(files()))
