#!/usr/bin/env bash
# Where the CPU time of a command goes, thread by thread: perf samples every
# CPU of the machine (so a database server and a dump program count too)
# while the command runs, then the CPU seconds of each thread name are
# printed, largest first, with the wall time. coffer names its threads
# (zstd-compress, zstd-decompress, digests, store-writer, coffer-decrypt;
# the main thread is `coffer`).
#
#   scripts/profile-threads.sh target/release/coffer backup -c live.toml
#   FREQ=499 scripts/profile-threads.sh bash -c 'mariadb-dump db | zstd | age -r … > x'
#
# Needs perf (Debian: linux-perf) with system-wide sampling allowed
# (perf_event_paranoid ≤ 0, or root). Samples the cpu-clock software event,
# which works where hardware counters are not exposed (most VMs).
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile-threads: perf is not installed (apt install linux-perf)" >&2; exit 2; }
freq=${FREQ:-997}
work=$(mktemp -d "${TMPDIR:-/tmp}/coffer-profile.XXXXXX")
trap 'rm -rf "$work"' EXIT

start=$(date +%s.%N)
perf record -q -a -e cpu-clock -F "$freq" -o "$work/perf.data" -- "$@" >/dev/null
end=$(date +%s.%N)

printf 'wall %.2f s; CPU seconds by thread name (%s samples/s per CPU):\n' \
  "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$freq"
perf report -i "$work/perf.data" --sort comm --stdio -q -F sample,comm 2>/dev/null |
  awk -v f="$freq" '$1 > 0 { name = $2; for (i = 3; i <= NF; i++) name = name " " $i;
                              printf "%8.2f  %s\n", $1 / f, name }' |
  sort -rn | awk '$1 >= 0.01'
