"""Recipe loading and validation: every malformed recipe is refused before anything runs, with
one message per problem that names the dotted key and says how to fix it. No model is loaded;
the whole file runs in a few seconds (the CLI cases start a Python subprocess each)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.loading.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
SHIPPED = RECIPES / "smollm2_sppo_3iter.yaml"
SHIPPED_RECIPES = sorted(RECIPES.glob("**/*.yaml"))
BASE = f"base: {SHIPPED}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problem_for(exc: RecipeError, prefix: str) -> str:
    """The one problem that starts with `prefix` (the dotted key); fails listing them all if none."""
    hits = [p for p in exc.problems if p.startswith(prefix)]
    assert hits, f"no problem starts with {prefix!r}; problems: {exc.problems}"
    return hits[0]


# ------------------------------------------------------------------ malformed recipes


@dataclass
class Bad:
    id: str
    yaml: str  # "@TMP@" is replaced by the test's tmp_path
    prefix: Optional[str]  # a problem must start with this (the dotted key + ':'); None: see `fixes` only
    fixes: tuple[str, ...]  # substrings (case-insensitive) of that problem: what is wrong / the fix
    setup: Optional[Callable[[Path], None]] = None
    overrides: tuple[str, ...] = ()
    marks: tuple = field(default_factory=tuple)


def _bad_jsonl(tmp: Path) -> None:
    write(tmp / "bad.jsonl",
          '{"id": "a", "prompt": "one"}\n'
          '{"id": "b", "prompt": "two"}\n'
          '{"id": "c", "prompt": "three"\n'
          '{"id": "d", "prompt": "four"}\n')


def _non_utf8_jsonl(tmp: Path) -> None:
    (tmp / "latin1.jsonl").write_bytes(b'{"id": "a", "prompt": "caf\xe9"}\n')


def _jsonl_named_parquet(tmp: Path) -> None:
    write(tmp / "prompts.parquet", '{"id": "a", "prompt": "one"}\n')


def _empty_parquet(tmp: Path) -> None:
    (tmp / "empty.parquet").write_bytes(b"")


def _model_dir_without_config(tmp: Path) -> None:
    (tmp / "model").mkdir()
    (tmp / "model" / "model.safetensors").write_bytes(b"")


def _cycle(tmp: Path) -> None:
    write(tmp / "a.yaml", "base: b.yaml\nK: 3\n")
    write(tmp / "b.yaml", "base: a.yaml\nT: 2\n")


BAD = [
    Bad("duplicate_key", BASE + "trainer:\n  lr: 1.0e-6\n  lr: 2.0e-6\n", None, ("'lr' is given twice", "keep one")),
    Bad("infinite_eta", BASE + "eta: .inf\n", "eta:", ("finite",)),
    Bad("nan_lr", BASE + "trainer:\n  lr: .nan\n", "trainer.lr:", ("finite",)),
    Bad("name_dotdot", BASE + "name: ..\n", "name:", ("not '.' or '..'",)),
    Bad("name_with_separator", BASE + "name: a/b\n", "name:", ("without '/'",)),
    Bad("negative_seed", BASE + "seed: -1\n", "seed:", ("[0, 2**32)",)),
    Bad("missing_section_required_key", "name: x\n", "data.split_size:", ("required",)),
    # --- structure: unknown keys, wrong types
    Bad("unknown_top_level_key", BASE + "etta: 500\n", "etta:", ("unknown key", "did you mean 'eta'")),
    Bad("unknown_nested_key", BASE + "trainer:\n  learning_rate: 1.0e-6\n", "trainer.learning_rate:",
        ("unknown key", "lr")),
    Bad("unknown_nested_key_typo", BASE + "trainer:\n  lrr: 1.0e-6\n", "trainer.lrr:",
        ("unknown key", "did you mean 'trainer.lr'")),
    Bad("K_not_an_int", BASE + "K: five\n", "K:", ("must be a int", "five")),
    Bad("lr_not_a_float", BASE + "trainer:\n  lr: fast\n", "trainer.lr:", ("must be a float", "fast")),
    Bad("max_new_tokens_float", BASE + "sampling:\n  max_new_tokens: 1.5\n", "sampling.max_new_tokens:",
        ("must be a int", "1.5")),
    Bad("bool_given_as_string", BASE + "evaluation:\n  enabled: 'sometimes'\n", "evaluation.enabled:",
        ("must be a bool", "sometimes")),
    Bad("section_not_a_mapping", BASE + "trainer: 5\n", "trainer:", ("expected a mapping",)),
    Bad("name_missing", "data:\n  split_size: 8\n", "name:", ("required", "add `name:")),
    Bad("name_null", BASE + "name: null\n", "name:", ("must be a str", "give a value")),
    # --- cross-field values
    Bad("K_below_2", BASE + "K: 1\n", "K:", ("at least 2",)),
    Bad("T_zero", BASE + "T: 0\n", "T:", ("set T to 1 or more",)),
    Bad("eta_zero", BASE + "eta: 0\n", "eta:", ("must be positive",)),
    Bad("eta_negative", BASE + "eta: -1.0\n", "eta:", ("must be positive",)),
    # builtin data: 530 prompts, 64 held out, splits of 64 → 7 splits
    Bad("T_more_than_splits", BASE + "T: 8\n", "T:", ("only 7 split", "lower T or data.split_size")),
    Bad("split_size_larger_than_data", BASE + "data:\n  split_size: 1000\n", "data.split_size:",
        ("530 prompts", "lower data.split_size")),
    Bad("split_size_zero", BASE + "data:\n  split_size: 0\n", "data.split_size:", ("at least 1",)),
    Bad("missing_data_file", BASE + "data:\n  prompts: @TMP@/no_such_prompts.jsonl\n", "data.prompts:",
        ("no_such_prompts.jsonl", "does not exist", "give a .jsonl")),
    Bad("malformed_jsonl_line", BASE + "data:\n  prompts: @TMP@/bad.jsonl\n", "data.prompts:",
        ("bad.jsonl:3", "not valid json", "fix or delete that line"), setup=_bad_jsonl),
    Bad("missing_policy_dir", BASE + "policy:\n  model: @TMP@/no_such_model\n", "policy.model:",
        ("no_such_model", "not a directory", "hf checkpoint directory")),
    Bad("policy_dir_without_config", BASE + "policy:\n  model: @TMP@/model\n", "policy.model:",
        ("no config.json", "hf checkpoint"), setup=_model_dir_without_config),
    Bad("dpo_with_selection_all", BASE + "loss:\n  type: dpo\n  selection: all\n", "loss.selection:",
        ("dpo", "loss.selection=best_worst")),
    Bad("estimated_log_z_with_ipo", BASE + "loss:\n  type: ipo\n  log_z: estimated\n", "loss.log_z:",
        ("estimated", "loss.type=sppo or loss.log_z=constant")),
    Bad("top_p_above_1", BASE + "sampling:\n  top_p: 1.5\n", "sampling.top_p:", ("1.5", "(0, 1]")),
    Bad("temperature_zero", BASE + "sampling:\n  temperature: 0.0\n", "sampling.temperature:", ("must be > 0",)),
    Bad("max_length_not_above_max_prompt_length",
        BASE + "trainer:\n  max_prompt_length: 320\n  max_length: 320\n", "trainer.max_length:",
        ("max_prompt_length=320", "raise max_length")),
    Bad("unknown_loss_type", BASE + "loss:\n  type: kto\n", "loss.type:",
        ("'kto'", "sppo, sppo_pair, dpo, ipo")),
    Bad("unknown_trainer_backend", BASE + "trainer:\n  backend: deepspeed\n", "trainer.backend:",
        ("'deepspeed'", "torch, megatron")),
    # SmolLM2-135M has 9 heads and 3 key/value heads, 30 layers
    Bad("megatron_tp_splits_no_kv_heads", BASE + "trainer:\n  backend: megatron\n  megatron:\n    tensor_parallel: 2\n",
        "trainer.megatron.tensor_parallel:", ("9 attention heads", "not divisible by tensor parallel 2")),
    Bad("megatron_pp_splits_no_layers", BASE + "trainer:\n  backend: megatron\n  megatron:\n    pipeline_parallel: 4\n",
        "trainer.megatron.pipeline_parallel:", ("30 layers", "pipeline parallel 4")),
    Bad("megatron_world_size", BASE + "trainer:\n  backend: megatron\n  megatron:\n    tensor_parallel: 3\n"
        "    nproc_per_node: 8\n", "trainer.megatron.nproc_per_node:", ("8 is not a multiple", "TP·PP·DP")),
    Bad("megatron_dp_contradicts_procs", BASE + "trainer:\n  backend: megatron\n  megatron:\n    data_parallel: 2\n"
        "    nproc_per_node: 4\n", "trainer.megatron.data_parallel:", ("gives 4", "world size must be")),
    Bad("megatron_multinode_needs_srun", BASE + "trainer:\n  backend: megatron\n  megatron:\n    nnodes: 2\n"
        "    nproc_per_node: 8\n", "trainer.megatron.launcher:", ("launcher=srun",)),
    Bad("megatron_global_batch", BASE + "trainer:\n  backend: megatron\n  batch_size: 8\n  megatron:\n"
        "    global_batch_size: 12\n", "trainer.megatron.global_batch_size:", ("not a multiple", "batch_size·DP")),
    Bad("megatron_recompute_choice", BASE + "trainer:\n  backend: megatron\n  megatron:\n    recompute: some\n",
        "trainer.megatron.recompute:", ("'some'", "selective")),
    Bad("megatron_unknown_key", BASE + "trainer:\n  megatron:\n    tensor_paralel: 2\n",
        "trainer.megatron.tensor_paralel", ("tensor_parallel",)),
    Bad("unknown_generation_backend", BASE + "generation:\n  backend: sglang\n", "generation.backend:",
        ("'sglang'", "hf", "vllm")),
    # --- the file itself
    Bad("invalid_yaml_syntax", BASE + "trainer:\n  lr: [1.0e-6, 2.0e-6\n", None, ("not valid yaml", "line")),
    Bad("base_cycle", "base: @TMP@/a.yaml\nname: cyc\n", None, ("cycle", "remove one `base:`"), setup=_cycle),
    Bad("base_file_missing", "base: no_such_base.yaml\n", None, ("no_such_base.yaml", "not found")),
    Bad("top_level_is_a_list", "- name: x\n- K: 3\n", None, ("must be a mapping",)),
    Bad("override_without_equals", BASE, "override 'T2':", ("expected key=value",), overrides=("T2",)),
    Bad("override_unknown_key", BASE, "trainer.learning_rate:", ("unknown key",),
        overrides=("trainer.learning_rate=1e-6",)),
    Bad("override_wrong_type", BASE, "trainer.lr:", ("must be a float", "fast"), overrides=("trainer.lr=fast",)),
    # --- bugs these tests found, now fixed
    Bad("override_value_unbalanced_bracket", BASE, "name", ("name",), overrides=("name=[abc",)),
    Bad("non_utf8_jsonl", BASE + "data:\n  prompts: @TMP@/latin1.jsonl\n", "data.prompts:",
        ("latin1.jsonl",), setup=_non_utf8_jsonl),
    Bad("top_level_is_a_scalar", "5\n", None, ("mapping",)),
    Bad("best_of_without_evaluation", BASE + "evaluation:\n  enabled: false\n  best_of: 4\n", "evaluation.best_of:",
        ("evaluation.enabled is false", "set evaluation.enabled=true or remove evaluation.best_of")),
    Bad("prompt_file_without_evaluation", BASE + "evaluation:\n  enabled: false\n  prompts: alpaca.json\n",
        "evaluation.prompts:", ("evaluation.enabled is false", "set evaluation.enabled=true or remove evaluation.prompts")),
    Bad("parquet_file_that_is_json_lines", BASE + "data:\n  prompts: @TMP@/prompts.parquet\n", "data.prompts:",
        ("prompts.parquet: not a readable Parquet file", "magic bytes", "rename it to .jsonl"),
        setup=_jsonl_named_parquet),
    Bad("parquet_file_empty", BASE + "data:\n  prompts: @TMP@/empty.parquet\n", "data.prompts:",
        ("empty.parquet: not a readable Parquet file", "0 bytes", "to_parquet"), setup=_empty_parquet),
    # a list key written as a mapping, or with an item that is not a string: the key and the form
    Bad("launch_env_as_a_mapping", BASE + "launch:\n  env: {HF_HOME: /x, A: b}\n", "launch.env:",
        ("got dict", "list of KEY=VALUE strings", "env: [HF_HOME=/x, A=b]")),
    Bad("container_mount_not_a_string", BASE + "launch:\n  container_mounts: [/a:/b, 5]\n",
        "launch.container_mounts:", ("item 1", "got int 5", "/host/path:/container/path[:ro]")),
    Bad("launch_setup_a_string", BASE + "launch:\n  setup: module load cuda\n", "launch.setup:",
        ("must be a list", "a shell line")),
    Bad("srun_args_a_mapping", BASE + "trainer:\n  megatron:\n    srun_args: {a: 1}\n", "trainer.megatron.srun_args:",
        ("must be a list", "an srun flag")),
    Bad("removed_judge_launcher", BASE + "judge:\n  launcher: srun\n", "judge.launcher:",
        ("no longer a key", "sppo-run's own node", "judge.device", "remove it")),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in BAD])
def test_malformed_recipe_is_refused_with_key_and_fix(case: Bad, tmp_path: Path) -> None:
    if case.setup:
        case.setup(tmp_path)
    path = write(tmp_path / "bad.yaml", case.yaml.replace("@TMP@", str(tmp_path)))
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path, list(case.overrides))
    exc = info.value
    assert exc.problems, "a RecipeError must carry at least one problem"
    message = str(exc)
    for p in exc.problems:  # the message lists every problem
        assert p in message
    if case.prefix is not None:
        text = problem_for(exc, case.prefix)
    else:
        text = message
    for fix in case.fixes:
        assert fix.lower() in text.lower(), f"{fix!r} not in {text!r}"


def test_error_names_the_recipe_file(tmp_path: Path) -> None:
    path = write(tmp_path / "k1.yaml", BASE + "K: 1\n")
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: 1 problem(s)")


# --------------------------------------------------------------- all errors at once


@pytest.mark.parametrize(
    "body, keys",
    [
        pytest.param(
            BASE + "K: 1\neta: 0\nsampling:\n  top_p: 1.5\ntrainer:\n  lr: -1.0\n",
            ["K:", "eta:", "sampling.top_p:", "trainer.lr:"],
            id="values",
        ),
        pytest.param(
            BASE + "etta: 5\nK: five\ntrainer:\n  learning_rate: 1.0e-6\nsampling:\n  max_new_tokens: 1.5\n",
            ["etta:", "K:", "trainer.learning_rate:", "sampling.max_new_tokens:"],
            id="structure",
        ),
        pytest.param(
            BASE + "T: 0\nloss:\n  type: dpo\n  selection: all\npolicy:\n  model: /no/such/model/dir\n"
                   "trainer:\n  max_length: 100\n",
            ["T:", "loss.selection:", "policy.model:", "trainer.max_length:"],
            id="combinations",
        ),
    ],
)
def test_all_problems_reported_at_once(body: str, keys: list[str], tmp_path: Path) -> None:
    path = write(tmp_path / "four.yaml", body)
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path)
    exc = info.value
    assert len(exc.problems) >= 4, exc.problems
    for key in keys:
        problem_for(exc, key)
        assert key in str(exc)


# ------------------------------------------------------------------------------ CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "sppo_nemo", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
    )


@pytest.mark.parametrize(
    "body, overrides, key",
    [
        pytest.param(BASE + "K: 1\n", (), "K:", id="K_below_2"),
        pytest.param(BASE + "etta: 5\n", (), "etta:", id="unknown_key"),
        pytest.param(BASE, ("trainer.learning_rate=1e-6",), "trainer.learning_rate:", id="unknown_override"),
        pytest.param(BASE, ("name=[abc",), "name", id="unparsable_override"),
        pytest.param(BASE + "launch:\n  env: {HF_HOME: /x}\n", (), "launch.env: must be a list", id="env_mapping"),
        pytest.param(BASE + "launch:\n  container_mounts: [/a:/b, 5]\n", (), "launch.container_mounts: item 1",
                     id="mount_not_a_string"),
    ],
)
def test_cli_validate_bad_recipe_exits_2_without_traceback(body, overrides, key, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", body)
    proc = run_cli(str(path), *overrides, "--validate", cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert key in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_validate_default_recipe_exits_0(tmp_path: Path) -> None:
    proc = run_cli(str(SHIPPED), "--validate", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: smollm2_sppo_3iter" in proc.stdout
    assert "valid" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------- overrides


def test_exponent_floats_in_yaml_are_floats(tmp_path: Path) -> None:
    r = recipe_mod.load(write(tmp_path / "r.yaml", BASE + "trainer:\n  lr: 1e-6\n"))
    assert r.trainer.lr == 1e-6 and isinstance(r.trainer.lr, float)


def test_overrides_set_typed_values() -> None:
    r = recipe_mod.load(SHIPPED, ["trainer.lr=1e-6", "T=2"])
    assert r.trainer.lr == pytest.approx(1e-6)
    assert isinstance(r.trainer.lr, float)
    assert r.T == 2 and isinstance(r.T, int)
    # everything else stays as in the file
    plain = recipe_mod.load(SHIPPED)
    assert plain.T == 3 and plain.trainer.lr == pytest.approx(2.0e-5)
    assert r.K == plain.K and r.sampling == plain.sampling and r.data == plain.data


def test_overrides_beat_base_and_child(tmp_path: Path) -> None:
    child = write(tmp_path / "child.yaml", BASE + "K: 6\n")
    r = recipe_mod.load(child, ["K=3", "loss.selection=all"])
    assert r.K == 3
    assert r.loss.selection == "all"


@pytest.mark.parametrize(
    "override, prefix, hint",
    [
        ("trainer.learning_rate=1e-6", "trainer.learning_rate:", "unknown key"),
        ("etta=5", "etta:", "did you mean 'eta'"),
        ("sampling.topp=0.9", "sampling.topp:", "did you mean 'sampling.top_p'"),
    ],
)
def test_override_of_unknown_key_is_an_error(override: str, prefix: str, hint: str) -> None:
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(SHIPPED, [override])
    assert hint in problem_for(info.value, prefix)


def test_override_problems_join_file_problems(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", BASE + "etta: 5\n")
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(path, ["T2", "trainer.lrr=1"])
    for prefix in ("etta:", "override 'T2':", "trainer.lrr:"):
        problem_for(info.value, prefix)


# -------------------------------------------------------------------- shipped recipes


@pytest.fixture
def tiny_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "tiny-llama"
    d.mkdir()
    (d / "config.json").write_text("{}", encoding="utf-8")
    monkeypatch.setenv("SPPO_TINY_MODEL", str(d))
    return d


def test_recipes_were_found() -> None:
    names = {p.relative_to(RECIPES).as_posix() for p in SHIPPED_RECIPES}
    assert {"smollm2_sppo_3iter.yaml", "ci/tiny_sppo.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_RECIPES, ids=[p.relative_to(RECIPES).as_posix() for p in SHIPPED_RECIPES])
def test_shipped_recipe_loads_and_validates(path: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    r = recipe_mod.load(path)
    assert isinstance(r, recipe_mod.Recipe)
    assert r.name == path.stem
    assert recipe_mod.check(r, base_dir=path.parent) == []
    if path.name == "tiny_sppo.yaml":
        assert Path(r.policy.model) == tiny_model_dir.resolve()
    # what `--validate` prints is itself a valid recipe that loads to the same thing
    again = recipe_mod.load(write(tmp_path / "resolved.yaml", recipe_mod.to_yaml(r)))
    assert recipe_mod.as_dict(again) == recipe_mod.as_dict(r)


# ------------------------------------------------------------------ base: inheritance


@pytest.mark.parametrize("relative", [False, True], ids=["absolute_base", "relative_base"])
def test_child_inherits_everything_but_what_it_changes(relative: bool, tmp_path: Path) -> None:
    base = os.path.relpath(SHIPPED, tmp_path) if relative else str(SHIPPED)
    child = write(tmp_path / "dpo.yaml", f"base: {base}\nloss:\n  type: dpo\n  selection: best_worst\n")
    got = recipe_mod.as_dict(recipe_mod.load(child))
    want = recipe_mod.as_dict(recipe_mod.load(SHIPPED))
    want["loss"]["type"] = "dpo"
    want["loss"]["selection"] = "best_worst"
    assert got == want


def test_inheritance_merges_sections_key_by_key_and_chains(tmp_path: Path) -> None:
    write(tmp_path / "mid.yaml", BASE + "name: mid\ntrainer:\n  lr: 1.0e-6\n")
    leaf = write(tmp_path / "leaf.yaml", "base: mid.yaml\nname: leaf\ntrainer:\n  epochs: 2\n")
    r = recipe_mod.load(leaf)
    shipped = recipe_mod.load(SHIPPED)
    assert r.name == "leaf"
    assert r.trainer.lr == pytest.approx(1e-6)  # from mid
    assert r.trainer.epochs == 2  # from leaf
    assert r.trainer.max_length == shipped.trainer.max_length  # from the shipped base
    assert r.K == shipped.K and r.data == shipped.data


def test_child_problems_are_checked_after_merge(tmp_path: Path) -> None:
    # the base's best_worst selection makes dpo valid; a child switching to `all` is refused
    child = write(tmp_path / "child.yaml", BASE + "loss:\n  type: dpo\n")
    assert recipe_mod.load(child).loss.type == "dpo"
    child2 = write(tmp_path / "child2.yaml", BASE + "loss:\n  type: dpo\n  selection: all\n")
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(child2)
    problem_for(info.value, "loss.selection:")


def test_relative_paths_in_base_are_relative_to_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "prompts.jsonl",
          "".join(f'{{"id": "p{i}", "prompt": "prompt {i}"}}\n' for i in range(4)))
    write(tmp_path / "sub" / "base.yaml",
          BASE + "data:\n  prompts: prompts.jsonl\n  eval_size: 2\n  split_size: 2\nT: 1\n")
    assert recipe_mod.load(tmp_path / "sub" / "base.yaml").data.prompts == str((tmp_path / "sub" / "prompts.jsonl").resolve())
    child = write(tmp_path / "child.yaml", "base: sub/base.yaml\nname: child\n")
    r = recipe_mod.load(child)
    assert r.data.prompts == str((tmp_path / "sub" / "prompts.jsonl").resolve())


def test_a_problem_in_a_base_file_names_that_file(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", BASE + "trainer:\n  warmup_ratio: 2.0\n")
    child = write(tmp_path / "child.yaml", f"base: {base}\nname: child\nK: 1\n")
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(child)
    assert problem_for(info.value, "trainer.warmup_ratio:").endswith(f"(set in {base})")
    assert "set in" not in problem_for(info.value, "K:")  # set in the child itself
