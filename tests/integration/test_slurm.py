"""The cluster modes against a real Slurm (Debian's slurmctld/slurmd 22.05 + munge) started for
this module on two fake nodes of one host (scripts/slurm/local.sh), and NeMo-Run 0.11 as the job
layer: chained jobs equal an inline run; a cancelled or failed stage is named by --status, its
dependants leave the queue, and resubmitting finishes with the same artifacts; the megatron train
stage across two nodes equals the one-process run; the one-allocation launcher; bad input. The
Local and Docker executors' foreground chains (NeMo-Run only, no Slurm needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sppo_nemo.launch import records
from tests.helpers import ROOT, TINY_RECIPE, cli_env, read_json, sppo_cmd
from cpu_patches.megatron_cpu import worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.slow]

SLURM = ["launch.executor=slurm"]
T1 = ["T=1"]


def run_env(tiny_model: Path, slurm: dict, **extra) -> dict:
    env = cli_env(tiny_model)
    env["SLURM_CONF"] = slurm["SLURM_CONF"]
    env.update(extra)
    return env


def cli(env: dict, *args, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, *args), env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sppo-run {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def squeue_held(env: dict) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def last_submission(run_dir: Path) -> dict:
    lines = (run_dir / "jobs" / "submissions.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def wait_for_jobs(env: dict, run_dir: Path, timeout: float = 400) -> None:
    ids = {str(j["job_id"]) for j in last_submission(run_dir)["jobs"]}
    deadline = time.time() + timeout
    while ids & squeue_held(env):
        assert time.time() < deadline, f"jobs {ids & squeue_held(env)} still queued after {timeout}s"
        time.sleep(0.5)


def digests(run_dir: Path, stages: list[str] | None = None) -> dict[str, str]:
    found = {str(p.parent.relative_to(run_dir)): read_json(p)["digest"]
             for p in sorted(run_dir.glob("iter_*/*/manifest.json"))}
    return {k: v for k, v in found.items() if stages is None or k in stages}


STAGES = ["iter_00/evaluate", "iter_01/generate", "iter_01/annotate", "iter_01/build", "iter_01/train",
          "iter_01/evaluate"]


def _from_inline(inline_t1: Path, out: Path, keep: int) -> Path:
    """A copy of the inline run with only its first ``keep`` stages finished."""
    run_dir = out / "tiny_sppo"
    shutil.copytree(inline_t1, run_dir, symlinks=True)
    for label in STAGES[keep:]:
        shutil.rmtree(run_dir / label)
    return run_dir


@pytest.fixture(scope="module")
def inline_t1(tiny_model, tmp_path_factory) -> Path:
    """The tiny recipe, T=1, run inline: what every mode must reproduce."""
    out = tmp_path_factory.mktemp("inline")
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={out}", *T1), env=cli_env(tiny_model),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out / "tiny_sppo"


def test_chained_jobs_reproduce_the_inline_run(tiny_model, slurm, inline_t1, tmp_path):
    env = run_env(tiny_model, slurm)
    args = [f"output_dir={tmp_path}", *T1, *SLURM]
    started = time.time()
    proc = cli(env, *args, "--submit")
    assert "submitted 6 job(s)" in proc.stdout and "(after iter_01/train)" in proc.stdout
    run_dir = tmp_path / "tiny_sppo"
    sub = last_submission(run_dir)
    assert [j["stage"] for j in sub["jobs"]] == ["iter_00/evaluate", "iter_01/generate", "iter_01/annotate",
                                                  "iter_01/build", "iter_01/train", "iter_01/evaluate"]
    # the scripts NeMo-Run submitted chain on the job before and never leave dependants pending
    scripts = sorted(Path(sub["dir"]).glob("*_sbatch.sh"))
    assert len(scripts) == 6 and all("#SBATCH --kill-on-invalid-dep=yes" in p.read_text() for p in scripts)
    wait_for_jobs(env, run_dir)
    elapsed = time.time() - started
    assert digests(run_dir) == digests(inline_t1)  # byte-identical artifacts, stage by stage
    status = cli(env, *args, "--status").stdout
    assert status.count(" done  [job ") == 6, status
    # the figures of the note: queue-to-start gaps and each job's own time, against the inline stages
    recs = [read_json(run_dir / "jobs" / (j["stage"].replace("/", "-") + ".json")) for j in sub["jobs"]]
    gaps = [recs[0]["started"] - started] + [b["started"] - a["ended"] for a, b in zip(recs, recs[1:])]
    inline = {lab: read_json(inline_t1 / lab / "manifest.json")["seconds"] for lab in digests(inline_t1)}
    for rec, gap in zip(recs, gaps):
        print(f"  {rec['stage']:<17} start gap {gap:4.1f}s  job process {rec['ended'] - rec['started']:5.1f}s  "
              f"inline stage {inline[rec['stage']]:5.1f}s")
    print(f"chained T=1: submit -> first stage running {gaps[0]:.1f}s, all done {elapsed:.1f}s; inline stages "
          f"{sum(inline.values()):.1f}s")
    again = cli(env, *args, "--submit", check=False)
    assert again.returncode == 0 and "nothing to submit" in again.stderr


def test_a_cancelled_stage_is_named_and_resubmitting_finishes_it(tiny_model, slurm, inline_t1, tmp_path):
    """--cancel while the train job runs: the stage records the SIGTERM, the evaluate job leaves the
    queue with it; a second --submit sends only those two stages, and the artifacts equal the inline
    run's. (Mid-stage resuming of a cancelled generation is the chunk log's, tested with kill -9 in
    test_faults; the tiny generation is over in a second, too quick to cancel halfway here.)"""
    env = run_env(tiny_model, slurm)
    run_dir = _from_inline(inline_t1, tmp_path, keep=4)  # up to build: train and evaluate to go
    args = [f"output_dir={tmp_path}", *T1, *SLURM]
    assert "submitted 2 job(s)" in cli(env, *args, "--submit").stdout
    refused = cli(env, *args, "--submit", check=False)
    assert refused.returncode == 1 and "still in the queue" in refused.stderr
    record = run_dir / "jobs" / "iter_01-train.json"
    deadline = time.time() + 240
    while not record.exists():
        assert time.time() < deadline, cli(env, *args, "--status").stdout
        time.sleep(0.1)
    cancelled = cli(env, *args, "--cancel")
    assert "cancelled 2 job(s)" in cancelled.stdout, cancelled.stdout
    assert not ({str(j["job_id"]) for j in last_submission(run_dir)["jobs"]} & squeue_held(env))
    deadline = time.time() + 30
    while read_json(record)["state"] == "running":
        assert time.time() < deadline, read_json(record)
        time.sleep(0.2)
    status = cli(env, *args, "--status").stdout
    assert "iter_01/build     done" in status
    assert "iter_01/train     TERMINATED" in status and "log " in status, status
    assert "iter_01/evaluate  NOT RUN" in status
    proc = cli(env, *args, "--submit")
    assert "submitted 2 job(s)" in proc.stdout
    wait_for_jobs(env, run_dir)
    assert digests(run_dir) == digests(inline_t1)


def test_a_failed_stage_is_named_its_dependants_leave_the_queue_and_resubmit_finishes(
        tiny_model, slurm, inline_t1, tmp_path):
    env = run_env(tiny_model, slurm)
    flag = tmp_path / "fail-build"
    flag.touch()
    setup = f"launch.setup=['if [ $SPPO_STAGE = iter_01/build ] && [ -e {flag} ]; then echo on purpose; exit 3; fi']"
    args = [f"output_dir={tmp_path}", *T1, *SLURM, setup]
    run_dir = _from_inline(inline_t1, tmp_path, keep=3)  # up to annotate: build, train, evaluate to go
    assert "submitted 3 job(s)" in cli(env, *args, "--submit").stdout
    wait_for_jobs(env, run_dir, timeout=300)  # the later jobs must not stay pending
    status = cli(env, *args, "--status").stdout
    assert "iter_01/annotate  done" in status
    line = next(x for x in status.splitlines() if "iter_01/build" in x)
    assert "FAILED" in line and "log " in line, status
    log = Path(line.rsplit("log ", 1)[1].rstrip("]"))
    assert "on purpose" in log.read_text()
    assert "iter_01/train     NOT RUN" in status
    finished = {p: p.stat().st_mtime_ns for p in run_dir.glob("iter_0[01]/*/manifest.json")}
    flag.unlink()
    proc = cli(env, *args, "--submit")
    assert "submitted 3 job(s)" in proc.stdout  # only what is unfinished
    wait_for_jobs(env, run_dir)
    assert digests(run_dir) == digests(inline_t1)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()) and len(finished) == 3  # untouched


def _megatron(nodes: int) -> list[str]:
    # lr 1e-3: at the CI recipe's 1e-2 the tiny model's losses swing by 100x and amplify float-sum order
    return ["trainer.lr=1e-3", "trainer.backend=megatron", "trainer.megatron.global_batch_size=32",
            "trainer.megatron.nproc_per_node=1",
            f"trainer.megatron.nnodes={nodes}", f"trainer.megatron.launcher={'srun' if nodes > 1 else 'torchrun'}"]


def _train_losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "iter_01" / "train" / "metrics.jsonl").read_text().splitlines()]


def test_megatron_train_on_two_nodes_equals_the_one_process_run(tiny_model, slurm, inline_t1, tmp_path):
    """The train stage as one job on two nodes: sppo-run once on the first, the workers one per node
    through srun (gloo; the test-only CPU patches ride on PYTHONPATH), MASTER_ADDR the first node's
    address. Its losses equal one process training the same global batches."""
    one = _from_inline(inline_t1, tmp_path / "one", keep=4)
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={one.parent}", *T1, *_megatron(1), "--stage",
                                   "iter_01/train"), env=dict(cli_env(tiny_model), **_worker_vars()),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _from_inline(inline_t1, tmp_path / "two", keep=4)
    env = run_env(tiny_model, slurm, **_worker_vars())
    args = [f"output_dir={two.parent}", *T1, *SLURM, *_megatron(2), "launch.train.nodes=2"]
    proc = cli(env, *args, "--submit")
    assert "submitted 2 job(s)" in proc.stdout
    wait_for_jobs(env, two)
    assert (two / "iter_01" / "evaluate" / "_DONE").exists(), cli(env, *args, "--status").stdout
    train_job = last_submission(two)["jobs"][0]["job_id"]
    assert f"launch task StepId={train_job}." in (slurm["base"] / "log" / "slurmd-n2.log").read_text()
    a, b = _train_losses(one), _train_losses(two)
    rel = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    print(f"megatron on two nodes vs one process: max relative loss difference {rel:.1e} over {len(a)} steps")
    assert len(a) == len(b) and rel < 2e-4, (a, b)


def _worker_vars() -> dict:
    w = worker_env()
    return {"PYTHONPATH": w["PYTHONPATH"], "OMP_NUM_THREADS": "1"}


def test_the_one_allocation_launcher_resumes_a_run_inside_one_job(tiny_model, slurm, inline_t1, tmp_path):
    """sbatch --nodes=2 launchers/slurm_allocation.sbatch on a run finished up to build: sppo-run
    inline on the batch host resumes it, the train stage's workers on both nodes, and the finished
    stages are kept as they were."""
    run_dir = _from_inline(inline_t1, tmp_path, keep=4)
    kept = digests(run_dir)
    env = run_env(tiny_model, slurm, **_worker_vars(), SPPO_RUN=f"{sys.executable} -m sppo_nemo")
    log = tmp_path / "alloc.out"
    proc = subprocess.run(["sbatch", "--nodes=2", "--wait", f"--output={log}", str(ROOT / "launchers" /
                           "slurm_allocation.sbatch"), str(TINY_RECIPE), f"output_dir={tmp_path}", *T1,
                           "trainer.backend=megatron", "trainer.megatron.global_batch_size=32",
                           "trainer.megatron.nproc_per_node=1"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, f"{proc.stderr}\n{log.read_text()[-4000:] if log.exists() else ''}"
    job = proc.stdout.split()[-1]
    assert digests(run_dir, list(kept)) == kept and (run_dir / "iter_01" / "evaluate" / "_DONE").exists()
    assert "iter_01/build: done, skipped" in log.read_text()
    assert f"launch task StepId={job}." in (slurm["base"] / "log" / "slurmd-n2.log").read_text()
    resolved = (run_dir / "recipe.resolved.yaml").read_text()
    assert "launcher: srun" in resolved and "nnodes: 2" in resolved


def test_bad_input_ends_in_a_message(tiny_model, slurm, tmp_path):
    env = run_env(tiny_model, slurm)
    base = [f"output_dir={tmp_path}", *T1, *SLURM]
    bad = cli(env, *base, "launch.partition=nope", "--submit", check=False)
    assert bad.returncode == 1 and "invalid partition" in bad.stderr.lower() and "Traceback" not in bad.stderr
    assert not (tmp_path / "tiny_sppo" / "jobs" / "submissions.jsonl").exists()
    image = cli(env, *base, "launch.container_image=nvcr.io/nvidia/nemo:26.06", "--submit", check=False)
    assert image.returncode == 1 and "pyxis" in image.stderr
    no_slurm = dict(env, PATH=os.path.dirname(sys.executable) + ":/usr/bin/nonexistent")
    gone = cli(no_slurm, *base, "--submit", check=False)
    assert gone.returncode == 1 and "sbatch is not on PATH" in gone.stderr
    # refused halfway (build asks more memory than a node has): the jobs taken before are recorded
    half = cli(env, *base, "launch.build.mem=99G", "--submit", check=False)
    assert half.returncode == 1 and "Memory specification can not be satisfied" in half.stderr, half.stderr
    assert "submitted before the refusal" in half.stderr and "iter_01/annotate job" in half.stderr
    assert "cancelled 3 job(s)" in cli(env, *base, "launch.build.mem=99G", "--cancel").stdout


def test_a_launch_section_with_unknown_keys_is_a_recipe_error(tiny_model, tmp_path):
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", "launch.partiton=gpu",
                                   "launch.train.nodes=2", "--submit"),
                          env=cli_env(tiny_model), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "launch.partiton: unknown key; did you mean 'launch.partition'?" in proc.stderr
    assert "launch.train.nodes: 2 nodes need the megatron trainer" in proc.stderr


def _need_nemo_run() -> None:
    try:
        import nemo_run  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs NeMo-Run (slurm marker): {exc}; pip install -e '.[cluster]'")


def test_the_local_executor_runs_the_unfinished_stages_in_the_foreground(tiny_model, inline_t1, tmp_path):
    _need_nemo_run()
    run_dir = _from_inline(inline_t1, tmp_path, keep=5)
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", *T1, "launch.executor=local", "--submit"),
                          env=cli_env(tiny_model), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "iter_01/evaluate  done" in proc.stdout
    assert digests(run_dir) == digests(inline_t1)


def _local(tmp_path: Path, *extra: str) -> list[str]:
    return sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", *T1, "launch.executor=local", *extra, "--submit")


def test_the_local_executor_runs_a_fresh_chain_to_its_end(tiny_model, inline_t1, tmp_path):
    """Every stage of T=1 unfinished: six tasks, one after the other in the foreground (NeMo-Run's
    sequential mode refuses tasks that carry dependencies), and the artifacts of the inline run."""
    _need_nemo_run()
    started = time.time()
    proc = subprocess.run(_local(tmp_path), env=cli_env(tiny_model), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "tiny_sppo"
    assert [j["stage"] for j in last_submission(run_dir)["jobs"]] == STAGES
    assert proc.stdout.count(" done  [job ") == 6, proc.stdout
    assert digests(run_dir) == digests(inline_t1)
    print(f"local executor, fresh T=1 chain of 6 stages: {time.time() - started:.1f}s")


def test_a_failed_stage_stops_the_local_chain_and_is_named_with_its_log(tiny_model, inline_t1, tmp_path):
    """A stage that fails ends the chain there: the later stages never start, and --submit exits 1
    naming the failed stage and its log. (Resubmitting sends what is unfinished whatever the
    executor: the Slurm failure test above finishes the run that way.)"""
    _need_nemo_run()
    setup = "launch.setup=['if [ $SPPO_STAGE = iter_01/build ]; then echo on purpose; exit 3; fi']"
    run_dir = _from_inline(inline_t1, tmp_path, keep=3)  # build, train, evaluate to go
    proc = subprocess.run(_local(tmp_path, setup), env=cli_env(tiny_model), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    status = proc.stdout
    assert "iter_01/annotate  done" in status, status
    assert "iter_01/build: failed after" in status and "the chain stopped at iter_01/build" in status, status
    line = next(x for x in status.splitlines() if x.startswith("  iter_01/build "))
    assert "FAILED" in line and "log " in line, status
    assert "on purpose" in Path(line.rsplit("log ", 1)[1].rstrip("]")).read_text()
    for later in ("iter_01/train", "iter_01/evaluate"):
        assert f"{later:<17} NOT RUN" in status, status
        assert records.stage_record(run_dir, later) is None  # never started
    jobs = last_submission(run_dir)["jobs"]
    assert [j["stage"] for j in jobs] == STAGES[3:] and [bool(j["job_id"]) for j in jobs] == [True, False, False]
    assert not (run_dir / "iter_01" / "train").exists()


def test_the_docker_executor_builds_the_whole_chain_as_the_local_one_does(tiny_model, tmp_path):
    """No Docker daemon here: the dry run of a fresh chain goes through the same one-task-per-stage
    construction as a real one, and prints the task script NeMo-Run packaged for every stage;
    a real --submit without a daemon ends in one message before any stage, and records nothing."""
    _need_nemo_run()
    docker = ["launch.executor=docker", "launch.container_image=sppo-nemo:latest"]
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", *T1, *docker, "--submit", "--dry-run"),
                          env=cli_env(tiny_model), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for label in STAGES:
        name = label.replace("_", "").replace("/", "-")
        task = proc.stdout.split(f"# ---- {name}.sh: the task the job runs\n", 1)[1].split("# ----", 1)[0]
        assert task.startswith("#!/usr/bin/bash\n"), task  # NeMo-Run's packaged script, not ours alone
        assert f"export SPPO_STAGE={label}\n" in task and f" --stage {label} --no-progress" in task, task
    run_dir = tmp_path / "tiny_sppo"
    assert not list((run_dir / "jobs" / "nemorun").glob("experiments/*/*")), "a dry run leaves nothing behind"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text("#!/bin/sh\nexit 1\n")  # the preflight asks only that docker is on PATH
    (fake / "docker").chmod(0o755)
    env = dict(cli_env(tiny_model), PATH=f"{fake}:{os.environ['PATH']}", DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", *T1, *docker, "--submit"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "NeMo-Run could not submit the jobs" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "jobs" / "submissions.jsonl").exists()
    assert not list((run_dir / "jobs").glob("iter_*.json"))  # no stage started


def test_the_docker_executor_dry_run_needs_no_daemon(tiny_model, tmp_path):
    _need_nemo_run()
    proc = subprocess.run(sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", *T1, "launch.executor=docker",
                                   "launch.container_image=sppo-nemo:latest", "--submit", "--dry-run"),
                          env=cli_env(tiny_model), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "# ---- iter01-train.sh" in proc.stdout and "6 job(s) would be submitted" in proc.stdout
    assert " sppo-run " in proc.stdout  # inside the image: its own entry point
    assert not (tmp_path / "tiny_sppo" / "jobs" / "submissions.jsonl").exists()


def test_the_example_scripts_in_launchers_are_what_nemo_run_generates():
    _need_nemo_run()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "launcher_examples.py"), "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


REVOKED_CREDENTIAL_S = 2.0  # past the second in which the node revoked a requeued job's credential


def release_when_requeued(env: dict, job: str, timeout: float = 120) -> None:
    """Slurm holds a requeued job for about a minute (Reason=BeginTime) before it may start again;
    once it is held, let it start (the tests' cluster runs as root), so the test need not wait. Not
    at once: the node revoked the first start's job credential, and a new credential issued within
    the same second counts as revoked too ("Killing non-startable batch JobId: Job credential
    revoked"), which is what the hold is there to avoid; two seconds clear it."""
    deadline = time.time() + timeout
    while True:
        shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        if "Restarts=1" in shown and "JobState=PENDING" in shown:
            time.sleep(REVOKED_CREDENTIAL_S)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, timeout=30)
            return
        if "Restarts=1" in shown and "JobState=PENDING" not in shown and "JobState=REQUEUED" not in shown:
            return  # already started again
        assert time.time() < deadline, f"job {job} was not requeued:\n{shown}"
        time.sleep(0.5)


def test_the_one_allocation_job_stopped_in_training_requeues_itself_and_resumes(tiny_model, slurm, inline_t1,
                                                                                tmp_path):
    """Slurm's warning signal (USR1 to the batch shell, as --signal=B:USR1@300 sends it before the
    time limit; here by scancel --signal at a chosen moment): sppo-run saves a step checkpoint,
    exits 143, the job requeues itself, and its second start resumes at that step and finishes with
    the inline run's artifacts."""
    run_dir = _from_inline(inline_t1, tmp_path, keep=4)  # up to build: the next stage is train
    env = run_env(tiny_model, slurm, SPPO_RUN=f"{sys.executable} -m sppo_nemo")
    log = tmp_path / "alloc.out"
    proc = subprocess.run(["sbatch", "--parsable", f"--output={log}", str(ROOT / "launchers" / "slurm_allocation.sbatch"),
                           str(TINY_RECIPE), f"output_dir={tmp_path}", *T1, "trainer.checkpoint_every=10h"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    reference = run_dir / "iter_01" / "train.partial" / "reference"
    deadline = time.time() + 300
    while not reference.is_dir():
        assert time.time() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(0.01)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True, timeout=30)
    release_when_requeued(env, job)
    deadline = time.time() + 400
    while True:
        shown = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
        if "JobState=COMPLETED" in shown or "JobState=FAILED" in shown:
            break
        assert time.time() < deadline, f"{shown}\n{log.read_text() if log.exists() else ''}"
        time.sleep(1)
    out = log.read_text()
    assert "JobState=COMPLETED" in shown and "Restarts=1" in shown, f"{shown}\n{out}"
    assert "terminated (SIGUSR1)" in out and "saved a step checkpoint" in out, out
    assert "requeueing job" in out and "resumed after optimizer step" in out, out
    assert digests(run_dir) == digests(inline_t1)


def test_a_chained_train_job_warned_of_its_time_limit_requeues_itself_and_the_chain_finishes(
        tiny_model, slurm, inline_t1, tmp_path):
    """The chained mode's jobs ask Slurm for SIGUSR1 before their time limit (#SBATCH --signal); here
    it is sent to the train job's steps by scancel at a chosen moment: its sppo-run --stage saves a
    step checkpoint, requeues the job, the job's second start resumes there, and the chain (train,
    then evaluate after it) ends with the inline run's artifacts."""
    run_dir = _from_inline(inline_t1, tmp_path, keep=4)
    env = run_env(tiny_model, slurm)
    args = [f"output_dir={tmp_path}", *T1, *SLURM, "trainer.checkpoint_every=10h"]
    proc = cli(env, *args, "--submit")
    assert "submitted 2 job(s)" in proc.stdout, proc.stdout
    train = next(j for j in last_submission(run_dir)["jobs"] if j["stage"] == "iter_01/train")
    scripts = sorted(Path(last_submission(run_dir)["dir"]).glob("*_sbatch.sh"))
    assert scripts and all("#SBATCH --signal=USR1@300" in p.read_text() for p in scripts)
    reference = run_dir / "iter_01" / "train.partial" / "reference"
    deadline = time.time() + 300
    while not reference.is_dir():
        assert time.time() < deadline, "the train job never reached its step loop"
        time.sleep(0.01)
    subprocess.run(["scancel", "--signal=USR1", str(train["job_id"])], env=env, check=True, timeout=30)
    release_when_requeued(env, str(train["job_id"]))
    wait_for_jobs(env, run_dir, timeout=400)
    shown = subprocess.run(["scontrol", "show", "job", str(train["job_id"])], env=env, capture_output=True,
                           text=True).stdout
    assert "Restarts=1" in shown and "JobState=COMPLETED" in shown, shown
    assert digests(run_dir) == digests(inline_t1)
    stops = [json.loads(line) for line in (run_dir / "jobs" / "stops.jsonl").read_text().splitlines()]
    assert [s["signal"] for s in stops] == ["SIGUSR1"] and stops[0]["job"] == str(train["job_id"])
