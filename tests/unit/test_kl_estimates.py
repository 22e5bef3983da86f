"""Evaluation's two KL estimators against a KL known exactly (sppo_nemo/backends/seq_logps.py,
``kl_token_terms``; sppo_nemo/stages/evaluate.py, ``kl_estimates``).

Two autoregressive policies over a vocabulary of 3 and sequences of 2 tokens, given as tables, so
that KL(π ‖ π_base) = Σ_y π(y) log π(y)/π_base(y) is a finite sum. A stand-in "model" whose LM head
is the identity reads the tables' logits as its hidden states, so ``kl_token_terms`` runs as it runs
on a transformer's final hidden states:

- the per-position form, weighted by π(y) over every sequence, is the KL exactly (the chain rule),
  and so is the log-ratio's;
- sampled from π, both are unbiased (within 4 standard errors of the exact KL over 4000 samples);
  the per-position terms are never negative and vary less; the log-ratio is negative for some
  samples (the k1 estimator that read −15 on a tiny model);
- ``kl_estimates`` averages per prompt and gives each estimate its interval.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import torch

from sppo_nemo.backends.seq_logps import kl_token_terms
from sppo_nemo.stages.evaluate import kl_estimates

V = 3
# logits of the first token, and of the second given the first (row = first token)
P_FIRST = torch.tensor([2.0, 0.0, -1.0])
P_NEXT = torch.tensor([[0.5, 0.0, 1.5], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
Q_FIRST = torch.tensor([0.0, 0.5, 0.0])
Q_NEXT = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, -0.5], [2.0, -1.0, 0.0]])


class TableModel(torch.nn.Module):
    """An LM head that is the identity: the 'hidden state' at a position is the table's logits there."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(V))
        self.config = SimpleNamespace()

    def get_output_embeddings(self):
        return self.head


def hidden(first: torch.Tensor, nxt: torch.Tensor, ys: list[tuple[int, int]]) -> torch.Tensor:
    """The hidden states that predict each token of each sequence: (2·len(ys), V)."""
    return torch.stack([h for y in ys for h in (first, nxt[y[0]])])


def seq_logp(first, nxt, y) -> float:
    return float(torch.log_softmax(first, -1)[y[0]] + torch.log_softmax(nxt[y[0]], -1)[y[1]])


def terms(ys) -> np.ndarray:
    """Per sequence (log π, log π_base, Σ_h KL_h), as evaluation sums kl_token_terms' rows."""
    targets = torch.tensor([t for y in ys for t in y])
    rows = kl_token_terms(TableModel(), TableModel(), hidden(P_FIRST, P_NEXT, ys), hidden(Q_FIRST, Q_NEXT, ys),
                          targets, chunk=5)
    return rows.double().view(len(ys), 2, 3).sum(dim=1).numpy()


ALL = list(itertools.product(range(V), repeat=2))
PROBS = np.array([math.exp(seq_logp(P_FIRST, P_NEXT, y)) for y in ALL])
EXACT = float(sum(p * (seq_logp(P_FIRST, P_NEXT, y) - seq_logp(Q_FIRST, Q_NEXT, y)) for p, y in zip(PROBS, ALL)))


def test_the_tables_are_distributions_and_the_kl_is_not_small():
    assert abs(PROBS.sum() - 1) < 1e-6
    assert 0.3 < EXACT < 3.0


def test_log_probs_are_the_tables():
    t = terms(ALL)
    assert np.allclose(t[:, 0], [seq_logp(P_FIRST, P_NEXT, y) for y in ALL], atol=1e-6)
    assert np.allclose(t[:, 1], [seq_logp(Q_FIRST, Q_NEXT, y) for y in ALL], atol=1e-6)


def test_weighted_by_pi_both_forms_are_the_kl_exactly():
    t = terms(ALL)
    assert abs(float(PROBS @ t[:, 2]) - EXACT) < 1e-5
    assert abs(float(PROBS @ (t[:, 0] - t[:, 1])) - EXACT) < 1e-5


def test_a_policy_against_itself_has_kl_zero_at_every_position():
    ys = ALL
    targets = torch.tensor([t for y in ys for t in y])
    h = hidden(P_FIRST, P_NEXT, ys)
    rows = kl_token_terms(TableModel(), TableModel(), h, h, targets)
    assert torch.all(rows[:, 2] == 0) and torch.equal(rows[:, 0], rows[:, 1])


def test_sampled_both_are_unbiased_the_per_position_form_non_negative_and_steadier():
    rng = np.random.default_rng(0)
    ys = [ALL[i] for i in rng.choice(len(ALL), size=4000, p=PROBS / PROBS.sum())]
    t = terms(ys)
    exact_form, ratio = t[:, 2], t[:, 0] - t[:, 1]
    for est in (exact_form, ratio):
        se = est.std() / math.sqrt(len(est))
        assert abs(est.mean() - EXACT) < 4 * se, (est.mean(), EXACT, se)
    assert exact_form.min() >= 0.0
    assert (ratio < 0).mean() > 0.05  # the log-ratio of single samples can be negative
    assert exact_form.var() < ratio.var()


def test_kl_estimates_averages_per_prompt_with_an_interval_each():
    rng = np.random.default_rng(1)
    ys = [ALL[i] for i in rng.choice(len(ALL), size=40, p=PROBS / PROBS.sum())]
    t = terms(ys)
    out = kl_estimates(t, prompts=10, n=4, seed=0)
    assert abs(out["kl_to_base"] - t[:, 2].mean()) < 1e-12
    assert abs(out["kl_to_base_log_ratio"] - (t[:, 0] - t[:, 1]).mean()) < 1e-12
    for key in ("kl_to_base", "kl_to_base_log_ratio"):
        lo, hi = out[f"{key}_ci"]
        assert lo <= out[key] <= hi
