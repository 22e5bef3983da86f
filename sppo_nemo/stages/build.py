"""Stage 3 (Algorithm 1, line 5): training rows (x, y, P̂(y ≻ π_t | x)) and the selection.

- loss.selection=all: every response y_k with P̂_k (eq. 3.5), K rows per prompt;
- loss.selection=best_worst: the winner and loser by average preference (appendix C); for the
  square loss they are two point rows with their own P̂, as the paper's experiments train; for
  the pairwise losses one pair row with P(y_w ≻ y_l | x) (eq. B.1) or a hard label (B.2, B.3).
- loss.log_z=estimated stores log Z_{π̂_t^K}(x) (eq. 3.5) per prompt; constant leaves η/2.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from sppo_nemo import preference
from sppo_nemo.artifacts import read_jsonl, write_jsonl
from sppo_nemo.context import Context
from sppo_nemo.protocols import PairRow, PointRow
from sppo_nemo.stages.annotate import read_matrices
from sppo_nemo.stages.generate import read_responses


def fingerprint(ctx: Context, t: int) -> dict:
    r = ctx.recipe
    return {"matrices": ctx.stage(t, "annotate").digest(), "loss": vars(r.loss).copy(), "eta": r.eta}


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


def run(ctx: Context, t: int, workdir: Path) -> dict:
    r = ctx.recipe
    prompts = ctx.splits.train[t - 1]
    samples = read_responses(ctx.stage(t, "generate").path / "responses.jsonl")
    matrices = read_matrices(ctx.stage(t, "annotate").path / "matrices.jsonl")
    rows = build_rows(prompts, samples, matrices, r.loss.type, r.loss.selection, r.loss.winrate,
                      r.loss.log_z, r.eta)
    write_jsonl(workdir / "rows.jsonl", ({"kind": type(row).__name__, **asdict(row)} for row in rows))
    if rows and isinstance(rows[0], PointRow):
        probs = np.array([row.win_prob for row in rows])
        return {"rows": len(rows), "kind": "point", "win_prob_mean": float(probs.mean()),
                "win_prob_std": float(probs.std())}
    probs = np.array([row.pair_prob for row in rows])
    return {"rows": len(rows), "kind": "pair", "pair_prob_mean": float(probs.mean())}


def read_rows(path: Path) -> list[PointRow | PairRow]:
    kinds = {"PointRow": PointRow, "PairRow": PairRow}
    return [kinds[row.pop("kind")](**row) for row in read_jsonl(path)]
