#!/usr/bin/env bash
# One run on a GPU machine: configure and build the CUDA preset with the
# installed nvcc (for this machine's GPU), run the native test suite (the
# backend-ops tests then include the CUDA backend, plus test_cuda.cpp's device
# tests), run the CUDA benchmarks with a short minimum time, and write a
# summary (card, driver, toolkit, commit, test counts, figures with ratios).
#
#   bash scripts/gpu-check.sh                 # everything; summary to $OUT/summary.md (or stdout)
#   bash scripts/gpu-check.sh --no-bench      # build + tests only
#   bash scripts/gpu-check.sh --no-tests      # build + benchmarks only
#   bash scripts/gpu-check.sh --prepare       # on a dev machine: copy GoogleTest's sources into
#                                             # .gpu-deps/ (git-ignored) for a GPU machine without them
#
# Needs nvcc and cmake (>= 3.25); a C++20 host compiler (clang++-14 when present,
# as in CI, else g++); GoogleTest (system package, /usr/src/googletest, or
# .gpu-deps/googletest from --prepare). Google Benchmark is not needed: the
# CUDA benchmarks are their own binary (tests/native/bench_cuda.cpp).
# Environment: OUT (output folder), QLORA_COMMIT (when .git is absent),
# QLORA_CUDA_ARCH (default native), QLORA_BENCH_MIN_TIME (default 0.1 s),
# QLORA_TEST_TIMEOUT / QLORA_BENCH_TIMEOUT (seconds, default 300 / 330).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

run_tests=1
run_bench=1
for a in "$@"; do
  case "$a" in
    --no-tests) run_tests=0 ;;
    --no-bench) run_bench=0 ;;
    --prepare)
      src=${GTEST_ROOT:-/usr/src/googletest}
      [ -f "$src/CMakeLists.txt" ] || { echo "no GoogleTest sources at $src (apt-get install googletest, or set GTEST_ROOT)" >&2; exit 1; }
      rm -rf .gpu-deps/googletest && mkdir -p .gpu-deps && cp -r "$src" .gpu-deps/googletest
      echo "copied $src to .gpu-deps/googletest ($(du -sh .gpu-deps | cut -f1)); carry .gpu-deps to the GPU machine"
      exit 0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

out=${OUT:-}
logdir=${out:-$root/artifacts/gpu-check}
mkdir -p "$logdir"
summary=$logdir/summary.md
start=$(date +%s)
log() { printf '=== [%4ds] %s\n' $(( $(date +%s) - start )) "$*"; }

# ---- the machine -----------------------------------------------------------------------
commit=$(git rev-parse HEAD 2>/dev/null || true)
[ -n "$commit" ] || commit=${QLORA_COMMIT:-unknown (no .git here; set QLORA_COMMIT)}
dirty=$(git status --porcelain 2>/dev/null | grep -v '^??' | head -1 || true)
[ -z "$dirty" ] || commit="$commit (with uncommitted changes)"
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
[ -n "$gpu" ] || gpu="nvidia-smi unavailable"
nvcc_v=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || true)
cmake_v=$(cmake --version 2>/dev/null | head -1 || true)
if command -v clang++-14 >/dev/null; then hostcxx=clang++-14; else hostcxx=$(command -v g++ || command -v c++ || echo c++); fi
cxx_v=$("$hostcxx" --version 2>/dev/null | head -1)
{
  echo "# GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $commit"
  echo "- GPU (name, driver, memory): $gpu"
  echo "- CUDA toolkit: nvcc ${nvcc_v:-missing}; $cmake_v; host compiler: $cxx_v"
  echo
} > "$summary"
[ -n "$nvcc_v" ] || { echo "nvcc not found" | tee -a "$summary"; exit 1; }

# ---- configure and build ------------------------------------------------------------------
gtest_args=()
for g in "$root/.gpu-deps/googletest" /usr/src/googletest; do
  if [ -f "$g/CMakeLists.txt" ]; then gtest_args=(-DQLORA_GTEST_SOURCE_DIR="$g"); break; fi
