#!/usr/bin/env bash
# millrace pipelines, and the windowed count beside Bytewax 0.21.1, on this
# machine, in one run.
#
# Usage: benches/pipeline.sh [RUNS=5]
#   env: FM_RECORDS (4000000)       filter-map source records
#        SWEEP_RUNS (3)             runs per filter-map configuration of the sweep
#        WC_RECORDS (2000000)       windowed-count input for the millrace target (KEYS=10000)
#        CMP_RECORDS (200000)       the input both systems run, at KEYS=10000 and KEYS=100
#        CMP_RECORDS_LARGE (2000000) a second shared input at KEYS=100 (Bytewax is fast enough there)
#        BYTEWAX_RUNS (3)
#        THROTTLE_RECORDS (2000000), THROTTLE_RATE (50000 records/s, fixed),
#        THROTTLE_PERCENT_RECORDS (12000000) for the 10%-of-source variant
#          (enough that the sink still lags after THROTTLE_SECONDS at ~4M records/s produced),
#        THROTTLE_SECONDS (20), THROTTLE_RUNS (3)
#        SHARED_BENCH (../shared/bench)
#
# Builds the `pipeline` bench in release; each millrace run is a fresh process
# and data directory under target/tmp (the repository's filesystem). Inputs of
# the windowed count are made by $SHARED_BENCH/windowed_count_input.py into
# target/bench-input (kept; remade only if missing). Bytewax runs
# $SHARED_BENCH/bytewax_windowed_count.py on the same files (installed with
# pip if missing). Prints every raw line, then a table of medians and ratios.
#
# Scenarios (fsync "always" on every topic, 4 source partitions):
#   filter-map       4M records of 100-byte JSON, filter level=="error" (50% pass) -> map -> topic sink;
#                    timed from Runtime::start_with to caught_up (everything committed).
#                    Default keys, a sweep of members {1,2} x in_flight_batches {4,8,16}
#                    (fetch_max_bytes 256 KiB, commit_interval 1s), the best again with RUNS runs.
#   windowed-count   the shared JSON lines, keyed by "key": key_by -> 1-minute tumbling count,
#                    30 s allowed lateness -> a custom sink counting windows. Same timing.
#   bytewax          bytewax_windowed_count.py on the same file (file read + parse included).
#   throttled-sink   2M records produced at full speed while a custom sink processes
#                    THROTTLE_RATE records/s (and: 10% of the source rate, 12M records);
#                    RSS sampled every 250 ms for THROTTLE_SECONDS.
set -euo pipefail
runs=${1:-5}
cd "$(dirname "$0")/.."
shared=${SHARED_BENCH:-../shared/bench}
fm_records=${FM_RECORDS:-4000000}
sweep_runs=${SWEEP_RUNS:-3}
wc_records=${WC_RECORDS:-2000000}
cmp_records=${CMP_RECORDS:-200000}
cmp_records_large=${CMP_RECORDS_LARGE:-2000000}
bytewax_runs=${BYTEWAX_RUNS:-3}
throttle_records=${THROTTLE_RECORDS:-2000000}
throttle_rate=${THROTTLE_RATE:-50000}
throttle_percent_records=${THROTTLE_PERCENT_RECORDS:-12000000}
throttle_seconds=${THROTTLE_SECONDS:-20}
throttle_runs=${THROTTLE_RUNS:-3}

