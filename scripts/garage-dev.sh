#!/usr/bin/env bash
# A private 3-node Garage cluster on loopback, to try coffer's S3 store and to
# test it (tests/s3.rs starts one through this script):
#
#   scripts/garage-dev.sh start DIR       # 3 nodes, replication factor 3, free
#                                         # loopback ports, state in DIR; makes a
#                                         # bucket and a key, writes
#                                         # DIR/store.toml (a [[store]] block) and
#                                         # DIR/credentials (mode 0600), prints
#                                         # the block
#   scripts/garage-dev.sh kill-node DIR N # stops node N (1-3) at once (SIGKILL)
#   scripts/garage-dev.sh stop DIR        # stops every node
#
# Coffer talks to node 1's S3 API. Garage is found as $GARAGE, else `garage`
# on PATH (scripts/install-test-deps.sh installs it with cargo install).
set -euo pipefail

GARAGE=${GARAGE:-garage}
BUCKET=${GARAGE_BUCKET:-coffer}

die() { echo "garage-dev.sh: $*" >&2; exit 1; }

usage() {
  echo "usage: $0 start DIR | kill-node DIR N | stop DIR" >&2
  exit 2
}

# A TCP port nothing listens on now (the kernel's choice, then released).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

g() { "$GARAGE" -c "$DIR/node$1/garage.toml" "${@:2}"; }

stop_node() {
  local pidfile="$DIR/node$1/pid" sig=$2
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start() {
  command -v "$GARAGE" >/dev/null || die "garage not found (set GARAGE, or run scripts/install-test-deps.sh)"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  DIR=$(cd "$DIR" && pwd)
  [ ! -e "$DIR/node1" ] || die "$DIR already holds a cluster (stop it and remove the directory first)"
  local secret
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  local s3_port=""
  for n in 1 2 3; do
    local d="$DIR/node$n" rpc s3
    rpc=$(free_port)
    s3=$(free_port)
    [ "$n" = 1 ] && s3_port=$s3
    mkdir -p "$d/meta" "$d/data"
    cat > "$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
replication_factor = 3

rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
EOF
    chmod 600 "$d/garage.toml"
    # Its own session, no terminal, no inherited pipes: the script returns
    # while the node runs on.
    RUST_LOG=${RUST_LOG:-garage=warn} setsid "$GARAGE" -c "$d/garage.toml" server \
      < /dev/null > "$d/log" 2>&1 &
    echo $! > "$d/pid"
  done
  for n in 1 2 3; do
    local up=""
    for _ in $(seq 1 100); do
      if g "$n" node id -q > "$DIR/node$n/id" 2>/dev/null; then up=1; break; fi
      kill -0 "$(cat "$DIR/node$n/pid")" 2>/dev/null || { cat "$DIR/node$n/log" >&2; die "node $n exited"; }
      sleep 0.2
    done
    [ -n "$up" ] || die "node $n did not start (see $DIR/node$n/log)"
  done
  for n in 2 3; do
    g 1 node connect "$(cat "$DIR/node$n/id")" > /dev/null
  done
  for n in 1 2 3; do
    local id
    id=$(cut -d@ -f1 < "$DIR/node$n/id")
    g 1 layout assign -z "z$n" -c 1G "$id" > /dev/null
  done
  g 1 layout apply --version 1 > /dev/null
  # Until every node has the layout, bucket creation may fail: retry.
  local ok=""
  for _ in $(seq 1 100); do
    if g 1 bucket create "$BUCKET" > /dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { g 1 bucket create "$BUCKET"; die "cannot create bucket $BUCKET"; }
  local key
  key=$(g 1 json-api CreateKey '{"name":"coffer"}')
  local id secret_key
  id=$(printf '%s' "$key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])')
  secret_key=$(printf '%s' "$key" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])')
  g 1 bucket allow --read --write --owner "$BUCKET" --key "$id" > /dev/null
  (
    umask 077
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$id" "$secret_key" \
      > "$DIR/credentials"
  )
  chmod 600 "$DIR/credentials"
  cat > "$DIR/store.toml" <<EOF
[[store]]
type = "s3"
name = "garage"
endpoint = "http://127.0.0.1:$s3_port"
region = "garage"
bucket = "$BUCKET"
prefix = "backups"
path_style = true
credentials = "$DIR/credentials"
EOF
  cat "$DIR/store.toml"
}

[ $# -ge 2 ] || usage
cmd=$1
DIR=$2
case "$cmd" in
  start) [ $# -eq 2 ] || usage; start ;;
  kill-node)
    [ $# -eq 3 ] || usage
    case "$3" in 1|2|3) ;; *) die "node must be 1, 2 or 3" ;; esac
    stop_node "$3" KILL
    ;;
  stop)
    [ $# -eq 2 ] || usage
    for n in 1 2 3; do stop_node "$n" TERM; done
    ;;
  *) usage ;;
esac
