"""The one seed derivation: every random stream of a run (generation chunks and batches,
evaluation sampling, the trainers' shuffles) is seeded from the run seed and a tag naming its
place, so a seed never depends on how the work was batched, sharded or resumed."""

from __future__ import annotations

import hashlib


def derive_seed(*parts) -> int:
    """A 31-bit seed from the parts (run seed, stage tag, iteration, position), stable across
    machines, processes and resumes. Hand-worked: derive_seed(0, "train", 1) == 525316786."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little") >> 1
