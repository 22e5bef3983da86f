"""Stages declare their inputs once: ``run`` reads only its inputs object, and the fingerprint is
derived from every field of it, so a value a stage uses cannot be missing from its fingerprint."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.stages.context import Context
from sppo_nemo.stages import STAGES, annotate, build, evaluate, fingerprint, generate, plan

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


# ------------------------------------------------------------------ a stale stage names what changed
def relaunch(ctx: Context, *overrides: str) -> Context:
    """The next sppo-run of the same run directory, with ``overrides`` on the command line."""
    r = recipe_mod.load(ROOT / "recipes" / "smollm2_sppo_3iter.yaml",
                        [f"output_dir={ctx.run_dir.parent}", f"policy.model={ctx.recipe.policy.model}", *overrides])
    return Context(r, ctx.run_dir, progress=False)


def commit_real(ctx: Context, t: int, module) -> None:
    """A finished stage folder committed with the fingerprint the runner gives it."""
    fp = fingerprint(module.inputs(ctx, t))
    stage = ctx.stage(t, module.NAME)
    (stage.begin(fp) / "out.txt").write_text(module.NAME)
    stage.commit(fp, 0.0)


def stale_lines(ctx: Context, t: int, name: str) -> list[str]:
    from sppo_nemo.schema.errors import StaleStageError
    from sppo_nemo.run.runner import execute

    with pytest.raises(StaleStageError) as info:
        execute(ctx, only=(t, name), log=lambda *_: None)
    return str(info.value).splitlines()


@pytest.mark.parametrize("override, line", [
    ("trainer.lr=2e-06", "  trainer.lr: was 1e-06, now 2e-06"),
    ("loss.type=sppo_pair", "  loss.type: was 'sppo', now 'sppo_pair'"),
    ("eta=500.0", "  eta: was 1000.0, now 500.0"),
    ("policy.system_prompt=Be brief.", "  policy.system_prompt: was None, now 'Be brief.'"),
], ids=["trainer.lr", "loss.type", "eta", "system_prompt"])
def test_an_edited_trainer_key_is_named_as_the_recipe_writes_it(ctx, override, line):
    """The train stage's inputs nest the trainer spec under `trainer` (trainer.trainer.lr in its
    fingerprint): the message names the recipe's key, on a line of its own."""
    from sppo_nemo.run.runner import status
    from sppo_nemo.stages import train

    ctx = relaunch(ctx, "trainer.lr=1e-06")
    commit_real(ctx, 0, evaluate)
    for name in ("generate", "annotate", "build"):
        commit_real(ctx, 1, {"generate": generate, "annotate": annotate, "build": build}[name])
    commit_real(ctx, 1, train)
    edited = ("trainer.lr=1e-06", override) if not override.startswith("loss.type") else \
        ("trainer.lr=1e-06", override, "loss.selection=best_worst")
    lines = stale_lines(relaunch(ctx, *edited), 1, "train")
    assert lines[0] == "iter_01/train was finished with a different recipe or different inputs:"
    assert line in lines, lines
    assert not any("trainer.trainer." in x or x.startswith("  trainer.loss.") for x in lines)
    if override.startswith("trainer.lr"):  # the dry run names it the same way
        state = {(t, n): s for t, n, s in status(relaunch(ctx, *edited))}
        assert state[(1, "train")] == "STALE: trainer.lr: was 1e-06, now 2e-06", state


def test_generation_keys_read_from_elsewhere_in_the_recipe_are_named_there(ctx):
    commit_real(ctx, 1, generate)
    lines = stale_lines(relaunch(ctx, "trainer.max_prompt_length=100"), 1, "generate")
    assert "  trainer.max_prompt_length: was 256, now 100" in lines, lines


def test_every_spec_names_its_fingerprint_keys_by_the_recipe_keys(ctx):
    from sppo_nemo.stages import recipe_key, train

    for name in ("generate", "annotate", "build"):
        commit_real(ctx, 1, {"generate": generate, "annotate": annotate, "build": build}[name])
    names = [
        (train.inputs(ctx, 1), {"trainer.trainer.lr": "trainer.lr", "trainer.trainer.megatron.nnodes":
                               "trainer.megatron.nnodes", "trainer.loss.type": "loss.type", "trainer.seed": "seed",
                               "trainer.system_prompt": "policy.system_prompt", "trainer.game.matrix": "game.matrix",
                               "iteration": "iteration", "policy": "policy"}),
        (generate.inputs(ctx, 1), {"generation.backend": "generation.backend", "generation.vllm.dtype":
                                  "generation.vllm.dtype", "generation.max_prompt_length": "trainer.max_prompt_length",
                                  "sampling.top_p": "sampling.top_p", "K": "K"}),
        (evaluate.inputs(ctx, 0), {"extras.kl_precision": "evaluation.kl_precision", "judge": "judge",
                                  "generation.system_prompt": "policy.system_prompt"}),
        (annotate.inputs(ctx, 1), {"judge.batch_size": "judge.batch_size", "judge.game": "game"}),
    ]
    for inp, keys in names:
        assert {k: recipe_key(inp, k) for k in keys} == keys


def test_base_weights_replaced_in_place_are_named_file_by_file(ctx):
    model = Path(ctx.recipe.policy.model)
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "tokenizer.json").write_text("{}")
    commit_real(ctx, 0, evaluate)
    commit_real(ctx, 1, generate)
    (model / "model.safetensors").write_bytes(b"other weights")  # replaced in place
    (model / "tokenizer.json").unlink()
    (model / "extra.bin").write_bytes(b"x")
    named = [f"    {model / 'extra.bin'}: added since this stage was made",
             f"    {model / 'model.safetensors'}: its content changed since this stage was made",
             f"    {model / 'tokenizer.json'}: deleted since this stage was made"]
    for t, name, key in ((1, "generate", "  policy: was 'model:"), (0, "evaluate", "  policies: was ['model:")):
        lines = stale_lines(relaunch(ctx), t, name)
        i = next(i for i, x in enumerate(lines) if x.startswith(key))
        assert lines[i + 1:i + 4] == named, lines
        assert lines[-1].startswith("Nothing was reused or overwritten.")


def test_base_weights_hashed_by_an_older_version_still_say_which_folder_changed(ctx):
    model = Path(ctx.recipe.policy.model)
    commit_real(ctx, 1, generate)
    (ctx.run_dir / ".base_policy.contents.json").unlink()  # an older sppo-nemo kept no file lists
    (model / "config.json").write_text('{"hidden_size": 8}')
    lines = stale_lines(relaunch(ctx), 1, "generate")
    assert f"    the files of policy.model ({model}) changed since this stage was made (which ones was not " \
           f"recorded then)" in lines, lines
