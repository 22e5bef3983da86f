"""Generation throughput: the transformers backend against the vLLM backend on identical work.

The default recipe's generate stage (recipes/smollm2_sppo_3iter.yaml): SmolLM2-135M-Instruct, the
64 prompts of split 1 of the builtin set, K = 4 samples each, up to 48 new tokens, temperature 1,
top_p 1, through each backend's ``Generator.sample`` as the stage calls it (the same chunk grid,
``sampling.batch_size`` sequences per call). Printed in one run, so the figures share the
machine's state:

- hf: HFGenerator (each prompt prefilled once for its K samples, finished rows leaving the batch)
  in each of --hf-precision (fp32, bf16), and beside it in the same run the reference it replaced:
  transformers' ``generate`` on K copies of each prompt (``--no-reference`` skips it); generated
  tokens per second of wall time and per CPU-second of the process (the machine is shared: the
  second is less disturbed by other work);
- vllm: VLLMGenerator, one engine and two engines (on CPU each takes half the cores), bf16, eager
  unless --compiled: tokens/s of the whole call (engine start included, what a stage pays) and of
  generation alone (from the worker's "engine ready" line to its last chunk);
- the ratios vllm / hf.

    .venv/bin/python benchmarks/bench_generation.py [--python VLLM_PYTHON] [--batch-size 64] [--compiled]
        [--engines 1,2] [--prompts 64] [--k 4] [--max-new-tokens 48] [--no-hf] [--hf-precision fp32,bf16]
        [--no-reference] [--no-vllm]

The vLLM interpreter defaults to the environment of scripts/vllm_venv.sh (built on first use).
On a GPU the same script runs as it is (benchmarks/gpu_check.sh calls it with a 1B shape).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sppo_nemo.backends import policy_location
from sppo_nemo.schema.config import DataConfig, VllmConfig
from sppo_nemo.formats.data import load_prompts, make_splits
from sppo_nemo.schema.protocols import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


def vllm_python(given: str | None) -> str:
    if given:
        return given
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm_venv.sh")], capture_output=True, text=True, check=True)
    return str(Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python")


def tokens(samples) -> int:
    return sum(s.num_tokens for ss in samples for s in ss)


def retokenized_differently(state: Path, fmt) -> tuple[int, int]:
    """(responses whose text re-encodes to other ids than the engine sampled, responses): what
    training and KL scoring, which tokenize the text, see differently from what was sampled."""
    from sppo_nemo.backends.chat_format import decode_sample
    from sppo_nemo.formats.chunklog import ChunkLog

    differ = total = 0
    for log in state.glob("shard_*.jsonl"):
        for rows in ChunkLog(log).completed().values():
            for row in rows:
                for ids, _reason in row["outputs"]:
                    s = decode_sample(fmt.tok, fmt.end_ids, "", 0, ids)
                    again = fmt.encode("", s.text, s.finished).response_ids
                    differ += again != list(ids)
                    total += 1
    return differ, total


def reference_generate(gen, prompts, k: int, params: SamplingParams) -> list:
    """What HFGenerator did before it prefilled each prompt once: transformers' generate on k copies
    of each prompt, batch_size sequences per call (a different random stream; the same work)."""
    import torch
    from transformers import GenerationConfig

    from sppo_nemo.maths.seeds import derive_seed

    config = GenerationConfig(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
                              max_new_tokens=params.max_new_tokens, pad_token_id=gen.tok.pad_token_id,
                              eos_token_id=gen.fmt.end_ids)
    items = [(p, j) for p in prompts for j in range(k)]
    out = []
    for b in range(0, len(items), params.batch_size):
        batch = items[b:b + params.batch_size]
        enc = [gen.fmt.prompt_ids(p.text, gen.max_prompt) for p, _ in batch]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), gen.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, width - len(e):] = torch.tensor(e)
            mask[i, width - len(e):] = 1
        torch.manual_seed(derive_seed(0, b))
        with torch.no_grad():
            rows = gen.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
        out += [gen._sample(p.id, j, row) for (p, j), row in zip(batch, rows.tolist())]
    return [out]


def generation_seconds(state: Path) -> float:
    """From the latest 'engine ready' to the last chunk over the workers' logs (engines run together)."""
    ready, done = [], []
    for log in state.glob("worker_*.log"):
        text = log.read_text(errors="replace")
        ready += [float(x) for x in re.findall(r"engine ready, vllm \S+ after ([\d.]+)s", text)]
        done += [float(x) for x in re.findall(r"chunk \d+ done at ([\d.]+)s", text)]
    return max(done) - max(ready) if ready and done else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="policy.model (default: the shipped SmolLM2)")
    ap.add_argument("--python", default=None, help="the interpreter with vllm (default: scripts/vllm_venv.sh's)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64, help="sampling.batch_size: sequences per call")
    ap.add_argument("--engines", default="1,2")
    ap.add_argument("--tensor-parallel", type=int, default=1)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--compiled", action="store_true", help="vLLM's compiled mode (CUDA graphs on GPU)")
    ap.add_argument("--kv-cache-gib", type=float, default=None)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--hf-precision", default="fp32,bf16", help="generation.precision values of the hf rows")
    ap.add_argument("--no-reference", action="store_true", help="skip transformers' generate on K prompt copies")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--bare", action="store_true", help="also a bare vLLM script on the one-engine job "
                    "(benchmarks/vllm_bare.py): the backend's overhead on generation")
    ap.add_argument("--random-1b", type=Path, default=None, metavar="DIR",
                    help="a random Llama of 1B parameters (hidden 2048, 16 layers, 32 heads, 8 key/value heads, "
                         "MLP 8192; the tiny test tokenizer) built into DIR and used as the policy")
    ap.add_argument("--json", type=Path, default=None,
                    help="also write the table's rows here (benchmarks/gpu_check.sh)")
    args = ap.parse_args()
    if args.random_1b is not None:
        from sppo_nemo.testing import build_tiny_llama

        args.model = str(build_tiny_llama(args.random_1b, hidden=2048, layers=16, heads=32, kv_heads=8,
                                          intermediate=8192))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prompts = make_splits(load_prompts(DataConfig(split_size=64)), 64, args.prompts, 1).train[0]
    params = SamplingParams(1.0, 1.0, args.max_new_tokens, 0, args.batch_size)
    policy = policy_location(args.model)
    print(f"work: {len(prompts)} prompts × K={args.k}, ≤{args.max_new_tokens} new tokens, batch {args.batch_size}; "
          f"policy {policy}; load {os.getloadavg()[0]:.2f}")
    rows = []
    hf_rate = None
    with tempfile.TemporaryDirectory(prefix="sppo-bench-gen-") as tmp:
        if not args.no_hf:
            from sppo_nemo.backends.hf import HFGenerator

            for precision in args.hf_precision.split(","):
                gen = HFGenerator(policy, None, 256, dtype=precision)
                t0 = time.perf_counter()
                gen.model  # loaded on first use: its load is the first column's, not generation's
                t1, c1 = time.perf_counter(), time.process_time()
                samples = gen.sample(prompts, args.k, params, Path(tmp) / f"hf-{precision}", (0, "generate", 1))
                t2, c2 = time.perf_counter(), time.process_time()
                rate = tokens(samples) / (t2 - t1)
                hf_rate = hf_rate or rate
                rows.append((f"hf {precision} prefill once", tokens(samples), t2 - t0, rate, rate,
                             tokens(samples) / (c2 - c1)))
                if not args.no_reference:
                    t1, c1 = time.perf_counter(), time.process_time()
                    samples = reference_generate(gen, prompts, args.k, params)
                    t2, c2 = time.perf_counter(), time.process_time()
                    rows.append((f"hf {precision} generate×K", tokens(samples), t2 - t1, tokens(samples) / (t2 - t1),
                                 tokens(samples) / (t2 - t1), tokens(samples) / (c2 - c1)))
                gen.close()
        if args.no_vllm:
            return report(rows, hf_rate, args.json)
        from sppo_nemo.backends.vllm.controller import VLLMGenerator

        py = vllm_python(args.python)
        for n in [int(x) for x in args.engines.split(",")]:
            cfg = VllmConfig(engines=n, tensor_parallel=args.tensor_parallel, dtype=args.dtype,
                             enforce_eager=not args.compiled, kv_cache_gib=args.kv_cache_gib, python=py)
            state = Path(tmp) / f"vllm{n}"
            t0 = time.perf_counter()
            gen = VLLMGenerator(policy, cfg, 320, None, 256)
            samples = gen.sample(prompts, args.k, params, state, (0, "generate", 1))
            wall = time.perf_counter() - t0
            gen.close()
            gen_s = generation_seconds(state)
            if n == 1:
                differ, total = retokenized_differently(state, gen.fmt)
                print(f"re-tokenization: {differ} of {total} responses ({differ / total:.0%}) re-encode from their "
                      f"text to other ids than were sampled")
            rows.append((f"vllm {args.dtype} {'compiled' if args.compiled else 'eager'} ×{n}", tokens(samples), wall,
                         tokens(samples) / wall, tokens(samples) / gen_s, float("nan")))
            if args.bare and n == 1:
                out = subprocess.run([py, str(ROOT / "benchmarks" / "vllm_bare.py"), str(state)], capture_output=True,
                                     text=True, env=dict(os.environ, PYTHONPATH=""))
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("{")), None)
                if line is None:
                    print("bare vLLM failed:\n" + out.stderr[-3000:])
                else:
                    bare = json.loads(line)
                    rows.append(("bare LLM.generate (1 call)", bare["tokens"], bare["start_s"] + bare["generate_s"],
                                 bare["tokens"] / (bare["start_s"] + bare["generate_s"]),
                                 bare["tokens"] / bare["generate_s"], float("nan")))
                    overhead = gen_s / bare["generate_s"] - 1
                    calls = gen.run_facts()["vllm"]["chunks"]
                    print(f"backend overhead on generation against a bare LLM.generate: {overhead:+.1%} "
                          f"({gen_s:.1f} s in {calls} calls of {args.batch_size} sequences vs "
                          f"{bare['generate_s']:.1f} s in one call)")
    return report(rows, hf_rate, args.json)


def report(rows, hf_rate, json_path: Path | None = None) -> int:
    print(f"\n{'backend':<28}{'tokens':>8}{'wall s':>9}{'tok/s (wall)':>14}{'tok/s (generating)':>20}{'tok/CPU-s':>11}")
    for name, tok, wall, rate_wall, rate_gen, rate_cpu in rows:
        print(f"{name:<28}{tok:>8}{wall:>9.1f}{rate_wall:>14.1f}{rate_gen:>20.1f}{rate_cpu:>11.1f}")
    if hf_rate:
        print("\nratios against the first hf row (tok/s, generation alone for hf):")
        for name, _, _, rate_wall, rate_gen, _ in rows[1:]:
            print(f"  {name:<26} wall {rate_wall / hf_rate:5.2f}×   generating {rate_gen / hf_rate:5.2f}×")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if json_path is not None:
        keys = ("backend", "tokens", "wall_s", "tokens_per_s_wall", "tokens_per_s_generating", "tokens_per_cpu_s")
        json_path.write_text(json.dumps([{k: (None if isinstance(v, float) and v != v else v) for k, v in zip(keys, r)}
                                         for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
