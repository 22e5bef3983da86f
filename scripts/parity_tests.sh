#!/usr/bin/env bash
# The container-parity tier: the tests of tests/parity.py (megatron TP/PP/DP, packing, conversion,
# export; HF packing; NeMo-Run) run again on the NGC NeMo image's stack, Python 3.12 with
# megatron-core 0.18, transformers 5.8.1 and nemo-run 0.10.0, in the virtualenv that
# scripts/parity_venv.sh builds once per machine. The checkout under test goes on PYTHONPATH.
#
#   bash scripts/parity_tests.sh            # the whole tier
#   bash scripts/parity_tests.sh -x -k tp2  # extra arguments go to pytest
#
# Without Python 3.12 it prints why the tier is skipped and exits 0.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
start=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "parity: checking its environment (the first build on a machine takes 4-5 minutes)"
venv=$(bash scripts/parity_venv.sh 2>"$log")
rc=$?
if [ "$rc" -eq 3 ]; then
    echo "parity: SKIPPED: the container-parity tier needs Python 3.12: $(tail -n 1 "$log")"
    exit 0
elif [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    echo "parity: scripts/parity_venv.sh failed (exit $rc)" >&2
    exit "$rc"
fi
grep -E "built in|^parity venv:" "$log" || true
echo "parity: environment ready in $(( $(date +%s) - start ))s: $venv"
# the files holding the selection; -m parity keeps the selected tests of each (tests/conftest.py)
mapfile -t files < <("$venv/bin/python" tests/parity.py)
SPPO_PARITY_RUN=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -m parity "${files[@]}" "$@"
rc=$?
echo "parity: finished in $(( $(date +%s) - start ))s (exit $rc)"
exit "$rc"
