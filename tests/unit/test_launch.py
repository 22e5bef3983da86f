"""The launch section's checks, the job plan's scripts, and --status read from a run directory's
records (the queue stubbed: which job ids Slurm still holds)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.schema.config import LaunchConfig, Recipe
from sppo_nemo.schema.errors import RecipeError
from sppo_nemo.loading import launch_checks as check
from sppo_nemo.launch import plan, records, submit

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "smollm2_sppo_3iter.yaml"


def problems(*overrides: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(RECIPE, list(overrides), check_data=False)
    return info.value.problems


def test_the_default_is_inline_and_valid():
    r = recipe_mod.load(RECIPE, [], check_data=False)
    assert r.launch.executor == "inline" and check.check(r) == []


def test_every_launch_problem_is_reported_at_once_with_its_key():
    got = problems("launch.executor=slurm", "launch.generate.nodes=2", "launch.train.time=soon",
                   "launch.env=[NOEQUALS]", "launch.container_mounts=[relative:/x]", "launch.tunnel=ssh",
                   "launch.job_dir=/scratch/nemo_run/x", "launch.annotate.mem=lots")
    text = "\n".join(got)
    for key in ("launch.generate.nodes: 2", "launch.train.time: 'soon'", "launch.env: item 0",
                "launch.container_mounts: item 0", "launch.host: tunnel=ssh", "launch.user:", "launch.remote_dir:",
                "launch.job_dir: '/scratch/nemo_run/x' has a folder named nemo_run", "launch.annotate.mem: 'lots'"):
        assert key in text, (key, text)


def test_a_multi_node_train_job_needs_megatron_over_srun_and_the_other_way_round():
    assert any("launch.train.nodes: 2 nodes need the megatron trainer" in p
               for p in problems("launch.executor=slurm", "launch.train.nodes=2"))
    assert any("set launch.train.nodes=2" in p
               for p in problems("launch.executor=slurm", "trainer.backend=megatron", "trainer.megatron.launcher=srun",
                                 "trainer.megatron.nnodes=2", "trainer.megatron.nproc_per_node=1"))
    r = recipe_mod.load(RECIPE, ["launch.executor=slurm", "launch.train.nodes=2", "trainer.backend=megatron",
                                 "trainer.megatron.launcher=srun", "trainer.megatron.nnodes=2",
                                 "trainer.megatron.nproc_per_node=1"], check_data=False)
    assert r.launch.train.nodes == 2


def test_slurm_keys_without_slurm_and_docker_without_an_image_are_refused():
    assert any("launch.partition: set, but launch.executor=inline" in p for p in problems("launch.partition=gpu"))
    assert any("the docker executor needs an image" in p for p in problems("launch.executor=docker"))


@pytest.mark.parametrize("limit", ["30", "04:00:00", "1-00:00:00", "2-12", "90:00"])
def test_slurm_time_formats_pass(limit):
    r = recipe_mod.load(RECIPE, [f"launch.train.time='{limit}'" if ":" not in limit else f"launch.train.time={limit}"],
                        check_data=False)
    assert check.check(r) == []


def test_the_job_script_changes_directory_exports_and_execs_sppo_run(tmp_path):
    la = LaunchConfig(executor="slurm", command="/opt/venv/bin/sppo-run", env=["HF_HOME=/shared/hf cache"],
                      setup=["module load cuda"])
    cmd = plan.stage_command(la, tmp_path / "r.yaml", ["T=2", "trainer.lr=1e-6"], "iter_02/train")
    body = plan.script(la, cmd, tmp_path / "work dir", "iter_02/train")
    lines = body.splitlines()
    assert lines[0] == f"cd {shlex.quote(str(tmp_path / 'work dir'))}"
    assert lines[1] == "export SPPO_STAGE=iter_02/train"
    assert lines[2] == "export HF_HOME='/shared/hf cache'" and lines[3] == "module load cuda"
    assert shlex.split(lines[4]) == ["exec", "/opt/venv/bin/sppo-run", str((tmp_path / "r.yaml").resolve()), "T=2",
                                     "trainer.lr=1e-6", "--stage", "iter_02/train", "--no-progress"]
    assert plan.task_name("iter_02/train") == "iter02-train"


def test_the_entry_point_is_sppo_run_in_an_image_and_this_interpreter_otherwise(monkeypatch):
    assert plan.entry_point(LaunchConfig(container_image="img.sqsh")) == ["sppo-run"]
    monkeypatch.setattr("sys.argv", ["/nowhere/__main__.py"])
    ep = plan.entry_point(LaunchConfig())
    assert ep[1:] == ["-m", "sppo_nemo"]


class FakeCtx:
    def __init__(self, run_dir: Path, executor: str = "slurm"):
        self.run_dir = run_dir
        self.recipe = Recipe(name="x")
        self.recipe.launch.executor = executor


def _setup(tmp_path, monkeypatch, held: dict[str, str], markers: dict[str, str]):
    ctx = FakeCtx(tmp_path)
    labels = list(markers)
    records.add_submission(tmp_path, {"id": "sppo-x_1", "dir": str(tmp_path), "executor": "slurm",
                                      "time": time.time(), "jobs": [
                                          {"stage": lab, "name": plan.task_name(lab), "job_id": str(10 + i),
                                           "job_dir": str(tmp_path / plan.task_name(lab))}
                                          for i, lab in enumerate(labels)]})
    monkeypatch.setattr(submit.squeue, "local_queue", lambda: held)
    monkeypatch.setattr(submit, "stage_states",
                        lambda c: [(int(lab[5:7]), lab.split("/")[1], state) for lab, state in markers.items()])
    return ctx


def _record(run_dir: Path, label: str, job_id: str, state: str, exit_code=0, message=""):
    rec = {"stage": label, "state": "running", "started": time.time(), "host": "n1", "pid": 1, "job_id": job_id}
    records._write(records.stage_record_path(run_dir, label), rec)
    if state != "running":
        records.stage_ended(run_dir, rec, state, exit_code, message)


def test_status_names_each_stage_from_the_records_and_the_queue(tmp_path, monkeypatch):
    markers = {"iter_00/evaluate": "done", "iter_01/generate": "partial (will resume)", "iter_01/annotate": "todo",
               "iter_01/build": "todo", "iter_01/train": "todo", "iter_01/evaluate": "todo"}
    ctx = _setup(tmp_path, monkeypatch, {"14": "PENDING (Dependency)"}, markers)
    _record(tmp_path, "iter_00/evaluate", "10", "done")
    _record(tmp_path, "iter_01/generate", "11", "terminated", 143, "terminated")
    _record(tmp_path, "iter_01/annotate", "12", "failed", 1, "sppo-run: judge.model: not found\nmore")
    _record(tmp_path, "iter_01/build", "13", "running")  # killed outright: no end record, not queued
    (tmp_path / "iter01-annotate").mkdir()
    log = tmp_path / "iter01-annotate" / "log-sppo-x.iter01-annotate_12_0.out"
    log.write_text("...")
    lines = {line.split()[0]: line for line in submit.status_lines(ctx)[2:]}
    assert "done  [job 10" in lines["iter_00/evaluate"]
    assert "TERMINATED" in lines["iter_01/generate"] and "partial work kept" in lines["iter_01/generate"]
    assert "FAILED (exit 1): sppo-run: judge.model: not found" in lines["iter_01/annotate"]
    assert f"log {log}" in lines["iter_01/annotate"] and "more" not in lines["iter_01/annotate"]
    assert "LOST" in lines["iter_01/build"]
    assert "queued: PENDING (Dependency)" in lines["iter_01/train"]
    assert "NOT RUN" in lines["iter_01/evaluate"]


def test_a_record_of_an_earlier_job_does_not_speak_for_the_resubmitted_one(tmp_path, monkeypatch):
    ctx = _setup(tmp_path, monkeypatch, {"10": "RUNNING"}, {"iter_01/train": "todo"})
    _record(tmp_path, "iter_01/train", "7", "failed", 1, "old failure")
    line = submit.status_lines(ctx)[2]
    assert "running" in line and "old failure" not in line


def test_submit_refuses_while_the_last_submissions_jobs_are_queued(tmp_path, monkeypatch):
    ctx = _setup(tmp_path, monkeypatch, {"10": "RUNNING"}, {"iter_01/train": "todo"})
    monkeypatch.setattr(submit, "_preflight", lambda c: None)
    monkeypatch.setattr(submit.nemorun, "available", lambda: None)
    with pytest.raises(submit.UserError, match=r"still in the queue \(10 RUNNING\)"):
        submit.submit(ctx, tmp_path / "r.yaml", [])


def test_the_commands_need_a_job_executor(tmp_path):
    with pytest.raises(submit.UsageError, match="launch.executor is inline"):
        submit.status(FakeCtx(tmp_path, executor="inline"))


def test_a_torn_submissions_line_loses_only_that_record(tmp_path):
    records.add_submission(tmp_path, {"id": "a", "jobs": [{"stage": "iter_01/train", "job_id": "1"}]})
    with (tmp_path / "jobs" / "submissions.jsonl").open("a") as fh:
        fh.write('{"id": "b", "jobs": [')
    assert [s["id"] for s in records.submissions(tmp_path)] == ["a"]
    assert records.last_job_of(tmp_path, "iter_01/train")["job_id"] == "1"
    assert json.loads((tmp_path / "jobs" / "submissions.jsonl").read_text().splitlines()[0])["id"] == "a"


def test_a_time_limit_in_a_recipe_file_stays_a_time_not_a_base_60_integer(tmp_path):
    """YAML 1.1 reads `1:00:00` as 3600; recipes read it as YAML 1.2 does, as written."""
    (tmp_path / "r.yaml").write_text(f"base: {RECIPE}\nlaunch:\n  train:\n    time: 1:00:00\n")
    r = recipe_mod.load(tmp_path / "r.yaml", ["launch.evaluate.time=2:30:00"], check_data=False)
    assert (r.launch.train.time, r.launch.evaluate.time) == ("1:00:00", "2:30:00")


def test_generation_spans_nodes_only_with_vllm_engines_over_srun():
    assert any("launch.generate.nodes: 2; the generate stage runs on one node" in p
               for p in problems("launch.executor=slurm", "launch.generate.nodes=2"))
    r = recipe_mod.load(RECIPE, ["launch.executor=slurm", "launch.generate.nodes=2", "generation.backend=vllm",
                                 "generation.vllm.launcher=srun"], check_data=False)
    assert r.launch.generate.nodes == 2


def test_squeue_output_gives_the_held_jobs_with_the_reason_of_the_pending():
    from sppo_nemo.launch import squeue

    text = "11|COMPLETED|None\n12|RUNNING|None\n13|PENDING|Dependency\n14|CANCELLED|DependencyNeverSatisfied\n15|PENDING|None\n"
    assert squeue.parse(text) == {"12": "RUNNING", "13": "PENDING (Dependency)", "15": "PENDING"}
