#!/usr/bin/env bash
# The Kafka listener against the embedded API, on this machine, in one run.
#
# Usage: benches/kafka.sh [RUNS=5]
#   env: RECORDS (1000000), BATCH (1000: librdkafka batch.num.messages),
#        LINGER_MS (5)
#
# Needs kcat (Debian's package, librdkafka inside); .ci/run installs it.
# Builds the release `millrace` binary and the `throughput` bench. Each run:
#   1. embedded: the throughput bench's produce-batched scenario (one
#      partition, batches of 1,000 records of 100 bytes, fsync "always"),
#      once with 1 batch in flight and once with 8;
#   2. kafka produce: a fresh `millrace run` (fsync "always", one partition,
#      the listener on a free port), then kcat -P (librdkafka: acks=all,
#      batch.num.messages=$BATCH, linger.ms=$LINGER_MS) sends $RECORDS lines
#      of 100 bytes; timed from kcat's start to its exit (every record acked);
#   3. kafka produce x2: two kcat processes at once, each to its own
#      partition of a 2-partition topic ($RECORDS records in all);
#   4. kafka fetch: kcat -C reads the partition from offset 0 to the end
#      (-e) with librdkafka's defaults, and with fetch.wait.max.ms=10;
#   5. if a C compiler and librdkafka's headers are there (Debian's
#      librdkafka-dev), benches/kafka_producer.c: librdkafka alone, sending
#      from a buffer (no line reading), same settings as kcat.
# Prints every raw figure, then the medians and the ratios to embedded.
set -euo pipefail
runs=${1:-5}
records=${RECORDS:-1000000}
batch=${BATCH:-1000}
linger=${LINGER_MS:-5}
cd "$(dirname "$0")/.."
command -v kcat >/dev/null || { echo "kcat is not installed (apt-get install kcat)" >&2; exit 1; }

cargo build --release --bin millrace >&2
cargo bench --bench throughput --no-run >&2
work=$(mktemp -d "${TMPDIR:-/tmp}/millrace-kafka-bench.XXXXXX")
trap 'pkill -f "millrace run $work" 2>/dev/null || true; rm -rf "$work"' EXIT

# 100-byte values: an 8-digit sequence number and padding.
awk -v n="$records" 'BEGIN { pad = sprintf("%92s", ""); gsub(/ /, "x", pad);
  for (i = 0; i < n; i++) printf "%08d%s\n", i, pad }' > "$work/values.txt"
c_producer=""
if cc -O2 -o "$work/kafka_producer" benches/kafka_producer.c -lrdkafka 2>/dev/null; then
  c_producer="$work/kafka_producer"
else
  echo "benches/kafka_producer.c not built (needs cc and librdkafka-dev): scenario 5 skipped" >&2
fi
half=$((records / 2))
head -n "$half" "$work/values.txt" > "$work/half1.txt"
tail -n +"$((half + 1))" "$work/values.txt" > "$work/half2.txt"

now() { date +%s.%N; }
# User + system CPU ticks of a process so far (/proc/PID/stat fields 14, 15).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rate() { awk -v n="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%d", n / (e - s) }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

start_node() { # partitions -> prints the listener address
  local dir="$work/node" partitions=$1
  rm -rf "$dir"; mkdir -p "$dir"
  cat > "$dir/config.toml" <<EOF
data_dir = "$dir/data"
[[topic]]
name = "bench"
partitions = $partitions
fsync = "always"
[kafka]
listen = "127.0.0.1:0"
EOF
  ./target/release/millrace run "$dir/config.toml" > "$dir/out" 2> "$dir/log" &
  local address=""
  for _ in $(seq 1 200); do
    address=$(grep -o 'kafka listener serving.*address=[0-9.:]*' "$dir/log" 2>/dev/null | grep -o '[0-9.]*:[0-9]*$' || true)
    [ -n "$address" ] && break
    sleep 0.05
  done
  [ -n "$address" ] || { cat "$dir/log" >&2; echo "millrace did not start" >&2; exit 1; }
  echo "$address"
}
stop_node() { pkill -TERM -f "millrace run $work" || true; wait 2>/dev/null || true; }

