"""PairRM's network on transformers' DeBERTa-v2, and running it on batches of sequences.

PairRM is a DeBERTa-v3-large cross-encoder. It takes the last hidden states h at the three prefix
tokens of a sequence (see :mod:`.inputs`), scores each candidate with a shared head
``head_layer`` = Dropout, Linear(2H→H), Tanh, Dropout, Linear(H→n_tasks) on [h_source; h_cand],
and returns the logit s(A, B | x) = mean over tasks of (head(h_src, h_A) − head(h_src, h_B)):
"A is better than B" when positive. It is *not* antisymmetric: s(B, A) ≠ −s(A, B) in general
(position bias), which is why both orders are scored (:mod:`sppo_nemo.maths.preference`).

The encoder runs :mod:`.encoder`'s inference forward on transformers' weights (the same function,
less work: cached position projections, attention one sequence at a time on a CPU, the last
layer at the three rows read); ``net.attention = "reference"`` runs transformers' own forward.

torch and transformers are imported on first use, so importing this module is light.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np

from sppo_nemo.backends.pairrm.inputs import Seq, deberta_forward_flops, executed_flops, make_batches

DTYPES = ("auto", "fp32", "bf16", "fp16")
_MODEL_CLASS = None


def _build_model_class():
    import torch
    from torch import nn
    from transformers import DebertaV2Model

    from sppo_nemo.backends.pairrm import encoder

    class PairRMModel(nn.Module):
        """PairRM's network: ``pretrained_model`` (DeBERTa-v2) and ``head_layer``, as in both
        published layouts, so their state dicts load without renaming."""

        def __init__(self, config, n_tasks: int = 1, drop_out: float = 0.05):
            super().__init__()
            self.config = config
            self.attention = "auto"
            self.pretrained_model = DebertaV2Model(config)
            hidden = config.hidden_size
            self.head_layer = nn.Sequential(
                nn.Dropout(drop_out), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                nn.Dropout(drop_out), nn.Linear(hidden, n_tasks),
            )

        def forward(self, input_ids, attention_mask, source_pos, cand1_pos, cand2_pos):
            """Logits s(cand1, cand2 | source), shape (batch,); *_pos index each row's prefix.

            ``self.attention`` picks the encoder's implementation: ``auto`` (the default:
            :mod:`.encoder`'s, ``padded`` on CUDA and ``per_sequence`` elsewhere, when it covers
            the configuration and the mask is right padding), ``per_sequence``, ``padded``, or
            ``reference`` (transformers' own forward)."""
            mode = attention_mode(self, input_ids, attention_mask)
            if mode == "reference":
                hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                rows = torch.arange(input_ids.shape[0], device=input_ids.device)
                src, c1, c2 = hidden[rows, source_pos], hidden[rows, cand1_pos], hidden[rows, cand2_pos]
            else:
                at = torch.stack([source_pos, cand1_pos, cand2_pos], dim=1)
                lengths = attention_mask.sum(dim=1).tolist()
                hidden = encoder.encode_rows(self.pretrained_model, input_ids, lengths, at, mode)
                src, c1, c2 = hidden[:, 0], hidden[:, 1], hidden[:, 2]
            left = self.head_layer(torch.cat([src, c1], dim=-1))
            right = self.head_layer(torch.cat([src, c2], dim=-1))
            return (left - right).float().mean(dim=-1)

    return PairRMModel


def pairrm_model_class():
    """The ``torch.nn.Module`` class (built on first use so that importing this module is light)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _build_model_class()
    return _MODEL_CLASS


def resolve_device(name: str) -> str:
    """``auto``: ``cuda`` when available, else ``cpu``; anything else as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str, device: str):
    """``auto``: bf16 on CUDA, fp32 elsewhere; ``fp32``, ``bf16`` or ``fp16`` as named."""
    import torch

    if name == "auto":
        name = "bf16" if device.startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def attention_mode(net: Any, input_ids, attention_mask) -> str:
    """The encoder implementation ``net.forward`` uses on this batch (see PairRMModel.forward)."""
    import torch

    from sppo_nemo.backends.pairrm import encoder

    mode = getattr(net, "attention", "auto")
    if mode != "auto":
        return mode
    lengths = attention_mask.sum(dim=1)
    prefix = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
    if not (encoder.supported(net.pretrained_model) and torch.equal(prefix, attention_mask.bool())):
        return "reference"
    return "padded" if input_ids.device.type == "cuda" else "per_sequence"


def forward_flops(net: Any, input_ids, lengths: Sequence[int]) -> float:
    """FLOPs of ``net`` on this right-padded batch, by the implementation it runs."""
    import torch

    width = input_ids.shape[1]
    mask = torch.arange(width)[None, :] < torch.tensor(list(lengths))[:, None]
    mode = attention_mode(net, input_ids, mask.long())
    if mode == "reference":
        return deberta_forward_flops(net.config, len(lengths), width)
    return executed_flops(net.config, lengths, width, per_sequence=mode == "per_sequence")


def score_batches(net: Any, seqs: Sequence[Seq], pad_id: int, batch_size: int,
                  max_batch_tokens: int) -> Iterator[tuple[list[int], np.ndarray, dict]]:
    """For each length batch of ``seqs`` (:func:`~.inputs.make_batches`): its indices, the logits
    s(cand1, cand2 | source) of its rows, and its stats (pairs, tokens, padded tokens, forward
    seconds, and FLOPs: those the forward ran, :func:`~.inputs.executed_flops`, or for
    transformers' own forward :func:`~.inputs.deberta_forward_flops` of the padded block)."""
    import torch

    device = next(net.parameters()).device
    lengths = [len(s[0]) for s in seqs]
    for group in make_batches(lengths, batch_size, max_batch_tokens):
        width = lengths[group[0]]
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, i in enumerate(group):
            ids[r, :lengths[i]] = torch.tensor(seqs[i][0], dtype=torch.long)
            mask[r, :lengths[i]] = 1
        pos = torch.tensor([seqs[i][1:] for i in group], dtype=torch.long).to(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            logits = net(ids.to(device), mask.to(device), pos[:, 0], pos[:, 1], pos[:, 2]).cpu().numpy()
        stats = {"pairs": len(group), "tokens": sum(lengths[i] for i in group), "padded_tokens": width * len(group),
                 "forward_s": time.perf_counter() - t0,
                 "flops": forward_flops(net, ids, [lengths[i] for i in group])}
        yield group, logits.astype(np.float64), stats
