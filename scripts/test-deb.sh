#!/usr/bin/env bash
# Builds the .deb, installs it with dpkg -i, checks what it installed (binary,
# manual pages, completions, units, the coffer user, the config's mode), then
# purges it. Needs root (or sudo); run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if dpkg-query -W -f='${Status}' coffer 2>/dev/null | grep -q "install ok installed"; then
  echo "a coffer package is already installed here; not touching it" >&2
  exit 1
fi
deb=$(scripts/package-deb.sh | tail -n 1)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
fail() { echo "test-deb: $*" >&2; exit 1; }

$sudo dpkg -i "$deb" >/dev/null
trap '$sudo dpkg --purge coffer >/dev/null 2>&1 || true' EXIT

[ "$(/usr/bin/coffer --version)" = "coffer $version" ] || fail "coffer --version: $(/usr/bin/coffer --version)"
man -P cat coffer 2>/dev/null | grep -q "sealed to a public key" || fail "man coffer does not show the page"
man -P cat coffer-backup 2>/dev/null | grep -q -- "--metrics-file" || fail "man coffer-backup lacks --metrics-file"
bash -c 'source /usr/share/bash-completion/completions/coffer && complete -p coffer' >/dev/null \
  || fail "the bash completion does not load"
[ -s /usr/share/zsh/vendor-completions/_coffer ] || fail "no zsh completion"
[ -s /usr/share/fish/vendor_completions.d/coffer.fish ] || fail "no fish completion"

getent passwd coffer >/dev/null || fail "no coffer system user"
getent passwd coffer-drill >/dev/null || fail "no coffer-drill system user (the drills' scratch servers)"
[ "$(stat -c '%a %U' /etc/coffer/coffer.toml)" = "600 coffer" ] \
  || fail "/etc/coffer/coffer.toml is $(stat -c '%a %U' /etc/coffer/coffer.toml), want 600 coffer"
[ "$(stat -c '%a %U' /var/backups/coffer)" = "700 coffer" ] || fail "/var/backups/coffer is not 700 coffer"
dpkg-query -W -f='${Conffiles}' coffer | grep -q /etc/coffer/coffer.toml || fail "the config is not a conffile"

if command -v systemd-analyze >/dev/null; then
  units=(/lib/systemd/system/coffer-backup.service /lib/systemd/system/coffer-backup.timer
         /lib/systemd/system/coffer-verify.service /lib/systemd/system/coffer-verify.timer
         /lib/systemd/system/coffer-drill.service /lib/systemd/system/coffer-drill.timer)
  out=$(systemd-analyze verify "${units[@]}" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warned: $out"
fi

# The packaged config is readable by the service user, and incomplete on
# purpose: config check must say what to fill in.
if out=$(setpriv --reuid=coffer --regid=coffer --clear-groups \
    /usr/bin/coffer config check -c /etc/coffer/coffer.toml 2>&1); then
  fail "config check passed on the unfilled template"
fi
grep -q "recipients is empty" <<<"$out" || fail "config check as coffer: $out"

echo "test-deb: $deb installs and works"

# The same files without a package manager, staged.
stage=$(mktemp -d)
DESTDIR="$stage" scripts/install.sh >/dev/null
"$stage/usr/local/bin/coffer" --version >/dev/null || fail "staged install: no working binary"
grep -q "ExecStart=/usr/local/bin/coffer" "$stage/etc/systemd/system/coffer-backup.service" \
  || fail "staged install: units do not point at /usr/local/bin/coffer"
[ "$(stat -c '%a' "$stage/etc/coffer/coffer.toml")" = "600" ] || fail "staged install: config mode"
bash -c "source '$stage/usr/local/share/bash-completion/completions/coffer' && complete -p coffer" >/dev/null \
  || fail "staged install: the bash completion is cut short or does not load"
rm -rf "$stage"
echo "test-deb: scripts/install.sh stages a working install"
