"""The megatron trainer's packed micro-batches (backends/megatron/packed.py), hand-worked; the
log-probs they give against unpacked ones are in tests/integration/test_megatron_packing.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sppo_nemo.backends.megatron.packed import make_packed_micro_batch, reference_shares

pytestmark = pytest.mark.unit


def enc(prompt, response):
    return SimpleNamespace(prompt_ids=prompt, response_ids=response)


def test_pair_rows_pack_by_prompt_hand_worked():
    """Row 0: a pair of prompt [5, 6] (responses [7, 8] and [9]); row 1: a pair of prompt [4]."""
    seqs = [[enc([5, 6], [7, 8]), enc([5, 6], [9])], [enc([4], [3]), enc([4], [2, 1])]]
    mb = make_packed_micro_batch([0, 1], seqs, pad_id=0, per_row=2, multiple=2)
    assert mb.ids.tolist() == [[5, 6, 7, 8, 9, 0], [4, 3, 2, 1, 0, 0]]  # width 5 → 6 (a multiple of 2)
    assert mb.positions.tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 1, 2, 0, 0]]
    assert mb.lengths == [5, 4] and mb.n_seq == 4
    # predictors as flat indices b·6 + t: 7 from 6, 8 from 7, 9 from 6; 3 from 4, 2 from 4, 1 from 2
    assert mb.index.tolist() == [1, 2, 1, 6, 6, 8]
    assert mb.targets.tolist() == [7, 8, 9, 3, 2, 1]
    assert mb.seq_of.tolist() == [0, 0, 1, 2, 3, 3]
    assert mb.mask.shape == (2, 1, 6, 6) and mb.mask.dtype == torch.bool
    allowed = (~mb.mask[0, 0]).int().tolist()  # True = masked out, megatron's convention
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [1, 1, 1, 0, 0, 0],
                       [1, 1, 1, 1, 0, 0],
                       [1, 1, 0, 0, 1, 0],   # the second response skips the first
                       [1, 1, 0, 0, 0, 1]]   # padding sees the prompt and itself, never an empty row
    assert mb.mask[1, 0, :4, 4:].all()  # no real token sees padding


def test_point_rows_of_one_prompt_share_it_and_lone_rows_stay_alone():
    seqs = [[enc([1, 2], [3])], [enc([1, 2], [4, 5])], [enc([9], [8])]]
    mb = make_packed_micro_batch([0, 1, 2], seqs, pad_id=0, per_row=1)
    assert mb.ids.tolist() == [[1, 2, 3, 4, 5], [9, 8, 0, 0, 0]]
    assert mb.index.tolist() == [1, 1, 3, 5] and mb.seq_of.tolist() == [0, 1, 1, 2]


def test_nothing_shared_gives_none_and_the_plain_layout_is_used():
    seqs = [[enc([1], [2])], [enc([3], [4])]]
    assert make_packed_micro_batch([0, 1], seqs, 0, 1) is None
    assert make_packed_micro_batch([], seqs, 0, 1) is None  # a padding micro-batch


def test_reference_shares_hand_worked():
    rows = [SimpleNamespace(prompt_id=p) for p in "abacc"]
    assert reference_shares(rows, dp=1, size=2, pack_prompts=True) == [[[0, 2], [1], [3, 4]]]
    assert reference_shares(rows, dp=2, size=2, pack_prompts=True) == [[[0, 2], [1]], [[3, 4]]]
    assert reference_shares(rows, dp=2, size=2, pack_prompts=False) == [[[0, 2], [4]], [[1, 3]]]
    big = [SimpleNamespace(prompt_id="a")] * 5 + [SimpleNamespace(prompt_id="b")]
    assert reference_shares(big, dp=1, size=2, pack_prompts=True) == [[[0, 1], [2, 3], [4, 5]]]
    assert reference_shares([], dp=2, size=2, pack_prompts=True) == [[], []]


@pytest.mark.parametrize("te, packed", [(False, True), (True, False)])
def test_prompts_are_shared_only_where_attention_keeps_its_fused_kernel(te, packed):
    """Under Transformer Engine a block mask would run TE's unfused `arbitrary` kernel, so the
    worker hands TE right-padded causal micro-batches even with trainer.pack_prompts on."""
    from sppo_nemo.backends.megatron.logps import MicroBatch
    from sppo_nemo.backends.megatron.packed import PackedMicroBatch
    from sppo_nemo.backends.megatron.worker import Setup
    from sppo_nemo.schema.protocols import PointRow

    rows = [PointRow("p", "x", f"y{i}", True, 0.5) for i in range(2)]
    seqs = [[enc([5, 6], [7, 8])], [enc([5, 6], [9])]]  # two responses to one prompt
    job = SimpleNamespace(trainer=SimpleNamespace(pack_prompts=True))
    s = Setup(job=job, arch=None, opts=None, te=te, model=None, cfg=SimpleNamespace(sequence_parallel=False),
              device=torch.device("cpu"), rows=rows, seqs=seqs, pad_id=0)
    assert s.shares_prompts is packed
    mb = s.micro_batch([0, 1])
    assert isinstance(mb, PackedMicroBatch if packed else MicroBatch)

