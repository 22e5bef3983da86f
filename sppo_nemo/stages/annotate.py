"""Stage 2 (Algorithm 1, line 4): the K×K matrix P(y_i ≻ y_j | x) per prompt, from the judge."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sppo_nemo.artifacts import write_jsonl
from sppo_nemo.context import Context
from sppo_nemo.protocols import check_preference_matrix
from sppo_nemo.stages.generate import read_responses

CHUNK_PROMPTS = 64


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
    texts = [[s.text for s in ss] for ss in samples]
    if hasattr(judge, "annotate"):
        # PairRM: one process per visible GPU over disjoint shards of prompts, each shard's finished
        # chunks appended to a file in this partial folder, so a crash resumes mid-annotation.
        matrices = judge.annotate(prompts, texts, workdir / "shards")
        shutil.rmtree(workdir / "shards")
    else:
        matrices = _annotate_in_chunks(ctx, t, judge, prompts, texts)
    rows = []
    for p, m in zip(prompts, matrices):
        m = np.asarray(m, dtype=np.float64)
        check_preference_matrix(m)
        rows.append({"prompt_id": p.id, "matrix": m.round(8).tolist()})
    write_jsonl(workdir / "matrices.jsonl", rows)
    off = [np.abs(np.asarray(r["matrix"]) - 0.5).mean() for r in rows]
    return {"prompts": len(rows), "judge": judge.name, "mean_abs_margin": float(np.mean(off))}


def _annotate_in_chunks(ctx: Context, t: int, judge, prompts, texts) -> list[np.ndarray]:
    """Judges that batch across prompts get chunks of prompts; the others one prompt at a time."""
    batched = getattr(judge, "preference_matrices", None)
    step = CHUNK_PROMPTS if batched else 1
    out: list[np.ndarray] = []
    with ctx.bar(len(prompts), f"iter {t} annotate") as bar:
        for c in range(0, len(prompts), step):
            chunk = prompts[c:c + step]
            out += batched(chunk, texts[c:c + step]) if batched else [judge.preference_matrix(chunk[0], texts[c])]
            bar.update(len(chunk))
    return out


def read_matrices(path: Path) -> list[np.ndarray]:
    from sppo_nemo.artifacts import read_jsonl

    return [np.asarray(r["matrix"], dtype=np.float64) for r in read_jsonl(path)]
