#!/usr/bin/env bash
# The paths that end in a database, side by side with the plain tools, at two
# sizes, each ratio printed with its goal (docs/PERFORMANCE.md):
#
#   live backup          coffer backup          vs mariadb-dump | zstd -3 -T0 | age
#                        coffer backup          vs pg_dump -Fc | age
#   load                 restore --into-db      vs zstd -dc dump | mariadb --binary-mode
#                        restore --into-db      vs pg_restore -d
#   drill                verify --restore-test  vs the same plain load into the
#                                                  benchmark's own server
#
#   scripts/bench-db.sh                              # 300 and 30 MB of SQL, pgbench scale 30 and 3, 3 repetitions
#   SIZES="700 70" SCALES="50 5" REPS=5 scripts/bench-db.sh
#
# Private MariaDB and PostgreSQL servers with their packages' default settings
# (as the machine's own server runs), on sockets in a temporary directory; the
# drill starts its own scratch servers as coffer does. Each repetition runs
# coffer and the plain tool in turn, the first of them alternating. The loads
# read the very dump coffer backed up (taken from the backup, untimed), into a
# fresh database each time. Nothing here is a pass/fail test.
#
# Needs: mariadb-server, postgresql, zstd, age, GNU time; as root, the
# coffer-drill user (scripts/install-test-deps.sh makes it) for the drills.
# Writes target/bench/RESULTS-db.md (and prints it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
read -r -a sizes <<<"${SIZES:-300 30}"
read -r -a scales <<<"${SCALES:-30 3}"
reps=${REPS:-3}
out=${OUT:-$root/target/bench/RESULTS-db.md}
PATH=$PATH:/usr/sbin:$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)

for t in mariadb-install-db mariadbd mariadb mariadb-dump initdb pg_ctl pg_dump pg_restore pgbench psql zstd age python3; do
  command -v "$t" >/dev/null || { echo "bench-db: $t is not installed" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "bench-db: GNU time (/usr/bin/time) is not installed" >&2; exit 2; }

echo "==> building coffer (release)"
cargo build --release --locked --quiet
coffer=$root/target/release/coffer

