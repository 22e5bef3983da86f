#!/usr/bin/env bash
# Every GPU check in one device call, on one GPU (an H100), within 8 minutes (480 s) all told.
#
#   bash benchmarks/fetch_gpu_wheels.sh                       # here, once: .whl/ (git-ignored)
#   bash benchmarks/gpu_check.sh                              # there: run `run` with carry [".whl"]
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh              # anywhere: the steps and budgets, nothing run
#
# What a bare GPU machine (Python 3.12, CUDA torch, transformers, no network) lacks comes from .whl/:
# megatron-core 0.18.x (the NGC 26.06 image's minor) and omegaconf, plus the PairRM workload (it lives
# in ../shared, outside the repository). Steps, each under its own `timeout` (budgets in seconds; each
# timeout may add a 3 s kill grace; budgets plus graces add to at most 480, and one deadline at 480 s
# from the start caps every step again):
#
#   step             budget  runs
#   install              20  pip install .whl/*.whl into /tmp/site (no index, no deps; GPU_CHECK_SITE)
#   environment          30  GPU, versions; Transformer Engine and vLLM present or not (printed, not failed)
#   gpu_tests           160  pytest tests/gpu: torch trainer and HF generation on CUDA; megatron fp32 parity
#                            with the torch trainer, bf16 fit and export; shared-prompt packing (SDPA packs,
#                            TE shares no prompt) against unpacked and the streaming export read back by
#                            transformers, fp32 and bf16 (TE variants only where TE imports)
#   megatron_sdpa        55  bench_megatron_step.py, Llama-3.2-1B shape, SDPA, micro 4 x accum 2, seq 2048
#   megatron_te          45  the same with Transformer Engine, only where TE imports
#   pairrm_bf16          40  bench_pairrm.py --gpu-only, full-size PairRM in bf16, workload x 8
#   vllm                 90  bench_generation.py, vLLM eager on a random 1B Llama, 64 prompts x K 5 x 128
#                            new tokens, only where vLLM is installed
#   summary              10  benchmarks/gpu_check_report.py: $OUT/gpu_check.json and the printed summary
#   total               450  + 8 x 3 s kill grace = 474 <= 480
#
# One GPU means megatron world size 1: TP, PP or DP > 1 cannot run here (the CPU tier runs them over
# gloo; an 8-GPU node is needed for the paper layout). Every figure goes to $OUT/gpu_check.json,
# every step's output to $OUT/gpu_check.log (a device call returns at most 8 files); the summary is
# printed at the end. Exit 0 when every step that ran passed, 1 otherwise. The budgets are estimates:
# this script has not yet run on a GPU (give the device call a timeout_s of about 540 to keep its
# transfers and start inside; a step at its limit then shows as "timeout" in the report).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
DRY=${GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}  # where the wheels are installed (--target), first on PYTHONPATH
LIMIT=480
GRACE=3
START=$(date +%s)
SUMMARY_BUDGET=10
DEADLINE=$((START + LIMIT - SUMMARY_BUDGET - GRACE))  # the steps' deadline: the summary's time kept back
LOG=$OUT/gpu_check.log
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK"
: >"$LOG"
: >"$WORK/steps.tsv"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONDONTWRITEBYTECODE=1

# step NAME BUDGET [--if FLAG] -- COMMAND...: run COMMAND under min(BUDGET, time to the deadline),
# its output into $WORK/NAME.log and the shared log, one line into steps.tsv.
step() {
    local name=$1 budget=$2 cond="" status note rc t0 t1 limit left
    shift 2
    if [ "${1:-}" = --if ]; then cond=$2; shift 2; fi
    [ "${1:-}" = -- ] && shift
    if [ "$DRY" = 1 ]; then
        printf '%-15s %4s s  %-22s %s\n' "$name" "$budget" "${cond:+only if $cond}" "$*"
        printf '%s\t%s\t0\t\t\tdry-run\t%s\n' "$name" "$budget" "${cond:+only if $cond}" >>"$WORK/steps.tsv"
        return 0
    fi
    if [ -n "$cond" ] && [ "${!cond:-0}" != 1 ]; then
        note="$cond absent here"
        echo "--- $name: skipped ($note)" | tee -a "$LOG"
        printf '%s\t%s\t0\t\t\tskipped\t%s\n' "$name" "$budget" "$note" >>"$WORK/steps.tsv"
        return 0
    fi
    left=$((DEADLINE - $(date +%s) - GRACE))
    limit=$((budget < left ? budget : left))
    if [ "$limit" -lt 5 ]; then
        echo "--- $name: skipped (the 480 s deadline is reached)" | tee -a "$LOG"
        printf '%s\t%s\t0\t\t\tskipped\tdeadline\n' "$name" "$budget" >>"$WORK/steps.tsv"
        return 0
    fi
    echo "--- $name (limit ${limit} s): $*" | tee -a "$LOG"
    t0=$(date +%s.%N)
    timeout -k "$GRACE" "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    cat "$WORK/$name.log" >>"$LOG"
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    [ "$status" = ok ] || grep -v -i warn "$WORK/$name.log" | tail -15
    printf '%s\t%s\t%s\t%s\t%s\t%s\t\n' "$name" "$budget" "$limit" \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" "$rc" "$status" >>"$WORK/steps.tsv"
    echo "--- $name: $status (exit $rc)" | tee -a "$LOG"
}

