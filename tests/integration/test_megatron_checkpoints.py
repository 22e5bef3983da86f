"""Step checkpoints of the megatron trainer (trainer.checkpoint_every) on CPU, at TP=2 with the
distributed optimizer: a job killed (SIGKILL to every process of it, as a lost node) after its first
checkpoint resumes there and ends with the policy and metrics of an uninterrupted job, bit for bit.

The workers are real torchrun processes with the test-only CPU patches (cpu_patches/megatron_cpu.py),
which include the few places megatron's dist_checkpointing assumes CUDA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpu_patches.megatron_cpu import ROOT, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the suite's layout; "plain_opt" (megatron's non-distributed optimizer) and "bf16" (mixed precision)
# pass too, run by hand: SPPO_MCORE_CKPT_VARIANT=bf16,plain_opt pytest ... (a minute each)
VARIANT = os.environ.get("SPPO_MCORE_CKPT_VARIANT", "fp32")
STEPS = 5  # 20 rows, micro-batches of 4, 2 a step (TP=2: DP=1, grad_accum 2), 2 epochs


def main(argv: list[str] | None = None) -> None:
    """One megatron train "stage" in this process: ``MODEL OUT PERIOD`` (PERIOD "off": no state_dir)."""
    from sppo_nemo.process import stopping
    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.schema.config import MegatronConfig, TrainerConfig
    from tests.integration.test_megatron import point_rows, rows_file

    model, out, period, *variant = argv or sys.argv[1:]
    variant = variant[0] if variant else VARIANT
    out = Path(out)
    cfg = TrainerConfig(backend="megatron", lr=3e-3, warmup_ratio=0.0, batch_size=4, grad_accum=1, epochs=2,
                        max_prompt_length=96, max_length=128, checkpoint_every=None if period == "off" else period,
                        precision="bf16" if "bf16" in variant else "fp32",
                        megatron=MegatronConfig(global_batch_size=8, tensor_parallel=2,
                                                distributed_optimizer="plain_opt" not in variant))
    rows = rows_file(out / "rows.jsonl", point_rows(20, seed=3))
    state_dir = None if period == "off" else out / "partial"
    if state_dir is not None:
        state_dir.mkdir(exist_ok=True)
    stopping.install()  # as sppo-run does
    try:
        result = MegatronTrainer(cfg, "sppo", 10.0, None, seed=7).train(Path(model), rows, out / "policy",
                                                                        state_dir=state_dir)
    except stopping.Terminated as exc:
        print(f"terminated ({exc.signal_name}); {exc.kept}", flush=True)
        sys.exit(143)
    (out / "result.json").write_text(json.dumps({"metrics": result.metrics, "summary": result.summary}))


def start(model: Path, out: Path, period: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    code = "import sys; from tests.integration.test_megatron_checkpoints import main; main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, str(model), str(out), period, VARIANT], cwd=ROOT,
                            env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> dict:
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text[-6000:]
    return json.loads((Path(proc.args[-3]) / "result.json").read_text())


def checkpoints(out: Path) -> list[str]:
    root = out / "partial" / "checkpoints"
    return sorted(p.name for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")) \
        if root.is_dir() else []


def comparable(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def test_killed_megatron_job_resumes_at_its_checkpoint_bit_identical(tiny_model, tmp_path: Path) -> None:
    whole = start(tiny_model, tmp_path / "whole", "off")
    want = finish(whole)  # not concurrently with the killed run: 2 cores

    out = tmp_path / "killed"
    proc = start(tiny_model, out, "2steps")  # checkpoints after steps 1 and 3
    deadline = time.time() + 240
    while "step_000001" not in checkpoints(out):
        assert proc.poll() is None, f"the job ended before its first checkpoint:\n{proc.stdout.read()[-6000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the controller, torchrun and both workers
    proc.wait()
    kept = checkpoints(out)
    assert not (out / "result.json").exists()
    assert (out / "partial" / "reference" / "reference.pt").is_file()
    meta = json.loads((out / "partial" / "checkpoints" / kept[-1] / "meta.json").read_text())
    assert any(f.startswith("dist/") for f in meta["files"]) and "fit_0.pt" in meta["files"], meta
    newest = int(kept[-1].split("_")[1])

    got = finish(start(tiny_model, out, "2steps"))
    assert got["summary"]["resumed_at_step"] == newest + 1
    print(f"checkpoint: {sum(f[0] for f in meta['files'].values())} bytes in {len(meta['files'])} files; "
          f"{got['summary']['checkpoints_written']} written in {got['summary']['checkpoint_seconds']} s")
    assert len(got["metrics"]) == STEPS and [m["step"] for m in got["metrics"]] == list(range(STEPS))
    assert comparable(got["metrics"]) == comparable(want["metrics"])  # bit-identical on CPU
    assert got["summary"]["epoch_losses"] == want["summary"]["epoch_losses"]
    for name in ("model.safetensors", "config.json"):
        assert (out / "policy" / name).read_bytes() == (tmp_path / "whole" / "policy" / name).read_bytes(), name


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_a_signal_to_sppo_run_stops_megatron_workers_at_a_step_with_a_checkpoint(tiny_model, tmp_path: Path, sig):
    """SIGTERM to the process driving the trainer (sppo-run's): the launcher gets SIGTERM and passes
    it to the workers, which finish their step, save a checkpoint and stop; the rerun resumes there
    and ends with the uninterrupted job's policy, bit for bit."""
    want = finish(start(tiny_model, tmp_path / "whole", "off"))
    out = tmp_path / "stopped"
    proc = start(tiny_model, out, "10h")  # no periodic checkpoint: the one written is the signal's
    reference = out / "partial" / "reference"
    deadline = time.time() + 240
    while not reference.is_dir():
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.time() < deadline, "the job never reached its step loop"
        time.sleep(0.005)
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=240)
    assert proc.returncode == 143, text[-6000:]
    assert f"terminated ({sig.name}); the train stage saved a step checkpoint after optimizer step" in text, text[-3000:]
    kept = checkpoints(out)
    assert len(kept) == 1, kept
    got = finish(start(tiny_model, out, "10h"))
    assert got["summary"]["resumed_at_step"] == int(kept[0].split("_")[1]) + 1
    assert comparable(got["metrics"]) == comparable(want["metrics"])
    assert (out / "policy" / "model.safetensors").read_bytes() == \
        (tmp_path / "whole" / "policy" / "model.safetensors").read_bytes()


