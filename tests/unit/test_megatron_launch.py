"""The sppo-run side of the megatron trainer (no megatron import): the job it writes, the
command it starts, progress clamping, and a failed job's error (log tail quoted, folder kept)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sppo_nemo.backends.megatron_launch import MegatronJobError, MegatronTrainer, _Progress
from sppo_nemo.protocols import PointRow
from sppo_nemo.recipe import MegatronConfig, TrainerConfig, megatron_layout


def cfg(batch_size=4, grad_accum=1, **m) -> TrainerConfig:
    return TrainerConfig(backend="megatron", batch_size=batch_size, grad_accum=grad_accum, megatron=MegatronConfig(**m))


@pytest.mark.parametrize("m,expect", [
    (dict(), (1, 1, 1, 1, 1)),
    (dict(tensor_parallel=2, pipeline_parallel=2), (2, 2, 1, 4, 1)),
    (dict(tensor_parallel=2, nproc_per_node=8), (2, 1, 4, 8, 1)),
    (dict(data_parallel=3), (1, 1, 3, 3, 1)),
    (dict(nproc_per_node=2, global_batch_size=16), (1, 1, 2, 2, 2)),  # 16 rows = 4 · accum · DP 2
    (dict(nnodes=2, nproc_per_node=8, tensor_parallel=8), (8, 1, 2, 16, 1)),
])
def test_layout_is_derived(m, expect) -> None:
    assert megatron_layout(cfg(**m)) == expect


def test_job_carries_derived_layout_and_accumulation(tmp_path: Path) -> None:
    t = MegatronTrainer(cfg(batch_size=2, tensor_parallel=2, nproc_per_node=4, global_batch_size=8), "sppo", 1000.0,
                        "be brief", seed=5)
    job = t.job(tmp_path / "pi_t", tmp_path / "out")
    assert job["trainer"]["grad_accum"] == 2 and "megatron" not in job["trainer"]
    assert job["megatron"]["tensor_parallel"] == 2 and job["megatron"]["data_parallel"] == 2
    assert job["megatron"]["world_size"] == 4
    assert job["policy_dir"] == str((tmp_path / "pi_t").resolve())
    assert (job["loss_type"], job["eta"], job["seed"], job["system_prompt"]) == ("sppo", 1000.0, 5, "be brief")


def test_torchrun_command_starts_one_process_per_rank(tmp_path: Path) -> None:
    cmd, env = MegatronTrainer(cfg(tensor_parallel=2, pipeline_parallel=2), "sppo", 1.0, None, 0,
                               threads=8).command(tmp_path)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd
    assert cmd[-3:] == ["-m", "sppo_nemo.backends.megatron", str(tmp_path)]


def test_srun_command_spans_the_nodes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASTER_ADDR", "node001")
    c = cfg(tensor_parallel=8, nnodes=2, nproc_per_node=8, launcher="srun",
            srun_args=["--container-image=img:1", "--container-mounts=/r:/r"])
    cmd, env = MegatronTrainer(c, "sppo", 1.0, None, 0).command(tmp_path)
    assert cmd[:4] == ["srun", "--nodes=2", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
    assert cmd[4:6] == ["--container-image=img:1", "--container-mounts=/r:/r"]
    assert cmd[6] == "python" and env["MASTER_ADDR"] == "node001"


def test_srun_without_allocation_says_so(tmp_path: Path, monkeypatch) -> None:
    for k in ("MASTER_ADDR", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(MegatronJobError, match="no Slurm allocation"):
        MegatronTrainer(cfg(launcher="srun"), "sppo", 1.0, None, 0).command(tmp_path)


def test_progress_is_clamped_to_the_bar_totals() -> None:
    seen = {"ref": 0, "train": 0}
    p = _Progress(lambda n: seen.__setitem__("train", seen["train"] + n),
                  lambda n: seen.__setitem__("ref", seen["ref"] + n), n_ref=5, n_train=10)
    for _ in range(4):
        p.dispatch({"kind": "ref", "n": 2})  # DP=2 scaling overshoots on the last step
    for _ in range(7):
        p.dispatch({"kind": "train", "n": 2})
    p.dispatch({"kind": "step", "metrics": {}})
    assert seen == {"ref": 5, "train": 10}


def test_failed_job_quotes_the_workers_traceback_and_keeps_its_folder(tmp_path: Path, monkeypatch) -> None:
    script = ("import sys; print('[rank0]: Traceback (most recent call last):'); "
              "print('[rank0]: ValueError: 3 key/value heads are not divisible by tensor parallel 2'); "
              "print('torchrun noise'); sys.exit(1)")
    t = MegatronTrainer(cfg(), "sppo", 1.0, None, 0)
    monkeypatch.setattr(t, "command", lambda job_dir: ([sys.executable, "-c", script], {}))
    rows = [PointRow("a", "q?", "r.", True, 0.7)]
    (tmp_path / "pi_t").mkdir()
    with pytest.raises(MegatronJobError) as e:
        t.train(tmp_path / "pi_t", rows, tmp_path / "train" / "policy")
    msg = str(e.value)
    assert "exit 1" in msg and "not divisible by tensor parallel 2" in msg and "torchrun noise" not in msg
    job = tmp_path / "train" / "megatron-job"
    assert str(job / "train.log") in msg
    assert "torchrun noise" in (job / "train.log").read_text()
    assert json.loads((job / "rows.jsonl").read_text())["win_prob"] == 0.7


def test_policy_must_be_a_local_directory_or_an_obtainable_hub_snapshot(tmp_path: Path, monkeypatch) -> None:
    from sppo_nemo.backends.hf import ModelLoadError, local_checkpoint

    assert local_checkpoint(str(tmp_path)) == tmp_path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelLoadError, match="neither a local checkpoint directory nor a hub id") as e:
        local_checkpoint("nobody/no-such-model")
    assert "huggingface-cli download nobody/no-such-model" in str(e.value)
