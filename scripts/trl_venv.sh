#!/usr/bin/env bash
# Build, once, the separate virtualenv that runs TRL's DPOTrainer beside our trainer in the
# training-step benchmark (benchmarks/bench_trainer_step.py --trl, the default). TRL pulls
# accelerate, datasets, pandas and pyarrow, none of which sppo-run needs, so it lives in its own
# environment; our package never imports trl.
#
#   bash scripts/trl_venv.sh              # prints the venv path; a second run only checks
#   SPPO_TRL_VENV=/some/dir bash scripts/trl_venv.sh
#
# Contents (all pinned): torch 2.13.0 (the CPU wheel; never unpinned: that pulls gigabytes of
# CUDA wheels), transformers 5.24.0 (the one in .venv, so both trainers run the same Llama code),
# trl 1.16.0 (needs transformers >= 4.56.2) with accelerate, datasets and the rest at the versions
# .venv has. A finished build leaves a .ready marker holding the pins; a half-built or differently
# pinned directory is rebuilt from scratch.
set -euo pipefail
source "$(dirname "$0")/side_venv.sh"
VENV=${SPPO_TRL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/sppo-nemo/trl-venv}
PINS=("torch==2.13.0" "transformers==5.24.0" "trl==1.16.0" "accelerate==1.15.0" "datasets==5.2.0"
      "pandas==3.1.1" "pyarrow==26.0.1" "psutil==7.2.2")

install() {  # the venv's pip command
    # torch first and alone, so that nothing later can ask for another build of it.
    "$@" install -q "${PINS[0]}" >&2
    "$@" install -q "${PINS[@]}" >&2
    "$1" -c "import trl, transformers, torch; print('trl venv: trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" >&2
}

side_venv "$VENV" "${PINS[*]}" install
