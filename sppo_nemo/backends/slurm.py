"""What a process inside a Slurm allocation can learn about it: the nodes, a node's address, and
whether it is a job step. Standard library only; every backend that starts work on other nodes
(the megatron ranks, vLLM engines) asks here."""

from __future__ import annotations

import os
import subprocess

from sppo_nemo.schema.errors import UserError


class SlurmUnavailable(UserError):
    """A launcher=srun backend outside an allocation, or Slurm's tools not answering."""


def allocation_nodes(key: str) -> list[str]:
    """The allocation's nodes in Slurm's order (the batch host first); ``key`` names the recipe key
    that asked for srun, for the message."""
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        raise SlurmUnavailable(f"{key}=srun but no Slurm allocation is visible (SLURM_JOB_NODELIST unset); run "
                               f"sppo-run inside salloc/sbatch (launchers/slurm_allocation.sbatch), or use the local "
                               f"launcher")
    return _scontrol("show", "hostnames", nodes).split()


def node_address(node: str) -> str:
    """The address Slurm itself reaches ``node`` by (its NodeAddr), never the bare node name, which
    need not resolve (`n1` on a test cluster, a short name without DNS on many sites)."""
    for field in _scontrol("show", "node", "-o", node).split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def in_step() -> bool:
    """Whether this process is a task of a job step (srun), not the batch script itself: a step
    started from here must then share its nodes (srun --overlap)."""
    return "SLURM_STEP_ID" in os.environ


def _scontrol(*args: str) -> str:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise SlurmUnavailable(f"scontrol {' '.join(args)} failed ({str(detail).strip()[:300]}); is this inside a "
                               f"Slurm allocation with Slurm's tools on PATH?") from None


def step_on(node: str, srun_args: list[str] | tuple[str, ...], python: str) -> list[str]:
    """The start of a command that runs one task on ``node`` as a step of this allocation, sharing
    the node with the steps already there (sppo-run's own, the other workers': ``--overlap``), then
    the interpreter: the image's own ``python`` when ``srun_args`` put the step into a container."""
    return ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--kill-on-bad-exit=1",
            *srun_args, step_python(srun_args, python)]


def step_python(srun_args, python: str) -> str:
    return "python" if srun_args else python
