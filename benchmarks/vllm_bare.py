"""A bare vLLM script on the same work as one of our vLLM jobs: the yardstick of the backend's overhead.

Run in the vLLM interpreter by benchmarks/bench_generation.py --bare, on the job folder our backend
just ran (``job.json``): one ``LLM`` with the same engine settings, every prompt of every chunk in
ONE ``generate`` call (what a hand-written sampling script does), the same per-prompt seeds and
sampling parameters. Prints one JSON line: engine start and generation seconds, tokens generated.
Imports vllm and the standard library only.
"""

import json
import sys
import time

if __name__ == "__main__":
    job = json.load(open(sys.argv[1] + "/job.json"))
    e, s = job["engine"], job["sampling"]
    started = time.time()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=e["model"], skip_tokenizer_init=True, seed=0, dtype=e["dtype"],
              tensor_parallel_size=e["tensor_parallel_size"], max_model_len=e["max_model_len"],
              enforce_eager=e["enforce_eager"], enable_prefix_caching=e["enable_prefix_caching"],
              enable_chunked_prefill=e["enable_chunked_prefill"], gpu_memory_utilization=e["gpu_memory_utilization"],
              kv_cache_memory_bytes=e["kv_cache_memory_bytes"])
    ready = time.time()
    items = [p for chunk in job["chunks"] for p in chunk]
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for _, _, ids in items],
                        [SamplingParams(n=s["n"], temperature=s["temperature"], top_p=s["top_p"], top_k=0,
                                        max_tokens=s["max_tokens"], seed=seed, stop_token_ids=s["stop_token_ids"],
                                        detokenize=False) for _, seed, _ in items], use_tqdm=False)
    done = time.time()
    tokens = sum(len(o.token_ids) for out in outs for o in out.outputs)
    print(json.dumps({"start_s": ready - started, "generate_s": done - ready, "tokens": tokens}))
