"""The megatron trainer as seen from sppo-run: writes a job folder, starts the workers, reads back.

sppo-run never imports megatron itself. :class:`MegatronTrainer` writes ``job.json`` (the typed
:class:`~.job.Job`, which names the build stage's rows file) into ``<output>/../megatron-job/``,
starts ``python -m sppo_nemo.backends.megatron`` in TP·PP·DP processes (torchrun on one node,
srun across the nodes of a Slurm allocation), hands the workers' progress counts to the stage's
callbacks, and reads the metrics back. The workers' own output goes to ``megatron-job/train.log``;
on failure the error quotes its tail and the folder is kept for inspection. On success it is
removed, so that the stage's artifacts hold only π_{t+1}, metrics and summary.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.formats import hub

from sppo_nemo.backends import slurm

from sppo_nemo.process import stopping
from sppo_nemo.backends.megatron.job import Job, parse_progress, parse_stopped, read_result, write_job
from sppo_nemo.backends.megatron.layout import megatron_layout
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.schema.protocols import ProgressFn, TrainResult


class MegatronJobError(UserError):
    """The megatron workers could not start or failed; the message quotes their log."""


@dataclass
class MegatronTrainer:
    cfg: TrainerConfig
    loss_type: str
    eta: float
    system_prompt: str | None
    seed: int
    threads: int | None = None  # the recipe's threads, shared among the workers of a node

    def job(self, policy_dir: Path, rows_file: Path, output_dir: Path, state_dir: Path | None = None) -> Job:
        return Job(policy_dir=Path(policy_dir).resolve(), rows_file=Path(rows_file).resolve(),
                   output_dir=Path(output_dir).resolve(), trainer=self.cfg, layout=megatron_layout(self.cfg),
                   loss_type=self.loss_type, eta=self.eta, seed=self.seed, system_prompt=self.system_prompt,
                   state_dir=Path(state_dir).resolve() if state_dir is not None else None)

    def command(self, job_dir: Path) -> tuple[list[str], dict]:
        m = self.cfg.megatron
        world = megatron_layout(self.cfg).world
        env = dict(os.environ)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(max(1, self.threads // max(1, world // m.nnodes))))
        worker = ["-m", "sppo_nemo.backends.megatron", str(job_dir)]
        if m.launcher == "srun":
            per_node = m.nproc_per_node or world // m.nnodes
            if "MASTER_ADDR" not in env:
                env["MASTER_ADDR"] = first_node_address()
            env.setdefault("MASTER_PORT", "29517")
            python = slurm.step_python(m.srun_args, sys.executable)  # inside a container: its own python
            # Inside a job step (a chained train job runs sppo-run as one), the workers' step must
            # share that step's node (--overlap), and every count is given, not inherited from it.
            overlap = ["--overlap"] if slurm.in_step() else []
            return ["srun", *overlap, f"--nodes={m.nnodes}", f"--ntasks={m.nnodes * per_node}",
                    f"--ntasks-per-node={per_node}", "--kill-on-bad-exit=1", *m.srun_args, python, *worker], env
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                *worker], env

    def train(self, policy_dir: Path, rows_file: Path, output_dir: Path, progress: ProgressFn | None = None,
              ref_progress: ProgressFn | None = None, state_dir: Path | None = None) -> TrainResult:
        policy_dir = hub.local_dir(policy_dir, "policy checkpoint", "policy.model")  # workers read its files
        job_dir = Path(output_dir).parent / "megatron-job"
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True)
        write_job(job_dir, self.job(policy_dir, rows_file, output_dir, state_dir))
        cmd, env = self.command(job_dir)
        env[JOB_TAG] = str(job_dir)  # every process of the job inherits it: _reap_leftovers finds them
        rc, tail, worker_tail = _run_workers(cmd, env, job_dir / "train.log",
                                             {"ref": ref_progress, "train": progress})
        result = read_result(job_dir)
        stopped = parse_stopped(tail) if rc != 0 else None
        if stopped:  # the workers were signalled (a scheduler signals every process of a job step)
            raise stopping.Terminated(*stopped)
        if rc != 0 and any("No space left on device" in line for line in tail):
            raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))  # the CLI's disk-full message
        if rc != 0:
            _raise_diverged(job_dir, [*worker_tail, *tail])
        if rc != 0 or result is None:
            raise MegatronJobError(_failure(rc, job_dir, tail, worker_tail))
        shutil.rmtree(job_dir, ignore_errors=True)
        return result


def _run_workers(cmd: list[str], env: dict, log_path: Path, callbacks: dict[str, ProgressFn | None]
                 ) -> tuple[int, deque[str], deque[str]]:
    """Run the job, its output into ``log_path`` and its progress lines into ``callbacks``; the exit
    code and the last lines (all, and the workers' own "[rankN]: ..." lines, not torchrun's)."""
    tail: deque[str] = deque(maxlen=40)
    worker_tail: deque[str] = deque(maxlen=25)
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            # a session of its own: once the launcher has exited, whatever the job left (a dead
            # rank's partners' helpers) is killed (_reap_leftovers), so the pipe closes and nothing
            # outlives the stage
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    bufsize=1, preexec_fn=_terminate_with_parent, start_new_session=True)
        except FileNotFoundError as e:
            hint = "; srun needs a Slurm allocation" if cmd[0] == "srun" else ""
            raise MegatronJobError(f"cannot start the megatron workers ({e}){hint}") from e
        threading.Thread(target=_reap_leftovers, args=(proc, env.get(JOB_TAG)), daemon=True).start()
        try:
            for line in proc.stdout:
                report = parse_progress(line)
                if report is not None:
                    kind, n, rest = report
                    if callbacks.get(kind):
                        callbacks[kind](n)
                    if not rest:
                        continue
                    line = rest + "\n"
                log.write(line)
                tail.append(line.rstrip("\n"))
                if line.startswith("[rank"):
                    worker_tail.append(line.rstrip("\n"))
            rc = proc.wait()
        except (stopping.Terminated, KeyboardInterrupt) as stop:
            raise _stop_workers(proc, log, tail, stop) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, tail, worker_tail


def _stop_workers(proc, log, tail: deque[str], stop: BaseException) -> BaseException:
    """sppo-run was stopped (SIGTERM/SIGUSR1, Ctrl-C): SIGTERM to the launcher, which passes it to
    the workers; they save a step checkpoint at their next step boundary (worker.py) and rank 0
    says so. Waits at most :data:`STOP_GRACE` seconds for that, then kills. Returns the exception
    to unwind with, naming the checkpoint when one was written."""
    import threading

    proc.terminate()
    guard = threading.Timer(STOP_GRACE, proc.kill)
    guard.start()
    try:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
        proc.wait()
    finally:
        guard.cancel()
    stopped = parse_stopped(tail)
    if stopped and isinstance(stop, stopping.Terminated):
        return stopping.Terminated(stop.signal_name, stopped[1])
    return stop


STOP_GRACE = 120.0  # seconds the workers have to reach a step boundary and save there
LEFTOVER_GRACE = 2.0  # seconds the launcher's leftovers get after it exits, before its group is killed


JOB_TAG = "SPPO_MEGATRON_JOB"  # in the environment of every process a megatron job starts on this node


def _reap_leftovers(proc, tag: str | None) -> None:
    """After the launcher exits: kill what is left of the job on this node. torchrun starts each
    worker in a session of its own, and a worker killed by it (its partner rank died) leaves its
    helpers behind (multiprocessing's resource tracker, the manager of megatron's checkpoint
    writer), which hold the output pipe open and would outlive the stage: they are found by the
    job's tag in their environment (Linux /proc; elsewhere nothing is done)."""
    proc.wait()
    time.sleep(LEFTOVER_GRACE)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not tag:
        return
    needle = f"{JOB_TAG}={tag}".encode() + b"\0"
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes() and int(entry.name) != os.getpid():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _terminate_with_parent() -> None:
    """In the launcher's child (torchrun or srun), before it starts: SIGTERM when the process that
    started it dies, even by kill -9 (Linux prctl PR_SET_PDEATHSIG), so torchrun stops its workers
    (srun its tasks) instead of leaving them to write into a stage the rerun resumes."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher outlives a killed parent, as before
        pass


def _raise_diverged(job_dir: Path, lines: list[str]) -> None:
    """A worker stopped by the trainer core's TrainingDiverged (sppo_nemo/maths/training.py: a non-finite
    loss, gradient norm or probe loss after the last update): the same error as the torch trainer's,
    its message without the worker's traceback around it."""
    from sppo_nemo.maths.training import TrainingDiverged

    for line in lines:
        _, found, message = line.partition("TrainingDiverged: ")
        if found:
            raise TrainingDiverged(f"{message.strip()} The workers' log: {job_dir / 'train.log'}")


