#!/usr/bin/env bash
# One command for a machine with a CUDA GPU and torch installed (no network needed):
#   bash benchmarks/run_gpu.sh
# 1. builds and installs the package and its C++ (CPU) extension (editable, no build isolation; csrc/cuda
#    has no sources yet),
# 2. runs the whole pytest suite (GPU tests included),
# 3. runs scsa-check (every available backend vs the reference),
# 4. profiles one call of the fused backend and of the reference (benchmarks/kernel_profile.py:
#    wall, host and per-kernel device time, and for Triton the host time with its direct launches off
#    and the per-kernel device time with its row vectors off; the `variants` step: with each of its plan
#    variants at the four ResNet-50 maps, VARIANTS_CAP_S, default 120)
#    and the Triton path's host cost up to the CUDA driver call (benchmarks/triton_host_overhead.py
#    on a host-only Triton driver, 40 s cap), and times the channel attention kernels with each
#    product route (benchmarks/attention_routes.py, ROUTES_CAP_S, default 60),
# 5. runs the full scsa-bench suite and the ResNet-50 end-to-end benchmark,
# 6. judges the Triton backend's targets (issue 3) from the suite's microbench.csv (`scsa-bench --targets`),
# and leaves logs, CSV and PNG under benchmarks/results/<card-name>/. If $OUT is set, a tarball of
# that folder plus summary.txt and the CSVs this run wrote are copied there too.
#
# Every step has a time cap so that the whole run ends within TOTAL_BUDGET_S seconds (default 2400)
# even when a step hangs; scsa-bench gets what is left (at most BENCH_BUDGET_S, default 900) and
# writes its CSV row by row, so a cut run keeps its results. Caps: BUILD_CAP_S (600), TEST_CAP_S (900),
# CHECK_CAP_S (300), PROFILE_CAP_S (120), E2E_CAP_S (300). Step exit codes and durations go to summary.txt; the script exits
# non-zero when a step failed. pytest runs verbose, so a capped run's log still names the tests that passed.
#
# STEPS (default: all) runs only the named steps, comma-separated (build, pytest, check, profile,
# host_overhead, host_overhead_no_direct, attention_routes, variants, bench, e2e, targets). On a short lease (15 minutes
# of device time, at most 10 per call, the machine's start, a minute or more, and its idle time counted
# in) one call cannot hold both the GPU tests (the five GPU-relevant files took more than 140 s with 12
# workers: 38 % ran on 2026-11-27) and the timings; two calls can, each bringing back its own logs and
# summary.txt, about 700 s together (each call's timeout_s ~20 s above its TOTAL_BUDGET_S):
#   BUILD=0 STEPS=pytest TOTAL_BUDGET_S=300 TEST_CAP_S=290 TEST_WORKERS=12 TEST_MARKERS="not host_only"
#     TEST_ARGS="tests/test_triton_ops.py tests/test_triton_spatial_gates.py tests/test_triton_parameters.py
#     tests/test_triton_saved_memory.py tests/test_weights.py tests/test_bench.py"
#   BUILD=0 STEPS=bench,targets TOTAL_BUDGET_S=400 BENCH_BUDGET_S=360 BENCH_ARGS="--shape 64,64,56,56
#     --shape 64,128,28,28 --shape 64,256,14,14 --shape 64,512,7,7 --dtype bf16 --mode forward
#     --mode forward+backward"
# The second is what the issue's targets are judged from: each bf16 ResNet-50 map took ~85 s of the
# bench (its torch.compile providers compiling; 2026-11-27), so a 170 s bench budget beside the
# diagnosis steps timed two of the four. Where a lease has time left, the diagnosis steps (a few
# minutes; VARIANTS_CAP_S cuts the last shapes):
#   BUILD=0 STEPS=profile,attention_routes,e2e TOTAL_BUDGET_S=250 PROFILE_CAP_S=75 ROUTES_CAP_S=60 E2E_CAP_S=90
#   BUILD=0 STEPS=variants TOTAL_BUDGET_S=250 VARIANTS_CAP_S=240
# (results/nvidia-h200/NOTES.md says what each run used and what its caps cut: the e2e step's first
# Triton call autotunes 16 layer shapes, 25 s were too few).
#
# One interpreter for everything: $PYTHON, else the first of python3 / python that imports torch
# (`pip` on PATH may belong to another interpreter, so the build runs `$PY -m pip`). pytest runs with
# `-n $TEST_WORKERS` (default 8) when pytest-xdist is importable; TEST_ARGS (default: the whole suite) picks
# test files, e.g. the GPU-relevant ones on a short lease, since CI runs the CPU-only tests anyway (on a
# GPU the tests run each Triton kernel's fixed config, not the autotuner: tests/conftest.py);
# TEST_MARKERS a -m expression, e.g. "not host_only" (tests that compile for sm_90 on a host-only Triton
# driver in a subprocess, the same with or without a GPU: they held the 2026-11-27 lease's test step).
# BENCH_ARGS: more scsa-bench options (e.g. only the cases the targets step judges: the four ResNet-50
# maps at batch 64 in bfloat16, `--shape 64,64,56,56 ... --dtype bf16 --mode forward --mode forward+backward`,
# with `--autotune-all` so that compile-max-autotune measures each: ~50 s of compiling per case).
set -uo pipefail
cd "$(dirname "$0")/.."

TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-2400}
BENCH_BUDGET_S=${BENCH_BUDGET_S:-900}
BUILD_CAP_S=${BUILD_CAP_S:-600}
TEST_CAP_S=${TEST_CAP_S:-900}
CHECK_CAP_S=${CHECK_CAP_S:-300}
PROFILE_CAP_S=${PROFILE_CAP_S:-120}
E2E_CAP_S=${E2E_CAP_S:-300}
ROUTES_CAP_S=${ROUTES_CAP_S:-60}
VARIANTS_CAP_S=${VARIANTS_CAP_S:-120}
STEPS=${STEPS:-all}
TEST_WORKERS=${TEST_WORKERS:-8}
# every word of every line (the header's examples wrap them; `read -a` alone would keep the first line)
read -r -d '' -a TEST_ARGS <<< "${TEST_ARGS:-}" || true
TEST_MARKERS=${TEST_MARKERS:-}
read -r -d '' -a BENCH_ARGS <<< "${BENCH_ARGS:-}" || true
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1

if [[ -z "${PYTHON:-}" ]]; then
  for candidate in python3 python; do
    command -v "$candidate" > /dev/null && "$candidate" -c "import torch" 2> /dev/null && PYTHON=$candidate && break
  done
fi
PY=${PYTHON:-python3}

CARD=$("$PY" -c "import torch; from scsa_kernels.bench.environment import results_folder_name as f; \
print(f(torch.device('cuda')) if torch.cuda.is_available() else f(torch.device('cpu')))")
RESULTS=benchmarks/results/$CARD
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.txt
echo "run_gpu.sh on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ), results in $RESULTS, python $(command -v "$PY")" \
  | tee "$SUMMARY"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  | tee -a "$SUMMARY"
"$PY" -c "import torch, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', m.version('triton'))" 2>&1 | tee -a "$SUMMARY"
FAILED=0

remaining() { echo $(( TOTAL_BUDGET_S - SECONDS )); }
cap() { local want=$1 left; left=$(remaining); (( left < want )) && want=$left; (( want < 10 )) && want=10; echo "$want"; }

wanted() { [[ "$STEPS" == all || ",$STEPS," == *",$1,"* ]]; }

# step NAME CAP_S COMMAND...: runs COMMAND under `timeout`, log in $RESULTS/NAME.log, status in summary.txt
# (nothing when STEPS leaves NAME out)
step() {
  local name=$1 limit=$2 start=$SECONDS rc; shift 2
  wanted "$name" || return 0
  echo "[$(date -u +%H:%M:%S)] $name: $* (cap ${limit}s)" | tee -a "$SUMMARY"
  timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
  rc=$?
  (( rc != 0 )) && FAILED=1
  echo "[$(date -u +%H:%M:%S)] $name: exit $rc$( (( rc == 124 )) && echo ' (time cap hit)') after $((SECONDS - start))s" \
    | tee -a "$SUMMARY"
  tail -n "${TAIL_LINES:-3}" "$RESULTS/$name.log" | awk '{print "    " $0}' | tee -a "$SUMMARY"
}

# BUILD=0 skips the install (saves a minute of a short lease): everything then runs from this checkout
# (`python -m` puts it first on sys.path) without the C++ extension, so the cpu backend's tests skip
if [[ "${BUILD:-1}" != 0 ]]; then
  step build "$(cap "$BUILD_CAP_S")" "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