def worker_pids(out: Path) -> list[int]:
    """The megatron worker processes of the job writing into ``out`` (not torchrun itself)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "sppo_nemo.backends.megatron" in cmd and "torch.distributed.run" not in cmd and str(out) in cmd:
            pids.append(int(p.name))
    return sorted(pids)


def test_a_dead_rank_is_named_with_its_log_and_the_rerun_resumes(tiny_model, tmp_path: Path) -> None:
    want = finish(start(tiny_model, tmp_path / "whole", "off"))
    out = tmp_path / "dead"
    proc = start(tiny_model, out, "2steps")
    deadline = time.time() + 240
    while "step_000001" not in checkpoints(out):
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    pids = worker_pids(out)
    assert len(pids) == 2, pids
    os.kill(pids[-1], signal.SIGKILL)  # one rank dies, as on a lost GPU
    text, _ = proc.communicate(timeout=240)  # no hang: what the dead rank's partners left is killed
    assert proc.returncode != 0
    assert re.search(r"rank (\d) \(local rank \1\) failed first \(killed by signal 9\); its own lines are the "
                     r"\"\[rank\1\]:\" lines of \S+train\.log", text), text[-4000:]
    assert not worker_pids(out)
    kept = checkpoints(out)
    got = finish(start(tiny_model, out, "2steps"))
    assert got["summary"]["resumed_at_step"] == int(kept[-1].split("_")[1]) + 1
    assert comparable(got["metrics"]) == comparable(want["metrics"])
