"""Load-time checks of the ``launch:`` section (no NeMo-Run or Slurm import: keys and shapes only).

What can only be known where the jobs go (is sbatch on PATH, does the partition exist, has srun
the pyxis plugin) is checked when ``--submit`` runs, in ``submit.py``.
"""

from __future__ import annotations

import re

from sppo_nemo.schema.config import STAGE_NAMES, Recipe

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")  # sbatch --time: M, H:M:S, D-H[:M[:S]]
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def check(r: Recipe) -> list[str]:
    la = r.launch
    p: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    for name in STAGE_NAMES:
        job = getattr(la, name)
        key = f"launch.{name}"
        need(job.nodes >= 1, f"{key}.nodes: {job.nodes}; must be at least 1")
        need(job.gpus_per_node is None or job.gpus_per_node >= 0,
             f"{key}.gpus_per_node: {job.gpus_per_node}; must be >= 0, or null for none")
        need(job.cpus_per_task is None or job.cpus_per_task >= 1, f"{key}.cpus_per_task: must be at least 1, or null")
        need(bool(_TIME.match(job.time)),
             f"{key}.time: {job.time!r} is not a Slurm time limit; write HH:MM:SS, D-HH:MM:SS or minutes")
        need(job.mem is None or bool(re.match(r"^\d+[KMGT]?$", job.mem)),
             f"{key}.mem: {job.mem!r}; write e.g. 200G, or null for the partition's default")
        spans = name == "train" or (name in ("generate", "evaluate") and r.generation.backend == "vllm"
                                    and r.generation.vllm.launcher == "srun")
        if not spans:
            need(job.nodes == 1, f"{key}.nodes: {job.nodes}; the {name} stage runs on one node (its workers "
                                 f"share that node's GPUs); launch.train spans nodes with the megatron trainer, "
                                 f"generate and evaluate with generation.vllm.launcher=srun")
    m = r.trainer.megatron
    if la.train.nodes > 1:
        need(r.trainer.backend == "megatron" and m.launcher == "srun" and m.nnodes == la.train.nodes,
             f"launch.train.nodes: {la.train.nodes} nodes need the megatron trainer spread over them: set "
             f"trainer.backend=megatron trainer.megatron.launcher=srun trainer.megatron.nnodes={la.train.nodes}")
    elif r.trainer.backend == "megatron" and m.nnodes > 1 and la.executor != "inline":
        need(False, f"trainer.megatron.nnodes: {m.nnodes}, but launch.train.nodes is 1; set "
                    f"launch.train.nodes={m.nnodes} so that the train job gets the nodes")
    for i, item in enumerate(la.env):
        need(bool(_ENV.match(item)), f"launch.env: item {i} {item!r}; write KEY=VALUE")
    for i, item in enumerate(la.container_mounts):
        need(item.count(":") in (1, 2) and item.startswith("/"),
             f"launch.container_mounts: item {i} {item!r}; write /host/path:/container/path[:ro]")
    # NeMo-Run 0.11 maps every path with a `nemo_run` folder in it onto its container folder
    # /nemo_run, even without a container: the sbatch output paths then point nowhere.
    need(la.job_dir is None or "nemo_run" not in la.job_dir.split("/"),
         f"launch.job_dir: {la.job_dir!r} has a folder named nemo_run, which NeMo-Run 0.11 rewrites in the job "
         f"scripts (its container folder); choose another folder name")
    need(la.command is None or bool(la.command.strip()),
         "launch.command: empty; name the sppo-run entry point the jobs run, or null")
    if la.executor == "docker":
        need(la.container_image is not None, "launch.container_image: the docker executor needs an image; "
                                             "build one with `docker build -t sppo-nemo .`")
    if la.executor == "slurm" and la.tunnel == "ssh":
        for key in ("host", "user", "remote_dir"):
            need(getattr(la, key) is not None, f"launch.{key}: tunnel=ssh needs the login node's {key}")
    if la.tunnel == "ssh" and la.executor != "slurm":
        need(False, "launch.tunnel: ssh reaches a Slurm login node; it needs launch.executor=slurm")
    if la.executor in ("inline", "local"):
        for key in ("partition", "account", "container_image"):
            need(getattr(la, key) is None,
                 f"launch.{key}: set, but launch.executor={la.executor} runs no Slurm jobs; set "
                 f"launch.executor=slurm or remove it")
    return p
