"""Stage 2 (Algorithm 1, line 4): the K×K matrix P(y_i ≻ y_j | x) per prompt, from the judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sppo_nemo.artifacts import write_jsonl
from sppo_nemo.context import Context
from sppo_nemo.protocols import check_preference_matrix
from sppo_nemo.stages.generate import read_responses


def fingerprint(ctx: Context, t: int) -> dict:
    return {
        "responses": ctx.stage(t, "generate").digest(),
        "judge": vars(ctx.recipe.judge).copy(),
    }


def run(ctx: Context, t: int, workdir: Path) -> dict:
    from sppo_nemo.backends import make_judge

    prompts = ctx.splits.train[t - 1]
    samples = read_responses(ctx.stage(t, "generate").path / "responses.jsonl")
    judge = make_judge(ctx.recipe)
    rows = []
    with ctx.bar(len(prompts), f"iter {t} annotate") as bar:
        for p, ss in zip(prompts, samples):
            m = np.asarray(judge.preference_matrix(p, [s.text for s in ss]), dtype=np.float64)
            check_preference_matrix(m)
            rows.append({"prompt_id": p.id, "matrix": m.round(8).tolist()})
            bar.update(1)
    write_jsonl(workdir / "matrices.jsonl", rows)
    off = [np.abs(np.asarray(r["matrix"]) - 0.5).mean() for r in rows]
    return {"prompts": len(rows), "judge": judge.name, "mean_abs_margin": float(np.mean(off))}


def read_matrices(path: Path) -> list[np.ndarray]:
    from sppo_nemo.artifacts import read_jsonl

    return [np.asarray(r["matrix"], dtype=np.float64) for r in read_jsonl(path)]
