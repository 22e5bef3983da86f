"""Stage 1 (Algorithm 1, line 3): sample K responses y_1..y_K ~ π_t(·|x) per prompt of split t.

Prompts are processed in fixed chunks, each seeded from the run seed and its position, and
each finished chunk is appended (fsync'd) to a log in the partial folder. A crashed run resumes
at the first unfinished chunk and produces exactly what an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from sppo_nemo.artifacts import append_jsonl, read_jsonl, write_jsonl
from sppo_nemo.context import Context, derive_seed
from sppo_nemo.data import prompts_digest
from sppo_nemo.protocols import Generator, Prompt, Sample, SamplingParams


def fingerprint(ctx: Context, t: int) -> dict:
    r = ctx.recipe
    return {
        "policy": ctx.policy_key(t),
        "policy.system_prompt": r.policy.system_prompt,
        "prompts": prompts_digest(ctx.splits.train[t - 1]),
        "K": r.K,
        "seed": r.seed,
        "sampling": vars(r.sampling).copy(),
        "generation.backend": r.generation.backend,
    }


def sample_resumable(generator: Generator, prompts: Sequence[Prompt], k: int, params: SamplingParams,
                     log: Path, seed_tag: str, progress=None) -> list[list[Sample]]:
    """Sample k responses per prompt, chunk by chunk, resuming from ``log`` after a crash."""
    per_chunk = max(1, params.batch_size // k)
    chunks = [list(prompts[i:i + per_chunk]) for i in range(0, len(prompts), per_chunk)]
    done: dict[int, list[dict]] = {}
    if log.exists():
        for row in read_jsonl(log, tolerate_torn_tail=True):
            done.setdefault(row["chunk"], []).append(row)
        done = {c: rows for c, rows in done.items() if c < len(chunks) and len(rows) == len(chunks[c])}
        write_jsonl(log, [row for c in sorted(done) for row in done[c]])  # drop a torn tail
        if progress:
            progress(sum(len(rows) for rows in done.values()) * k)
    for c, chunk in enumerate(chunks):
        if c in done:
            continue
        chunk_params = replace(params, seed=derive_seed(seed_tag, c))
        samples = generator.generate(chunk, k, chunk_params, progress=progress)
        rows = [{"chunk": c, "prompt_id": p.id, "samples": [asdict(s) for s in ss]} for p, ss in zip(chunk, samples)]
        append_jsonl(log, rows)
        done[c] = rows
    by_id = {row["prompt_id"]: row["samples"] for rows in done.values() for row in rows}
    return [[Sample(**s) for s in by_id[p.id]] for p in prompts]


def run(ctx: Context, t: int, workdir: Path) -> dict:
    from sppo_nemo.backends import make_generator

    r = ctx.recipe
    prompts = ctx.splits.train[t - 1]
    generator = make_generator(r, ctx.policy(t))
    params = ctx.sampling()
    with ctx.bar(len(prompts) * r.K, f"iter {t} generate") as bar:
        samples = sample_resumable(generator, prompts, r.K, params, workdir / "samples.log.jsonl",
                                   f"{r.seed}:generate:{t}", bar.update)
    generator.close()
    write_responses(workdir / "responses.jsonl", prompts, samples)
    (workdir / "samples.log.jsonl").unlink()
    lengths = [s.num_tokens for ss in samples for s in ss]
    return {"prompts": len(prompts), "responses": len(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "finished_fraction": sum(s.finished for ss in samples for s in ss) / len(lengths)}


def write_responses(path: Path, prompts: Sequence[Prompt], samples: list[list[Sample]]) -> None:
    write_jsonl(path, ({"prompt_id": p.id, "prompt": p.text, "samples": [asdict(s) for s in ss]}
                       for p, ss in zip(prompts, samples)))


def read_responses(path: Path) -> list[list[Sample]]:
    return [[Sample(**s) for s in row["samples"]] for row in read_jsonl(path)]
