#!/usr/bin/env bash
# Many small files: backs up a tree of N files (files source, local store),
# restores it with --to, and verifies it with the key, printing the wall time,
# CPU time and peak RSS of each, and of `tar -x` of the same tree for the file
# system's share. Memory grows with N (docs/FORMAT.md, section 5): this
# is how that growth is measured.
#
#   scripts/bench-files.sh            # 1 000 000 files
#   scripts/bench-files.sh 100000     # fewer
#   COFFER=/path/to/coffer scripts/bench-files.sh 100000   # another build
#
# Needs: python3, GNU tar, GNU time (apt install time). The tree is N files of 2 to
# 280 bytes, 1000 to a directory, in a temporary directory under $TMPDIR
# (removed afterwards). Nothing here is a pass/fail test; a run that does not
# restore exactly N files is reported as a failure, though.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
n=${1:-1000000}
[[ $n =~ ^[0-9]+$ ]] || { echo "usage: $0 [N]" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "bench-files: GNU time (/usr/bin/time) is not installed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-files: python3 is not installed" >&2; exit 2; }

coffer=${COFFER:-}
if [ -z "$coffer" ]; then
  echo "==> building coffer (release)"
  cargo build --release --locked --quiet
  coffer=$root/target/release/coffer
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/coffer-bench-files.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "==> creating $n files"
python3 - "$work/tree" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%05d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%07d" % i), "wb") as f:
        f.write((b"%d " % i) * (1 + i % 40))
PY

"$coffer" keygen --type age --out "$work/key" >/dev/null 2>&1
cat >"$work/coffer.toml" <<TOML
[job]
name = "bench"
recipients = ["$work/key.pub"]
lock_file = "$work/coffer.lock"
signing_key = "$work/signing.key"

[[source]]
type = "files"
name = "tree"
paths = ["$work/tree"]

[[store]]
type = "local"
path = "$work/store"
TOML
chmod 600 "$work/coffer.toml"

# Runs "$@" under GNU time; prints "step  wall  CPU (user+system)  peak RSS".
measure() {
  local step=$1
  shift
  /usr/bin/time -v -o "$work/time.$step" "$@" >"$work/out.$step" 2>&1 || {
    echo "bench-files: $step failed:" >&2
    tail -5 "$work/out.$step" >&2
    exit 1
  }
  local wall user sys rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.$step")
  user=$(sed -n 's/.*User time (seconds): //p' "$work/time.$step")
  sys=$(sed -n 's/.*System time (seconds): //p' "$work/time.$step")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.$step")
  printf '%-8s %10s  %7s + %-7s %8d MiB\n' "$step" "$wall" "$user" "$sys" "$((rss / 1024))"
}

echo "==> $n files: wall time (h:mm:ss or m:ss), CPU s (user + system), peak RSS"
measure backup "$coffer" backup -c "$work/coffer.toml"
measure restore "$coffer" restore -c "$work/coffer.toml" -i "$work/key" latest --to "$work/restored"
measure verify "$coffer" verify -c "$work/coffer.toml" -i "$work/key" latest
# The file system's own share: GNU tar extracting the same tree.
tar -C "$work" -cf "$work/tree.tar" tree
mkdir "$work/untarred"
measure tar-x tar -C "$work/untarred" -xf "$work/tree.tar"
got=$(find "$work/restored/files" -type f | wc -l)
[ "$got" -eq "$n" ] || { echo "bench-files: restored $got files, not $n" >&2; exit 1; }
echo "sealed: $(du -h "$work"/store/*.coffer | cut -f1)   restored files: $got"