work=$(mktemp -d "${TMPDIR:-/var/tmp}/coffer-bench-db.XXXXXX")
chmod 755 "$work"
mariadb_pid=""
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi
cleanup() {
  if [ -n "$mariadb_pid" ]; then kill "$mariadb_pid" 2>/dev/null || true; wait "$mariadb_pid" 2>/dev/null || true; fi
  [ -d "$work/pg/data" ] && "${as_pg[@]}" pg_ctl -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

echo "==> starting private MariaDB and PostgreSQL servers (default settings)"
user=(); if [ "$(id -u)" -eq 0 ]; then user=(--user=root); fi
mkdir -p m/tmp
mariadb-install-db --no-defaults --datadir="$work/m/data" --auth-root-authentication-method=normal \
  --skip-test-db --tmpdir="$work/m/tmp" "${user[@]}" >/dev/null
mariadbd --no-defaults --datadir="$work/m/data" --socket="$work/m/sock" --skip-networking \
  --tmpdir="$work/m/tmp" --log-error="$work/m/err.log" --skip-log-bin "${user[@]}" >/dev/null 2>&1 &
mariadb_pid=$!
for _ in $(seq 1 100); do
  mariadb --no-defaults --socket="$work/m/sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done
printf '[client]\nuser=root\nsocket=%s\n' "$work/m/sock" > my.cnf
chmod 600 my.cnf
msql() { mariadb --defaults-file="$work/my.cnf" "$@"; }

mkdir -p pg
[ ${#as_pg[@]} -eq 0 ] || chown postgres pg
"${as_pg[@]}" initdb -D "$work/pg/data" -U postgres --auth=trust >/dev/null
"${as_pg[@]}" pg_ctl -D "$work/pg/data" -l "$work/pg/log" -w \
  -o "-k $work/pg -c listen_addresses=''" start >/dev/null
pg=(-h "$work/pg" -U postgres)
psql_() { psql -X -q "${pg[@]}" "$@"; }

"$coffer" keygen --type age -o age.key >/dev/null 2>&1
recipient=$(cat age.key.pub)

# config NAME SOURCE-TOML: a signed job with one source and a local store.
config() {
  cat > "$1.toml" <<EOF
[job]
name = "bench-$1"
recipients = ["$recipient"]
keep_last = 1
lock_file = "$work/$1.lock"
signing_key = "$work/signing.key"
signing_public_key = "$work/signing.key.pub"
[[source]]
$2
[[store]]
type = "local"
path = "$work/store-$1"
EOF
  chmod 600 "$1.toml"
}
# keygen writes signing.key beside the backup key.
[ -f signing.key ] || "$coffer" keygen --type signing -o signing.key >/dev/null 2>&1
config maria "type = \"mysql\"
name = \"bench\"
databases = [\"bench\"]
options_file = \"$work/my.cnf\""
config pg "type = \"postgres\"
name = \"pg\"
databases = [\"bench\"]
host = \"$work/pg\"
user = \"postgres\""

# measure SIZE ENGINE PATH TOOL REP 'command': wall seconds and peak RSS (the
# largest process of the command, as GNU time reports it) into results.tsv.
measure() {
  local size=$1 engine=$2 path=$3 tool=$4 rep=$5 cmd=$6
  if ! /usr/bin/time -f '%e %M' -o t.out bash -c "set -o pipefail; $cmd" >/dev/null 2>err.out; then
    echo "bench-db: $tool ($engine $path) failed: $(tail -n 3 err.out)" >&2
    exit 1
  fi
  read -r secs rss < <(tail -n 1 t.out)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$engine" "$path" "$tool" "$rep" "$secs" "$rss" >> results.tsv
  printf '    %-8s %-6s %-8s %-8s %6.2f s %7.1f MiB\n' "$size" "$engine" "$path" "$tool" "$secs" \
    "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')"
}

# settle: the servers finish what the runs before left them (InnoDB's dirty
# pages, among them a dropped database's; PostgreSQL's checkpoint), so that
# no timed run pays for the one before it. Without it the same plain load
# took 15.8–19.4 s in turn on this 2-core machine.
settle() {
  msql -e 'SET GLOBAL innodb_max_dirty_pages_pct = 0'
  for _ in $(seq 1 240); do
    dirty=$(msql -N -e "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'" | awk '{print $2}')
    [ "${dirty:-0}" -lt 64 ] && break
    sleep 0.5
  done
  msql -e 'SET GLOBAL innodb_max_dirty_pages_pct = 90'
  psql_ -d postgres -c CHECKPOINT
  sync
  sleep 1
}

# pair REP SIZE ENGINE PATH 'coffer command' 'plain command' ['prepare']:
# both, in an order that alternates with the repetition; `prepare` (untimed)
# runs before each, then the servers settle.
pair() {
  local rep=$1 size=$2 engine=$3 path=$4 mine=$5 plain=$6 prep=${7:-true}
  if [ $((rep % 2)) -eq 1 ]; then
    bash -c "$prep"; settle; measure "$size" "$engine" "$path" coffer "$rep" "$mine"
    bash -c "$prep"; settle; measure "$size" "$engine" "$path" plain "$rep" "$plain"
  else
    bash -c "$prep"; settle; measure "$size" "$engine" "$path" plain "$rep" "$plain"
    bash -c "$prep"; settle; measure "$size" "$engine" "$path" coffer "$rep" "$mine"
  fi
}

dump_flags="--single-transaction --routines --triggers --events --hex-blob --default-character-set=utf8mb4"
export TMPDIR=/var/tmp
: > results.tsv
: > sizes.tsv
n=${#sizes[@]}; [ ${#scales[@]} -eq "$n" ] || { echo "bench-db: SIZES and SCALES need as many entries" >&2; exit 2; }
for i in $(seq 0 $((n - 1))); do
  size=${sizes[$i]} scale=${scales[$i]} label="size$((i + 1))"
  echo "==> MariaDB: ${size} MB of SQL; PostgreSQL: pgbench scale ${scale}"
  msql -e 'DROP DATABASE IF EXISTS bench; CREATE DATABASE bench'
  python3 "$root/scripts/gen-dataset.py" --size-mb "$size" | msql bench
  psql_ -d postgres -c 'DROP DATABASE IF EXISTS bench' -c 'CREATE DATABASE bench'
  pgbench -q -i -s "$scale" "${pg[@]}" bench >/dev/null 2>&1
  "$coffer" backup -c maria.toml >/dev/null
  "$coffer" backup -c pg.toml >/dev/null
  # The plain load gets the dump without the lines that name its database
  # (coffer drops them as it loads), so that both load into a new one.
  "$coffer" restore -c maria.toml -i age.key latest --stdout --member mysql/bench.sql |
    sed -e '/^USE `/d' -e '/^CREATE DATABASE /d' | zstd -3 -T0 -q > maria.sql.zst
  "$coffer" restore -c pg.toml -i age.key latest --stdout --member postgres/pg/bench.dump > pg.dump
  printf '%s\t%s\t%s\n' "$label" "a $(zstd -dc maria.sql.zst | wc -c | awk '{printf "%.0f MB", $1 / 1e6}') dump" \
    "pgbench scale $scale (a $(stat -c %s pg.dump | awk '{printf "%.0f MB", $1 / 1e6}') custom-format dump)" >> sizes.tsv

  for rep in $(seq 1 "$reps"); do
    echo "  repetition $rep/$reps"
    pair "$rep" "$label" mariadb backup "'$coffer' backup -c maria.toml" \
      "mariadb-dump --defaults-file=my.cnf $dump_flags bench | zstd -3 -T0 -q | age -r '$recipient' > o.age"
    pair "$rep" "$label" mariadb load \
      "'$coffer' restore -c maria.toml -i age.key latest --into-db bench --database r_coffer" \
      "zstd -dc maria.sql.zst | mariadb --defaults-file=my.cnf --binary-mode r_plain" \
      "mariadb --defaults-file=my.cnf -e 'DROP DATABASE IF EXISTS r_coffer; DROP DATABASE IF EXISTS r_plain; CREATE DATABASE r_plain'"
    settle; measure "$label" mariadb drill coffer "$rep" "'$coffer' verify -c maria.toml -i age.key latest --restore-test"
    pair "$rep" "$label" postgres backup "'$coffer' backup -c pg.toml" \
      "pg_dump -Fc ${pg[*]} bench | age -r '$recipient' > o.age"
    pair "$rep" "$label" postgres load \
      "'$coffer' restore -c pg.toml -i age.key latest --into-db pg --database r_coffer" \
      "pg_restore ${pg[*]} -d r_plain pg.dump" \
      "psql -X -q ${pg[*]} -d postgres -c 'DROP DATABASE IF EXISTS r_coffer' -c 'DROP DATABASE IF EXISTS r_plain' -c 'CREATE DATABASE r_plain'"
    settle; measure "$label" postgres drill coffer "$rep" "'$coffer' verify -c pg.toml -i age.key latest --restore-test"
  done
done

mkdir -p "$(dirname "$out")"
{
  echo "# coffer database-path benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
       "$(free -g | awk '/Mem:/ {print $2}') GiB RAM"
  echo "Versions: coffer $("$coffer" --version | cut -d' ' -f2), $(mariadb --version | grep -o 'Distrib [^,]*')," \
       "PostgreSQL $(pg_restore --version | awk '{print $3}'), $(zstd --version | head -n1 | cut -d' ' -f2-7), age $(age --version)"
  echo "Repetitions: $reps; medians of wall-clock seconds; the drill is compared with the plain load."
  python3 - <<'PY'
import collections, statistics
rows = [l.rstrip("\n").split("\t") for l in open("results.tsv")]
sizes = {l.split("\t")[0]: l.rstrip("\n").split("\t")[1:3] for l in open("sizes.tsv")}
t = collections.defaultdict(list)
rss = collections.defaultdict(int)
for size, engine, path, tool, rep, secs, kb in rows:
    t[(size, engine, path, tool)].append(float(secs))
    rss[(size, engine, path, tool)] = max(rss[(size, engine, path, tool)], int(kb))
paths = [("backup", "live backup", 1.0), ("load", "restore --into-db", 1.05), ("drill", "verify --restore-test", 1.0)]
plain = {("mariadb", "backup"): "mariadb-dump \\| zstd -3 -T0 \\| age",
         ("mariadb", "load"): "zstd -dc \\| mariadb --binary-mode",
         ("postgres", "backup"): "pg_dump -Fc \\| age",
         ("postgres", "load"): "pg_restore -d"}
for size in sorted({r[0] for r in rows}):
    maria, postgres = sizes[size]
    print(f"\n### {size}: MariaDB {maria}; PostgreSQL {postgres}\n")
    print("| engine | path | coffer s | plain | plain s | ratio | goal | | coffer peak RSS MiB |")
    print("|---|---|---:|---|---:|---:|---:|---|---:|")
    for engine in ("mariadb", "postgres"):
        for path, title, goal in paths:
            mine = t.get((size, engine, path, "coffer"))
            base = t.get((size, engine, "load" if path == "drill" else path, "plain"))
            if not mine or not base:
                continue
            m, b = statistics.median(mine), statistics.median(base)
            ratio = m / b if b else float("nan")
            verdict = "met" if ratio <= goal else f"missed by {ratio - goal:.2f}"
            name = plain[(engine, "load" if path == "drill" else path)]
            print(f"| {engine} | {title} | {m:.2f} | {name} | {b:.2f} | {ratio:.2f}× | ≤ {goal:.2f}× | {verdict} | {rss[(size, engine, path, 'coffer')] / 1024:.0f} |")
PY
} > "$out"
cat "$out"
echo
echo "written to $out"
