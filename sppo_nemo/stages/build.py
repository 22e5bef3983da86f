"""Stage 3 (Algorithm 1, line 5): training rows (x, y, P̂(y ≻ π_t | x)) and the selection.

- loss.selection=all: every response y_k with P̂_k (eq. 3.5), K rows per prompt;
- loss.selection=best_worst: the winner and loser by average preference (appendix C); for the
  square loss they are two point rows with their own P̂, as the paper's experiments train; for
  the pairwise losses one pair row with P(y_w ≻ y_l | x) (eq. B.1) or a hard label (B.2, B.3).
- loss.log_z=estimated stores log Z_{π̂_t^K}(x) (eq. 3.5) per prompt; constant leaves η/2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo import preference
from sppo_nemo.config import LossConfig
from sppo_nemo.context import Context, PromptSet, Upstream
from sppo_nemo.protocols import PairRow, PointRow
from sppo_nemo.rows import write_rows
from sppo_nemo.stages.annotate import read_matrices
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


def build_rows(prompts, samples, matrices, loss_type: str, selection: str, winrate_method: str,
               log_z: str, eta: float) -> list[PointRow | PairRow]:
    rows: list[PointRow | PairRow] = []
    for p, ss, m in zip(prompts, samples, matrices):
        p_hat = preference.estimate(m, winrate_method)
        lz = float(preference.log_partition_estimate(p_hat, eta)) if log_z == "estimated" else None
        if selection == "all":
            chosen = list(range(len(ss)))
        else:
            chosen = list(preference.best_worst(m))
        if loss_type == "sppo":
            rows += [PointRow(p.id, p.text, ss[k].text, ss[k].finished, float(p_hat[k]), lz) for k in chosen]
        else:
            w, l = chosen
            rows.append(PairRow(p.id, p.text, ss[w].text, ss[l].text, ss[w].finished, ss[l].finished,
                                float(m[w, l])))
    return rows


def run(inp: Inputs, workdir: Path, bar) -> dict:
    samples = read_responses(inp.responses.path / "responses.jsonl")
    matrices = read_matrices(inp.matrices.path / "matrices.jsonl")
    lo = inp.loss
    rows = build_rows(inp.prompts.prompts, samples, matrices, lo.type, lo.selection, lo.winrate, lo.log_z, inp.eta)
    write_rows(workdir / "rows.jsonl", rows)
    if rows and isinstance(rows[0], PointRow):
        probs = np.array([row.win_prob for row in rows])
        return {"rows": len(rows), "kind": "point", "win_prob_mean": float(probs.mean()),
                "win_prob_std": float(probs.std())}
    probs = np.array([row.pair_prob for row in rows])
    return {"rows": len(rows), "kind": "pair", "pair_prob_mean": float(probs.mean())}
