#!/usr/bin/env bash
# One-shot check for a short-lease GPU machine (bare, no network): build the extensions, run the
# GPU tests, run the kernel benchmark (and the other GPU benchmarks listed below), print a summary
# and copy logs and results to $OUT when it is set. Every step has its own timeout, so one hang
# does not eat the lease; a failed step does not stop the next ones. Exit status: 0 when every
# step passed, 1 otherwise.
#
#   bash benchmarks/gpu_wheels.sh                # here, first: the missing wheels into .whl/ (carry it)
#   bash benchmarks/gpu_check.sh                 # PYTHON=python3 by default
#   PYTHON=/path/to/python OUT=/tmp/out bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --collect-only  # no GPU needed: environment, wheels, then only
#                                                # `pytest --collect-only` of the GPU test list and the
#                                                # package imports (benchmarks/gpu_dryrun.sh runs this)
#
# The GPU machine: Python 3.12, torch 2.11 + CUDA 13.0, triton 3.6, transformers 5.17, pytest,
# click, tqdm; no zlib-ng; no network.
#
# Environment: PYTHON, OUT, TOTAL_BUDGET (s for the whole script, 560: under a 600 s lease call;
# each step's timeout is cut to what is left, and steps that would start with under 20 s left are
# skipped), BUILD_TIMEOUT (s, 300), TEST_TIMEOUT (150), BENCH_TIMEOUT (150), BENCH_ARGS (extra
# bench_kernels.py arguments, e.g. --quick), GPU_TESTS (test files; the default below is THE GPU
# test list: every kernel test, each parameterised by device and backend, run here with its cuda
# ids, i.e. -m gpu), WHEELS (the folder of carried wheels, .whl). Logs and benchmarks/results are
# copied to $OUT after every step, so a cut-off run still brings back what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TOTAL_BUDGET="${TOTAL_BUDGET:-560}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-300}"
TEST_TIMEOUT="${TEST_TIMEOUT:-240}"  # a bare machine compiles every kernel variant the tests launch
BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}"
BENCH_ARGS="${BENCH_ARGS:-}"
GPU_TESTS="${GPU_TESTS:-$(ls tests/test_ops_*.py tests/test_parity_kernels.py tests/test_generate_kernels.py \
  tests/test_execute.py tests/test_live_single.py tests/test_live_fp8.py | tr '\n' ' ')}"
WHEELS="${WHEELS:-.whl}"
COLLECT_ONLY=0
[[ "${1:-}" == "--collect-only" ]] && COLLECT_ONLY=1
LOGS="$(mktemp -d)"
SUMMARY=()
FAILED=0

save_outputs() {
  [[ -n "${OUT:-}" ]] || return 0
  mkdir -p "$OUT/gpu_check"
  cp "$LOGS"/*.log "$LOGS"/*.txt "$OUT/gpu_check/" 2>/dev/null
  cp -r benchmarks/results "$OUT/gpu_check/" 2>/dev/null
  return 0
}

# run_step NAME TIMEOUT_S CMD...: runs CMD with a timeout (cut to the time left), logs to
# $LOGS/NAME.log, records a row, saves the outputs so far.
run_step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((TOTAL_BUDGET - SECONDS))
  if (( left < 20 )); then
    FAILED=1
    skip_step "$name" "out of time (TOTAL_BUDGET ${TOTAL_BUDGET}s)"
    return 1
  fi
  (( limit > left )) && limit=$left
  echo "=== $name (timeout ${limit}s): $*"
  local start=$SECONDS status
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -eq 0 ]]; then status=ok; elif [[ $rc -eq 124 || $rc -eq 137 ]]; then status=TIMEOUT; else status="FAIL($rc)"; fi
  [[ $status == ok ]] || FAILED=1
  SUMMARY+=("$(printf '%-28s %-10s %5ss' "$name" "$status" "$((SECONDS - start))")")
  save_outputs
  return $rc
}

skip_step() {
  SUMMARY+=("$(printf '%-28s %-10s %s' "$1" "skipped" "$2")")
  echo "=== $1: skipped ($2)"
}

# ---- 0. environment ---------------------------------------------------------------------------
echo "=== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$LOGS/gpu.txt" \
  || echo "(no nvidia-smi)"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "gpu_check: $PYTHON cannot import torch; set PYTHON to an interpreter with CUDA torch" >&2
  exit 2
fi
"$PYTHON" - <<'EOF' 2>&1 | tee "$LOGS/env.txt"
import importlib.util, platform, torch
print(f"python {platform.python_version()}  torch {torch.__version__}  torch.version.cuda {torch.version.cuda}"
      f"  cuda available {torch.cuda.is_available()}  devices {torch.cuda.device_count()}")
for mod in ("triton", "pytest", "ninja", "pybind11", "setuptools", "numpy", "transformers", "zlib_ng"):
    spec = importlib.util.find_spec(mod)
    print(f"  {mod:10s} {'yes' if spec else 'MISSING'}")
EOF
TORCH_CUDA="$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')"
NVCC="$(command -v nvcc || true)"
for cand in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
  [[ -z "$NVCC" && -x "$cand" ]] && NVCC="$cand"
done
NVCC_VERSION=""
if [[ -n "$NVCC" ]]; then
  NVCC_VERSION="$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
  export PATH="$(dirname "$NVCC"):$PATH"
fi
echo "nvcc: ${NVCC:-none} ${NVCC_VERSION}; torch CUDA: ${TORCH_CUDA:-none}"

# pytest may be missing on a bare machine: borrow the pure-Python packages of a carried .venv
# (only those: its torch is the CPU build and must not shadow the machine's).
if ! "$PYTHON" -c "import pytest" 2>/dev/null; then
  SITE="$(ls -d .venv/lib/python3*/site-packages 2>/dev/null | head -1)"
  if [[ -n "$SITE" ]]; then
    SHIM="$LOGS/pyshim"
    mkdir -p "$SHIM"
    for pkg in pytest _pytest pluggy iniconfig packaging py.py exceptiongroup tomli; do
      [[ -e "$SITE/$pkg" ]] && ln -s "$(realpath "$SITE/$pkg")" "$SHIM/$pkg"
    done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    echo "pytest borrowed from $SITE"
  fi
