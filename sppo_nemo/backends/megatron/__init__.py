"""trainer.backend=megatron: π_{t+1} trained on Megatron-core with tensor, pipeline and data parallelism.

Two processes' worth of code, one concern a module. This package's ``__init__`` imports nothing:
sppo-run imports the controller, which never imports megatron.

sppo-run's side (no torch, no megatron):

- :mod:`.controller` — :class:`~.controller.MegatronTrainer`, the Trainer the recipe picks: writes
  the job folder, starts the workers with torchrun or srun, turns their progress lines into the
  stage's callbacks and reads the result back; :class:`~.controller.MegatronJobError` on failure;
- :mod:`.job` — what crosses the process boundary, typed: ``job.json`` (:class:`~.job.Job`), the
  progress lines, ``result.json``;
- :mod:`.layout` — TP/PP/DP/world size/grad_accum derived from the recipe, and the recipe's value
  checks of ``trainer.megatron`` against the policy's shape (called by ``recipe.check``);
- :mod:`.arch` — the decoder's shape read from an HF ``config.json``, with every refusal.

The workers' side (``python -m sppo_nemo.backends.megatron JOB_DIR`` in every rank, :mod:`.__main__`):

- :mod:`.worker` — one job: set-up, reference pass, optimizer steps (the plan of
  :class:`sppo_nemo.maths.training.Fit`), export;
- :mod:`.model` — process groups, the TransformerConfig, the GPTModel shard (TE or local spec);
- :mod:`.logps` — micro-batches and summed response-token log-probs from the vocabulary-parallel
  logits through megatron's schedule;
- :mod:`.weights` — π_t's HF weights into the shard, the trained shards out as an HF checkpoint;
- :mod:`.convert` — HF ⇄ Megatron weights, one mapping table per model family for both
  directions, tensor-parallel shard/unshard (plain torch).
"""