done
arch=${QLORA_CUDA_ARCH:-native}
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
bdir=artifacts/native/linux-x64-cuda
log "configure (CUDA architectures: $arch, host compiler: $hostcxx)"
rm -rf "$bdir"
if ! cmake --preset linux-x64-cuda "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
     -DCMAKE_CUDA_HOST_COMPILER="$hostcxx" -DCMAKE_CXX_COMPILER="$(command -v g++ || command -v c++)" \
     -DQLORA_BENCHMARKS=OFF "${gtest_args[@]}" > "$logdir/configure.log" 2>&1; then
  if [ "$arch" = native ]; then
    log "configure with 'native' failed; retrying with sm_90"
    arch=90
    rm -rf "$bdir"
    cmake --preset linux-x64-cuda "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DCMAKE_CUDA_HOST_COMPILER="$hostcxx" -DCMAKE_CXX_COMPILER="$(command -v g++ || command -v c++)" \
      -DQLORA_BENCHMARKS=OFF "${gtest_args[@]}" > "$logdir/configure.log" 2>&1 ||
      { tail -30 "$logdir/configure.log"; echo "- configure FAILED (configure.log)" >> "$summary"; exit 1; }
  else
    tail -30 "$logdir/configure.log"; echo "- configure FAILED (configure.log)" >> "$summary"; exit 1
  fi
fi
log "build"
if ! cmake --build "$bdir" -j"$(nproc)" --target qlora qlora_tests qlora_bench_cuda > "$logdir/build.log" 2>&1; then
  grep -E 'error|Error' "$logdir/build.log" | head -40
  echo "- build FAILED (build.log)" >> "$summary"
  exit 1
fi
log "built ($(du -h "$bdir"/native/libqlora_cuda.so* 2>/dev/null | tail -1 | cut -f1) libqlora_cuda.so)"
echo "- build: OK (CUDA architectures $arch)" >> "$summary"

# ---- tests -----------------------------------------------------------------------------------
status=0
if [ "$run_tests" = 1 ]; then
  log "tests (ctest -j$(nproc))"
  timeout "${QLORA_TEST_TIMEOUT:-300}" ctest --test-dir "$bdir" -j"$(nproc)" --output-on-failure > "$logdir/tests.log" 2>&1
  trc=$?
  tally=$(grep -E 'tests passed(, [0-9]+ tests failed)? out of [0-9]+' "$logdir/tests.log" | tail -1)  # CMake 4 omits ", 0 tests failed"
  skipped=$(grep -c '(Skipped)' "$logdir/tests.log" || true)
  cuda_total=$(grep -cE 'Test +#[0-9]+: (Cuda|CudaMatmul|CudaAdamw|CudaPager|CudaApi)\.' "$logdir/tests.log" || true)
  cuda_pass=$(grep -E 'Test +#[0-9]+: (Cuda|CudaMatmul|CudaAdamw|CudaPager|CudaApi)\.' "$logdir/tests.log" | grep -c ' Passed' || true)
  {
    echo "- tests: ${tally:-no tally (ctest exit $trc, see tests.log)}; skipped: $skipped"
    echo "- CUDA device tests (test_cuda*.cpp): $cuda_pass of $cuda_total passed"
    if grep -q 'The following tests FAILED' "$logdir/tests.log"; then
      echo "- failed:"
      sed -n '/The following tests FAILED/,$p' "$logdir/tests.log" | grep -E '^\s+[0-9]+ - ' | head -40 | sed 's/^/  /'
    fi
    if [ "$skipped" != 0 ]; then
      echo "- skipped:"
      grep '(Skipped)' "$logdir/tests.log" | head -20 | sed 's/^/  /'
    fi
  } >> "$summary"
  [ "$trc" = 0 ] || status=1
  log "tests: ${tally:-ctest exit $trc}"
fi

# ---- benchmarks ------------------------------------------------------------------------------
if [ "$run_bench" = 1 ]; then
  log "benchmarks (min time ${QLORA_BENCH_MIN_TIME:-0.1} s per round)"
  timeout "${QLORA_BENCH_TIMEOUT:-330}" "$bdir/tests/native/qlora_bench_cuda" --min-time "${QLORA_BENCH_MIN_TIME:-0.1}" \
    > "$logdir/bench.log" 2>&1
  brc=$?
  {
    echo
    if [ "$brc" != 0 ]; then echo "**benchmarks exited with $brc (124 = timeout); figures below are partial**"; echo; fi
    echo "## Headline figures (ours vs the baseline measured in the same run)"
    echo
    echo '```'
    grep '^SUMMARY' "$logdir/bench.log" | sed 's/^SUMMARY //'
    echo '```'
    echo
    grep -v '^SUMMARY' "$logdir/bench.log"
  } >> "$summary"
  [ "$brc" = 0 ] || status=1
  log "benchmarks done (exit $brc)"
fi

log "summary: $summary"
[ -n "$out" ] || cat "$summary"
exit $status
