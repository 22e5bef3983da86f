"""The vLLM generator as the stages see it: independent engines in worker processes, watched here.

:meth:`VLLMGenerator.sample` lays the prompts on the chunk grid of every generator
(``sampling.chunk_grid``), reads back the chunks the engines' logs already hold, writes the job
folder for the rest (prompts as the trainer's token ids, one seed per prompt position) and starts
one worker per engine over disjoint chunks: each owns ``tensor_parallel`` GPUs (a slice of the
visible ones) or, on CPU, its share of the cores. It watches their logs for progress, stops them
all if one fails (quoting its log; finished chunks stay for the rerun), and decodes the merged
chunks in prompt order into the records the transformers backend makes.

Data parallelism is by independent engines, as NeMo-RL and OpenRLHF do for dense models: vLLM's
own ``LLM(data_parallel_size=...)`` is refused for single-process offline use.

Log-probabilities for the evaluate stage's KL estimate are scored by transformers
(``HFGenerator.sequence_logprobs``): the trainer's own computation in fp32, on the same tokens,
whereas vLLM's sampled log-probs are after temperature and top-p, in the engine's dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from sppo_nemo.formats import hub
from sppo_nemo.backends import slurm
from sppo_nemo.backends.chat_format import ChatFormat, decode_sample
from sppo_nemo.backends.hf import HFGenerator, load_tokenizer
from sppo_nemo.backends.vllm.check import VllmUnavailable, check_interpreter, local_engines, local_gpu_problem
from sppo_nemo.backends.vllm.job import (DTYPES, FAILED, READY, EngineSettings, Job, Sampling, kv_cache_bytes,
                                         shard_log, worker_log)
from sppo_nemo.formats.chunklog import ChunkLog, merged
from sppo_nemo.process.children import package_link, stop_groups
from sppo_nemo.schema.config import VllmConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.schema.protocols import ProgressFn, Prompt, Sample, SamplingParams
from sppo_nemo.backends.sampling import chunk_grid
from sppo_nemo.maths.seeds import derive_seed



class VllmWorkerFailed(UserError):
    pass


class VLLMGenerator:
    def __init__(self, policy: str, config: VllmConfig, max_model_len: int, system_prompt: str | None,
                 max_prompt_length: int):
        self.config = config
        self.python = config.python or sys.executable
        check_interpreter(self.python)
        self.policy = str(hub.local_dir(policy, "policy checkpoint", "policy.model"))  # the engines read its files
        self.max_model_len = max_model_len
        self.system_prompt = system_prompt
        self.max_prompt = max_prompt_length  # the trainer's: prompts are cut as it cuts them
        self.fmt = ChatFormat(load_tokenizer(self.policy), system_prompt)
        self.scorer: HFGenerator | None = None
        self.facts: dict = {}

    # ------------------------------------------------------------------ sampling

    def sample(self, prompts: Sequence[Prompt], num_samples: int, params: SamplingParams, state: Path,
               seed_tag: tuple, progress: ProgressFn | None = None) -> list[list[Sample]]:
        state = Path(state)
        state.mkdir(parents=True, exist_ok=True)
        grid = chunk_grid(len(prompts), num_samples, params.batch_size)
        done = _logged_chunks(state, grid)  # no worker runs now: torn lines are dropped here
        if progress and done:
            progress(sum(len(rows) for rows in done.values()) * num_samples)
        todo = [c for c in range(len(grid)) if c not in done]
        engines = self._engines(len(todo))
        self.facts = {"engines": engines, "chunks": len(grid), "chunks_resumed": len(done)}
        if todo:
            job = self._job(prompts, grid, num_samples, params, seed_tag)
            job.assignment = [todo[e::engines] for e in range(engines)]
            job.write(state)
            self.facts["vllm_version"] = self._run(state, job, num_samples, progress)
            done = _logged_chunks(state, grid)
            missing = [c for c in todo if c not in done]
            if missing:
                raise VllmWorkerFailed(f"generation.backend=vllm: the engines exited without chunks {missing[:5]}; "
                                       f"see {state}/worker_*.log, then rerun the same command to resume")
        return [[decode_sample(self.fmt.tok, self.fmt.end_ids, prompts[row["position"]].id, k, ids)
                 for k, (ids, _reason) in enumerate(row["outputs"])]
                for c in range(len(grid)) for row in done[c]]

    def _job(self, prompts: Sequence[Prompt], grid: list[range], k: int, params: SamplingParams,
             seed_tag: tuple) -> Job:
        c = self.config
        on_gpu = _visible_gpus() != []
        engine = EngineSettings(
            model=self.policy, dtype=DTYPES[c.dtype], tensor_parallel_size=c.tensor_parallel,
            max_model_len=self.max_model_len, enforce_eager=c.enforce_eager,
            enable_prefix_caching=c.enable_prefix_caching, enable_chunked_prefill=on_gpu,
            gpu_memory_utilization=c.gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_bytes(c.kv_cache_gib, on_gpu),
            in_process=not on_gpu and c.tensor_parallel == 1)
        sampling = Sampling(n=k, temperature=params.temperature, top_p=params.top_p,
                            max_tokens=params.max_new_tokens, stop_token_ids=list(self.fmt.end_ids),
                            max_length=params.max_length)
        chunks = [[(i, derive_seed(*seed_tag, "prompt", i), self.fmt.prompt_ids(prompts[i].text, self.max_prompt))
                   for i in chunk] for chunk in grid]
        return Job(engine, sampling, chunks)

    def _commands(self, state: Path, n: int, tp: int) -> list[tuple[list[str], dict]]:
        """Each engine's command and its devices. Local: a worker process here (it watches this
        process, its parent). srun: one step per engine on its node of the allocation, sharing it
        with sppo-run's own step (--overlap), watching its step's daemon instead."""
        worker = ["-m", "sppo_nemo.backends.vllm", str(state)]
        if self.config.launcher == "local":
            return [([self.python, *worker, str(e), str(os.getpid())], place)
                    for e, place in enumerate(_placements(n, tp))]
        return [([*slurm.step_on(node, self.config.srun_args, self.python), *worker, str(e), "0"], place)
                for e, (node, place) in enumerate(_srun_placements(n, tp, allocation_nodes()))]

    def _slots(self) -> int:
        """How many engines fit: on this machine, its GPUs / tensor_parallel (one on CPU); over an
        allocation, as many per node (the batch host's count) on every node (one each on CPU)."""
        gpus = _visible_gpus()
        here = len(gpus) // self.config.tensor_parallel if gpus else 1
        return here * (len(allocation_nodes()) if self.config.launcher == "srun" else 1)

    def _engines(self, todo: int) -> int:
        """Engines to start: the recipe's, or visible GPUs / tensor_parallel (one on CPU; over an
        allocation, per node times the nodes); never more than there are chunks to run."""
        c, gpus = self.config, _visible_gpus()
        if c.launcher == "srun":
            slots = self._slots()
            n = c.engines or slots
            if n > slots:
                raise VllmUnavailable(f"generation.vllm.engines: {n} engines do not fit the allocation's {slots} "
                                      f"engine slot(s) ({len(allocation_nodes())} node(s)); lower engines or set null")
            return max(1, min(n, todo))
        problem = local_gpu_problem(c, len(gpus))
        if problem:
            raise VllmUnavailable(problem)
        n = local_engines(c, len(gpus))
        return max(1, min(n, todo))

    def _run(self, state: Path, job: Job, k: int, progress: ProgressFn | None) -> str:
        """Start the workers, report their finished chunks, stop all of them on any exit; the
        vLLM version the engines reported."""
        n = len(job.assignment)
        env = dict(os.environ, PYTHONPATH=str(package_link(state)), PYTHONUNBUFFERED="1")
        commands = self._commands(state, n, job.engine.tensor_parallel_size)
        seen = [ChunkLog(shard_log(state, e)).peek() for e in range(n)]  # resumed: reported already
        procs = []
        try:
            for e, (cmd, place) in enumerate(commands):
                with open(worker_log(state, e), "w") as log:
                    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, **place},
                                                  start_new_session=True))
            while True:
                codes = [p.poll() for p in procs]
                for e in range(n):
                    new = {c for c in ChunkLog(shard_log(state, e)).peek() - seen[e] if c < len(job.chunks)}
                    if progress and new:
                        progress(sum(len(job.chunks[c]) for c in new) * k)
                    seen[e] |= new
                failed = [e for e, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    raise VllmWorkerFailed(_failure(state, failed[0], codes[failed[0]], self.config,
                                                    _finished(state, len(job.chunks)), len(job.chunks)))
                if all(code == 0 for code in codes):
                    break
                time.sleep(0.25)
        finally:
            stop_groups(procs)
        return _version(state, n)

    # ------------------------------------------------------------------ scoring and facts

    def sequence_logprobs(self, prompts: Sequence[Prompt], responses: Sequence[Sample],
                          precision: str = "fp32") -> np.ndarray:
        if self.scorer is None:
            self.scorer = HFGenerator(self.policy, self.system_prompt, self.max_prompt)
        return self.scorer.sequence_logprobs(prompts, responses, precision)

    def kl_terms(self, base: str, prompts: Sequence[Prompt], responses: Sequence[Sample],
                 precision: str = "fp32") -> np.ndarray:
        if self.scorer is None:
            self.scorer = HFGenerator(self.policy, self.system_prompt, self.max_prompt)
        return self.scorer.kl_terms(base, prompts, responses, precision)

    def cut_prompts(self, prompts: Sequence[Prompt]) -> int:
        return sum(len(self.fmt.prompt_ids(p.text)) > self.max_prompt for p in prompts)

    def run_facts(self) -> dict:
        return {"vllm": dict(self.facts)} if self.facts else {}

    def exact_metrics(self, prompts: Sequence[Prompt], history: Sequence) -> dict:
        return {}  # a language model has no exact figures

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None


# ---------------------------------------------------------------------- helpers


def _logged_chunks(state: Path, grid: list[range]) -> dict[int, list[dict]]:
    """The chunks the engines' logs hold whole and on the current grid (a chunk of other positions,
    from a log of other work, is ignored and redone)."""
    logs = [ChunkLog(p) for p in sorted(state.glob("shard_*.jsonl"))]
    return {c: rows for c, rows in merged(logs).items()
            if c < len(grid) and [r["position"] for r in rows] == list(grid[c])}


def _finished(state: Path, total: int) -> int:
    """How many chunks the logs hold whole, read while workers may still write (ChunkLog.peek)."""
    return len({c for p in state.glob("shard_*.jsonl") for c in ChunkLog(p).peek() if c < total})


def _visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [d.strip() for d in visible.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _placements(engines: int, tp: int) -> list[dict]:
    """Each engine's devices: a slice of the visible GPUs, or on CPU its share of this process's
    cores (``VLLM_CPU_OMP_THREADS_BIND``: one list per tensor-parallel rank, '|'-separated)."""
    gpus = _visible_gpus()
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[e * tp:(e + 1) * tp])} for e in range(engines)]
    cpus = sorted(os.sched_getaffinity(0))
    out = []
    for e in range(engines):
        mine = cpus[e * len(cpus) // engines:(e + 1) * len(cpus) // engines] or cpus[e % len(cpus):][:1]
        ranks = [mine[r * len(mine) // tp:(r + 1) * len(mine) // tp] or mine[:1] for r in range(tp)]
        out.append({"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, r)) for r in ranks)})
    return out


def allocation_nodes() -> list[str]:
    """The nodes of the Slurm allocation sppo-run runs in (generation.vllm.launcher=srun)."""
    return slurm.allocation_nodes("generation.vllm.launcher")


def _srun_placements(engines: int, tp: int, nodes: list[str]) -> list[tuple[str, dict]]:
    """Engine e on node e // per_node with the GPU slice of its slot there (the batch host's GPU
    count stands for every node's); on CPU one engine per node, its threads left to the node."""
    gpus = _visible_gpus()
    per_node = max(1, len(gpus) // tp) if gpus else 1
    out = []
    for e in range(engines):
        node, slot = nodes[(e // per_node) % len(nodes)], e % per_node
        place = {"CUDA_VISIBLE_DEVICES": ",".join(gpus[slot * tp:(slot + 1) * tp])} if gpus else {}
        out.append((node, place))
    return out


def _version(state: Path, engines: int) -> str:
    for e in range(engines):
        for line in worker_log(state, e).read_text(errors="replace").splitlines():
            if line.startswith(READY):
                return (line[len(READY):].split() or ["unknown"])[0]
    return "unknown"


MEMORY_SIGNS = ("out of memory", "outofmemory", "kv cache", "available memory", "cannot allocate memory",
                "memory for kv")


def _failure(state: Path, engine: int, code: int, c: VllmConfig, finished: int, total: int) -> str:
    path = worker_log(state, engine)
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    errors = [ln for ln in lines if ("Error" in ln or "error" in ln) and " INFO " not in ln and " WARNING " not in ln]
    quote = deque((ln if len(ln) <= 300 else ln[:300] + " …" for ln in errors or lines), maxlen=8)
    text = "\n".join(errors or lines[-40:]).lower()  # the error lines: INFO lines name "KV cache" too
    if code < 0:
        hint = (f"the worker was killed by signal {-code} (the kernel's out-of-memory killer, or a kill); with "
                f"too little memory lower generation.vllm.kv_cache_gib or max_model_len")
    elif "not supported for now" in text:  # vLLM: "Model architectures [...] are not supported for now"
        hint = ("vLLM cannot run this policy's architecture (config.json `architectures`); use "
                "generation.backend=hf for it")
    elif "on startup is less than desired gpu memory utilization" in text:  # vLLM's start-up guard
        hint = ("the GPU was not free when the engine started: another process holds memory on it (a "
                "leftover engine, or a program outside sppo-run; `nvidia-smi` names it). Stop it, or lower "
                f"generation.vllm.gpu_memory_utilization (now {c.gpu_memory_utilization}) to the share that is free")
    elif any(s in text for s in MEMORY_SIGNS):
        hint = ("the engine ran out of memory for its weights and KV cache: lower generation.vllm.max_model_len "
                "or sampling.batch_size, change generation.vllm.gpu_memory_utilization (now "
                f"{c.gpu_memory_utilization}; the share of each GPU vLLM may take) or kv_cache_gib (now "
                f"{c.kv_cache_gib}), or give each engine more GPUs (tensor_parallel)")
    else:
        hint = "see the worker's log"
    failed_line = next((ln[:300] for ln in reversed(lines) if ln.startswith(FAILED)), None)
    return (f"generation.backend=vllm: engine {engine} failed (exit {code}): {hint}.\n"
            f"worker log: {path}\n--- last lines ---\n" + "\n".join(quote)
            + (f"\n{failed_line}" if failed_line and failed_line not in quote else "")
            + f"\n{finished} of {total} chunks are finished and kept; fix the cause and rerun the same command "
              f"to resume.")