XDIST=()
"$PY" -c "import xdist" 2> /dev/null && (( TEST_WORKERS > 1 )) && XDIST=(-n "$TEST_WORKERS")
MARKERS=()
[[ -n "$TEST_MARKERS" ]] && MARKERS=(-m "$TEST_MARKERS")
step pytest "$(cap "$TEST_CAP_S")" "$PY" -m pytest -v -ra --durations=20 -p no:cacheprovider ${XDIST[@]+"${XDIST[@]}"} \
  ${MARKERS[@]+"${MARKERS[@]}"} ${TEST_ARGS[@]+"${TEST_ARGS[@]}"}
step check "$(cap "$CHECK_CAP_S")" "$PY" -m scsa_kernels.check
step profile "$(cap "$PROFILE_CAP_S")" "$PY" benchmarks/kernel_profile.py
# the Triton path's host cost up to Triton's launcher (launcher stubbed, CPU tensors): set against
# profile.log's host time, what is left is Triton's own launcher
step host_overhead "$(cap 40)" "$PY" benchmarks/triton_host_overhead.py --reps 300
step host_overhead_no_direct "$(cap 30)" "$PY" benchmarks/triton_host_overhead.py --reps 300 --no-direct-launch
step attention_routes "$(cap "$ROUTES_CAP_S")" "$PY" benchmarks/attention_routes.py
# the Triton plan's variants (kernel_profile.py PLAN_VARIANTS: each the rollback of a choice not yet timed
# on a GPU against its predecessor) beside its default, device time per kernel at the four ResNet-50 maps
step variants "$(cap "$VARIANTS_CAP_S")" "$PY" benchmarks/kernel_profile.py --backend triton --fused-only --reps 10 \
  --variants no-row-vectors one-plane-per-program spatial-tile-512 spatial-4-per-thread attention-forward-block-32 \
  attention-backward-block-16 \
  --shape 64 64 56 56 --shape 64 128 28 28 --shape 64 256 14 14 --shape 64 512 7 7
# bench: what is left after e2e and a margin, at most BENCH_BUDGET_S; --time-budget stops starting
# new cases, the cap (25 s more) leaves room for the case in flight and the plots
E2E_RESERVE_S=0
wanted e2e && E2E_RESERVE_S=$E2E_CAP_S
BENCH_S=$(( $(remaining) - E2E_RESERVE_S - 25 - 15 ))
(( BENCH_S > BENCH_BUDGET_S )) && BENCH_S=$BENCH_BUDGET_S
(( BENCH_S < 20 )) && BENCH_S=20
# the steps that write a CSV start without the previous run's (committed: git keeps it), so that a step cut
# before its first row leaves no old rows for the targets step or $OUT to pass off as this run's
wanted bench && rm -f "$RESULTS/microbench.csv"
wanted e2e && rm -f "$RESULTS/e2e.csv"
step bench $(( BENCH_S + 25 )) "$PY" -m scsa_kernels.bench --time-budget "$BENCH_S" --out "$RESULTS" \
  ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
# e2e: bfloat16 first (the case that matters on GPU), then float32; rows are written as they finish
E2E_S=$(cap "$E2E_CAP_S")
step e2e "$E2E_S" "$PY" -m scsa_kernels.bench --e2e --dtype bfloat16 --dtype float32 --time-budget $(( E2E_S * 3 / 5 )) \
  --out "$RESULTS"
# the issue's targets judged from this run's microbench.csv (whole table in summary.txt; read even when
# the bench step was cut before its own table)
[[ -f "$RESULTS/microbench.csv" ]] && TAIL_LINES=60 step targets "$(cap 30)" "$PY" -m scsa_kernels.bench --targets \
  "$RESULTS/microbench.csv"
echo "total ${SECONDS}s; failed steps: $FAILED" | tee -a "$SUMMARY"

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  tar czf "$OUT/results-$CARD.tar.gz" "$RESULTS"
  cp "$SUMMARY" "$OUT/"
  wanted bench && [[ -f "$RESULTS/microbench.csv" ]] && cp "$RESULTS/microbench.csv" "$OUT/"
  wanted e2e && [[ -f "$RESULTS/e2e.csv" ]] && cp "$RESULTS/e2e.csv" "$OUT/"
fi
exit $FAILED
