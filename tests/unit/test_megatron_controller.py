"""The sppo-run side of the megatron trainer (no megatron import): the typed job it writes and
reads back exactly, the command it starts, progress passed through as the workers count it, and
a failed job's error (log tail quoted, folder kept)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sppo_nemo.backends.slurm import SlurmUnavailable

from sppo_nemo.backends.megatron.controller import MegatronJobError, MegatronTrainer
from sppo_nemo.backends.megatron.job import (JOB_FILE, JobFileError, parse_progress, progress_line, read_job,
                                             write_job)
from sppo_nemo.backends.megatron.layout import Layout
from sppo_nemo.schema.config import MegatronConfig, TrainerConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.formats.hub import ModelNotFound
from sppo_nemo.schema.protocols import PointRow
from sppo_nemo.formats.rows import write_rows

pytestmark = pytest.mark.unit


def cfg(batch_size=4, grad_accum=1, **m) -> TrainerConfig:
    return TrainerConfig(backend="megatron", batch_size=batch_size, grad_accum=grad_accum, megatron=MegatronConfig(**m))


def test_job_carries_derived_layout_and_accumulation(tmp_path: Path) -> None:
    t = MegatronTrainer(cfg(batch_size=2, tensor_parallel=2, nproc_per_node=4, global_batch_size=8), "sppo", 1000.0,
                        "be brief", seed=5)
    job = t.job(tmp_path / "pi_t", tmp_path / "rows.jsonl", tmp_path / "out")
    assert job.layout == Layout(tensor=2, pipeline=1, data=2, world=4, grad_accum=2)
    assert job.trainer.grad_accum == 1 and job.trainer.megatron.global_batch_size == 8  # the recipe's, as set
    assert job.policy_dir == (tmp_path / "pi_t").resolve()
    assert job.rows_file == (tmp_path / "rows.jsonl").resolve()
    assert (job.loss_type, job.eta, job.seed, job.system_prompt) == ("sppo", 1000.0, 5, "be brief")


def test_job_file_round_trips_and_refuses_unknown_or_missing_fields(tmp_path: Path) -> None:
    job = MegatronTrainer(cfg(tensor_parallel=2, srun_args=["--x=1"]), "dpo", 0.5, None, seed=3).job(
        tmp_path / "p", tmp_path / "r.jsonl", tmp_path / "o")
    write_job(tmp_path, job)
    back = read_job(tmp_path)
    assert back == job and isinstance(back.trainer.megatron, MegatronConfig) and isinstance(back.rows_file, Path)
    raw = json.loads((tmp_path / JOB_FILE).read_text())
    assert "bucket_size" not in json.dumps(raw)
    for broken, what in [({**raw, "bucket_size": 25}, "unknown ['bucket_size']"),
                         ({k: v for k, v in raw.items() if k != "eta"}, "missing ['eta']"),
                         ({**raw, "trainer": {**raw["trainer"], "megatron": {
                             k: v for k, v in raw["trainer"]["megatron"].items() if k != "attention"}}},
                          "job.json.trainer.megatron: MegatronConfig fields unknown [], missing ['attention']"),
                         ({**raw, "layout": {**raw["layout"], "dp": 2}}, "unknown ['dp']")]:
        (tmp_path / JOB_FILE).write_text(json.dumps(broken))
        with pytest.raises(JobFileError, match=what.replace("[", r"\[").replace("]", r"\]")):
            read_job(tmp_path)


def test_progress_lines_carry_kind_and_count() -> None:
    line = progress_line("train", 7)
    assert parse_progress(line + "\n") == ("train", 7, "")
    assert parse_progress("[rank0]: some log line") is None


def test_a_report_with_another_ranks_output_on_its_line_still_counts() -> None:
    """The workers share one pipe: another rank's warning can land before the report's newline (seen
    in CI: '{"kind": "train", "n": 4}/…/c10d_logger.py:83: FutureWarning …'); the count is kept and
    the rest goes to the log."""
    line = progress_line("train", 4) + "/x/c10d_logger.py:83: FutureWarning: deprecated\n"
    assert parse_progress(line) == ("train", 4, "/x/c10d_logger.py:83: FutureWarning: deprecated")
    assert parse_progress(progress_line("train", 4)[:-3]) is None  # torn: log text, not a crash


def test_torchrun_command_starts_one_process_per_rank(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd, env = MegatronTrainer(cfg(tensor_parallel=2, pipeline_parallel=2), "sppo", 1.0, None, 0,
                               threads=8).command(tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd
    assert cmd[-3:] == ["-m", "sppo_nemo.backends.megatron", str(tmp_path)]
    assert env["OMP_NUM_THREADS"] == "2"  # 8 threads over 4 processes


def test_srun_command_spans_the_nodes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "node001")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    c = cfg(tensor_parallel=8, nnodes=2, nproc_per_node=8, launcher="srun",
            srun_args=["--container-image=img:1", "--container-mounts=/r:/r"])
    cmd, env = MegatronTrainer(c, "sppo", 1.0, None, 0).command(tmp_path)
    # every count explicit: inside a job step srun would otherwise inherit the step's SLURM_NTASKS
    assert cmd[:5] == ["srun", "--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
    assert cmd[5:7] == ["--container-image=img:1", "--container-mounts=/r:/r"]
    assert cmd[7] == "python" and env["MASTER_ADDR"] == "node001"


def test_srun_inside_a_job_step_overlaps_it(tmp_path: Path, monkeypatch) -> None:
    """A chained train job runs sppo-run as a one-task step; the workers' step must share its node."""
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    cmd, _ = MegatronTrainer(cfg(nnodes=2, nproc_per_node=1, launcher="srun"), "sppo", 1.0, None, 0).command(tmp_path)
    assert cmd[:3] == ["srun", "--overlap", "--nodes=2"]


