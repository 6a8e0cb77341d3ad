#!/usr/bin/env bash
# Builds the Debian package (target/debian/coffer_VERSION_ARCH.deb) with
# cargo-deb: the release binary, manual pages and shell completions generated
# from the CLI definitions, the systemd units, and the example configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null; then
  echo "==> installing cargo-deb"
  # A packaging tool need not be optimized: a quick build of it.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo install cargo-deb --locked --quiet
fi

cargo build --release --locked --quiet
bin=target/release/coffer
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bin" man --dir target/assets/man
gzip -9n target/assets/man/*.1
"$bin" completions bash > target/assets/completions/coffer.bash
"$bin" completions zsh > target/assets/completions/_coffer
"$bin" completions fish > target/assets/completions/coffer.fish

cargo deb --no-build --locked --quiet --output target/debian/ >/dev/null
ls target/debian/coffer_*.deb
