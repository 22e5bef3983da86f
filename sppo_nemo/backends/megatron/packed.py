"""Shared-prompt packed micro-batches of the megatron trainer (``trainer.pack_prompts``), plain torch.

Consecutive sequences of a micro-batch with identical prompt ids (a pair's chosen and rejected,
the point rows of one prompt) become one packed sequence, the prompt once and every response
behind it (the layout of :mod:`sppo_nemo.maths.packing`): position ids continuing from the prompt, an
attention mask that lets a response token see the prompt and its own response only, and — since
response j's first token is predicted from the prompt's last position, not from the packed
position before it — the hidden state predicting each response token named by its flat index.
Every response token then has the hidden state it has unpacked, so the sequence log-probs
log π(y|x) = Σ_h log π(y_h | x, y_<h) come out per original sequence, (rows, per_row), as
unpacked, up to the order of floating-point sums.

The packed sequences are right-padded to one width (a multiple of what sequence parallelism
needs). The mask follows megatron's convention, **True = masked out** (``attention_mask_func``
fills True with −10000; torch SDPA takes its complement; Transformer Engine's ``arbitrary`` mask
type reads it as megatron does). Padding positions form their own segment: they see the prompt and
the padding before them (never an empty row, whose softmax would be NaN) and nothing real sees
them. :mod:`.logps` runs the forward with these inputs; this module only builds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from sppo_nemo.maths.packing import allowed, group, pack
from sppo_nemo.maths.training import prompt_groups

PAD_SEGMENT = -1


@dataclass
class PackedMicroBatch:
    """One micro-batch, packed: ``rows`` training rows of ``per_row`` sequences each."""

    row_ids: list[int]
    ids: torch.Tensor  # (n_packed, L) right-padded token ids
    positions: torch.Tensor  # (n_packed, L) position ids from the layout (0 at padding)
    mask: torch.Tensor  # (n_packed, 1, L, L) bool, True = masked out
    index: torch.Tensor  # per response token: flat index b·L + t of the hidden state that predicts it
    targets: torch.Tensor  # per response token: its id
    seq_of: torch.Tensor  # per response token: its sequence (rows × per_row, row-major)
    per_row: int
    lengths: list[int]  # real (unpadded) length of each packed sequence
    epoch: int = 0

    @property
    def n_seq(self) -> int:
        return len(self.row_ids) * self.per_row

    def response_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat index, sequence, target) of every response token, in sequence order."""
        return self.index, self.seq_of, self.targets


def make_packed_micro_batch(row_ids: Sequence[int], seqs, pad_id: int, per_row: int, multiple: int = 1,
                            epoch: int = 0) -> PackedMicroBatch | None:
    """The packed micro-batch of these rows, or None when no two neighbouring sequences share
    their prompt (then the plain layout is exactly the packed one, and the caller uses it)."""
    flat = [e for i in row_ids for e in seqs[i]]
    groups = group([e.prompt_ids for e in flat])
    if all(len(g) == 1 for g in groups):
        return None
    packs = [pack(flat[g[0]].prompt_ids, [flat[i].response_ids for i in g]) for g in groups]
    width = int(math.ceil(max(len(p.ids) for p in packs) / multiple) * multiple)
    n = len(packs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), PAD_SEGMENT, dtype=torch.long)
    index, targets, seq_of = [], [], []
    for b, (p, g) in enumerate(zip(packs, groups)):
        ids[b, : len(p.ids)] = torch.tensor(p.ids)
        positions[b, : len(p.ids)] = torch.tensor(p.positions)
        segment[b, : len(p.ids)] = torch.tensor(p.segment)
        index += [b * width + t for t in p.predictors]
        targets += p.targets
        seq_of += [g[j] for j in p.response_of]
    mask = torch.stack([~allowed(s) for s in segment]).unsqueeze(1)
    return PackedMicroBatch(row_ids=list(row_ids), ids=ids, positions=positions, mask=mask,
                            index=torch.tensor(index), targets=torch.tensor(targets), seq_of=torch.tensor(seq_of),
                            per_row=per_row, lengths=[len(p.ids) for p in packs], epoch=epoch)


def reference_shares(rows: Sequence, dp: int, size: int, pack_prompts: bool) -> list[list[list[int]]]:
    """Per data-parallel rank, its micro-batches (row indices) of the reference pass.

    Unpacked: rank d takes rows d, d+DP, … in runs of ``size``. Packed: the rows in prompt order
    (:func:`sppo_nemo.maths.training.prompt_groups`), cut into DP contiguous blocks, each cut into
    micro-batches of at most ``size`` rows that split a prompt's rows only when they alone
    exceed ``size``. Hand-worked: prompts [a, b, a, c, c], DP 1, size 2 → [[0, 2], [1], [3, 4]].
    """
    n = len(rows)
    if not pack_prompts:
        mine = [list(range(d, n, dp)) for d in range(dp)]
        return [[m[b:b + size] for b in range(0, len(m), size)] for m in mine]
    groups = prompt_groups(rows)
    order = [i for g in groups for i in g]
    group_of = {i: k for k, g in enumerate(groups) for i in g}
    per = math.ceil(n / dp) if n else 0
    shares = []
    for d in range(dp):
        block = order[d * per:(d + 1) * per]
        chunks: list[list[int]] = []
        run: list[int] = []  # the current prompt's rows within the block
        for j, i in enumerate(block):
            run.append(i)
            if j + 1 < len(block) and group_of[block[j + 1]] == group_of[i]:
                continue
            while run:
                if chunks and len(chunks[-1]) + len(run) <= size:
                    chunks[-1] += run
                    run = []
                elif len(run) <= size:
                    chunks.append(run)
                    run = []
                else:
                    chunks.append(run[:size])
                    run = run[size:]
        shares.append(chunks)
    return shares
