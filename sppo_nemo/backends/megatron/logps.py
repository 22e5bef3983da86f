"""Summed response-token log-probabilities from the vocabulary-parallel logits, through megatron's
schedule (1F1B when pipelined).

A sequence log-probability is log π(y|x) = Σ_h log π(y_h | x, y_<h) over the response tokens
(the paper's π(y|x)). Each tensor-parallel rank holds a slice of the vocabulary; megatron's
vocab-parallel cross entropy takes the softmax across the slices. A micro-batch is either plain
(:class:`MicroBatch`, one right-padded sequence per prompt and response) or packed
(:class:`.packed.PackedMicroBatch`, ``trainer.pack_prompts``: a prompt once with its responses
behind it); both give the same (rows, per_row) sequence log-probs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from sppo_nemo.backends.chat_format import Encoded
from sppo_nemo.backends.megatron.model import unwrap
from sppo_nemo.backends.megatron.packed import PackedMicroBatch


@dataclass
class MicroBatch:
    """One micro-batch: ``rows`` training rows (or none, for padding), each with 1 or 2 sequences."""

    row_ids: list[int]  # indices into the training rows; empty for a padding micro-batch
    ids: torch.Tensor  # (n_seq, L) right-padded token ids
    targets: torch.Tensor  # (n_seq, L): ids shifted left (the token each position predicts)
    resp_mask: torch.Tensor  # (n_seq, L) float: 1 where the target is a response token
    per_row: int  # sequences per row
    epoch: int = 0

    @property
    def n_seq(self) -> int:
        return self.ids.shape[0]

    def response_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(flat index into (n_seq, L), sequence, target) of the positions whose target is a response token."""
        index = self.resp_mask.flatten().nonzero().squeeze(1)
        return index, index // self.ids.shape[1], self.targets.flatten()[index]


def make_micro_batch(row_ids: Sequence[int], seqs: Sequence[Sequence[Encoded]], pad_id: int, per_row: int,
                     multiple: int = 1, epoch: int = 0) -> MicroBatch:
    """Right-padded ids, next-token targets and the response mask; an empty ``row_ids`` gives one
    dummy sequence whose mask is all zero (a padding micro-batch)."""
    flat = [e for i in row_ids for e in seqs[i]]
    if not flat:
        flat = [Encoded(prompt_ids=[pad_id], response_ids=[pad_id])]
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in flat)
    width = int(math.ceil(width / multiple) * multiple)
    ids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    resp = torch.zeros((len(flat), width), dtype=torch.float32)
    for i, e in enumerate(flat):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        if row_ids:  # target at position t is token t+1: response tokens sit at len(prompt)..len(seq)-1
            resp[i, len(e.prompt_ids) - 1: len(seq) - 1] = 1.0
    targets = torch.cat([ids[:, 1:], torch.full((len(flat), 1), pad_id, dtype=torch.long)], dim=1)
    return MicroBatch(row_ids=list(row_ids), ids=ids, targets=targets, resp_mask=resp, per_row=per_row, epoch=epoch)


def vocab_parallel_token_logps(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log π(target | prefix) per position from this rank's vocabulary slice of the logits
    (..., V_padded/TP). Padded vocabulary entries are masked out of the softmax. The logits are
    copied to fp32 first: megatron's vocab-parallel cross entropy works in place on its input."""
    part = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * part
    x = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    if start + part > vocab_size:
        x[..., max(0, vocab_size - start):] = -1e30
    return -tensor_parallel.vocab_parallel_cross_entropy(x, targets)


def forward_logits(model: torch.nn.Module, mb: MicroBatch | PackedMicroBatch, device: torch.device,
                   causal_mask: bool) -> torch.Tensor:
    """Logits (n_seq, L, V/TP) on the last stage. ``causal_mask``: pass an explicit causal mask (the
    local attention needs one; TE and SDPA attention are causal by themselves). A packed micro-batch
    always passes its own mask and position ids (:func:`forward_packed`)."""
    if isinstance(mb, PackedMicroBatch):
        return forward_packed(model, mb, device)
    ids = mb.ids.to(device)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
    mask = None if not causal_mask else torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=device),
                                      diagonal=1)[None, None]
    return model(ids, pos, mask)


class RopePositions:
    """Forward hook on the GPTModel's rotary embedding, which computes the frequencies of positions
    0..L−1 whatever the position ids (megatron-core 0.16 reads position ids only for learned
    absolute embeddings): its [L, 1, 1, d] output becomes the [L, b, 1, d] frequencies of each
    token's own position, which megatron's unfused RoPE (``apply_rope_fusion=False``) broadcasts
    over the heads."""

    def __init__(self, positions: torch.Tensor):
        self.positions = positions.t()  # [L, b]: every position is below L (it is at most its index)

    def __call__(self, module, args, out):
        return out[:, 0][self.positions]