if [ "$DRY" = 1 ]; then
    echo "gpu_check dry run: steps, budgets (s) and commands; nothing runs"
    TE=1 VLLM=1
else
    export PYTHONPATH=$SITE:$PWD
fi
ls .whl/*.whl >/dev/null 2>&1 || [ "$DRY" = 1 ] ||
    echo "no wheels in .whl/: run benchmarks/fetch_gpu_wheels.sh here, and name .whl in the device call's carry" |
    tee -a "$LOG"
step install 20 -- "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
step environment 30 -- "$PY" benchmarks/gpu_check_report.py env "$WORK"
if [ "$DRY" != 1 ]; then
    flags=$(grep '^flags:' "$WORK/environment.log" 2>/dev/null | tail -1)
    TE=$(echo "$flags" | sed -n 's/.*te=\([01]\).*/\1/p'); TE=${TE:-0}
    VLLM=$(echo "$flags" | sed -n 's/.*vllm=\([01]\).*/\1/p'); VLLM=${VLLM:-0}
fi
step gpu_tests 160 -- "$PY" -m pytest -v -rs -p no:cacheprovider --durations=0 tests/gpu
BENCH=(benchmarks/bench_megatron_step.py --json "$WORK/bench.jsonl" --micro 4 --accum 2 --seq 2048 --steps 5)
step megatron_sdpa 55 -- "$PY" "${BENCH[@]}" --attention sdpa
step megatron_te 45 --if TE -- "$PY" "${BENCH[@]}" --attention te
PAIRRM_DATA=.whl/pairrm_k5.jsonl
[ -f "$PAIRRM_DATA" ] || PAIRRM_DATA=../shared/bench-data/pairrm_k5.jsonl
step pairrm_bf16 40 -- "$PY" benchmarks/bench_pairrm.py --gpu-only --gpu-repeat 8 --data "$PAIRRM_DATA" \
    --json "$WORK/pairrm.json"
step vllm 90 --if VLLM -- "$PY" benchmarks/bench_generation.py --python "$PY" --no-hf --random-1b /tmp/rand-1b \
    --k 5 --prompts 64 --batch-size 320 --max-new-tokens 128 --engines 1 --json "$WORK/vllm.json"
if [ "$DRY" = 1 ]; then
    n=$(($(wc -l <"$WORK/steps.tsv") + 1))
    sum=$(($(awk -F'\t' '{ s += $2 } END { print s }' "$WORK/steps.tsv") + SUMMARY_BUDGET))
    echo "summary          $SUMMARY_BUDGET s"
    echo "budgets: $sum s + $n x $GRACE s kill grace = $((sum + n * GRACE)) s of $LIMIT"
    [ $((sum + n * GRACE)) -le "$LIMIT" ] || { echo "over the $LIMIT s limit"; exit 1; }
    echo "carried .whl/ (a device call takes 64 MiB with the working tree):"
    ls -l .whl 2>/dev/null | tail -n +2 || echo "  none yet: run benchmarks/fetch_gpu_wheels.sh"
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    whl=$(du -cb .whl 2>/dev/null | tail -1 | cut -f1)
    whl=${whl:-0}
    echo "working tree $((tree / 1024)) KiB + .whl $((whl / 1024)) KiB = $(((tree + whl) / 1048576)) MiB of 64"
fi
# the summary's own line comes before it runs, so that the report counts its budget
status=ok
[ "$DRY" = 1 ] && status=dry-run
printf 'summary\t%s\t%s\t\t\t%s\t\n' "$SUMMARY_BUDGET" "$SUMMARY_BUDGET" "$status" >>"$WORK/steps.tsv"
timeout -k "$GRACE" "$SUMMARY_BUDGET" "$PY" benchmarks/gpu_check_report.py summary "$WORK" "$OUT/gpu_check.json" \
    --budget "$LIMIT" 2>&1 | tee -a "$LOG"
[ "$DRY" = 1 ] && exit 0
"$PY" -c "import json, sys; sys.exit(0 if json.load(open('$OUT/gpu_check.json'))['ok'] else 1)" 2>/dev/null
