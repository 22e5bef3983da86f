"""python -m sppo_nemo.testing DIR [--seed 0] [--vllm]: build the tiny Llama policy into DIR."""

import argparse
from pathlib import Path

from sppo_nemo.testing.llama import build_tiny_llama

ap = argparse.ArgumentParser(description="Build the tiny random Llama policy used by tests and CI.")
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--vllm", action="store_true", help="head size 32 (hidden 64, 2 heads, 1 key/value head): vLLM's "
                "CPU attention takes no head size under 32")
args = ap.parse_args()
shape = dict(hidden=64, heads=2, kv_heads=1) if args.vllm else {}
print(build_tiny_llama(Path(args.out), args.seed, **shape))
