#!/usr/bin/env bash
# The one-command demo: builds coffer and, in ./demo, makes a backup key pair,
# a SQLite database with sample rows, a config, runs the backup job into
# ./demo/backups, lists the backups, restores the database from the sealed
# file and shows its rows, and shows that tampering is caught.
# Safe to re-run: it only ever replaces its own ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "demo: needs Rust's cargo (https://rustup.rs)" >&2; exit 2; }
echo "==> building coffer (release)"
cargo build --release --quiet --bin coffer --example demo_db
coffer=$PWD/target/release/coffer
demo_db=$PWD/target/release/examples/demo_db

if [ -e demo ]; then
  [ -e demo/.coffer-demo ] || { echo "demo: ./demo exists and is not coffer's; move it away" >&2; exit 2; }
  rm -rf demo
fi
mkdir -p demo && touch demo/.coffer-demo && cd demo
umask 077

say() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "the backup key pair (the public half goes on the database server, the private half stays offline)"
say "and beside it the signing key pair (the database host signs each backup, the restore side believes only what it signed)"
run "$coffer" keygen --type age --out backup.key

say "a live application database"
run "$demo_db" create app.db

say "the job's configuration"
cat > coffer.toml <<CONF
[job]
name = "demo"
recipients = ["backup.key.pub"]
keep_last = 7
compression = "gzip"            # zstd is the default; gzip lets plain tar unpack the demo
lock_file = "$PWD/coffer.lock"  # keeps the demo self-contained
signing_key = "signing.key"             # on the database host
signing_public_key = "signing.key.pub"  # where you verify and restore

[[source]]
type = "sqlite"
path = "app.db"

[[source]]
type = "files"
name = "config"
paths = ["coffer.toml"]

[[store]]
type = "local"
path = "backups"
CONF
cat coffer.toml
run "$coffer" config check -c coffer.toml

say "the nightly job (silent on success; -v prints a summary)"
run "$coffer" backup -v -c coffer.toml
run "$coffer" list -c coffer.toml
latest=$(ls backups/*.coffer | tail -n 1)

say "inspect needs no key: the sealing side can never read its backups"
run "$coffer" inspect "$latest"

say "verify: without a key (signature, size, BLAKE3, header, the job's ledger), then with it (every chunk and member)"
run "$coffer" verify -c coffer.toml
run "$coffer" verify -c coffer.toml latest -i backup.key

say "restore the newest signed backup into a directory"
run "$coffer" restore -c coffer.toml -i backup.key latest --to restored-by-coffer
run "$demo_db" show restored-by-coffer/sqlite/app.db

say "or with standard tools: open with the private key, unpack with tar"
mkdir -p restored
printf '$ coffer open -i backup.key %s | tar -xz -C restored\n' "$latest"
"$coffer" open -i backup.key "$latest" | tar -xz -C restored
run "$demo_db" show restored/sqlite/app.db
run cat restored/MANIFEST.json

say "tamper with one byte: coffer refuses (exit 3) and says where"
cp "$latest" tampered.coffer
printf 'X' | dd of=tampered.coffer bs=1 seek=3000 conv=notrunc 2>/dev/null
set +e
"$coffer" open -i backup.key -o tampered.tar.gz tampered.coffer
status=$?
set -e
echo "exit code: $status"
[ "$status" -eq 3 ] && [ ! -e tampered.tar.gz ]

say "done: everything is in ./demo"
