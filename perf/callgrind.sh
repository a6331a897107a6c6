#!/usr/bin/env bash
# Instructions per request under callgrind: counts instructions, not time, so the figure repeats
# on a noisy machine. Valgrind does not emulate io_uring, so under it the reactor runs on monoio's
# epoll driver: the count covers kateway's own code plus that driver's user-space work. Warms up, zeroes the counters, drives N seconds of load, dumps, divides.
#   perf/callgrind.sh [extra kateway-bench run args...]     e.g. perf/callgrind.sh --ack local
source "$(dirname "$0")/common.sh"
SECS=${SECS:-10}
need valgrind; need callgrind_control
build
rm -f "$OUT"/callgrind.out.*
start_kateway valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" --dump-instr=no --collect-atstart=yes
bench 3 --conns 8 "$@" >/dev/null
callgrind_control -z "$KW_PID" >/dev/null
RESULT=$(bench "$SECS" --conns 8 "$@")
callgrind_control -d "$KW_PID" >/dev/null
sleep 1
REQS=$(echo "$RESULT" | awk '/requests\/s/ {print $2}')
DUMP=$(ls -t "$OUT"/callgrind.out.* | head -1)
IR=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
TOTAL=$(python3 -c "print(round($REQS * $SECS))")
echo "$RESULT"
echo "instructions: $IR over $TOTAL requests = $(python3 -c "print(round($IR / max($TOTAL, 1)))") per request (user space)"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | head -60 > "$OUT/callgrind.top.txt"
echo "top functions: $OUT/callgrind.top.txt"
