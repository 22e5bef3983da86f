"""python -m sppo_nemo.testing DIR [--seed 0]: build the tiny Llama policy into DIR."""

import argparse
from pathlib import Path

from sppo_nemo.testing.llama import build_tiny_llama

ap = argparse.ArgumentParser(description="Build the tiny random Llama policy used by tests and CI.")
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()
print(build_tiny_llama(Path(args.out), args.seed))
