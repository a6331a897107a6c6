# Shared helpers for the perf scripts: build, start kateway pinned to one CPU, stop it.
# shellcheck shell=bash
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/perf/out}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-9491}
ADDR=127.0.0.1:$PORT
mkdir -p "$OUT"

build() {
  (cd "$ROOT" && cargo build --profile profiling -p kateway-shards && cargo build --release -p kateway-bench)
}

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  case "$1" in
    perf) apt-get update -qq && apt-get install -y -qq linux-perf ;;
    valgrind|callgrind_control) apt-get update -qq && apt-get install -y -qq valgrind ;;
    inferno-flamegraph|inferno-collapse-perf) cargo install inferno --locked ;;
  esac
}

# start_kateway [wrapper...]: starts the profiling build on $SERVER_CPU, sets KW_PID.
start_kateway() {
  DATA=$(mktemp -d)
  KATEWAY_SERVER_PIN_CORES=false KATEWAY_LOG_LEVEL=warn KATEWAY_AUTH_ENABLED=false \
    taskset -c "$SERVER_CPU" "$@" "$ROOT/target/profiling/kateway" serve --cores 1 --listen "$ADDR" --data-dir "$DATA" &
  KW_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://$ADDR/alive" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf -X POST "http://$ADDR/v1/topics/bench/t/v1?partitions=1" >/dev/null
  trap stop_kateway EXIT
}

stop_kateway() {
  kill -TERM "$KW_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$KW_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$KW_PID" 2>/dev/null || true
  wait "$KW_PID" 2>/dev/null || true
  rm -rf "$DATA"
}

# bench SECONDS ARGS...: drives the server from $CLIENT_CPU.
bench() {
  local secs=$1; shift
  "$ROOT/target/release/kateway-bench" run --addr "$ADDR" --cpus "$CLIENT_CPU" --warmup-s 0 --duration-s "$secs" "$@"
}
