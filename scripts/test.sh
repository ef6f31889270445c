#!/usr/bin/env bash
# Install the dependencies, build the tests in Release and run the whole test suite through
# ctest. Extra arguments go to ctest, e.g. `bash scripts/test.sh -R scan`. The benchmarks and
# examples are syntax-checked rather than built (SEQMIX_CHECK_PROGRAMS, a fifth of the compile
# time; cmake/seqmix_syntax_check.cmake); scripts/main.sh builds and runs them.
#
# Environment: SEQMIX_BUILD_DIR (default build), SEQMIX_JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${SEQMIX_BUILD_DIR:-build}
jobs=${SEQMIX_JOBS:-$(nproc 2>/dev/null || echo 2)}

bash scripts/install-deps.sh

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSEQMIX_BUILD_TESTS=ON \
  -DSEQMIX_BUILD_BENCHMARKS=OFF -DSEQMIX_BUILD_EXAMPLES=OFF -DSEQMIX_CHECK_PROGRAMS=ON
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" "$@"
