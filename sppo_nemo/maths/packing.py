"""Shared-prompt packing: a prompt computed once, its responses behind it (pure Python and torch).

A micro-batch often holds several sequences with one prompt: a pair's chosen and rejected
(eq. B.1–B.3), or the point rows of one prompt (eq. 3.7 with ``selection: best_worst`` or
``all``). Unpacked, the prompt's tokens go through the decoder once per response. Packed, one
sequence holds the prompt once and every response after it::

    tokens     p0 p1 p2 | a0 a1 a2 | b0 b1
    positions   0  1  2 |  3  4  5 |  3  4      (each response continues from the prompt)
    segment     0  0  0 |  1  1  1 |  2  2      (0: the prompt, j: response j)

and the attention mask lets a token see the prompt and the earlier tokens of its own response
only: ``allowed[q, k] = k ≤ q and (segment[k] = 0 or segment[k] = segment[q])``. Every response
token then sees exactly what it sees unpacked (same tokens, same positions), so its hidden state —
and the sequence log-probability log π(y|x) = Σ_h log π(y_h | x, y_<h) — is the unpacked one up to
floating-point summation order.

Which hidden state predicts which token: response j's first token is predicted from the prompt's
last position (not from the position before it in the packed sequence, which is the end of
response j − 1); its later tokens from their predecessor. :func:`pack` gives that index per
response token (``predictors``) with the token (``targets``) and the response it belongs to.

Rows are packed by prompt: consecutive sequences of a micro-batch with the same prompt ids form
one packed sequence (:func:`group`); the trainer core's plan keeps a prompt's rows together
(``training.plan_steps`` with ``groups``), so a micro-batch usually holds whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Packed:
    """One packed sequence: a prompt and ``n`` responses."""

    ids: list[int]
    positions: list[int]
    segment: list[int]  # 0 for the prompt, j = 1..n for response j
    predictors: list[int]  # per response token (in order): the packed index whose hidden state predicts it
    targets: list[int]  # per response token: the token id
    response_of: list[int]  # per response token: which response (0-based, in the order given)

    @property
    def n_responses(self) -> int:
        return max(self.segment) if self.segment else 0


def pack(prompt_ids: Sequence[int], responses: Sequence[Sequence[int]]) -> Packed:
    """The packed layout of one prompt and its responses (each non-empty).

    Hand-worked: prompt [5, 6], responses [7, 8] and [9] → ids [5, 6, 7, 8, 9], positions
    [0, 1, 2, 3, 2], segment [0, 0, 1, 1, 2], predictors [1, 2, 1] (7 from 6, 8 from 7, 9 from 6),
    targets [7, 8, 9], response_of [0, 0, 1].
    """
    if not prompt_ids:
        raise ValueError("packing needs a prompt of at least one token")
    p = len(prompt_ids)
    ids, positions, segment = list(prompt_ids), list(range(p)), [0] * p
    predictors, targets, response_of = [], [], []
    for j, r in enumerate(responses):
        if not r:
            raise ValueError(f"response {j} is empty; an encoded response has at least its end-of-turn token")
        start = len(ids)
        ids += list(r)
        positions += list(range(p, p + len(r)))
        segment += [j + 1] * len(r)
        predictors += [p - 1] + [start + t - 1 for t in range(1, len(r))]
        targets += list(r)
        response_of += [j] * len(r)
    return Packed(ids, positions, segment, predictors, targets, response_of)


def allowed(segment: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """(L, L) bool: True where query q may attend to key k (causal, prompt or own response).

    Hand-worked: segment [0, 0, 1, 2] → row 2 (response 1) sees 0, 1, 2; row 3 (response 2) sees
    0, 1, 3 (not 2).
    """
    seg = torch.as_tensor(segment)
    n = seg.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same = (seg[None, :] == 0) | (seg[None, :] == seg[:, None])
    return causal & same


def group(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Indices of consecutive sequences that share their prompt ids, in order.

    Hand-worked: prompts [a, a, b, a] → [[0, 1], [2], [3]] (only neighbours are packed).
    """
    out: list[list[int]] = []
    for i, p in enumerate(prompts):
        if out and list(prompts[out[-1][0]]) == list(p):
            out[-1].append(i)
        else:
            out.append([i])
    return out
