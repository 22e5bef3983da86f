"""Which GPU a megatron rank takes (backends/megatron/model.py), under torchrun and under srun."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("local_rank, visible, want", [(3, 8, 3), (3, 1, 0), (5, 2, 1), (0, 0, 0)])
def test_each_rank_takes_a_gpu_it_can_see(local_rank, visible, want):
    """torchrun: every GPU visible, rank k on GPU k; srun's per-task binding: each task sees its own."""
    from sppo_nemo.backends.megatron.model import device_index

    assert device_index(local_rank, visible) == want
