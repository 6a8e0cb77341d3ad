#!/usr/bin/env bash
# Installs what coffer's test suite needs on Debian/Ubuntu (run as root or with
# sudo): real database servers and sshd for the integration tests (the tests
# start private instances of them; nothing needs to be running), openssl and
# age for interoperability tests, Python's cryptography for the independent
# reader, and the Rust toolchain's components for the lint steps.
set -euo pipefail

packages=(
  ca-certificates build-essential pkg-config libssl-dev
  openssl age zstd time bsdutils procps strace util-linux curl
  python3 python3-cryptography python3-prometheus-client
  openssh-client openssh-server dropbear-bin rclone proftpd-core proftpd-mod-crypto
  mariadb-server mariadb-client
  postgresql postgresql-client
  sqlite3 minisign
  man-db systemd adduser
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  # Servers are only installed, not started: the tests run their own instances.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The `python3` first on PATH may not be Debian's (pyenv, venv): make sure it
# can import cryptography (the independent reader) and prometheus_client (the
# reference parser the metrics test uses).
if ! python3 -c 'import cryptography' 2>/dev/null; then
  python3 -m pip install --quiet cryptography
fi
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install --quiet prometheus-client
fi

# moto's S3 server, another S3 implementation tests/s3.rs runs coffer
# against: in a virtual environment of its own, pinned, its command linked
# onto PATH.
MOTO_VERSION=5.2.6
MOTO_VENV=/opt/coffer-test-moto
if ! "$MOTO_VENV/bin/pip" show moto 2>/dev/null | grep -qx "Version: $MOTO_VERSION"; then
  if ! python3 -m venv "$MOTO_VENV" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-venv
    /usr/bin/python3 -m venv "$MOTO_VENV"
  fi
  "$MOTO_VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION"
fi
$sudo ln -sf "$MOTO_VENV/bin/moto_server" /usr/local/bin/moto_server

# s3rver, a third S3 implementation (no listing of unfinished multipart
# uploads), from the npm registry, pinned, its command linked onto PATH.
S3RVER_VERSION=3.7.1
S3RVER_DIR=/opt/coffer-test-s3rver
if ! grep -qs "\"version\": \"$S3RVER_VERSION\"" "$S3RVER_DIR/node_modules/s3rver/package.json"; then
  if ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends nodejs npm
  fi
  $sudo mkdir -p "$S3RVER_DIR"
  (cd "$S3RVER_DIR" && $sudo npm install --silent --no-audit --no-fund "s3rver@$S3RVER_VERSION")
fi
$sudo ln -sf "$S3RVER_DIR/node_modules/.bin/s3rver" /usr/local/bin/s3rver

# The account drills run their scratch servers as when the suite runs as
# root, as the Debian package makes it: a user nothing else runs as.
if ! getent passwd coffer-drill >/dev/null; then
  $sudo useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "coffer restore drills" coffer-drill
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs) or Debian's cargo package" >&2
  exit 1
fi
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
fi

# Garage, the S3 server tests/s3.rs runs as a 3-node cluster
# (scripts/garage-dev.sh). From the Rust package registry, built from source
# into cargo's bin directory (~/.cargo/bin, on PATH wherever cargo is), unless
# this version is already there. LMDB metadata and bundled C libraries only:
# no SQLite, no system libsodium. Measured: 37 min 38 s wall (12 min 9 s user,
# 1 min 7 s system CPU) on 2 cores shared with two other cargo builds; once per
# machine, skipped when this version is installed.
GARAGE_VERSION=2.5.0
if ! garage --version 2>/dev/null | grep -Eq "(cargo:|v)$GARAGE_VERSION( |$)"; then
  echo "building garage $GARAGE_VERSION (cargo install; once per machine)"
  cargo install garage --version "$GARAGE_VERSION" --locked --no-default-features \
    --features bundled-libs,lmdb
fi
