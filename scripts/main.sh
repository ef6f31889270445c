#!/usr/bin/env bash
# The main job: install the dependencies, build everything in Release, run every example and a
# short benchmark summary.
#
# Environment: SEQMIX_BUILD_DIR (default build), SEQMIX_JOBS (default: number of cores),
# SEQMIX_BENCH_FILTER (a --benchmark_filter regular expression; default: every benchmark).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${SEQMIX_BUILD_DIR:-build}
jobs=${SEQMIX_JOBS:-$(nproc 2>/dev/null || echo 2)}

bash scripts/install-deps.sh

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DSEQMIX_BUILD_EXAMPLES=ON -DSEQMIX_BUILD_BENCHMARKS=ON \
  -DSEQMIX_BENCH_MIN_TIME=0.05 "-DSEQMIX_BENCH_FILTER=${SEQMIX_BENCH_FILTER:-}"
cmake --build "$build_dir" -j "$jobs"

echo "== examples"
cmake --build "$build_dir" --target run_examples

echo "== benchmark summary (--benchmark_min_time=0.05)"
cmake --build "$build_dir" --target bench_summary
