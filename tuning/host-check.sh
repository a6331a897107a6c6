#!/usr/bin/env bash
# Checks a host for running kateway well. Prints one line per check: OK, WARN or FAIL, and what
# to change. Changes nothing. Exit status 1 if any check FAILs.
set -u
fail=0
ok()   { printf 'OK    %s\n' "$*"; }
warn() { printf 'WARN  %s\n' "$*"; }
bad()  { printf 'FAIL  %s\n' "$*"; fail=1; }

# io_uring: kateway's reactors run on it; without it they fall back to epoll (slower).
dis=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo absent)
case "$dis" in
  0) ok "io_uring enabled (kernel.io_uring_disabled=0)";;
  absent) warn "kernel.io_uring_disabled not present (kernel < 6.6?): check io_uring works";;
  *) bad "io_uring disabled (kernel.io_uring_disabled=$dis): set it to 0";;
esac
kv=$(uname -r); major=${kv%%.*}; rest=${kv#*.}; minor=${rest%%.*}
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 1 ]; }; then
  ok "kernel $kv supports IORING_SETUP_DEFER_TASKRUN"
else
  warn "kernel $kv < 6.1: DEFER_TASKRUN unavailable, kateway uses default ring flags"
fi

# memlock: each ring needs locked memory unless the process has CAP_IPC_LOCK.
ml=$(ulimit -l)
if [ "$ml" = unlimited ] || [ "$ml" -ge 8192 ]; then ok "memlock $ml KiB"; else warn "memlock $ml KiB: raise to >= 8192 (LimitMEMLOCK) for one 1024-entry ring per core"; fi

# open files: one per connection.
nf=$(ulimit -n); hn=$(ulimit -Hn)
if [ "$hn" = unlimited ] || [ "$hn" -ge 1048576 ]; then ok "nofile hard limit $hn"; else warn "nofile hard limit $hn: raise LimitNOFILE (kateway raises its soft limit to the hard one)"; fi
[ "$nf" != unlimited ] && [ "$nf" -lt 65536 ] && warn "nofile soft limit $nf in this shell"

# listen backlog
sc=$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo 0)
if [ "$sc" -ge 4096 ]; then ok "net.core.somaxconn=$sc"; else warn "net.core.somaxconn=$sc: set >= 4096 (server.backlog is 4096)"; fi
syn=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog 2>/dev/null || echo 0)
[ "$syn" -ge 4096 ] && ok "net.ipv4.tcp_max_syn_backlog=$syn" || warn "net.ipv4.tcp_max_syn_backlog=$syn: set >= 4096"

# CPU frequency governor
govs=$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort -u | tr '\n' ' ')
if [ -z "$govs" ]; then ok "no cpufreq governor exposed (VM or fixed frequency)"
elif [ "$govs" = "performance " ]; then ok "CPU governor: performance"
else warn "CPU governor: $govs- set 'performance' for stable latency"; fi

# IRQ affinity and balancing: NIC interrupts should not land on reactor cores.
if pgrep -x irqbalance >/dev/null; then warn "irqbalance is running: pin NIC queue IRQs away from reactor cores (see docs/tuning.md)"; else ok "irqbalance not running"; fi
iso=$(cat /sys/devices/system/cpu/isolated 2>/dev/null)
[ -n "$iso" ] && ok "isolated CPUs: $iso" || warn "no isolated CPUs (isolcpus/nohz_full optional, see docs/tuning.md)"

# Transparent huge pages: 'madvise' or 'never' avoids latency spikes from compaction.
thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null | sed -n 's/.*\[\(.*\)\].*/\1/p')
[ "$thp" = always ] && warn "transparent_hugepage=always: prefer madvise" || ok "transparent_hugepage=${thp:-n/a}"

# Filesystem of the data directory: fsync cost decides ack=all throughput.
dir=${1:-./data}; mkdir -p "$dir" 2>/dev/null
fs=$(stat -f -c %T "$dir" 2>/dev/null || echo unknown)
case "$fs" in ext2/ext3|ext4|xfs) ok "data dir $dir on $fs";; tmpfs) warn "data dir $dir on tmpfs: nothing survives a reboot";; *) warn "data dir $dir on $fs: ext4 or xfs recommended";; esac
exit $fail
