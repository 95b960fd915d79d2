#!/usr/bin/env bash
# millrace vs Redis Streams (appendfsync always), on this machine, in one run.
#
# Usage: benches/compare.sh [RUNS=5]
#   env: RECORDS_BATCHED (2000000), RECORDS_SINGLE (400000), RECORDS_FETCH (2000000),
#        IN_FLIGHT (8), REDIS_RECORDS (1000000), REDIS_SINGLE_RECORDS (200000)
#
# Builds the `throughput` bench in release, runs each millrace scenario RUNS
# times (each run a fresh process and data directory under target/tmp, on the
# repository's filesystem) and keeps the median, then runs the shared peer
# script /work/shared/bench/redis_streams.sh twice: with its defaults
# (pipeline 1000, 4 clients) and with PIPELINE=1 CLIENTS=256 (one record per
# round trip, the fair peer of produce-single). Prints every raw line, then a
# table: scenario, millrace records/s, peer records/s, ratio, peak RSS.
#
# Scenarios (100-byte values, fsync "always" = acknowledged after fdatasync):
#   produce-batched      1 partition, batches of 1,000, IN_FLIGHT batches outstanding
#   produce-sequential   the same, one batch at a time
#   produce-single       16 partitions, 256 producers, one record per send().await
#                        (tokio tasks on 2 workers), also with 256 OS threads
#   fetch                one consumer reads 1 partition from offset 0 (page cache)
set -euo pipefail
runs=${1:-5}
cd "$(dirname "$0")/.."
peer_script=${PEER_SCRIPT:-/work/shared/bench/redis_streams.sh}
records_batched=${RECORDS_BATCHED:-2000000}
records_single=${RECORDS_SINGLE:-400000}
records_fetch=${RECORDS_FETCH:-2000000}
in_flight=${IN_FLIGHT:-8}
redis_records=${REDIS_RECORDS:-1000000}
redis_single_records=${REDIS_SINGLE_RECORDS:-200000}

cargo bench --bench throughput --no-run >&2
bench() { cargo bench -q --bench throughput -- "$@" --runs "$runs"; }
field() { grep ' median_of=' | tr ' ' '\n' | sed -n "s/^$1=//p"; }

declare -A rate rss fsyncs
run_millrace() {
  local label=$1; shift
  local out
  out=$(bench "$@")
  echo "$out"
  rate[$label]=$(echo "$out" | field records_per_s)
  rss[$label]=$(echo "$out" | field peak_rss_mib)
  fsyncs[$label]=$(echo "$out" | field fsyncs_per_s)
}
run_millrace batched produce-batched --records "$records_batched" --in-flight "$in_flight"
run_millrace sequential produce-batched --records "$records_batched" --in-flight 1
run_millrace single_tasks produce-single --records "$records_single" --mode tasks
run_millrace single_threads produce-single --records "$records_single" --mode threads
run_millrace fetch fetch --records "$records_fetch"

redis_default=$(bash "$peer_script" "$redis_records" 100 1000 4 | awk '{print $2}')
echo "redis_streams_xadd_per_s $redis_default (pipeline 1000, 4 clients, $redis_records records)"
redis_single=$(bash "$peer_script" "$redis_single_records" 100 1 256 | awk '{print $2}')
echo "redis_streams_xadd_per_s $redis_single (pipeline 1, 256 clients, $redis_single_records records)"

# The better of the two single-record client modes is reported.
if [ "${rate[single_tasks]%.*}" -ge "${rate[single_threads]%.*}" ]; then
  single=single_tasks; single_mode=tasks
else
  single=single_threads; single_mode=threads
fi

row() { # scenario millrace peer rss fsyncs
  local ratio=-
  [ "$3" != - ] && ratio=$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.1fx", a / b }')
  printf '%-44s %14s %14s %8s %10s %12s\n' "$1" "$2" "$3" "$ratio" "$4" "$5"
}
echo
echo "medians of $runs runs each; peer = Redis Streams XADD, appendfsync always"
printf '%-44s %14s %14s %8s %10s %12s\n' scenario millrace_rec/s peer_rec/s ratio rss_mib fsyncs/s
row "produce-batched (1000/batch, $in_flight in flight)" "${rate[batched]}" "$redis_default" "${rss[batched]}" "${fsyncs[batched]}"
row "produce-sequential (1000/batch, 1 in flight)" "${rate[sequential]}" "$redis_default" "${rss[sequential]}" "${fsyncs[sequential]}"
row "produce-single 16p/256 tasks vs P=1 C=256" "${rate[single_tasks]}" "$redis_single" "${rss[single_tasks]}" "${fsyncs[single_tasks]}"
row "produce-single 16p/256 threads vs P=1 C=256" "${rate[single_threads]}" "$redis_single" "${rss[single_threads]}" "${fsyncs[single_threads]}"
row "produce-single best ($single_mode) vs pipelined" "${rate[$single]}" "$redis_default" "${rss[$single]}" "${fsyncs[$single]}"
row "fetch (1 partition, 256 KiB polls, the default)" "${rate[fetch]}" - "${rss[fetch]}" -
