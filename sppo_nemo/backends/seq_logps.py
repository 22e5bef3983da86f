"""Sequence log-probabilities log π(y|x) = Σ_h log π(y_h | x, y_<h) of an HF causal LM, summed over
response tokens, from the final hidden states at response positions only, in chunks under
activation checkpointing, so the full-vocabulary log-softmax of the whole batch never exists at
once. Plain torch on the model object (no transformers import); the packed variant, which needs
transformers' attention interfaces, is in ``hf.py``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from sppo_nemo.backends.chat_format import Encoded


def _response_token_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                          softcap: float | None) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def _token_logps(model, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log π(target | hidden) per gathered hidden state, the LM head applied ``chunk`` rows at a
    time (under activation checkpointing when differentiating): never the (tokens, V) logits whole."""
    lm_head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    parts = []
    for s in range(0, h.shape[0], chunk):
        if torch.is_grad_enabled():
            parts.append(checkpoint(_response_token_logps, h[s:s + chunk], lm_head, targets[s:s + chunk],
                                    softcap, use_reentrant=False))
        else:
            parts.append(_response_token_logps(h[s:s + chunk], lm_head, targets[s:s + chunk], softcap))
    return torch.cat(parts)


def sequence_logps(model, batch: Sequence[Encoded], pad_id: int, chunk: int = 128) -> torch.Tensor:
    """log π(y|x) = Σ_h log π(y_h | x, y_<h) for each encoded pair; differentiable.

    Runs the decoder once on the right-padded batch, gathers the hidden states that predict
    response tokens, and applies the LM head chunk by chunk under activation checkpointing,
    so neither the (B, L, V) logits nor their log-softmax are ever held whole.
    """
    device = next(model.parameters()).device
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, seq_of = [], [], []
    for i, e in enumerate(batch):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        start = len(e.prompt_ids)
        for pos in range(start, len(seq)):  # token at pos is predicted from position pos-1
            rows.append(i)
            cols.append(pos)
            seq_of.append(i)
    ids, mask = ids.to(device), mask.to(device)
    decoder = model.get_decoder()
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    h = hidden[rows_t, cols_t - 1]
    targets = ids[rows_t, cols_t]
    token_logps = _token_logps(model, h, targets, chunk)
    out = torch.zeros(len(batch), dtype=torch.float32, device=device)
    return out.index_add(0, torch.tensor(seq_of, device=device), token_logps)
