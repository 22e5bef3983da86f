"""Sequence log-probabilities log π(y|x) = Σ_h log π(y_h | x, y_<h) of an HF causal LM, summed over
response tokens, from the final hidden states at response positions only, in chunks under
activation checkpointing, so the full-vocabulary log-softmax of the whole batch never exists at
once; and, for evaluation's KL, the per-token terms of two models over the same tokens
(:func:`kl_token_terms`). Plain torch on the model object (no transformers import); the packed
variant, which needs transformers' attention interfaces, is in ``hf.py``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint

from sppo_nemo.backends.chat_format import Encoded


def _logits(hidden: torch.Tensor, lm_head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """The LM head's logits in fp32, soft-capped where the model caps them (Gemma-2)."""
    logits = lm_head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _response_token_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                          softcap: float | None) -> torch.Tensor:
    logits = _logits(hidden, lm_head, softcap)
    return logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)


def token_logps(model, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
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


def response_hidden(model, batch: Sequence[Encoded], pad_id: int):
    """The decoder's final hidden states that predict response tokens, for the right-padded batch:
    (h (n_tokens, d), targets (n_tokens,), seq_of (n_tokens,) the sequence each belongs to)."""
    device = next(model.parameters()).device
    lengths = [len(e.prompt_ids) + len(e.response_ids) for e in batch]
    width = max(lengths)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols = [], []
    for i, e in enumerate(batch):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        for pos in range(len(e.prompt_ids), len(seq)):  # token at pos is predicted from position pos-1
            rows.append(i)
            cols.append(pos)
    ids, mask = ids.to(device), mask.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    return hidden[rows_t, cols_t - 1], ids[rows_t, cols_t], rows_t


def per_sequence(values: torch.Tensor, seq_of: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-token ``values`` into their ``n`` sequences (fp32)."""
    out = torch.zeros(n, dtype=torch.float32, device=values.device)
    return out.index_add(0, seq_of, values.float())


def sequence_logps(model, batch: Sequence[Encoded], pad_id: int, chunk: int = 128) -> torch.Tensor:
    """log π(y|x) = Σ_h log π(y_h | x, y_<h) for each encoded pair; differentiable.

    Runs the decoder once on the right-padded batch, gathers the hidden states that predict
    response tokens, and applies the LM head chunk by chunk under activation checkpointing,
    so neither the (B, L, V) logits nor their log-softmax are ever held whole.
    """
    h, targets, seq_of = response_hidden(model, batch, pad_id)
    return per_sequence(token_logps(model, h, targets, chunk), seq_of, len(batch))


def _log_probs(model, h: torch.Tensor) -> torch.Tensor:
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return torch.log_softmax(_logits(h, model.get_output_embeddings(), softcap), dim=-1)


@torch.no_grad()
def kl_token_terms(model, base, h: torch.Tensor, h_base: torch.Tensor, targets: torch.Tensor,
                   chunk: int = 128) -> torch.Tensor:
    """Per response token h: (log π(y_h | ·), log π_base(y_h | ·), KL(π(·|x, y_<h) ‖ π_base(·|x, y_<h)))
    as an (n_tokens, 3) fp32 tensor, from the two models' hidden states at the same positions; the
    heads applied ``chunk`` rows at a time. The third column is Σ_v π(v) (log π(v) − log π_base(v)),
    non-negative by construction; its sum over a sequence sampled from π is the exact per-position
    form of KL(π ‖ π_base) (the chain rule), the log-ratio's sum the single-sample form."""
    parts = []
    for s in range(0, h.shape[0], chunk):
        lp, lq = _log_probs(model, h[s:s + chunk]), _log_probs(base, h_base[s:s + chunk])
        t = targets[s:s + chunk, None]
        kl = (lp.exp() * (lp - lq)).sum(-1).clamp(min=0.0)  # rounding can leave −1e-9
        parts.append(torch.stack([lp.gather(-1, t)[:, 0], lq.gather(-1, t)[:, 0], kl], dim=1))
    return torch.cat(parts) if parts else torch.zeros((0, 3))