cargo bench --bench pipeline --no-run >&2
bench() { cargo bench -q --bench pipeline -- "$@"; }
field() { grep ' median_of=' | tr ' ' '\n' | sed -n "s/^$1=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == "" || b == "-" || b + 0 == 0) print "-"; else printf "%.1fx", a / b }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Bytewax 0.21.1 from PyPI.
bytewax_ok=1
if ! python3 -c 'import bytewax, importlib.metadata as m; assert m.version("bytewax") == "0.21.1"' 2>/dev/null; then
  echo "installing bytewax==0.21.1" >&2
  if ! pip install --quiet bytewax==0.21.1 >&2; then
    echo "bytewax: pip install bytewax==0.21.1 failed (see above); no peer figures" >&2
    bytewax_ok=0
  fi
fi

# Shared inputs.
mkdir -p target/bench-input
input() { # records keys -> path
  local path=target/bench-input/windowed_count_$1_$2.jsonl
  if [ ! -s "$path" ]; then
    python3 "$shared/windowed_count_input.py" "$path.tmp" "$1" "$2" && mv "$path.tmp" "$path"
  fi
  echo "$path"
}
wc_input=$(input "$wc_records" 10000)
cmp_10k=$(input "$cmp_records" 10000)
cmp_100=$(input "$cmp_records" 100)
cmp_100_large=$(input "$cmp_records_large" 100)

declare -A line
run() { # label args...
  local label=$1; shift
  local out
  out=$(bench "$@")
  echo "$out"
  line[$label]=$(echo "$out" | grep ' median_of=')
}
get() { echo "${line[$1]}" | field "$2"; }

# 1. filter-map: the defaults, the sweep, the best again.
run fm_default filter-map --records "$fm_records" --runs "$runs"
best_rate=0 best_cfg=""
for members in 1 2; do
  for in_flight in 4 8 16; do
    label="fm_m${members}_f${in_flight}"
    run "$label" filter-map --records "$fm_records" --runs "$sweep_runs" \
      --members "$members" --in-flight "$in_flight" --fetch-max-bytes 262144 --commit-interval 1s
    rate=$(get "$label" records_per_s)
    if awk -v a="$rate" -v b="$best_rate" 'BEGIN { exit !(a > b) }'; then
      best_rate=$rate best_cfg="$members $in_flight"
    fi
  done
done
read -r best_members best_in_flight <<<"$best_cfg"
run fm_best filter-map --records "$fm_records" --runs "$runs" \
  --members "$best_members" --in-flight "$best_in_flight" --fetch-max-bytes 262144 --commit-interval 1s

# 2. windowed-count, millrace.
run wc_target windowed-count --input "$wc_input" --runs "$runs"
run wc_10k windowed-count --input "$cmp_10k" --runs "$runs"
run wc_100 windowed-count --input "$cmp_100" --runs "$runs"
run wc_100_large windowed-count --input "$cmp_100_large" --runs "$runs"

# 3. The same inputs in Bytewax.
declare -A bw_rate bw_windows
bytewax() { # label input
  local rates=() windows=() out
  if [ "$bytewax_ok" = 1 ]; then
    for run in $(seq "$bytewax_runs"); do
      out=$(python3 "$shared/bytewax_windowed_count.py" "$2")
      echo "bytewax input=$(basename "$2") run=$run $out"
      rates+=("$(echo "$out" | awk '{ print $2 }')")
      windows+=("$(echo "$out" | sed -n 's/.*windows=\([0-9]*\).*/\1/p')")
    done
    bw_rate[$1]=$(printf '%s\n' "${rates[@]}" | median)
    bw_windows[$1]=$(printf '%s\n' "${windows[@]}" | median)
    echo "bytewax input=$(basename "$2") median_of=$bytewax_runs records_per_s=${bw_rate[$1]} windows=${bw_windows[$1]}"
  else
    bw_rate[$1]=- bw_windows[$1]=-
  fi
}
bytewax wc_10k "$cmp_10k"
bytewax wc_100 "$cmp_100"
bytewax wc_100_large "$cmp_100_large"

# 4. throttled-sink: a fixed sink rate, and 10% of the source rate.
run th_fixed throttled-sink --records "$throttle_records" --sink-rate "$throttle_rate" \
  --duration "$throttle_seconds" --runs "$throttle_runs"
run th_percent throttled-sink --records "$throttle_percent_records" --sink-percent 10 \
  --duration "$throttle_seconds" --runs "$throttle_runs"

echo
echo "medians (millrace: $runs runs, sweep: $sweep_runs, bytewax: $bytewax_runs); fsync always; 4 source partitions; $(nproc) cores"
echo "windowed-count: records keyed by \"key\"; millrace timed from start_with to caught_up (input produced untimed before;"
echo "incl_ingest adds that produce time); bytewax timed over run_main (reads and parses the file)"
printf '%-58s %13s %13s %7s %9s  %s\n' scenario millrace_rec/s peer_rec/s ratio rss_mib notes
fm_row() { # label title
  printf '%-58s %13s %13s %7s %9s  %s\n' "$2" "$(get "$1" records_per_s)" - - "$(get "$1" max_peak_rss_mib)" \
    "out=$(get "$1" records_out) s=$(get "$1" seconds) last_write_s=$(get "$1" all_written_s)"
}
fm_row fm_default "filter-map defaults (m=1 in_flight=4), $fm_records rec"
for members in 1 2; do
  for in_flight in 4 8 16; do
    fm_row "fm_m${members}_f${in_flight}" "  sweep m=$members in_flight=$in_flight ($sweep_runs runs)"
  done
done
fm_row fm_best "filter-map best (m=$best_members in_flight=$best_in_flight)"
wc_row() { # label title
  local peer=${bw_rate[$1]:--}
  printf '%-58s %13s %13s %7s %9s  %s\n' "$2" "$(get "$1" records_per_s)" "$peer" "$(ratio "$(get "$1" records_per_s)" "$peer")" \
    "$(get "$1" max_peak_rss_mib)" \
    "windows=$(get "$1" windows) expected=$(get "$1" windows_expected) open_at_end=$(get "$1" windows_open) bytewax_windows=${bw_windows[$1]:--} incl_ingest=$(get "$1" ingest_and_process_records_per_s)/s ($(ratio "$(get "$1" ingest_and_process_records_per_s)" "$peer")) to_last_write=$(get "$1" records_per_s_to_last_write)/s"
}
wc_row wc_target "windowed-count $wc_records rec, 10000 keys"
wc_row wc_10k "windowed-count vs bytewax, $cmp_records rec, 10000 keys"
wc_row wc_100 "windowed-count vs bytewax, $cmp_records rec, 100 keys"
wc_row wc_100_large "windowed-count vs bytewax, $cmp_records_large rec, 100 keys"
th_row() { # label title
  printf '%-58s %13s %13s %7s %9s  %s\n' "$2" "$(get "$1" sink_records_per_s)" "$(get "$1" source_records_per_s)" - "$(get "$1" max_peak_rss_mib)" \
    "rss min/median/max=$(get "$1" rss_min_mib)/$(get "$1" rss_median_mib)/$(get "$1" rss_max_mib) bound=$(get "$1" bound_mib) lag_final=$(get "$1" lag_final) lag_max=$(get "$1" lag_max)"
}
th_row th_fixed "throttled-sink $throttle_records rec, sink $throttle_rate/s (sink vs source)"
th_row th_percent "throttled-sink $throttle_percent_records rec, sink 10% of source"