def test_master_addr_is_the_first_nodes_address_not_its_name(tmp_path: Path, monkeypatch) -> None:
    """`n1` need not resolve: the address comes from `scontrol show node`'s NodeAddr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\n"
                                      "if [ \"$2\" = hostnames ]; then echo n1; echo n2; exit 0; fi\n"
                                      "echo NodeName=n1 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=vm Version=22.05.8\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    _, env = MegatronTrainer(cfg(nnodes=2, nproc_per_node=1, launcher="srun"), "sppo", 1.0, None, 0).command(tmp_path)
    assert env["MASTER_ADDR"] == "10.1.2.3"


def test_srun_without_allocation_says_so(tmp_path: Path, monkeypatch) -> None:
    for k in ("MASTER_ADDR", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SlurmUnavailable, match="trainer.megatron.launcher=srun but no Slurm allocation"):
        MegatronTrainer(cfg(launcher="srun"), "sppo", 1.0, None, 0).command(tmp_path)


def fake_workers(t: MegatronTrainer, monkeypatch, script: str) -> None:
    monkeypatch.setattr(t, "command", lambda job_dir: ([sys.executable, "-c", script.replace("JOB", str(job_dir))],
                                                       {}))


def test_progress_counts_reach_the_callbacks_unchanged_and_the_result_is_read(tmp_path: Path, monkeypatch) -> None:
    result = {"metrics": [{"step": 0, "loss": 1.5}], "summary": {"steps": 1}}
    script = (f"import json; print({progress_line('ref', 5)!r}); print({progress_line('train', 3)!r}); "
              f"print('[rank0]: a log line'); print({progress_line('train', 2)!r}); "
              f"open('JOB/result.json', 'w').write(json.dumps({result!r}))")
    t = MegatronTrainer(cfg(), "sppo", 1.0, None, 0)
    fake_workers(t, monkeypatch, script)
    (tmp_path / "pi_t").mkdir()
    seen = {"ref": [], "train": []}
    got = t.train(tmp_path / "pi_t", tmp_path / "rows.jsonl", tmp_path / "train" / "policy",
                  progress=seen["train"].append, ref_progress=seen["ref"].append)
    assert seen == {"ref": [5], "train": [3, 2]}
    assert (got.metrics, got.summary) == (result["metrics"], result["summary"])
    assert not (tmp_path / "train" / "megatron-job").exists()  # removed after success


def test_failed_job_quotes_the_workers_traceback_and_keeps_its_folder(tmp_path: Path, monkeypatch) -> None:
    script = ("import sys; print('[rank0]: Traceback (most recent call last):'); "
              "print('[rank0]: ValueError: 3 key/value heads are not divisible by tensor parallel 2'); "
              "print('torchrun noise'); sys.exit(1)")
    t = MegatronTrainer(cfg(), "sppo", 1.0, None, 0)
    fake_workers(t, monkeypatch, script)
    rows = tmp_path / "rows.jsonl"
    write_rows(rows, [PointRow("a", "q?", "r.", True, 0.7)])
    (tmp_path / "pi_t").mkdir()
    with pytest.raises(MegatronJobError) as e:
        t.train(tmp_path / "pi_t", rows, tmp_path / "train" / "policy")
    assert isinstance(e.value, UserError) and e.value.exit_code == 1
    msg = str(e.value)
    assert "exit 1" in msg and "not divisible by tensor parallel 2" in msg and "torchrun noise" not in msg
    job = tmp_path / "train" / "megatron-job"
    assert str(job / "train.log") in msg
    assert "torchrun noise" in (job / "train.log").read_text()
    assert read_job(job).rows_file == rows.resolve()  # the build stage's file, by path: no second copy
    assert sorted(p.name for p in job.iterdir()) == ["job.json", "train.log"]


def test_a_worker_stopped_by_divergence_is_the_trainer_cores_error_not_a_traceback(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    from sppo_nemo.maths.training import TrainingDiverged

    said = ("training diverged at optimizer step 0 of 1: after its update the loss on the 4 fixed probe rows is nan "
            "(it was 0.25 before training; lr 1e+30); nothing of this stage was committed. Lower trainer.lr, raise "
            "trainer.warmup_ratio, or train in fp32 (trainer.precision=fp32).")
    script = ("import sys; print('[rank0]: Traceback (most recent call last):'); "
              "print('[rank0]:   File \"worker.py\", line 247, in probe_pass'); "
              f"print('[rank0]: sppo_nemo.maths.training.TrainingDiverged: {said}'); print('torchrun noise'); sys.exit(1)")
    t = MegatronTrainer(cfg(), "sppo", 1.0, None, 0)
    fake_workers(t, monkeypatch, script)
    (tmp_path / "pi_t").mkdir()
    with pytest.raises(TrainingDiverged) as e:
        t.train(tmp_path / "pi_t", tmp_path / "rows.jsonl", tmp_path / "train" / "policy")
    job = tmp_path / "train" / "megatron-job"
    assert str(e.value) == f"{said} The workers' log: {job / 'train.log'}" and e.value.exit_code == 1
    assert "Traceback" in (job / "train.log").read_text()  # kept for inspection


@pytest.mark.parametrize("error", [
    "AssertionError: Torch not compiled with CUDA enabled",  # the CPU build of torch
    "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
    "installed a driver from http://www.nvidia.com/Download/index.aspx",  # a CUDA build on a machine without one
], ids=["cpu_build", "cuda_build_no_driver"])
def test_a_job_that_needs_cuda_points_to_the_torch_backend(error: str) -> None:
    from collections import deque

    from sppo_nemo.backends.megatron.controller import _failure

    msg = _failure(1, Path("job"), deque(["torchrun noise"]), deque(["[rank0]: Traceback", f"[rank0]: {error}"]))
    assert msg.endswith("on a CPU-only machine use trainer.backend=torch."), msg


def test_policy_must_be_a_local_directory_or_an_obtainable_hub_snapshot(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    t = MegatronTrainer(cfg(), "sppo", 1.0, None, 0)
    monkeypatch.setattr(t, "command", lambda job_dir: pytest.fail("must not start workers"))
    with pytest.raises(ModelNotFound, match="policy.model: policy checkpoint 'nobody/no-such-model'") as e:
        t.train(Path("nobody/no-such-model"), tmp_path / "rows.jsonl", tmp_path / "train" / "policy")
    assert "huggingface-cli download nobody/no-such-model" in str(e.value)
