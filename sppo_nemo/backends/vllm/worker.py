"""One vLLM engine over its share of a job's chunks: the only module that imports vllm.

Run by the controller as ``python -m sppo_nemo.backends.vllm JOB_DIR ENGINE PARENT_PID`` in the
interpreter of ``generation.vllm.python``; a process per engine keeps vLLM's dependency pins out of
the main environment and frees all engine memory at exit. The engine takes token ids
(``TokensPrompt``: the trainer's chat formatting, done by the controller) and returns token ids
(``detokenize=False``, no tokenizer loaded): the controller decodes them as the transformers
backend does, so both backends make the same records from the same tokens.

Each prompt is one request with ``SamplingParams(n=K, seed=...)``, its seed derived from the run
seed and the prompt's position, never from the batch; each chunk is one ``generate`` call, whose
requests alone fill the engine's batches, so a chunk's samples are the same whichever engine runs
it, and after a resume.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from sppo_nemo.backends.vllm.job import FAILED, READY, Job, shard_log
from sppo_nemo.formats.chunklog import ChunkLog
from sppo_nemo.process.children import die_with_parent

def pin_threads() -> None:
    """In-process on CPU: this process's cores and OpenMP threads are the engine's share
    (``VLLM_CPU_OMP_THREADS_BIND``, set by the controller, which vLLM applies itself only to the
    workers it starts). Before torch is imported: OpenMP reads its thread count once."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cpus = [int(c) for c in os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "").split(",") if c.strip().isdigit()]
    if cpus:
        os.sched_setaffinity(0, cpus)
        os.environ["OMP_NUM_THREADS"] = str(len(cpus))


def run(state: Path, engine: int) -> None:
    started = time.time()
    job = Job.read(state / "job.json")
    log = ChunkLog(shard_log(state, engine))
    if job.engine.in_process:
        pin_threads()
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    e, s = job.engine, job.sampling
    if e.in_process:
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    llm = LLM(model=e.model, skip_tokenizer_init=True, seed=0, dtype=e.dtype,
              tensor_parallel_size=e.tensor_parallel_size, max_model_len=e.max_model_len,
              enforce_eager=e.enforce_eager, enable_prefix_caching=e.enable_prefix_caching,
              enable_chunked_prefill=e.enable_chunked_prefill, gpu_memory_utilization=e.gpu_memory_utilization,
              kv_cache_memory_bytes=e.kv_cache_memory_bytes)
    print(f"{READY} {vllm.__version__} after {time.time() - started:.1f}s", flush=True)
    for c in job.assignment[engine]:
        items = job.chunks[c]
        prompts = [TokensPrompt(prompt_token_ids=ids) for _, _, ids in items]
        params = [SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=0,
                                 max_tokens=s.budget(len(ids)), seed=seed, stop_token_ids=s.stop_token_ids,
                                 detokenize=False)
                  for _, seed, ids in items]
        outs = llm.generate(prompts, params, use_tqdm=False)
        rows = [{"position": pos, "outputs": [[list(o.token_ids), o.finish_reason]
                                              for o in sorted(out.outputs, key=lambda o: o.index)]}
                for (pos, _, _), out in zip(items, outs)]
        log.append(c, rows)
        print(f"sppo-vllm-worker: chunk {c} done at {time.time() - started:.1f}s", flush=True)


def main(argv: list[str]) -> int:
    state, engine, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    if parent == 0:  # an srun step: lead a group of our own, and watch the step daemon that started us
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
        parent = os.getppid()
    die_with_parent(parent)
    try:
        run(state, engine)
    except BaseException as exc:  # the controller quotes this line and the log's tail
        traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"{FAILED} {type(exc).__name__}: {first}", file=sys.stderr, flush=True)
        return 1
    return 0
