#!/usr/bin/env bash
# CPU flamegraph and perf counters of kateway under a benchmark scenario.
#   perf/flamegraph.sh [SCENARIO] [extra kateway-bench run args...]
#   SCENARIO: publish (default), publish-batch, subscribe
#   e.g. perf/flamegraph.sh publish --ack all --conns 256
# Writes perf/out/<scenario>.svg (flamegraph), <scenario>.folded and <scenario>.stat.txt.
source "$(dirname "$0")/common.sh"
SCENARIO=${1:-publish}; shift || true
SECS=${SECS:-8}
need perf; need inferno-flamegraph
build
start_kateway
if [ "$SCENARIO" = subscribe ]; then
  bench 5 --scenario publish-batch --batch 100 >/dev/null   # something to read
fi
bench $((SECS + 3)) --scenario "$SCENARIO" --pid "$KW_PID" "$@" > "$OUT/$SCENARIO.bench.txt" &
BENCH=$!
sleep 2
perf stat -e task-clock,context-switches,cpu-migrations,page-faults,cycles,instructions \
  -p "$KW_PID" -- sleep "$SECS" 2> "$OUT/$SCENARIO.stat.txt" &
STAT=$!
perf record -F 999 -g --call-graph dwarf,16384 -p "$KW_PID" -o "$OUT/$SCENARIO.perf.data" -- sleep "$SECS" 2>/dev/null
wait "$STAT" || true
wait "$BENCH"
perf script -i "$OUT/$SCENARIO.perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$SCENARIO.folded"
inferno-flamegraph --title "kateway $SCENARIO $*" < "$OUT/$SCENARIO.folded" > "$OUT/$SCENARIO.svg"
cat "$OUT/$SCENARIO.bench.txt" "$OUT/$SCENARIO.stat.txt"
echo "flamegraph: $OUT/$SCENARIO.svg"
