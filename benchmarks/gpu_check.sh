#!/usr/bin/env bash
# Every GPU check in one go, for a bare GPU machine with no network: the gpu test tier; the
# 1B-parameter SPPO step benchmark of the megatron backend (step time, MFU against the bf16 matmul
# rate measured there, memory); PairRM in bf16 on the shared workload (pairs/s, TFLOP/s as a
# fraction of that measured peak); then, where the image has vllm, the vLLM backend's tokens/s on
# a 1B shape at K = 5 and its overhead against a bare LLM.generate. What the machine lacks
# (megatron-core and omegaconf wheels, the PairRM workload, which lives outside the repository)
# is expected in .whl/ (benchmarks/fetch_gpu_wheels.sh; carry .whl). Results go to $OUT.
# Time limits: the tests 240 s, each megatron benchmark 100 s, PairRM 120 s, vLLM 420 s; the worst
# case passes a device call's 600 s, so give `run` its full limit (never run on a GPU yet).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, megatron.core as m; print('torch', torch.__version__, 'megatron-core', m.__version__)"
python3 -c "import transformer_engine" 2>/dev/null && TE=1 || TE=0
echo "transformer_engine importable: $TE"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | grep -v -i warn | tail -25
bench() {  # name, args...
    local name=$1; shift
    timeout 100 python3 benchmarks/bench_megatron_step.py --json "$OUT/bench.jsonl" "$@" >"$OUT/bench_$name.log" 2>&1
    grep '^{' "$OUT/bench_$name.log" || { echo "bench $name failed:"; grep -v -i warn "$OUT/bench_$name.log" | tail -15; }
}
bench sdpa_m4 --attention sdpa --micro 4 --accum 2
bench sdpa_m8 --attention sdpa --micro 8 --accum 1
bench local_m4 --attention local --micro 4 --accum 2
[ "$TE" = 1 ] && bench te_m4 --attention te --micro 4 --accum 2
bench sdpa_sel --attention sdpa --micro 4 --accum 2 --recompute selective
# PairRM bf16: full-size random weights (DeBERTa-v3-large shape), the workload scored 16 times over
# at batches of 20, 64 and 160 ordered pairs.
PAIRRM_DATA=../shared/bench-data/pairrm_k5.jsonl
[ -f "$PAIRRM_DATA" ] || PAIRRM_DATA=.whl/pairrm_k5.jsonl
if [ -f "$PAIRRM_DATA" ]; then
    timeout 120 python3 benchmarks/bench_pairrm.py --gpu-only --data "$PAIRRM_DATA" --json "$OUT/pairrm.json" \
        >"$OUT/bench_pairrm.log" 2>&1
    grep -E "peak|pairs/s" "$OUT/bench_pairrm.log" || grep -v -i warn "$OUT/bench_pairrm.log" | tail -15
else
    echo "PairRM workload not found (../shared/bench-data or .whl/): run benchmarks/fetch_gpu_wheels.sh; skipped"
fi
# vLLM: only where the image has it (the NGC NeMo container 26.06 ships 0.20.1); a bare machine has
# none, and vLLM's CUDA wheels are far larger than what a device run can carry.
if python3 -c "import vllm" 2>/dev/null; then
    timeout 420 python3 benchmarks/bench_generation.py --python python3 --no-hf --random-1b /tmp/rand-1b --k 5 \
        --prompts 256 --batch-size 1280 --max-new-tokens 256 --engines 1 --compiled --bare \
        >"$OUT/bench_vllm.log" 2>&1
    grep -A12 "^backend" "$OUT/bench_vllm.log" || grep -v -i warn "$OUT/bench_vllm.log" | tail -20
else
    echo "vllm not importable: the vLLM figures need an image that has it (nvcr.io/nvidia/nemo:26.06); skipped"
fi
exit 0
