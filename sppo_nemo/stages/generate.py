"""Stage 1 (Algorithm 1, line 3): sample K responses y_1..y_K ~ π_t(·|x) per prompt of split t.

The generator samples resumably (``Generator.sample``): prompts in fixed chunks seeded from the
run seed, the iteration and their position, each finished chunk kept in the stage's ``sampling``
folder, so a crashed run resumes at the first unfinished chunk and produces exactly what an
uninterrupted run would.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from sppo_nemo.formats.artifacts import read_jsonl, write_jsonl
from sppo_nemo.backends import GeneratorSpec, generator_spec, make_generator
from sppo_nemo.stages.context import Context, PolicyRef, PromptSet
from sppo_nemo.schema.protocols import Prompt, Sample, SamplingParams

NAME = "generate"
STATE = "sampling"  # the generator's resumable state, removed once responses.jsonl is written


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
        samples = generator.sample(prompts, inp.K, inp.sampling, workdir / STATE,
                                   (inp.seed, NAME, inp.iteration), b.update)
    cut = generator.cut_prompts(prompts)
    extra = generator.run_facts()
    generator.close()
    write_responses(workdir / "responses.jsonl", prompts, samples)
    shutil.rmtree(workdir / STATE)
    lengths = [s.num_tokens for ss in samples for s in ss]
    return {"prompts": len(prompts), "prompts_cut": cut, "responses": len(lengths),
            "mean_tokens": sum(lengths) / len(lengths),
            "finished_fraction": sum(s.finished for ss in samples for s in ss) / len(lengths), **extra}


def write_responses(path: Path, prompts: Sequence[Prompt], samples: list[list[Sample]]) -> None:
    write_jsonl(path, ({"prompt_id": p.id, "prompt": p.text, "samples": [asdict(s) for s in ss]}
                       for p, ss in zip(prompts, samples)))


def read_responses(path: Path) -> list[list[Sample]]:
    return [[Sample(**s) for s in row["samples"]] for row in read_jsonl(path)]
