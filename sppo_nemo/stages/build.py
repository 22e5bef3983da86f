"""Stage 3 (Algorithm 1, line 5): training rows (x, y, P̂(y ≻ π_t | x)) and the selection.

- loss.selection=all: every response y_k with P̂_k (eq. 3.5), K rows per prompt;
- loss.selection=best_worst: the winner and loser (appendix C) by P̂ (loss.rank_by=win_rate) or
  by the judge's aggregated score (rank_by=score, the paper's section 4.1); for the square loss
  they are two point rows with their own P̂, as the paper's experiments train; for the pairwise
  losses one pair row with P(y_w ≻ y_l | x) (eq. B.1) or a hard label (B.2, B.3).
- loss.estimator_samples=n (appendix D.3): P̂ (and log Z) from the winner, the loser and n − 2
  others only, instead of all K samples.
- loss.log_z=estimated stores log Z_{π̂_t^K}(x) (eq. 3.5) per prompt; constant leaves η/2.

Each row carries the token ids its responses were sampled as (``Sample.ids``): the trainers score
exactly those, never a re-tokenisation of the text, which can be another token sequence
(decode → encode drift; its share on the default run is in benchmarks/README.md). Responses of
an older run, text alone, make rows without ids; those are tokenised from the text, and the train
summary counts them (``rows_from_text``).

The judge's scores come from the annotate stage ("scores" in matrices.jsonl) when the judge has
logits (PairRM, llm-blender); otherwise they are read back from the matrix
(preference.matrix_scores), and the summary says which (``scores_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo.maths import preference
from sppo_nemo.schema.config import LossConfig
from sppo_nemo.stages.context import Context, PromptSet, Upstream
from sppo_nemo.schema.protocols import PairRow, PointRow
from sppo_nemo.formats.rows import write_rows
from sppo_nemo.stages.annotate import read_matrices, read_scores
from sppo_nemo.stages.generate import read_responses

NAME = "build"


@dataclass(frozen=True)
class Inputs:
    prompts: PromptSet
    responses: Upstream  # iter_t/generate
    matrices: Upstream  # iter_t/annotate
    loss: LossConfig
    eta: float


def inputs(ctx: Context, t: int) -> Inputs:
    r = ctx.recipe
    return Inputs(ctx.train_prompts(t), ctx.upstream(t, "generate"), ctx.upstream(t, "annotate"), r.loss, r.eta)


def build_rows(prompts, samples, matrices, loss: LossConfig, eta: float,
               scores: list[np.ndarray | None] | None = None) -> list[PointRow | PairRow]:
    """The training rows of one iteration; ``scores``: the judge's aggregated scores per prompt
    (None where it gave none)."""
    rows: list[PointRow | PairRow] = []
    scores = scores if scores is not None else [None] * len(matrices)
    for p, ss, m, sc in zip(prompts, samples, matrices, scores):
        if loss.selection == "all":
            chosen = list(range(len(ss)))
            idx = chosen
        else:
            chosen = list(preference.best_worst(m, sc, loss.rank_by))
            idx = preference.estimator_sample(len(ss), chosen[0], chosen[1], loss.estimator_samples)
        sub = m[np.ix_(idx, idx)]
        p_sub = preference.estimate(sub, loss.winrate, None if sc is None else np.asarray(sc)[idx])
        p_hat = dict(zip(idx, p_sub))
        lz = float(preference.log_partition_estimate(p_sub, eta)) if loss.log_z == "estimated" else None
        if loss.type == "sppo":
            rows += [PointRow(p.id, p.text, ss[k].text, ss[k].finished, float(p_hat[k]), lz, ss[k].ids)
                     for k in chosen]
        else:
            w, l = chosen
            rows.append(PairRow(p.id, p.text, ss[w].text, ss[l].text, ss[w].finished, ss[l].finished,
                                float(m[w, l]), ss[w].ids, ss[l].ids))
    return rows


def run(inp: Inputs, workdir: Path, bar) -> dict:
    samples = read_responses(inp.responses.path / "responses.jsonl")
    matrices = read_matrices(inp.matrices.path / "matrices.jsonl")
    scores = read_scores(inp.matrices.path / "matrices.jsonl")
    lo = inp.loss
    rows = build_rows(inp.prompts.prompts, samples, matrices, lo, inp.eta, scores)
    write_rows(workdir / "rows.jsonl", rows)
    out: dict = {"rows": len(rows)}
    if lo.rank_by == "score" or lo.winrate == "score_diff":
        out["scores_from"] = "judge" if all(s is not None for s in scores) else "matrix"
    if rows and isinstance(rows[0], PointRow):
        probs = np.array([row.win_prob for row in rows])
        return {**out, "kind": "point", "win_prob_mean": float(probs.mean()), "win_prob_std": float(probs.std())}
    probs = np.array([row.pair_prob for row in rows])
    return {**out, "kind": "pair", "pair_prob_mean": float(probs.mean())}
