#!/usr/bin/env bash
# Gather into .whl/ what benchmarks/gpu_check.sh needs on a bare GPU machine without network
# (Python 3.12 with CUDA torch, transformers, safetensors, numpy, packaging, PyYAML already there):
#
#   megatron-core 0.18.2   the newest 0.18.x, the NGC NeMo 26.06 image's minor (it ships 0.18.0) and
#                          what the container-parity tier pins; Requires-Dist: torch, numpy, packaging
#   omegaconf 2.4.0        sppo_nemo.loading.recipe imports it; Requires-Dist: PyYAML
#   pairrm_k5.jsonl        the PairRM workload, from ../shared/bench-data (outside the repository,
#                          so not in the working tree a device call sends)
#
# All wheels are cp312 / py3, downloaded --no-deps for manylinux x86-64. .whl/ is git-ignored
# (.gitignore), so a device call takes it only when named: run(..., carry=[".whl"]). What travels,
# the working tree and .whl/ together, must stay under 64 MiB; the sizes are printed at the end.
# Run here, where the package index is reachable; a second run only replaces other versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=("megatron-core==0.18.2" "omegaconf==2.4.0")
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p .whl
git check-ignore -q .whl/ || echo "warning: .whl/ is not git-ignored (.gitignore lists /.whl/)" >&2
for pin in "${PINS[@]}"; do  # keep one version of each: two stop the install there
    stem=$(echo "${pin%%==*}" | tr - _)
    find .whl -maxdepth 1 -name "${stem}-*.whl" ! -name "${stem}-${pin##*==}-*" -print -delete
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "${PINS[@]}" 2>&1 |
    grep -v "^WARNING: Location 'file:" || true
for pin in "${PINS[@]}"; do
    stem=$(echo "${pin%%==*}" | tr - _)
    ls .whl/"${stem}-${pin##*==}"-*.whl >/dev/null 2>&1 || { echo "no wheel for $pin in .whl/" >&2; exit 1; }
done
install -m 0644 ../shared/bench-data/pairrm_k5.jsonl .whl/
ls -l .whl
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
whl=$(du -cb .whl | tail -1 | cut -f1)
echo "carried: working tree $((tree / 1024)) KiB + .whl $((whl / 1024)) KiB" \
    "= $(((tree + whl) / 1024)) KiB (limit 65536 KiB)"
[ $((tree + whl)) -le $((64 * 1048576)) ] || { echo "over the 64 MiB a device call carries" >&2; exit 1; }
