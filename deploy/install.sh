#!/usr/bin/env bash
# Install or update dcd as a systemd service on a board over ssh:
#
#   deploy/install.sh pi@raspberrypi.local [path-to-binary]
#
# path-to-binary defaults to target/aarch64-unknown-linux-musl/release/dcd
# (bash cross/build-aarch64.sh builds it; for 32-bit Arm use
# CROSS_CONFIG=cross/Cross.toml cross build --release --target armv7-unknown-linux-musleabihf).
#
# On the board (with sudo unless you log in as root) it:
#   * creates the system user `dcd` (home /var/lib/dcd, no login shell) if absent;
#   * installs the binary as /usr/local/bin/dcd and the unit as /etc/systemd/system/dcd.service;
#   * creates /etc/dcd (root:dcd 0750) and /etc/dcd/credentials (put portal *.creds.json there,
#     mode 0640 root:dcd), and /etc/dcd/dcd.env from dcd.env.example if absent - an existing
#     dcd.env is never overwritten;
#   * runs systemctl daemon-reload && systemctl enable --now dcd (restart if it was running).
#
# Env: SSH_OPTS (extra options for both ssh and scp, e.g. "-o Port=2222 -i ~/.ssh/board"),
#      DCD_DEVICE_ID (device id written into a newly created dcd.env; default: the board's
#      hostname, sanitised).
# The board needs systemd and Docker (the unit adds dcd to the docker group).
set -euo pipefail

usage() { echo "usage: $0 user@host [path-to-binary]" >&2; exit 2; }
if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then usage; fi
case "$1" in -h | --help) usage ;; esac

TARGET=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${2:-$ROOT/target/aarch64-unknown-linux-musl/release/dcd}
UNIT=$HERE/dcd.service
ENV_EXAMPLE=$HERE/dcd.env.example
read -r -a SSH_ARGS <<<"${SSH_OPTS:-}"

[ -f "$BIN" ] || { echo "install.sh: no binary at $BIN (build it with: bash cross/build-aarch64.sh)" >&2; exit 1; }
for f in "$UNIT" "$ENV_EXAMPLE"; do
    [ -f "$f" ] || { echo "install.sh: $f missing" >&2; exit 1; }
done

log() { printf 'install.sh: %s\n' "$*"; }

# One ssh round trip for what we need to know about the board.
info=$(ssh "${SSH_ARGS[@]}" "$TARGET" 'uname -m; id -u; hostname -s 2>/dev/null || hostname; mktemp -d /tmp/dcd-install.XXXXXX')
remote_arch='' remote_uid='' remote_host='' remote_dir=''
{ read -r remote_arch; read -r remote_uid; read -r remote_host; read -r remote_dir; } <<<"$info" || true
[ -n "${remote_dir:-}" ] || { echo "install.sh: could not query $TARGET" >&2; exit 1; }
log "$TARGET: $remote_arch, host $remote_host"
if command -v file >/dev/null; then
    bin_info=$(file -b "$BIN")
    case "$remote_arch:$bin_info" in
        aarch64:*aarch64* | arm64:*aarch64* | armv7*:*ARM,* | armv6*:*ARM,* | x86_64:*x86-64*) ;;
        *) log "WARNING: binary ($bin_info) may not match $remote_arch" ;;
    esac
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$BIN" "$stage/dcd"
cp "$UNIT" "$ENV_EXAMPLE" "$stage/"
cat >"$stage/remote-install.sh" <<'REMOTE'
#!/bin/sh
# Runs on the board as root, from the directory holding dcd, dcd.service, dcd.env.example.
set -eu
cd "$(dirname "$0")"
DEVICE_ID_DEFAULT=$1

if ! getent group docker >/dev/null; then
    echo "remote: WARNING: no docker group on this host; dcd.service (SupplementaryGroups=docker) will not start until Docker is installed" >&2
fi
if ! getent passwd dcd >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/dcd --no-create-home --shell /usr/sbin/nologin dcd
    echo "remote: created system user dcd"
fi

was_active=0
if systemctl is-active --quiet dcd; then was_active=1; fi

install -m 0755 -o root -g root dcd /usr/local/bin/dcd.new
mv -f /usr/local/bin/dcd.new /usr/local/bin/dcd
install -m 0644 -o root -g root dcd.service /etc/systemd/system/dcd.service
install -d -m 0750 -o root -g dcd /etc/dcd /etc/dcd/credentials
if [ ! -e /etc/dcd/dcd.env ]; then
    sed "s/^DEVICE_ID=.*/DEVICE_ID=$DEVICE_ID_DEFAULT/" dcd.env.example >/etc/dcd/dcd.env
    chown root:dcd /etc/dcd/dcd.env
    chmod 0640 /etc/dcd/dcd.env
    echo "remote: created /etc/dcd/dcd.env (DEVICE_ID=$DEVICE_ID_DEFAULT); edit it, then: systemctl restart dcd"
else
    echo "remote: kept existing /etc/dcd/dcd.env"
fi
install -m 0644 -o root -g root dcd.env.example /etc/dcd/dcd.env.example

systemctl daemon-reload && systemctl enable --now dcd
if [ "$was_active" = 1 ]; then
    systemctl restart dcd
    echo "remote: restarted dcd with the new binary"
fi
sleep 2
systemctl --no-pager --lines=10 status dcd || true
cd /
rm -rf "$(dirname "$0")"
REMOTE

log "copying files to $TARGET:$remote_dir"
scp -q "${SSH_ARGS[@]}" "$stage/dcd" "$stage/dcd.service" "$stage/dcd.env.example" "$stage/remote-install.sh" "$TARGET:$remote_dir/"

device_id=${DCD_DEVICE_ID:-$remote_host}
# Device ids: letters, digits, '_' and '-', starting with a letter or digit.
device_id=$(printf '%s' "$device_id" | tr -c 'A-Za-z0-9_-' '-' | sed 's/^[^A-Za-z0-9]*//')
[ -n "$device_id" ] || device_id=docker-host-1

SUDO=sudo
[ "$remote_uid" = 0 ] && SUDO=
TTY=()
[ -t 0 ] && TTY=(-t)
log "installing on $TARGET (device id for a new dcd.env: $device_id)"
# shellcheck disable=SC2029 # expanded locally on purpose
ssh "${TTY[@]}" "${SSH_ARGS[@]}" "$TARGET" "$SUDO sh '$remote_dir/remote-install.sh' '$device_id'"
log "done. Logs: ssh $TARGET journalctl -u dcd -f"