fi

# Wheels carried from the development machine (benchmarks/gpu_wheels.sh: zlib-ng and pybind11,
# which the image lacks), installed into a private folder ahead of the image's packages.
SITE_DIR="${SITE_DIR:-/tmp/nanokern-site}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE_DIR" "$WHEELS"/*.whl \
    && export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}" && echo "wheels from $WHEELS installed: $(ls "$WHEELS")"
fi
"$PYTHON" -c "import zlib_ng" 2>/dev/null || echo "gpu_check: zlib_ng missing (run benchmarks/gpu_wheels.sh here and carry .whl): execute/bench steps will fail" >&2

# ---- collect-only: the test list and the imports, nothing built or run --------------------------
if (( COLLECT_ONLY )); then
  # shellcheck disable=SC2086
  run_step collect "$TEST_TIMEOUT" "$PYTHON" -m pytest --collect-only -q -m gpu -p no:cacheprovider $GPU_TESTS
  run_step imports 120 "$PYTHON" -c "import nanokern.execute.run, nanokern.cli, nanokern.ops, nanokern.parity; from nanokern.ops import host; assert host.ERROR is None, host.ERROR; print('imports ok')"
  echo
  printf '%s\n' "${SUMMARY[@]}"
  grep -E "tests? collected|selected|error" "$LOGS/collect.log" | tail -2
  save_outputs
  exit $FAILED
fi

# ---- 1. build ---------------------------------------------------------------------------------
# torch refuses to build CUDA code when nvcc's major version differs from torch.version.cuda:
# then build the CPU extension only (the Triton GPU tests still run).
BUILD_ENV=(MAX_JOBS="${MAX_JOBS:-16}")
if [[ -z "$TORCH_CUDA" ]]; then
  echo "gpu_check: torch has no CUDA; only the CPU extension is built" >&2
elif [[ -z "$NVCC" ]]; then
  echo "gpu_check: no nvcc; the cuda backend is not built (triton still tested)" >&2
  BUILD_ENV+=(NANOKERN_NO_CUDA=1)
elif [[ "${NVCC_VERSION%%.*}" != "${TORCH_CUDA%%.*}" ]]; then
  echo "gpu_check: nvcc $NVCC_VERSION vs torch CUDA $TORCH_CUDA: the cuda backend is not built" >&2
  BUILD_ENV+=(NANOKERN_NO_CUDA=1)
fi
rm -f nanokern/_C*.so
run_step build "$BUILD_TIMEOUT" env "${BUILD_ENV[@]}" "$PYTHON" setup.py build_ext --inplace
"$PYTHON" -c "
import torch
from nanokern.ops import available_backends
print('backends on cuda:', available_backends('cuda'), ' on cpu:', available_backends('cpu'))
" 2>&1 | tee -a "$LOGS/build.log"

# ---- 2. GPU tests -----------------------------------------------------------------------------
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  # shellcheck disable=SC2086
  run_step gpu-tests "$TEST_TIMEOUT" "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider $GPU_TESTS
else
  skip_step gpu-tests "pytest not importable (carry .venv or install pytest)"
fi

# ---- 3. kernel benchmark ----------------------------------------------------------------------
# shellcheck disable=SC2086
run_step bench-kernels "$BENCH_TIMEOUT" "$PYTHON" benchmarks/bench_kernels.py --device cuda $BENCH_ARGS

# ---- 4. other GPU benchmarks, most wanted first --------------------------------------------------
# One line each: "name|timeout_s|command" (run from the repository root; results under
# benchmarks/results/). bench-convert-cuda: 1 GB fp32 TP2xPP2 -> HF with --device cuda against
# cp+sync and the naive script (its output checked bit for bit), issue 6's GPU figure.
# bench-generate-cuda*: native decoding (Triton kernels) vs transformers' generate() with SDPA on a
# synthetic TP=2 checkpoint (benchmarks/results/generate.csv); parity-generate-triton: 32 greedy
# tokens on the GPU against transformers' generate() on the sliding-window fixture.
# bench-live-nccl: nanokern.live.save_hf from shards in GPU memory (NCCL; the TP x PP grid is as
# large as the GPUs allow: 2x2 on 4+, 2x1 on 2-3, 1x1 on one) against a Nanotron-layout save +
# `nanokern convert --device cuda`, and against the collectives alone (benchmarks/results/live.csv).
# live-engine-nccl: the trainer -> engine test over NCCL (grid ranks push hf_buckets to a
# transformers model on one more GPU; weights and logits bit for bit against the convert folder's
# model; needs 2+ GPUs, skipped on one). bench-live-buckets-nccl (2+ GPUs): the same push into an
# engine's memory against the transport's floor (benchmarks/results/live_buckets.csv).
NGPU="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
LIVE_GRID="--tp 1 --pp 1"
(( NGPU >= 2 )) && LIVE_GRID="--tp 2 --pp 1"
(( NGPU >= 4 )) && LIVE_GRID="--tp 2 --pp 2"
ENGINE_GRID="--tp 1 --pp 1"  # (the grid and one more GPU for the engine)
(( NGPU >= 3 )) && ENGINE_GRID="--tp 2 --pp 1"
(( NGPU >= 5 )) && ENGINE_GRID="--tp 2 --pp 2"
EXTRA_BENCHMARKS=(
  "bench-convert-cuda|150|$PYTHON -m nanokern.bench convert --device cuda --size 1GB --reps 1 --settle 1 --csv benchmarks/results/convert.csv --cache-dir .bench-cache"
  "bench-live-nccl|150|$PYTHON -m nanokern.bench live --device cuda $LIVE_GRID --size 1GB --reps 2 --csv benchmarks/results/live.csv --cache-dir .bench-cache"
  "live-engine-nccl|180|$PYTHON -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_live_engine.py"
  "parity-kernels|120|$PYTHON -m nanokern parity --kernels --backend triton"
  "bench-parity-kernels|150|$PYTHON benchmarks/bench_parity_kernels.py"
  "demo-parity-triton|180|$PYTHON -m nanokern demo --backend triton"
  "bench-generate-cuda|150|$PYTHON -m nanokern.bench.generate --device cuda --backend triton --attn sdpa --size 200MB --reps 3 --csv benchmarks/results/generate.csv"
  "bench-generate-cuda-bf16|150|$PYTHON -m nanokern.bench.generate --device cuda --backend triton --attn sdpa --size 200MB --dtype bf16 --reps 3 --csv benchmarks/results/generate.csv"
  "parity-generate-triton|120|$PYTHON -m nanokern parity ../shared/fixtures/nanotron/qwen2_swa_tp2_pp1 --generate 32 --backend triton --device cuda"
)
(( NGPU >= 2 )) && EXTRA_BENCHMARKS+=(
  "bench-live-buckets-nccl|150|$PYTHON -m nanokern.bench live --mode buckets --device cuda $ENGINE_GRID --size 1GB --reps 2 --csv benchmarks/results/live_buckets.csv --cache-dir .bench-cache")
for entry in "${EXTRA_BENCHMARKS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$entry"
  # shellcheck disable=SC2086
  run_step "$name" "$limit" $cmd
done

# ---- summary ----------------------------------------------------------------------------------
echo
echo "=== gpu_check summary ($(cat "$LOGS/gpu.txt" 2>/dev/null | head -1))"
printf '%s\n' "${SUMMARY[@]}"
grep -E "passed|failed|error|skipped|no tests" "$LOGS/gpu-tests.log" 2>/dev/null | tail -1
if [[ -f "$LOGS/bench-kernels.log" ]]; then
  sed -n '/^case /,/^GB\/s/p' "$LOGS/bench-kernels.log"
fi
for f in "$LOGS"/bench-generate-cuda*.log; do
  [[ -f "$f" ]] && grep -E "tok/s|tokens equal" "$f" | tail -2
done
[[ -f "$LOGS/bench-live-nccl.log" ]] && grep -A1 "^size,tp,pp" "$LOGS/bench-live-nccl.log" | tail -2
[[ -f "$LOGS/bench-live-buckets-nccl.log" ]] && sed -n '/^path /,/^size,/p' "$LOGS/bench-live-buckets-nccl.log"
if [[ -f "$LOGS/bench-convert-cuda.log" ]]; then
  sed -n '/^approach /,/^targets/p' "$LOGS/bench-convert-cuda.log"
fi

save_outputs
[[ -n "${OUT:-}" ]] && echo "copied logs and benchmarks/results to $OUT/gpu_check"
exit $FAILED
