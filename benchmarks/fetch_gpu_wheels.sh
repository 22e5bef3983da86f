#!/usr/bin/env bash
# Gather what benchmarks/gpu_check.sh needs on a bare GPU machine without network (Python 3.12,
# CUDA torch and transformers already there) into .whl/ (git-ignored by adding "/.whl/" to
# .git/info/exclude; a device run carries it): the megatron-core and omegaconf wheels, and the
# PairRM workload from ../shared/bench-data (outside the repository, so not in the working tree).
# Run here, where the package index is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
    "megatron-core==0.16.1" "omegaconf==2.4.0"
cp ../shared/bench-data/pairrm_k5.jsonl .whl/
ls -l .whl
