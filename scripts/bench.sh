#!/usr/bin/env bash
# Side-by-side benchmark of coffer against its peers, on a deterministic
# MariaDB dataset (scripts/gen-dataset.py, fixed seed), in one run: each
# repetition runs every tool once, in an order that rotates between
# repetitions; the report gives medians, min–max and peak RSS.
#
#   scripts/bench.sh                         # 700 MB and 70 MB datasets, 3 repetitions
#   SIZES="200 20" REPS=5 scripts/bench.sh   # other sizes (MB of SQL) / repetitions
#   PORTABLE=1 scripts/bench.sh              # also a build with the portable SHA-256
#                                            # (as on CPUs without SHA-NI)
#
# Besides the main tables (all cores), backup and restore run again pinned to
# one core (taskset -c 0), coffer and the age/zstd pipes alike, for scaling.
#
# Needs: mariadb-server, zstd, age, openssl, restic, borgbackup, GNU time
# (apt install mariadb-server zstd age openssl restic borgbackup time).
# Writes target/bench/RESULTS.md (and prints it). Files are warm in the page
# cache for every tool alike; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
read -r -a sizes <<<"${SIZES:-700 70}"
reps=${REPS:-3}
out=${OUT:-$root/target/bench/RESULTS.md}

for t in mariadb-install-db mariadbd mariadb mariadb-dump zstd age openssl restic borg python3; do
  command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "bench: $t is not installed" >&2; exit 2; }
done
[ -x /usr/bin/time ] || { echo "bench: GNU time (/usr/bin/time) is not installed" >&2; exit 2; }

