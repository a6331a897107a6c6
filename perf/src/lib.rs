//! Criterion micro-benchmarks of the hot paths (`cargo bench -p kateway-perf`), and the profiling
//! scripts beside this crate: `flamegraph.sh` (perf + inferno) and `callgrind.sh` (instructions
//! per request).