producer_flags=(-X acks=all -X "batch.num.messages=$batch" -X "linger.ms=$linger" -X queue.buffering.max.messages=1000000)
embedded1=() embedded8=() kafka1=() kafka2=() fetch_default=() fetch_fast=() node_cpu=() client_cpu=() kafka_c=()
for run in $(seq 1 "$runs"); do
  out=$(cargo bench -q --bench throughput -- produce-batched --records "$records" --in-flight 1 --runs 1)
  embedded1+=("$(echo "$out" | grep ' median_of=' | tr ' ' '\n' | sed -n 's/^records_per_s=//p')")
  out=$(cargo bench -q --bench throughput -- produce-batched --records "$records" --in-flight 8 --runs 1)
  embedded8+=("$(echo "$out" | grep ' median_of=' | tr ' ' '\n' | sed -n 's/^records_per_s=//p')")

  address=$(start_node 1)
  node_pid=$(pgrep -f "millrace run $work/node/config.toml" | head -1)
  node_before=$(cpu_ticks "$node_pid")
  s=$(now)
  /usr/bin/time -f '%U %S' -o "$work/kcat.time" kcat -P -b "$address" -t bench -p 0 "${producer_flags[@]}" -l "$work/values.txt"
  e=$(now)
  kafka1+=("$(rate "$records" "$s" "$e")")
  node_cpu+=("$(awk -v a="$node_before" -v b="$(cpu_ticks "$node_pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')")
  client_cpu+=("$(awk '{ printf "%.2f", $1 + $2 }' "$work/kcat.time")")
  s=$(now); count=$(kcat -C -b "$address" -t bench -p 0 -o beginning -e -q -f '%o\n' | wc -l); e=$(now)
  [ "$count" -eq "$records" ] || { echo "fetched $count of $records" >&2; exit 1; }
  fetch_default+=("$(rate "$records" "$s" "$e")")
  s=$(now); kcat -C -b "$address" -t bench -p 0 -o beginning -e -q -f '%o\n' -X fetch.wait.max.ms=10 > /dev/null; e=$(now)
  fetch_fast+=("$(rate "$records" "$s" "$e")")
  if [ -n "$c_producer" ]; then
    kafka_c+=("$("$c_producer" "$address" bench 0 "$records" "$batch" "$linger" | sed -n 's/^records_per_s=\([0-9]*\).*/\1/p')")
  fi
  stop_node

  address=$(start_node 2)
  s=$(now)
  kcat -P -b "$address" -t bench -p 0 "${producer_flags[@]}" -l "$work/half1.txt" & first=$!
  kcat -P -b "$address" -t bench -p 1 "${producer_flags[@]}" -l "$work/half2.txt" & second=$!
  wait "$first" "$second"
  e=$(now)
  kafka2+=("$(rate "$records" "$s" "$e")")
  stop_node
  echo "run $run: embedded(1 in flight) ${embedded1[-1]}  embedded(8) ${embedded8[-1]}  kafka ${kafka1[-1]} (cpu s: node ${node_cpu[-1]}, kcat ${client_cpu[-1]})  kafka C ${kafka_c[-1]:--}  kafka x2 ${kafka2[-1]}  fetch ${fetch_default[-1]}  fetch(wait 10ms) ${fetch_fast[-1]}"
done

m_e1=$(echo "${embedded1[*]}" | median); m_e8=$(echo "${embedded8[*]}" | median)
m_k1=$(echo "${kafka1[*]}" | median); m_k2=$(echo "${kafka2[*]}" | median)
m_fd=$(echo "${fetch_default[*]}" | median); m_ff=$(echo "${fetch_fast[*]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
echo
echo "medians of $runs runs; $records records of 100 bytes; fsync always; $(kcat -V 2>&1 | grep -o 'Version [^ ]*' | head -1 | sed 's/Version /kcat /'), $(kcat -V 2>&1 | grep -o 'librdkafka [^ ]*' | head -1)"
printf '%-58s %12s %12s %12s\n' scenario rec/s vs_emb_1 vs_emb_8
printf '%-58s %12s\n' "embedded produce-batched, 1000/batch, 1 in flight" "$m_e1"
printf '%-58s %12s\n' "embedded produce-batched, 1000/batch, 8 in flight" "$m_e8"
printf '%-58s %12s %12s %12s\n' "kafka: kcat -P acks=all, batch $batch, linger ${linger}ms" "$m_k1" "$(ratio "$m_k1" "$m_e1")" "$(ratio "$m_k1" "$m_e8")"
printf '%-58s %12s %12s %12s\n' "kafka: 2 x kcat -P, one partition each" "$m_k2" "$(ratio "$m_k2" "$m_e1")" "$(ratio "$m_k2" "$m_e8")"
if [ "${#kafka_c[@]}" -gt 0 ]; then
  m_kc=$(echo "${kafka_c[*]}" | median)
  printf '%-58s %12s %12s %12s\n' "kafka: librdkafka C producer (benches/kafka_producer.c)" "$m_kc" "$(ratio "$m_kc" "$m_e1")" "$(ratio "$m_kc" "$m_e8")"
fi
echo "  CPU seconds for the $records records (medians): node $(echo "${node_cpu[*]}" | median), kcat $(echo "${client_cpu[*]}" | median)"
printf '%-58s %12s\n' "kafka fetch: kcat -C to the end (librdkafka defaults)" "$m_fd"
printf '%-58s %12s\n' "kafka fetch: kcat -C, fetch.wait.max.ms=10" "$m_ff"