def forward_packed(model: torch.nn.Module, mb: PackedMicroBatch, device: torch.device) -> torch.Tensor:
    """Logits of a packed micro-batch: its position ids (into the learned position embedding, or
    the rotary frequencies through :class:`RopePositions`) and its block mask (True = masked out)."""
    ids, pos, mask = mb.ids.to(device), mb.positions.to(device), mb.mask.to(device)
    inner = unwrap(model)
    rope = getattr(inner, "rotary_pos_emb", None) if inner.position_embedding_type == "rope" else None
    hook = rope.register_forward_hook(RopePositions(pos)) if rope is not None else None
    try:
        return model(ids, pos, mask)
    finally:
        if hook:
            hook.remove()


def sequence_logps(token_logps: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """(rows, per_row) summed response log-probs from (n_seq, L) token log-probs."""
    s = (token_logps * mb.resp_mask.to(token_logps.device)).sum(dim=1)
    return s.view(-1, mb.per_row)


class ResponseRows:
    """Forward pre-hook on the output layer: keep only the hidden states that predict response
    tokens, so the vocabulary projection, its logits and the cross entropy cover the responses
    alone (as the torch trainer does) instead of every position. The logits then come out
    (1, n_response_tokens, V/TP), in (sequence, position) order. Packed, the rows are the
    micro-batch's explicit predictor indices (response j's first token from the prompt's last
    position), so one hidden state may be taken once per response."""

    def __init__(self, mb: MicroBatch | PackedMicroBatch, device: torch.device):
        index, seq_of, targets = mb.response_positions()
        self.weight = torch.ones(len(index))
        if len(index) == 0:  # a padding micro-batch: one position, weighted 0
            index, seq_of, targets = (torch.zeros(1, dtype=torch.long),) * 3
            self.weight = torch.zeros(1)
        self.index = index.to(device)
        self.seq_of = seq_of.to(device)
        self.targets = targets.unsqueeze(0).to(device)
        self.weight = self.weight.to(device)

    def __call__(self, module, args, kwargs):
        h = args[0]  # [s, b, hidden]
        rows = h.transpose(0, 1).reshape(-1, h.shape[-1]).index_select(0, self.index)
        return (rows.unsqueeze(1), *args[1:]), kwargs

    def sequence_logps(self, token_logps: torch.Tensor, mb: MicroBatch | PackedMicroBatch) -> torch.Tensor:
        seq = torch.zeros(mb.n_seq, dtype=token_logps.dtype, device=token_logps.device)
        return seq.index_add(0, self.seq_of, token_logps * self.weight).view(-1, mb.per_row)


def schedule_pass(model: torch.nn.Module, micro: list[MicroBatch], forward_only: bool, on_logps,
                  device: torch.device, causal_mask: bool, vocab_size: int) -> None:
    """One pass of megatron's schedule (1F1B when pipelined) over this rank's micro-batches.
    On the last pipeline stage ``on_logps(mb, seq_logps, response_token_logps)`` runs for every
    micro-batch and returns the loss to back-propagate (its mean over rows: the schedule divides
    by the number of micro-batches); ``response_token_logps`` is flat, in (sequence, position)
    order. With sequence parallelism (hidden states split along the sequence at the output
    layer) the logits of every position are computed and masked (packed: gathered) instead."""

    def step_fn(it, mdl):
        mb = next(it)
        inner = unwrap(mdl)
        select = ResponseRows(mb, device) if inner.post_process and not inner.config.sequence_parallel else None
        hook = inner.output_layer.register_forward_pre_hook(select, with_kwargs=True) if select else None
        try:
            out = forward_logits(mdl, mb, device, causal_mask)
        finally:
            if hook:
                hook.remove()

        def loss_fn(logits):
            if select is None and isinstance(mb, PackedMicroBatch):  # sequence parallel: every position's logits
                rows = ResponseRows(mb, device)
                logits = logits.reshape(1, -1, logits.shape[-1]).index_select(1, rows.index)
                tok_lp = vocab_parallel_token_logps(logits, rows.targets, vocab_size)[0]
                return on_logps(mb, rows.sequence_logps(tok_lp, mb), tok_lp[rows.weight > 0]), {}
            if select:
                tok_lp = vocab_parallel_token_logps(logits, select.targets, vocab_size)[0]
                return on_logps(mb, select.sequence_logps(tok_lp, mb), tok_lp[select.weight > 0]), {}
            tok_lp = vocab_parallel_token_logps(logits, mb.targets.to(device), vocab_size)
            return on_logps(mb, sequence_logps(tok_lp, mb), tok_lp[mb.resp_mask.to(device) > 0]), {}

        return out, loss_fn

    width = max(x.ids.shape[1] for x in micro)
    rows_per = max(x.ids.shape[0] for x in micro)
    get_forward_backward_func()(forward_step_func=step_fn, data_iterator=iter(micro), model=[model],
                                num_microbatches=len(micro), seq_length=width, micro_batch_size=rows_per,
                                forward_only=forward_only)
