#!/usr/bin/env bash
# The performance report (issue 19): run every benchmark program with JSON output against this
# machine's measured limits, then write a dated report with tables and PNG plots.
#
#   bash scripts/bench_report.sh            # report in docs/performance/<cpu>/<date>/report.md
#
# Environment:
#   SEQMIX_BUILD_DIR       build folder (default build; reused when already configured)
#   SEQMIX_JOBS            parallel compile jobs (default: number of cores)
#   SEQMIX_BENCH_MIN_TIME  --benchmark_min_time per case (default 0.5)
#   SEQMIX_BENCH_REPS      --benchmark_repetitions; the report shows medians (default 3)
#   SEQMIX_BENCH_WARMUP    --benchmark_min_warmup_time per case, seconds (default 0.05)
#   SEQMIX_BENCH_PROGRAMS  space-separated program names to run, e.g. "scan ssd" (default: all)
#   SEQMIX_BENCH_FILTER    --benchmark_filter regular expression (default: every case)
#   SEQMIX_REPORT_DIR      where the reports are kept (default docs/performance)
#
# The plots need Debian's python3-matplotlib, installed here (`install-deps.sh report`) and only
# when a report is asked for. Run it on an otherwise idle machine: the figures are only as good
# as the quiet they were measured in.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${SEQMIX_BUILD_DIR:-build}
jobs=${SEQMIX_JOBS:-$(nproc 2>/dev/null || echo 2)}
min_time=${SEQMIX_BENCH_MIN_TIME:-0.5}
reps=${SEQMIX_BENCH_REPS:-3}
warmup=${SEQMIX_BENCH_WARMUP:-0.05}
report_dir=${SEQMIX_REPORT_DIR:-docs/performance}

bash scripts/install-deps.sh report

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSEQMIX_BUILD_BENCHMARKS=ON >/dev/null
programs=()
if [[ -n "${SEQMIX_BENCH_PROGRAMS:-}" ]]; then
  for name in $SEQMIX_BENCH_PROGRAMS; do programs+=("seqmix_bench_$name"); done
else
  for source in bench/bench_*.cpp; do
    name=$(basename "$source" .cpp)
    programs+=("seqmix_$name")
  done
fi
cmake --build "$build_dir" -j "$jobs" --target seqmix-machine-limits seqmix-parallel-grain "${programs[@]}"

raw=$(mktemp -d "${TMPDIR:-/tmp}/seqmix-bench-report.XXXXXX")
trap 'rm -rf "$raw"' EXIT

"$build_dir/seqmix-machine-limits" --json > "$raw/machine_limits.json"
cat "$raw/machine_limits.json"
# A warm-up run before each case's timed runs, so that no case pays what the program has not yet
# warmed (its thread pool, first-touch pages, clocks). 2026-12-05's report had ssd automatic, the
# program's first case, at 4.24 ms against 3.32 for chunked L32, the same options two cases later;
# rerun, the two take the same CPU time (3.55 / 3.57 ms).
args=(--benchmark_min_time="$min_time" --benchmark_min_warmup_time="$warmup" --benchmark_format=json)
if [[ "$reps" -gt 1 ]]; then
  args+=(--benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true)
fi
if [[ -n "${SEQMIX_BENCH_FILTER:-}" ]]; then
  args+=(--benchmark_filter="$SEQMIX_BENCH_FILTER")
fi
for program in "${programs[@]}"; do
  echo "== $program"
  SEQMIX_MACHINE_LIMITS="$raw/machine_limits.json" \
    "$build_dir/bench/$program" "${args[@]}" --benchmark_out="$raw/$program.json" >/dev/null
done

# Thread scaling (issue 19 item 5): tasks per call at 2 and 64 threads and the idle share of 64
# cores, with 1- and 2-thread times (docs/parallel_grain.md). A run over a subset of the programs
# (CI's) takes the tiny shapes instead; SEQMIX_PARALLEL_GRAIN_ARGS overrides either.
if [[ -n "${SEQMIX_BENCH_PROGRAMS:-}" ]]; then grain_args=${SEQMIX_PARALLEL_GRAIN_ARGS:---quick}; else grain_args=${SEQMIX_PARALLEL_GRAIN_ARGS:---times}; fi
echo "== seqmix-parallel-grain $grain_args"
# shellcheck disable=SC2086  # the arguments are words
"$build_dir/seqmix-parallel-grain" $grain_args > "$raw/parallel_grain.md"

/usr/bin/python3 tools/bench_report.py "$raw" "$report_dir"
