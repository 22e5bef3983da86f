"""Stages declare their inputs once: ``run`` reads only its inputs object, and the fingerprint is
derived from every field of it, so a value a stage uses cannot be missing from its fingerprint."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest

from sppo_nemo import recipe as recipe_mod
from sppo_nemo.context import Context
from sppo_nemo.stages import STAGES, build, evaluate, fingerprint, generate, plan

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def finish(ctx: Context, t: int, name: str, content: str) -> None:
    """A finished stage folder holding one file, as the runner commits it."""
    stage = ctx.stage(t, name)
    work = stage.begin({"test": True})
    (work / "out.txt").write_text(content)
    stage.commit({"test": True}, 0.0)


@pytest.fixture
def ctx(tmp_path) -> Context:
    model = tmp_path / "model"  # π_1 is identified by content: a small stand-in directory
    model.mkdir()
    (model / "config.json").write_text("{}")
    r = recipe_mod.load(ROOT / "recipes" / "smollm2_sppo_3iter.yaml", [f"output_dir={tmp_path}",
                                                                        f"policy.model={model}"])
    return Context(r, tmp_path / r.name, progress=False)


@pytest.mark.parametrize("stage", STAGES, ids=[s.NAME for s in STAGES])
def test_run_reads_only_its_inputs(stage):
    tree = ast.parse(textwrap.dedent(inspect.getsource(stage.run)))
    args = [a.arg for a in tree.body[0].args.args]
    assert args == ["inp", "workdir", "bar"]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"ctx", "recipe", "r", "Context"}, names


def test_every_input_field_is_in_the_fingerprint(ctx):
    for t, name in (("iter_00", "evaluate"), ("iter_01", "generate"), ("iter_01", "annotate"),
                    ("iter_01", "build"), ("iter_01", "train"), ("iter_01", "evaluate")):
        finish(ctx, int(t[-2:]), name, f"{t}/{name}")
    for t, stage in plan(ctx.recipe):
        if t > 1:
            break
        inp = stage.inputs(ctx, t)
        assert set(fingerprint(inp)) == {f.name for f in dataclasses.fields(inp)}


def test_build_depends_on_the_responses_it_reads(ctx):
    finish(ctx, 1, "generate", "first responses")
    finish(ctx, 1, "annotate", "matrices")
    before = fingerprint(build.inputs(ctx, 1))
    ctx.stage(1, "generate").remove()
    finish(ctx, 1, "generate", "other responses")
    after = fingerprint(build.inputs(ctx, 1))
    assert before["responses"] != after["responses"] and before["matrices"] == after["matrices"]


def test_evaluate_depends_on_the_generation_backend(ctx):
    finish(ctx, 0, "evaluate", "base samples")
    inp = evaluate.inputs(ctx, 0)
    other = dataclasses.replace(inp, generation=dataclasses.replace(inp.generation, backend="vllm"))
    assert fingerprint(inp)["generation"] != fingerprint(other)["generation"]
    assert fingerprint(inp)["generation"]["backend"] == "hf"


def test_the_base_policy_is_identified_by_its_content(ctx):
    key = generate.inputs(ctx, 1).policy.key
    (Path(ctx.recipe.policy.model) / "config.json").write_text('{"hidden_size": 8}')  # replaced in place
    rerun = Context(ctx.recipe, ctx.run_dir, progress=False)  # the next sppo-run
    assert generate.inputs(rerun, 1).policy.key != key


def test_inputs_of_an_unfinished_upstream_stage_cannot_be_made(ctx):
    with pytest.raises(FileNotFoundError):
        build.inputs(ctx, 1)
    generate.inputs(ctx, 1)  # generate reads only π_1 and the prompts
