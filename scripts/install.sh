#!/usr/bin/env bash
# Installs coffer from this source tree without a package manager: the
# binary, manual pages, shell completions, systemd units (not enabled), the
# `coffer` system user and a configuration template (never overwritten).
# On Debian, scripts/package-deb.sh and `dpkg -i` do the same as a package.
#
#   sudo scripts/install.sh                 # into /usr/local
#   PREFIX=/opt/coffer sudo -E scripts/install.sh
#   DESTDIR=/tmp/stage scripts/install.sh   # staged, no user or ownership changes
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-/usr/local}
dest=${DESTDIR:-}
staged=""
if [ -n "$dest" ]; then staged=1; fi
if [ -z "$staged" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
  exit 2
fi

echo "==> building (release)"
cargo build --release --locked --quiet
bin=target/release/coffer

echo "==> installing into ${dest}${prefix}"
install -D -m 0755 "$bin" "$dest$prefix/bin/coffer"
mandir="$dest$prefix/share/man/man1"
install -d "$mandir"
"$bin" man --dir "$mandir"
gzip -9nf "$mandir"/coffer*.1
# Through files, not `| install /dev/stdin`: install sizes its copy by what
# the pipe holds when it looks, and may cut the script short.
comp=$(mktemp -d)
"$bin" completions bash > "$comp/coffer"
"$bin" completions zsh > "$comp/_coffer"
"$bin" completions fish > "$comp/coffer.fish"
install -D -m 0644 "$comp/coffer" "$dest$prefix/share/bash-completion/completions/coffer"
install -D -m 0644 "$comp/_coffer" "$dest$prefix/share/zsh/site-functions/_coffer"
install -D -m 0644 "$comp/coffer.fish" "$dest$prefix/share/fish/vendor_completions.d/coffer.fish"
rm -rf "$comp"

units="$dest/etc/systemd/system"
install -d "$units"
for u in contrib/systemd/*.service contrib/systemd/*.timer; do
  sed "s#/usr/bin/coffer#$prefix/bin/coffer#" "$u" > "$units/$(basename "$u")"
  chmod 0644 "$units/$(basename "$u")"
done
install -D -m 0644 contrib/systemd/coffer.rules.yml "$dest$prefix/share/doc/coffer/coffer.rules.yml"

install -d -m 0700 "$dest/etc/coffer"
if [ ! -e "$dest/etc/coffer/coffer.toml" ]; then
  install -m 0600 contrib/debian/coffer.toml "$dest/etc/coffer/coffer.toml"
else
  echo "    /etc/coffer/coffer.toml exists: left as it is"
fi
install -d -m 0700 "$dest/var/backups/coffer"

if [ -z "$staged" ]; then
  if ! getent passwd coffer >/dev/null; then
    if command -v adduser >/dev/null; then
      adduser --system --group --home /var/lib/coffer --gecos "coffer backups" coffer >/dev/null
    else
      useradd --system --user-group --home-dir /var/lib/coffer --create-home --shell /usr/sbin/nologin coffer
    fi
  fi
  chown coffer:coffer /etc/coffer /etc/coffer/coffer.toml /var/backups/coffer
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi

cat <<MSG
==> done. Next:
    edit /etc/coffer/coffer.toml, then: sudo -u coffer coffer config check -c /etc/coffer/coffer.toml
    systemctl enable --now coffer-backup.timer coffer-verify.timer
MSG
