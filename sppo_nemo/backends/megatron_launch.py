"""The megatron trainer as seen from sppo-run: writes a job folder, starts the workers, reads back.

sppo-run never imports megatron itself. :class:`MegatronTrainer` writes the rows and the
trainer settings into ``<output>/../megatron-job/``, starts ``python -m sppo_nemo.backends.megatron``
in TP·PP·DP processes (torchrun on one node, srun across the nodes of a Slurm allocation), turns
the workers' progress lines into the stage's progress bars, and reads the metrics back. The
workers' own output goes to ``megatron-job/train.log``; on failure the error quotes its tail and
the folder is kept for inspection. On success it is removed, so that the stage's artifacts hold
only π_{t+1}, metrics and summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Sequence

from sppo_nemo.protocols import PairRow, PointRow, ProgressFn, TrainResult
from sppo_nemo.recipe import TrainerConfig, megatron_layout


class MegatronJobError(RuntimeError):
    pass


class MegatronTrainer:
    def __init__(self, cfg: TrainerConfig, loss_type: str, eta: float, system_prompt: str | None, seed: int,
                 threads: int | None = None):
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.system_prompt = system_prompt
        self.seed = seed
        self.threads = threads

    def job(self, policy_dir: Path, output_dir: Path) -> dict:
        tp, pp, dp, world, accum = megatron_layout(self.cfg)
        trainer = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "megatron"}
        trainer["grad_accum"] = accum
        megatron = dataclasses.asdict(self.cfg.megatron)
        megatron.update(tensor_parallel=tp, pipeline_parallel=pp, data_parallel=dp, world_size=world)
        return {"policy_dir": str(Path(policy_dir).resolve()), "output_dir": str(Path(output_dir).resolve()),
                "trainer": trainer, "megatron": megatron, "loss_type": self.loss_type, "eta": self.eta,
                "seed": self.seed, "system_prompt": self.system_prompt}

    def command(self, job_dir: Path) -> tuple[list[str], dict]:
        m = self.cfg.megatron
        _, _, _, world, _ = megatron_layout(self.cfg)
        env = dict(os.environ)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(max(1, self.threads // max(1, world // m.nnodes))))
        worker = ["-m", "sppo_nemo.backends.megatron", str(job_dir)]
        if m.launcher == "srun":
            per_node = m.nproc_per_node or world // m.nnodes
            if "MASTER_ADDR" not in env:
                env["MASTER_ADDR"] = _first_slurm_host()
            env.setdefault("MASTER_PORT", "29517")
            python = "python" if m.srun_args else sys.executable  # inside a container: its own python
            return ["srun", f"--nodes={m.nnodes}", f"--ntasks-per-node={per_node}", "--kill-on-bad-exit=1",
                    *m.srun_args, python, *worker], env
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                *worker], env

    def train(self, policy_dir: Path, rows: Sequence[PointRow] | Sequence[PairRow], output_dir: Path,
              progress: ProgressFn | None = None, ref_progress: ProgressFn | None = None) -> TrainResult:
        from sppo_nemo.backends.hf import local_checkpoint

        policy_dir = local_checkpoint(str(policy_dir))  # the workers read its files directly
        job_dir = Path(output_dir).parent / "megatron-job"
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True)
        (job_dir / "job.json").write_text(json.dumps(self.job(policy_dir, output_dir), indent=2))
        with open(job_dir / "rows.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(dataclasses.asdict(r)) + "\n")
        cmd, env = self.command(job_dir)
        tail: deque[str] = deque(maxlen=40)
        worker_tail: deque[str] = deque(maxlen=25)  # the workers' own lines ("[rankN]: ..."), not torchrun's
        counts = _Progress(progress, ref_progress, len(rows), len(rows) * self.cfg.epochs)
        with open(job_dir / "train.log", "w", encoding="utf-8") as log:
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                        bufsize=1)
            except FileNotFoundError as e:
                raise MegatronJobError(f"cannot start the megatron workers ({e}); "
                                       f"{'srun needs a Slurm allocation' if cmd[0] == 'srun' else ''}") from e
            try:
                for line in proc.stdout:
                    if line.startswith("@@sppo "):
                        counts.dispatch(json.loads(line[7:]))
                        continue
                    log.write(line)
                    tail.append(line.rstrip("\n"))
                    if line.startswith("[rank"):
                        worker_tail.append(line.rstrip("\n"))
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        result_file = job_dir / "result.json"
        if rc != 0 or not result_file.is_file():
            hint = ""
            text = "\n".join(worker_tail or tail)
            if "Signal 9 (SIGKILL)" in "\n".join(tail) or "exitcode: -9" in "\n".join(tail):
                hint = ("\na worker was killed by SIGKILL, most often the kernel's out-of-memory killer: lower "
                        "trainer.batch_size or trainer.max_length, or set trainer.megatron.recompute=full.")
            elif "Torch not compiled with CUDA" in text or "CUDA" in text and "not available" in text:
                hint = ("\nmegatron-core's optimizer and RNG tracker need CUDA; on a CPU-only machine use "
                        "trainer.backend=torch.")
            raise MegatronJobError(f"megatron training failed (exit {rc}); full log: {job_dir / 'train.log'}\n"
                                   f"--- last lines ---\n{text}{hint}")
        result = json.loads(result_file.read_text())
        shutil.rmtree(job_dir, ignore_errors=True)
        return TrainResult(metrics=result["metrics"], summary=result["summary"])


class _Progress:
    """Feeds the workers' counts to the bars, clamped to their totals (with data parallelism the
    reporting rank scales its own count by DP, which may overshoot on a short last step)."""

    def __init__(self, progress: ProgressFn | None, ref_progress: ProgressFn | None, n_ref: int, n_train: int):
        self.fns = {"ref": ref_progress, "train": progress}
        self.left = {"ref": n_ref, "train": n_train}

    def dispatch(self, msg: dict) -> None:
        kind = msg.get("kind")
        if kind in self.fns:
            n = min(int(msg["n"]), self.left[kind])
            self.left[kind] -= n
            if n and self.fns[kind]:
                self.fns[kind](n)


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        raise MegatronJobError("trainer.megatron.launcher=srun but no Slurm allocation is visible "
                               "(SLURM_JOB_NODELIST unset); run sppo-run inside salloc/sbatch")
    out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]

