#!/usr/bin/env bash
# Peak resident memory of `coffer seal` and `coffer open` on a large stream
# (default 1 GiB), streamed through pipes so nothing touches the disk, and of
# `coffer backup` of an incompressible dump of that size (its worst case: the
# whole stream crosses every stage). Fails if seal/open exceed LIMIT_MIB
# (default 32) or backup exceeds BACKUP_LIMIT_MIB (default 64). Where garage
# is installed, also of that backup to an S3 store (a 3-node cluster from
# scripts/garage-dev.sh, default parts: 8 MiB x 4 in flight), which must stay
# under S3_LIMIT_MIB (default 96). Not a timing test.
#
#   scripts/measure-memory.sh                 # uses target/release/coffer
#   COFFER_BIN=target/debug/coffer SIZE_MIB=1024 LIMIT_MIB=32 scripts/measure-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${COFFER_BIN:-target/release/coffer}
size_mib=${SIZE_MIB:-1024}
limit_mib=${LIMIT_MIB:-32}
backup_limit_mib=${BACKUP_LIMIT_MIB:-64}
[ -x "$bin" ] || cargo build --release --quiet
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'scripts/garage-dev.sh stop "$tmp/garage" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$bin" keygen --type age --out "$tmp/key" 2>/dev/null

head -c "${size_mib}M" /dev/zero \
  | /usr/bin/time -f %M -o "$tmp/seal.kib" "$bin" seal -R "$tmp/key.pub" \
  | /usr/bin/time -f %M -o "$tmp/open.kib" "$bin" open -i "$tmp/key" \
  | cmp - <(head -c "${size_mib}M" /dev/zero)

cat > "$tmp/coffer.toml" <<CONF
[job]
name = "memory"
recipients = ["$tmp/key.pub"]
lock_file = "$tmp/lock"
signing_key = "$tmp/signing.key"
[[source]]
type = "command"
name = "dump"
argv = ["sh", "-c", "head -c ${size_mib}M /dev/urandom"]
[[store]]
type = "local"
path = "$tmp/store"
CONF
/usr/bin/time -f %M -o "$tmp/backup.kib" "$bin" backup -c "$tmp/coffer.toml"

stages="seal open backup"
if "${GARAGE:-garage}" --version >/dev/null 2>&1; then
  scripts/garage-dev.sh start "$tmp/garage" > /dev/null
  sed '/^\[\[store\]\]/,$d' "$tmp/coffer.toml" > "$tmp/s3.toml"
  cat "$tmp/garage/store.toml" >> "$tmp/s3.toml"
  /usr/bin/time -f %M -o "$tmp/backup-s3.kib" "$bin" backup -c "$tmp/s3.toml"
  scripts/garage-dev.sh stop "$tmp/garage"
  stages="$stages backup-s3"
else
  echo "memory: garage not installed, backup to S3 not measured"
fi

status=0
for stage in $stages; do
  kib=$(tail -n 1 "$tmp/$stage.kib")
  mib=$(( (kib + 1023) / 1024 ))
  limit=$limit_mib
  [ "$stage" = backup ] && limit=$backup_limit_mib
  [ "$stage" = backup-s3 ] && limit=${S3_LIMIT_MIB:-96}
  verdict=ok
  if [ "$mib" -ge "$limit" ]; then verdict="OVER LIMIT"; status=1; fi
  printf 'memory: %-9s %5d MiB stream  peak RSS %6d KiB (%d MiB, limit %d MiB)  %s\n' \
    "$stage" "$size_mib" "$kib" "$mib" "$limit" "$verdict"
done
exit $status