echo "==> building coffer (release)"
cargo build --release --locked --quiet
coffer=$root/target/release/coffer
portable=""
if [ -n "${PORTABLE:-}" ]; then
  echo "==> building coffer with the portable SHA-256 (release, its own target directory)"
  cargo build --release --locked --quiet --features portable-sha256 --target-dir "$root/target/portable"
  portable=$root/target/portable/release/coffer
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/coffer-bench.XXXXXX")
mariadb_pid=""
cleanup() {
  if [ -n "$mariadb_pid" ]; then kill "$mariadb_pid" 2>/dev/null || true; wait "$mariadb_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

# --- a private MariaDB server -------------------------------------------------
echo "==> starting a private MariaDB server"
user=(); if [ "$(id -u)" -eq 0 ]; then user=(--user=root); fi
PATH=$PATH:/usr/sbin
mkdir -p m/tmp
mariadb-install-db --no-defaults --datadir="$work/m/data" --auth-root-authentication-method=normal \
  --skip-test-db --tmpdir="$work/m/tmp" "${user[@]}" >/dev/null
mariadbd --no-defaults --datadir="$work/m/data" --socket="$work/m/sock" --skip-networking \
  --tmpdir="$work/m/tmp" --log-error="$work/m/err.log" --skip-log-bin \
  --innodb-buffer-pool-size=512M --innodb-log-file-size=256M --innodb-flush-log-at-trx-commit=0 \
  "${user[@]}" >/dev/null 2>&1 &
mariadb_pid=$!
for _ in $(seq 1 100); do
  mariadb --no-defaults --socket="$work/m/sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.2
done
printf '[client]\nuser=root\nsocket=%s\n' "$work/m/sock" > my.cnf
chmod 600 my.cnf
sql() { mariadb --defaults-file="$work/my.cnf" "$@"; }

# --- keys and repositories ----------------------------------------------------
"$coffer" keygen --type age -o age.key 2>/dev/null
recipient=$(cat age.key.pub)
openssl genrsa -out rsa.pem 3072 2>/dev/null
openssl rsa -in rsa.pem -pubout -out rsa.pub.pem 2>/dev/null
head -c 32 /dev/urandom | base64 > restic.pw
export BORG_PASSPHRASE=bench BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
dump_flags=(--single-transaction --routines --triggers --events --hex-blob --default-character-set=utf8mb4)

# write_config NAME SOURCE-TOML: a job `bench-NAME` with one source and a
# local store of its own, keeping one backup.
write_config() {
  cat > "$1.toml" <<EOF
[job]
name = "bench-$1"
recipients = ["$recipient"]
keep_last = 1
lock_file = "$work/$1.lock"
signing_key = "$work/signing.key"
[[source]]
$2
[[store]]
type = "local"
path = "$work/store-$1"
EOF
  chmod 600 "$1.toml"
}

write_configs() {
  write_config file "type = \"files\"
name = \"dump\"
paths = [\"$work/dump.sql\"]"
  write_config live "type = \"mysql\"
name = \"bench\"
databases = [\"bench\"]
options_file = \"$work/my.cnf\""
}

# measure SIZE STAGE TOOL REP 'command': wall seconds and peak RSS (the
# largest process of the pipeline, as GNU time reports it) into results.tsv.
measure() {
  local size=$1 stage=$2 tool=$3 rep=$4 cmd=$5
  if ! /usr/bin/time -f '%e %M' -o t.out bash -c "set -o pipefail; $cmd" >/dev/null 2>err.out; then
    echo "bench: $tool ($stage) failed: $(tail -n 3 err.out)" >&2
    exit 1
  fi
  read -r secs rss < <(tail -n 1 t.out)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$stage" "$tool" "$rep" "$secs" "$rss" >> results.tsv
  printf '    %-8s %-30s %6.2f s %7.1f MiB\n' "$stage" "$tool" "$secs" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')"
}

latest() { ls -t "$1"/*.coffer | head -n 1; }

# run_tool TOOL REP: one timed run of one tool (uses $size and $sealed).
run_tool() {
  local tool=$1 rep=$2
  case $tool in
    coffer) measure "$size" backup "coffer backup" "$rep" "'$coffer' backup -c file.toml" ;;
    tar_zstd_age) measure "$size" backup "tar | zstd -3 -T0 | age" "$rep" \
      "tar cf - dump.sql | zstd -3 -T0 -q | age -r '$recipient' > o.tar.zst.age" ;;
    tar_zstd) measure "$size" backup "tar | zstd -3 -T0" "$rep" "tar cf - dump.sql | zstd -3 -T0 -q > o.tar.zst" ;;
    old_recipe) measure "$size" backup "old recipe (tar czf + openssl)" "$rep" \
      "tar czf o.tgz dump.sql && openssl rand 32 > pass && openssl enc -aes-256-cbc -salt -in o.tgz -out o.enc -pass file:pass 2>/dev/null && openssl pkeyutl -encrypt -pubin -inkey rsa.pub.pem -in pass -out pass.enc && rm -f o.tgz pass" ;;
    restic) measure "$size" backup "restic backup --stdin" "$rep" \
      "restic -q -r restic-repo --password-file restic.pw backup --stdin --stdin-filename dump.sql < dump.sql" ;;
    borg) measure "$size" backup "borg create zstd,3" "$rep" "borg create --compression zstd,3 borg-repo::r$rep dump.sql" ;;
    coffer_live) measure "$size" live "coffer backup (mysql source)" "$rep" "'$coffer' backup -c live.toml" ;;
    dump_zstd_age) measure "$size" live "mariadb-dump | zstd -3 -T0 | age" "$rep" \
      "mariadb-dump --defaults-file=my.cnf ${dump_flags[*]} bench | zstd -3 -T0 -q | age -r '$recipient' > o.live.age" ;;
    dump_null) measure "$size" live "mariadb-dump > /dev/null" "$rep" \
      "mariadb-dump --defaults-file=my.cnf ${dump_flags[*]} bench > /dev/null" ;;
    coffer_restore) measure "$size" restore "coffer restore --stdout" "$rep" \
      "'$coffer' restore -i age.key '$sealed' --stdout > /dev/null" ;;
    age_zstd) measure "$size" restore "age -d | zstd -d" "$rep" "age -d -i age.key o.tar.zst.age | zstd -d -q > /dev/null" ;;
    portable) measure "$size" backup "coffer backup (portable SHA-256)" "$rep" "'$portable' backup -c file.toml" ;;
    portable_restore) measure "$size" restore "coffer restore --stdout (portable SHA-256)" "$rep" \
      "'$portable' restore -i age.key '$sealed' --stdout > /dev/null" ;;
    coffer_1) measure "$size" backup1 "coffer backup" "$rep" "taskset -c 0 '$coffer' backup -c file.toml" ;;
    tar_zstd_age_1) measure "$size" backup1 "tar | zstd -3 -T0 | age" "$rep" \
      "taskset -c 0 bash -c \"tar cf - dump.sql | zstd -3 -T0 -q | age -r '$recipient' > o.tar.zst.age\"" ;;
    coffer_restore_1) measure "$size" restore1 "coffer restore --stdout" "$rep" \
      "taskset -c 0 '$coffer' restore -i age.key '$sealed' --stdout > /dev/null" ;;
    age_zstd_1) measure "$size" restore1 "age -d | zstd -d" "$rep" \
      "taskset -c 0 bash -c 'age -d -i age.key o.tar.zst.age | zstd -d -q > /dev/null'" ;;
    restic_dump) measure "$size" restore "restic dump" "$rep" \
      "restic -q -r restic-repo --password-file restic.pw dump latest dump.sql > /dev/null" ;;
    borg_extract) measure "$size" restore "borg extract --stdout" "$rep" "borg extract --stdout borg-repo::r$rep > /dev/null" ;;
  esac
}

# rotated REP TOOL...: every tool once, starting at a different one each
# repetition, so no tool always runs first (or right after a heavy one).
rotated() {
  local rep=$1; shift
  local tools=("$@") n=$# i
  for i in $(seq 0 $(( n - 1 ))); do
    run_tool "${tools[$(( (i + rep - 1) % n ))]}" "$rep"
  done
}

: > results.tsv
: > sizes.tsv
for size in "${sizes[@]}"; do
  echo "==> dataset: ${size} MB of SQL (fixed seed)"
  sql -e 'DROP DATABASE IF EXISTS bench; CREATE DATABASE bench'
  python3 "$root/scripts/gen-dataset.py" --size-mb "$size" | sql bench
  mariadb-dump --defaults-file="$work/my.cnf" "${dump_flags[@]}" bench > dump.sql
  dump_bytes=$(stat -c %s dump.sql)
  printf '%s\t%s\n' "$size" "$dump_bytes" >> sizes.tsv
  write_configs

  for rep in $(seq 1 "$reps"); do
    echo "  repetition $rep/$reps"
    # Fresh peer repositories each time (untimed): no deduplication against
    # an earlier repetition.
    rm -rf restic-repo borg-repo
    restic init -q -r restic-repo --password-file restic.pw >/dev/null
    borg init -e repokey-blake2 borg-repo 2>/dev/null
    backups=(coffer tar_zstd_age tar_zstd old_recipe restic borg)
    restores=(coffer_restore age_zstd restic_dump borg_extract)
    if [ -n "$portable" ]; then backups+=(portable); restores+=(portable_restore); fi
    rotated "$rep" "${backups[@]}"
    rotated "$rep" coffer_live dump_zstd_age dump_null
    sealed=$(latest store-file)
    rotated "$rep" "${restores[@]}"
    measure "$size" verify "coffer verify (keyless)" "$rep" "'$coffer' verify -c file.toml latest"
    measure "$size" verify "coffer verify -i (keyed)" "$rep" "'$coffer' verify -c file.toml latest -i age.key"
    if [ -n "$portable" ]; then
      measure "$size" verify "coffer verify (keyless, portable SHA-256)" "$rep" "'$portable' verify -c file.toml latest"
    fi
    rotated "$rep" coffer_1 tar_zstd_age_1
    sealed=$(latest store-file)
    rotated "$rep" coffer_restore_1 age_zstd_1
  done
done

# --- the report ---------------------------------------------------------------
mkdir -p "$(dirname "$out")"
{
  echo "# coffer benchmark — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores," \
       "$(free -g | awk '/Mem:/ {print $2}') GiB RAM; CPU flags: $(grep -m1 -o -w 'aes\|pclmulqdq\|sha_ni\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "Versions: coffer $("$coffer" --version | cut -d' ' -f2), $(zstd --version | head -n1 | cut -d' ' -f2-7)," \
       "age $(age --version), $(openssl version | cut -d' ' -f1-2), $(restic version | cut -d' ' -f1-2)," \
       "$(borg --version), $(mariadb-dump --version | grep -o 'Distrib [^,]*')"
  echo "Repetitions: $reps, tools in rotating order; times are wall-clock seconds (median, min–max);"
  echo "RSS is the peak of the largest process in the command (GNU time)."
  python3 - "$reps" <<'PY'
import collections, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open("results.tsv")]
sizes = {s: int(b) for s, b in (l.split() for l in open("sizes.tsv"))}
by = collections.OrderedDict()
for size, stage, tool, rep, secs, rss in rows:
    by.setdefault((size, stage), collections.OrderedDict()).setdefault(tool, []).append((float(secs), int(rss)))
ref = {"backup": "coffer backup", "live": "coffer backup (mysql source)",
       "restore": "coffer restore --stdout", "verify": "coffer verify (keyless)",
       "backup1": "coffer backup", "restore1": "coffer restore --stdout"}
titles = {"backup": "Backup from a dump file", "live": "Live backup from MariaDB",
          "restore": "Restore to /dev/null", "verify": "Verify",
          "backup1": "Backup from a dump file, one core (taskset -c 0)",
          "restore1": "Restore to /dev/null, one core (taskset -c 0)"}
for (size, stage), tools in by.items():
    mb = sizes[size] / 1e6
    print(f"\n### {titles[stage]} — dump of {mb:.0f} MB\n")
    print("| tool | median s | min–max s | MB/s of dump | peak RSS MiB | time vs coffer |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(t for t, _ in tools[ref[stage]])
    for tool, runs in tools.items():
        ts = [t for t, _ in runs]
        med = statistics.median(ts)
        rss = max(r for _, r in runs) / 1024
        ratio = med / base if base > 0 else float("nan")
        name = tool.replace("|", "\\|")
        print(f"| {name} | {med:.2f} | {min(ts):.2f}–{max(ts):.2f} | {mb / med if med else float('inf'):.0f} | {rss:.0f} | {ratio:.2f}× |")
PY
} > "$out"
cat "$out"
echo
echo "written to $out"
