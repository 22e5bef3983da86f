#!/usr/bin/env bash
# Build, once, the separate virtualenv that runs llm-blender's own PairRM code for the equivalence
# test and the PairRM benchmark (tests/integration/test_pairrm_equivalence.py,
# benchmarks/bench_pairrm.py). llm-blender 0.0.2 does not import on transformers 5, so it lives in
# its own environment next to a transformers 4 it supports; our backend never imports it.
#
#   bash scripts/blender_venv.sh          # prints the venv path; a second run only checks
#   SPPO_BLENDER_VENV=/some/dir bash scripts/blender_venv.sh
#
# Contents (all pinned): torch 2.13.0 (the CPU wheel; never unpinned: that pulls gigabytes of
# CUDA wheels), transformers 4.46.3 with what it pulls, llm-blender 0.0.2 with --no-deps (its
# declared deps include training and eval extras it does not import for ranking) plus the one
# package its import needs (dataclasses-json), sentencepiece + protobuf, which transformers 4 needs
# to turn a bare spm.model into a tokenizer, and omegaconf, so that the test can run our optional
# llm_blender backend (sppo_nemo from this checkout) there. A finished build leaves a .ready marker
# holding the pins; a half-built or differently pinned directory is rebuilt from scratch.
set -euo pipefail
source "$(dirname "$0")/side_venv.sh"
VENV=${SPPO_BLENDER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sppo-nemo/blender-venv}
PINS=("torch==2.13.0" "transformers==4.46.3" "dataclasses-json==0.6.7" "sentencepiece==0.2.0" "protobuf==5.28.3"
      "omegaconf==2.3.0")
BLENDER="llm-blender==0.0.2"

install() {  # the venv's pip command
    # torch first and alone, so that nothing later can ask for another build of it.
    "$@" install -q "${PINS[0]}" >&2
    "$@" install -q "${PINS[@]}" >&2
    "$@" install -q --no-deps "$BLENDER" >&2
    "$1" -c "import llm_blender, transformers, torch; print('llm-blender venv: transformers', transformers.__version__, 'torch', torch.__version__)" >&2
}

side_venv "$VENV" "${PINS[*]} $BLENDER" install
