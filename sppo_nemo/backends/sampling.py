"""K samples per prompt, resumable: the chunk loop of the generators that sample in-process.

A generator's ``sample`` is what the generate and evaluate stages call. The in-process backends
(hf, game) implement it with :func:`chunked_sample`: prompts in fixed chunks of
``batch_size // K``, chunk c seeded with ``derive_seed(*seed_tag, c)``, each finished chunk
appended to one chunk log (``chunklog.py``) under the stage's ``state`` folder, so a crashed run
resumes at the first unfinished chunk and produces what an uninterrupted run would. The vLLM
backend runs its own engines over the same grid (``backends/vllm/``).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from sppo_nemo.formats.chunklog import ChunkLog, run_chunks
from sppo_nemo.schema.protocols import InProcessGenerator, ProgressFn, Prompt, Sample, SamplingParams
from sppo_nemo.maths.seeds import derive_seed


def chunk_grid(n_prompts: int, k: int, batch_size: int) -> list[range]:
    """The prompt positions of each chunk: ``batch_size // k`` prompts (at least one) per chunk."""
    per = max(1, batch_size // k)
    return [range(i, min(i + per, n_prompts)) for i in range(0, n_prompts, per)]


def chunked_sample(generator: InProcessGenerator, prompts: Sequence[Prompt], k: int, params: SamplingParams, state: Path,
                   seed_tag: tuple, progress: ProgressFn | None = None) -> list[list[Sample]]:
    """k responses per prompt by ``generator.generate``, chunk by chunk, resumable from
    ``state/chunks.jsonl``."""
    chunks = chunk_grid(len(prompts), k, params.batch_size)

    def work(c: int, report) -> list[dict]:
        part = [prompts[i] for i in chunks[c]]
        samples = generator.generate(part, k, replace(params, seed=derive_seed(*seed_tag, c)), progress=report)
        return [{"prompt_id": p.id, "samples": [asdict(s) for s in ss]} for p, ss in zip(part, samples)]

    done = run_chunks(ChunkLog(Path(state) / "chunks.jsonl"), len(chunks), work, progress,
                      size=lambda rows: len(rows) * k)
    return [[Sample(**s) for s in row["samples"]] for rows in done for row in rows]


class ChunkedSampling:
    """``Generator.sample``, ``run_facts`` and ``exact_metrics`` for a generator with an in-process
    ``generate`` (a finite game's generator has exact metrics of its own)."""

    def sample(self, prompts: Sequence[Prompt], num_samples: int, params: SamplingParams, state: Path,
               seed_tag: tuple, progress: ProgressFn | None = None) -> list[list[Sample]]:
        return chunked_sample(self, prompts, num_samples, params, state, seed_tag, progress)

    def run_facts(self) -> dict:
        return {}

    def exact_metrics(self, prompts: Sequence[Prompt], history: Sequence) -> dict:
        return {}
