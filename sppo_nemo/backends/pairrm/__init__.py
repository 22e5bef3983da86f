"""PairRM (Jiang et al., 2023; llm-blender), the paper's preference model, as a Judge on
transformers' DeBERTa-v2, with no llm-blender import. One concern a module:

- :mod:`.judge` — :class:`~.judge.PairRMJudge`, the Judge the recipe's ``judge.backend: pairrm`` builds;
- :mod:`.workers` — one persistent worker process per device when several are visible;
- :mod:`.inputs` — the sequence PairRM reads, its truncation budgets, length batching, FLOPs;
- :mod:`.model` — the network (DeBERTa-v2 encoder and PairRM's head) and running it on batches;
- :mod:`.checkpoint` — the two published layouts (PairRM-hf, the original), reading and writing;
- :mod:`.tokenizer` — the DeBERTa tokenizer with PairRM's prefix tokens;
- :mod:`.spm` — a reader for sentencepiece ``.model`` files, without protobuf;
- :mod:`.errors` — :class:`~.errors.PairRMError`, for every problem with the files.

The logits → probability conventions (``symmetric``, ``score_diff``) are preference mathematics
and live in :mod:`sppo_nemo.maths.preference`; random models and test tokenizers in
:mod:`sppo_nemo.testing.pairrm`.
"""
