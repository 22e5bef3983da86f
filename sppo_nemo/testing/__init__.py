"""Builders for tests, CI and benchmarks, kept out of the product modules: tiny random
checkpoints made in-process, deterministic for a seed, with no network.

- :mod:`.llama` — the tiny Llama policy (``build_tiny_llama``; ``python -m sppo_nemo.testing DIR``);
- :mod:`.pairrm` — test tokenizers and random PairRM models, in either checkpoint layout.
"""

from sppo_nemo.testing.llama import build_tiny_llama

__all__ = ["build_tiny_llama"]
