"""Stage 1 (Algorithm 1, line 3): sample K responses y_1..y_K ~ π_t(·|x) per prompt of split t.

Prompts are processed in fixed chunks, each seeded from the run seed, the iteration and its
position, and each finished chunk is appended to the stage's chunk log (``chunklog.py``). A
crashed run resumes at the first unfinished chunk and produces exactly what an uninterrupted run
would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from sppo_nemo.artifacts import read_jsonl, write_jsonl
from sppo_nemo.backends import GeneratorSpec, generator_spec, make_generator
from sppo_nemo.chunklog import ChunkLog, run_chunks
from sppo_nemo.context import Context, PolicyRef, PromptSet
from sppo_nemo.protocols import Generator, Prompt, Sample, SamplingParams
from sppo_nemo.seeds import derive_seed

NAME = "generate"
LOG = "samples.log.jsonl"


@dataclass(frozen=True)
class Inputs:
    policy: PolicyRef
    prompts: PromptSet
    K: int
    seed: int
    iteration: int
    sampling: SamplingParams  # seed 0: each chunk's seed is derived from its position
    generation: GeneratorSpec


def inputs(ctx: Context, t: int) -> Inputs:
    r = ctx.recipe
    return Inputs(ctx.policy(t), ctx.train_prompts(t), r.K, r.seed, t, ctx.sampling(), generator_spec(r))


def run(inp: Inputs, workdir: Path, bar) -> dict:
    prompts = list(inp.prompts.prompts)
    generator = make_generator(inp.generation, inp.policy.location)
    with bar(len(prompts) * inp.K, f"iter {inp.iteration} generate") as b:
        samples = sample_resumable(generator, prompts, inp.K, inp.sampling, workdir / LOG,
                                   (inp.seed, NAME, inp.iteration), b.update)
    cut = generator.cut_prompts(prompts)
    generator.close()
    write_responses(workdir / "responses.jsonl", prompts, samples)
    (workdir / LOG).unlink()
    lengths = [s.num_tokens for ss in samples for s in ss]
    return {"prompts": len(prompts), "prompts_cut": cut, "responses": len(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "finished_fraction": sum(s.finished for ss in samples for s in ss) / len(lengths)}


def sample_resumable(generator: Generator, prompts: Sequence[Prompt], k: int, params: SamplingParams,
                     log: Path, seed_tag: tuple, progress=None) -> list[list[Sample]]:
    """k responses per prompt, chunk by chunk (batch_size // k prompts each), chunk c seeded with
    derive_seed(*seed_tag, c), resuming from the chunk log after a crash."""
    per_chunk = max(1, params.batch_size // k)
    chunks = [list(prompts[i:i + per_chunk]) for i in range(0, len(prompts), per_chunk)]

    def work(c: int, report) -> list[dict]:
        samples = generator.generate(chunks[c], k, replace(params, seed=derive_seed(*seed_tag, c)), progress=report)
        return [{"prompt_id": p.id, "samples": [asdict(s) for s in ss]} for p, ss in zip(chunks[c], samples)]

    done = run_chunks(ChunkLog(log), len(chunks), work, progress, size=lambda rows: len(rows) * k)
    return [[Sample(**s) for s in row["samples"]] for rows in done for row in rows]


def write_responses(path: Path, prompts: Sequence[Prompt], samples: list[list[Sample]]) -> None:
    write_jsonl(path, ({"prompt_id": p.id, "prompt": p.text, "samples": [asdict(s) for s in ss]}
                       for p, ss in zip(prompts, samples)))


def read_responses(path: Path) -> list[list[Sample]]:
    return [[Sample(**s) for s in row["samples"]] for row in read_jsonl(path)]
