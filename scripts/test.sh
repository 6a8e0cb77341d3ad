#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, then runs formatting and lint checks, every unit, property and
# integration test, the fuzz targets' build, the memory check, and the
# Debian package's build and installation.
#
#   scripts/test.sh            # everything
#   SKIP_INSTALL=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${SKIP_INSTALL:-}" ]; then
  scripts/install-test-deps.sh
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
# The fuzz crate is its own workspace; sharing the target directory (and the
# dev profile) reuses the dependencies just built.
cargo clippy --manifest-path fuzz/Cargo.toml --target-dir target --quiet -- -D warnings

step "cargo test"
cargo test

step "fuzz targets build"
cargo build --manifest-path fuzz/Cargo.toml --target-dir target --quiet

step "memory (release build): seal/open 1 GiB within 32 MiB of RSS, backup within 64 MiB, to S3 (Garage) within 96 MiB"
cargo build --release --quiet
COFFER_BIN=target/release/coffer SIZE_MIB=1024 LIMIT_MIB=32 BACKUP_LIMIT_MIB=64 scripts/measure-memory.sh

step "the README's demo: keys, a database, a signed backup, verify, restore, a tamper check"
scripts/demo.sh > target/demo.log 2>&1 || { cat target/demo.log; exit 1; }

step "Debian package: cargo deb, dpkg -i, checks, purge"
scripts/test-deb.sh

printf '\nall checks passed\n'
