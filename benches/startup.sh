#!/usr/bin/env bash
# Startup benchmarks of the lifecycle issue, on this machine, in one run.
#
# Usage: benches/startup.sh [SIZES="1 10"]   (GiB retained, one store each)
#   env: RESTARTS (5), PRODUCE_RUNS (5), PRODUCE_RECORDS (2000000), IN_FLIGHT (8),
#        COLD (1: also after `sync; echo 3 > /proc/sys/vm/drop_caches`, needs root),
#        KEEP (0: 1 keeps the stores under target/bench-data for the next run)
#
# Builds the `startup` bench in release and runs it once per size. Each store
# (100-byte values, >= 1,024 sealed blocks, timestamps over 14 days,
# hot_window 24h) is built under target/bench-data, on the repository's
# filesystem, and reused if a marker with the same parameters is there.
# Prints every raw line, then a table of the medians.
set -euo pipefail
sizes=${1:-"1 10"}
cd "$(dirname "$0")/.."
restarts=${RESTARTS:-5}
produce_runs=${PRODUCE_RUNS:-5}
produce_records=${PRODUCE_RECORDS:-2000000}
in_flight=${IN_FLIGHT:-8}
extra=()
[ "${COLD:-1}" = 1 ] && extra+=(--cold)
[ "${KEEP:-0}" = 1 ] && extra+=(--keep)

cargo bench --bench startup --no-run >&2
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
pick() { # figure cache [files] -> the median line
  grep "^figure=$1 .*cache=$2 " | grep ' median_of=' | { if [ -n "${3:-}" ]; then grep "files=$3 "; else cat; fi; }
}

declare -A out
for gib in $sizes; do
  out[$gib]=$(cargo bench -q --bench startup -- --gib "$gib" --restarts "$restarts" \
    --produce-runs "$produce_runs" --produce-records "$produce_records" \
    --in-flight "$in_flight" "${extra[@]}")
  echo "${out[$gib]}"
done

echo
echo "medians; ready target <= 100 ms, produce ratio target >= 0.80"
printf '%-5s %-6s %9s %9s %10s %10s %11s %10s %10s %12s %10s\n' GiB cache start_ms ready_ms load_s cold_MB/s loader_MB/s all_MB/s cat_MB/s produce_ratio overlapped
for gib in $sizes; do
  for cache in warm cold; do
    ready=$(echo "${out[$gib]}" | pick ready "$cache")
    [ -z "$ready" ] && continue
    load=$(echo "${out[$gib]}" | pick load "$cache")
    cat_all=$(echo "${out[$gib]}" | pick cat "$cache" all)
    ratio=- overlapped=-
    if [ "$cache" = warm ]; then
      produce=$(echo "${out[$gib]}" | pick produce warm)
      if [ -n "$produce" ]; then
        ratio=$(echo "$produce" | field median_ratio_overlapped)
        overlapped=$(echo "$produce" | field runs_overlapped)
      fi
    fi
    printf '%-5s %-6s %9s %9s %10s %10s %11s %10s %10s %12s %10s\n' "$gib" "$cache" \
      "$(echo "$ready" | field start_ms)" "$(echo "$ready" | field ready_ms)" \
      "$(echo "$load" | field complete_s)" "$(echo "$load" | field cold_mb_s)" \
      "$(echo "$load" | field loader_mb_s)" "$(echo "$load" | field all_mb_s)" \
      "$(echo "$cat_all" | field mb_s)" "$ratio" "$overlapped"
  done
done
