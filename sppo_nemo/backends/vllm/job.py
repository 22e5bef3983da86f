"""The job folder that the vLLM controller writes and its workers read. Standard library only: the
worker imports this in vLLM's own interpreter, next to nothing else of the package.

``job.json`` holds the engine settings, the sampling parameters, every chunk's prompts as token
ids with their position and seed, and which chunks each engine runs. Engine e appends each finished
chunk to ``shard_{e:02d}.jsonl`` (one ChunkLog line: ``{"chunk": c, "rows": [{"position": i,
"outputs": [[token ids], finish reason] × K}]}``) and writes its output to ``worker_{e:02d}.log``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

JOB = "job.json"
READY = "sppo-vllm-worker: engine ready, vllm"  # the line a worker prints once its engine is up
FAILED = "sppo-vllm-worker: error:"  # the line a worker prints before it exits on an exception


def shard_log(state: Path, engine: int) -> Path:
    return Path(state) / f"shard_{engine:02d}.jsonl"


# generation.vllm.dtype → vLLM's name; the KV cache a CPU engine gets when kv_cache_gib is null (vLLM
# would size it from the machine's memory). Shared by every vLLM engine we start: the generator's, the
# local AlpacaEval judge's and lm-eval's.
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "auto": "auto"}
CPU_KV_CACHE_GIB = 2.0


def kv_cache_bytes(kv_cache_gib: float | None, on_gpu: bool) -> int | None:
    """The engine's KV cache in bytes: kv_cache_gib, else :data:`CPU_KV_CACHE_GIB` on a CPU, else None
    (vLLM sizes it from gpu_memory_utilization)."""
    gib = kv_cache_gib if kv_cache_gib is not None else (None if on_gpu else CPU_KV_CACHE_GIB)
    return None if gib is None else int(gib * 2**30)


def worker_log(state: Path, engine: int) -> Path:
    return Path(state) / f"worker_{engine:02d}.log"


@dataclass
class EngineSettings:
    """The keyword arguments of ``vllm.LLM`` that the recipe decides."""

    model: str
    dtype: str  # vLLM's names: bfloat16, float16, float32, auto
    tensor_parallel_size: int
    max_model_len: int
    enforce_eager: bool
    enable_prefix_caching: bool
    enable_chunked_prefill: bool  # False on CPU: a split prefill of a seeded request kills the engine there
    gpu_memory_utilization: float
    kv_cache_memory_bytes: int | None
    # The engine core in the worker's own process (VLLM_ENABLE_V1_MULTIPROCESSING=0): on CPU with one
    # tensor-parallel rank, which saves two interpreter starts and the inter-process hops of every
    # step; the worker then pins its threads to its cores itself.
    in_process: bool = False


@dataclass
class Sampling:
    n: int  # K samples per prompt: one request with n children, each seeded seed + child index
    temperature: float
    top_p: float
    max_tokens: int
    stop_token_ids: list[int]
    max_length: int | None = None  # prompt + response at most (the trainer's); None: max_tokens alone

    def budget(self, prompt_len: int) -> int:
        """A request's max_tokens: as ``ChatFormat.response_budget`` reckons it."""
        if self.max_length is None:
            return self.max_tokens
        return max(1, min(self.max_tokens, self.max_length - prompt_len))


@dataclass
class Job:
    engine: EngineSettings
    sampling: Sampling
    chunks: list[list[tuple[int, int, list[int]]]]  # per chunk: (position, seed, prompt token ids) per prompt
    assignment: list[list[int]] = field(default_factory=list)  # per engine: the chunks it runs

    def write(self, state: Path) -> Path:
        path = Path(state) / JOB
        tmp = path.with_name(JOB + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)
        return path

    @staticmethod
    def read(path: Path) -> "Job":
        raw = json.loads(Path(path).read_text())
        return Job(EngineSettings(**raw["engine"]), Sampling(**raw["sampling"]),
                   [[tuple(p) for p in chunk] for chunk in raw["chunks"]], raw["assignment"])