def _failure(rc: int, job_dir: Path, tail: deque[str], worker_tail: deque[str]) -> str:
    text = "\n".join(worker_tail or tail)
    everything = "\n".join(tail)
    hint = ""
    if "Signal 9 (SIGKILL)" in everything or "exitcode: -9" in everything:
        hint = ("\na worker was killed by SIGKILL, most often the kernel's out-of-memory killer: lower "
                "trainer.batch_size or trainer.max_length, or set trainer.megatron.recompute=full.")
    elif ("Torch not compiled with CUDA" in text or "CUDA" in text and "not available" in text
          or "Found no NVIDIA driver" in text):  # the last: a CUDA build of torch on a machine without a GPU
        hint = ("\nmegatron-core's optimizer and RNG tracker need CUDA; on a CPU-only machine use "
                "trainer.backend=torch.")
    dead = _first_failure(everything)
    if dead:
        rank, local, code = dead
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        hint += (f"\nrank {rank} (local rank {local}) failed first ({how}); its own lines are the "
                 f"\"[rank{rank}]:\" lines of {job_dir / 'train.log'}. Rerun the same command: the stage resumes "
                 f"from its last step checkpoint, if it wrote one (trainer.checkpoint_every).")
    return (f"megatron training failed (exit {rc}); full log: {job_dir / 'train.log'}\n"
            f"--- last lines ---\n{text}{hint}")


def _first_failure(text: str) -> tuple[int, int, int] | None:
    """(rank, local rank, exit code) of torchrun's "Root Cause (first observed failure)", or None."""
    import re

    _, found, after = text.partition("Root Cause")
    m = re.search(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)", after) if found else None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def first_node_address() -> str:
    """The address rank 0 listens on: the first node's NodeAddr (sppo_nemo.backends.slurm.node_address)."""
    return slurm.node_address(slurm.allocation_nodes("trainer.megatron.launcher")[0])
