"""Stage 2 (Algorithm 1, line 4): the K×K matrix P(y_i ≻ y_j | x) per prompt, from the judge.

The judge scores chunks of prompts (its one batched method, ``preference_matrices``); each
finished chunk is appended to the stage's chunk log, so a crash resumes mid-annotation. A judge
with logits (PairRM, llm-blender: ``logit_matrices``) is asked for those instead, and each row also
keeps its aggregated scores s_i = (1/K) Σ_j (C[i,j] − C[j,i]) ("scores"), which the build stage
ranks by (loss.rank_by=score) and the reference scripts' win rate uses (loss.winrate=score_diff):
the matrix alone has lost them where a logit passes the 8-decimal rounding of a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo.formats.artifacts import read_jsonl, write_jsonl
from sppo_nemo.backends import JudgeSpec, judge_spec, make_judge
from sppo_nemo.formats.chunklog import ChunkLog, run_chunks
from sppo_nemo.stages.context import Context, PromptSet, Upstream
from sppo_nemo.schema.protocols import check_preference_matrix
from sppo_nemo.stages.generate import read_responses

NAME = "annotate"
LOG = "matrices.log.jsonl"
CHUNK_PROMPTS = 64


@dataclass(frozen=True)
class Inputs:
    prompts: PromptSet
    responses: Upstream  # iter_t/generate
    judge: JudgeSpec
    iteration: int


def inputs(ctx: Context, t: int) -> Inputs:
    return Inputs(ctx.train_prompts(t), ctx.upstream(t, "generate"), judge_spec(ctx.recipe), t)


def run(inp: Inputs, workdir: Path, bar) -> dict:
    prompts = list(inp.prompts.prompts)
    texts = [[s.text for s in ss] for ss in read_responses(inp.responses.path / "responses.jsonl")]
    judge = make_judge(inp.judge)
    starts = range(0, len(prompts), CHUNK_PROMPTS)

    def work(c: int, report) -> list[dict]:
        lo = starts[c]
        chunk = prompts[lo:lo + CHUNK_PROMPTS]
        rows = []
        for p, (m, scores) in zip(chunk, judge.scored_matrices(chunk, texts[lo:lo + CHUNK_PROMPTS])):
            m = np.asarray(m, dtype=np.float64)
            check_preference_matrix(m)
            row = {"prompt_id": p.id, "matrix": m.round(8).tolist()}
            if scores is not None:
                row["scores"] = np.asarray(scores, dtype=np.float64).round(8).tolist()
            rows.append(row)
        report(len(chunk))
        return rows

    with bar(len(prompts), f"iter {inp.iteration} annotate") as b:
        rows = [row for chunk in run_chunks(ChunkLog(workdir / LOG), len(starts), work, b.update) for row in chunk]
    judge.close()
    write_jsonl(workdir / "matrices.jsonl", rows)
    (workdir / LOG).unlink(missing_ok=True)
    off = [np.abs(np.asarray(row["matrix"]) - 0.5).mean() for row in rows]
    return {"prompts": len(rows), "judge": judge.name, "mean_abs_margin": float(np.mean(off))}


def read_matrices(path: Path) -> list[np.ndarray]:
    return [np.asarray(r["matrix"], dtype=np.float64) for r in read_jsonl(path)]


def read_scores(path: Path) -> list[np.ndarray | None]:
    """The judge's aggregated scores per prompt; None for a judge without logits (or a stage
    annotated before scores were kept)."""
    return [None if r.get("scores") is None else np.asarray(r["scores"], dtype=np.float64) for r in read_jsonl(path)]
