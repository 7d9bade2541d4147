#!/usr/bin/env bash
# Prepare this machine for dcd's test suite. Idempotent and fast when everything is in place.
# Run as root (CI runs it as root from tests/run.sh). All network services it starts listen on
# 127.0.0.1 only.
#
# What it ensures:
#   * Debian packages: curl, file, ca-certificates, busybox-static, docker-compose, nats-server,
#     docker-registry, qemu-user-static, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (its C
#     headers: --no-install-recommends leaves them out), iproute2, musl-tools (musl-gcc for
#     the x86_64 musl build in tests/deploy.sh), systemd (for
#     systemd-analyze), python3-venv (only if `python3 -m venv` does not work), docker.io (only if
#     no Docker Engine answers on /var/run/docker.sock);
#   * a running Docker Engine (starts `dockerd` in the background when none answers);
#   * the image dcd-test/busybox:latest (Debian's static busybox + applet links, `docker import`);
#   * a registry on 127.0.0.1:5000 (Debian's docker-registry, own loopback-only config) holding
#     127.0.0.1:5000/dcd-test/busybox:latest, with no local tag of that name left behind;
#   * Podman (Debian's podman, uidmap, slirp4netns, fuse-overlayfs; catatonit for `init: true`, which
#     apt would bring as a recommendation; the CNI dnsname plugin, without which containers on a
#     Podman network do not find each other by name or alias) beside Docker: a test
#     containers.conf and registries.conf in /etc/dcd-test/podman, the user dcd-podman with
#     subuid/subgid ranges and /run/user/<uid> for rootless use, and the test image imported
#     into both the rootful and that user's rootless storage;
#   * a Python venv at ${DCD_PYVENV:-$HOME/.cache/dcd-pyvenv} with device-connect-agent-tools and
#     device-connect-edge 0.2.5;
#   * the Rust targets aarch64-unknown-linux-musl and x86_64-unknown-linux-musl.
set -euo pipefail

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, dockerd and the registry need it)"

export DEBIAN_FRONTEND=noninteractive
HOME=${HOME:-/root}
PYVENV=${DCD_PYVENV:-$HOME/.cache/dcd-pyvenv}
TEST_IMAGE=dcd-test/busybox:latest
REGISTRY=127.0.0.1:5000
REGISTRY_IMAGE=$REGISTRY/dcd-test/busybox:latest
REGISTRY_DIR=/var/lib/dcd-test-registry
DOCKER_SOCK=/var/run/docker.sock
PY_PKGS=(device-connect-agent-tools==0.2.5 device-connect-edge==0.2.5)
# Podman's test configuration, and the unprivileged user that runs it rootless.
PODMAN_CONF=/etc/dcd-test/podman
PODMAN_USER=dcd-podman
PODMAN_HOME=/home/$PODMAN_USER

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
pkg_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
    [ "$status" = "install ok installed" ]
}

apt_install() {
    # Install the given packages, with `apt-get update` at most once per run. Package maintainer
    # scripts must not start services (nats-server, docker-registry and docker.io would otherwise
    # listen on all interfaces with their default configs): a temporary policy-rc.d forbids it.
    [ "$#" -gt 0 ] || return 0
    log "installing: $*"
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq </dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        own_policy=1
    fi
    local rc=0
    apt-get install -y -qq --no-install-recommends "$@" </dev/null >/tmp/dcd-setup-apt.log 2>&1 || rc=$?
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    if [ "$rc" != 0 ]; then
        tail -n 30 /tmp/dcd-setup-apt.log >&2
        die "apt-get install $* failed"
    fi
}

engine_answers() {
    [ -S "$DOCKER_SOCK" ] || return 1
    local pong
    pong=$(curl -fsS --max-time 5 --unix-socket "$DOCKER_SOCK" http://localhost/_ping 2>/dev/null) || return 1
    [ "$pong" = OK ]
}

# curl is needed to talk to the engine and the registry before anything else.
if ! command -v curl >/dev/null; then apt_install curl ca-certificates; fi

missing=()
for p in ca-certificates file busybox-static docker-compose nats-server docker-registry \
         qemu-user-static gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross \
         iproute2 musl-tools \
         socat apache2-utils openssl \
         podman uidmap slirp4netns fuse-overlayfs catatonit \
         golang-github-containernetworking-plugin-dnsname; do
    pkg_installed "$p" || missing+=("$p")
done
command -v systemd-analyze >/dev/null || missing+=(systemd)
if ! engine_answers && ! command -v dockerd >/dev/null; then missing+=(docker.io); fi
if ! command -v docker >/dev/null; then missing+=(docker.io); fi
if [ "${#missing[@]}" -gt 0 ]; then
    # de-duplicate (docker.io may appear twice)
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    apt_install "${missing[@]}"
else
    log "Debian packages: all present"
fi

# ---------------------------------------------------------------------------------------------
# Docker Engine
# ---------------------------------------------------------------------------------------------
if engine_answers; then
    log "Docker Engine: answering on $DOCKER_SOCK"
else
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    log "Docker Engine: not answering, starting dockerd in the background (log: /var/log/dcd-dockerd.log)"
    nohup dockerd >/var/log/dcd-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        engine_answers && break
        sleep 1
    done
    engine_answers || { tail -n 30 /var/log/dcd-dockerd.log >&2; die "dockerd did not come up within 60 s"; }
    log "Docker Engine: started"
fi

# ---------------------------------------------------------------------------------------------
# Test image dcd-test/busybox:latest
# ---------------------------------------------------------------------------------------------
# The image's root file system as a tar on stdout: Debian's static busybox with one link per
# applet, for `docker import` here and `podman import` below.
busybox_rootfs_tar() {
    local busybox=/bin/busybox rootfs file_out applets a
    [ -x "$busybox" ] || die "$busybox missing (busybox-static)"
    file_out=$(file -L "$busybox")
    case "$file_out" in
        *"statically linked"*) ;;
        *) die "$busybox is not statically linked: $file_out" ;;
    esac
    rootfs=$(mktemp -d /tmp/dcd-busybox-rootfs.XXXXXX)
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,var/tmp}
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    cp "$busybox" "$rootfs/bin/busybox"
    # One link per applet this busybox build has (sh, echo, sleep, cat, ls, true, false, printf,
    # yes, head, env, pwd, id, kill, date, seq, ...), all in /bin.
    applets=$("$rootfs/bin/busybox" --list)
    for a in $applets; do
        [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
    done
    for a in sh echo sleep cat ls true false printf yes head env pwd id kill date seq; do
        [ -e "$rootfs/bin/$a" ] || die "busybox has no applet '$a'"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf - .
    rm -rf "$rootfs"
}
# What `docker import` and `podman import` are told besides the root file system.
IMPORT_CHANGES=(--change 'CMD ["/bin/sh"]'
                --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                --change 'LABEL org.opencontainers.image.title=dcd-test-busybox')

if docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    log "image $TEST_IMAGE: present"
else
    log "image $TEST_IMAGE: building from /bin/busybox (busybox-static)"
    busybox_rootfs_tar | docker import "${IMPORT_CHANGES[@]}" - "$TEST_IMAGE" >/dev/null
    out=$(docker run --rm "$TEST_IMAGE" sh -c 'echo hello; seq 1 2 | head -n 1')
    [ "$out" = "$(printf 'hello\n1')" ] || die "test image does not run: $out"
    log "image $TEST_IMAGE: built"
fi

# ---------------------------------------------------------------------------------------------
# Loopback registry on 127.0.0.1:5000
# ---------------------------------------------------------------------------------------------
listeners_5000() { ss -Hltn 'sport = :5000' | awk '{print $4}'; }
registry_answers() { curl -fsS --max-time 3 "http://$REGISTRY/v2/" >/dev/null 2>&1; }

check_loopback_only() {
    local l bad=0
    for l in $(listeners_5000); do
        case "$l" in
            127.*:5000) ;;
            *) bad=1 ;;
        esac
    done
    return "$bad"
}

if ! check_loopback_only; then
    # The packaged service (default config: all interfaces, htpasswd auth) is the usual culprit.
    log "something listens on port 5000 beyond loopback ($(listeners_5000 | tr '\n' ' ')); stopping the packaged docker-registry service"
    if [ -x /etc/init.d/docker-registry ]; then /etc/init.d/docker-registry stop >/dev/null 2>&1 || true; fi
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl stop docker-registry >/dev/null 2>&1 || true; fi
    sleep 1
    check_loopback_only || die "port 5000 is bound beyond loopback ($(listeners_5000 | tr '\n' ' ')): refusing to continue"
fi

if registry_answers; then
    log "registry $REGISTRY: answering"
else
    [ -z "$(listeners_5000)" ] || die "127.0.0.1:5000 is taken by something that is not a registry"
    mkdir -p "$REGISTRY_DIR/storage"
    cat >"$REGISTRY_DIR/config.yml" <<EOF
# Written by dcd tests/setup.sh: a loopback-only, unauthenticated registry for tests.
version: 0.1
log:
  level: warn
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $REGISTRY_DIR/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:5000
  headers:
    X-Content-Type-Options: [nosniff]
EOF
    log "registry $REGISTRY: starting /usr/bin/docker-registry (config $REGISTRY_DIR/config.yml, log /var/log/dcd-test-registry.log)"
    nohup /usr/bin/docker-registry serve "$REGISTRY_DIR/config.yml" >/var/log/dcd-test-registry.log 2>&1 </dev/null &
    echo $! >"$REGISTRY_DIR/registry.pid"
    for _ in $(seq 1 40); do
        registry_answers && break
        sleep 0.5
    done
    registry_answers || { tail -n 20 /var/log/dcd-test-registry.log >&2; die "registry did not come up on $REGISTRY"; }
    check_loopback_only || die "registry listens beyond loopback: $(listeners_5000 | tr '\n' ' ')"
    log "registry $REGISTRY: started"
fi

# Push the test image unless the registry already holds this very image (same config digest).
local_id=$(docker image inspect -f '{{.Id}}' "$TEST_IMAGE")
remote_id=$(curl -fsS --max-time 5 \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REGISTRY/v2/dcd-test/busybox/manifests/latest" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])' 2>/dev/null || true)
if [ "$local_id" = "$remote_id" ]; then
    log "registry $REGISTRY: holds $REGISTRY_IMAGE ($local_id)"
else
    log "registry $REGISTRY: pushing $REGISTRY_IMAGE"
    docker tag "$TEST_IMAGE" "$REGISTRY_IMAGE"
    docker push "$REGISTRY_IMAGE" >/tmp/dcd-setup-push.log 2>&1 || { cat /tmp/dcd-setup-push.log >&2; die "docker push failed"; }
fi
# Pull tests must really pull: leave no local image of that name.
if docker image inspect "$REGISTRY_IMAGE" >/dev/null 2>&1; then
    docker rmi "$REGISTRY_IMAGE" >/dev/null
    log "removed local tag $REGISTRY_IMAGE"
fi

# ---------------------------------------------------------------------------------------------
# Podman beside Docker, rootful and rootless (tests/common `Podman`)
# ---------------------------------------------------------------------------------------------
# Podman keeps its own storage (/var/lib/containers, ~$PODMAN_USER/.local/share/containers) and
# networks (CNI, 10.88.0.0/16), so it does not touch Docker's. The tests start the API service
# themselves, as a board's unit would; nothing here leaves one running.
PODMAN_ENV=(CONTAINERS_CONF="$PODMAN_CONF/containers.conf" CONTAINERS_REGISTRIES_CONF="$PODMAN_CONF/registries.conf")
mkdir -p "$PODMAN_CONF"
# Podman's default container ulimits (nofile 1048576) exceed this machine's open-files hard
# limit, which fails every `podman run` with "error setting rlimit type 7".
cat >"$PODMAN_CONF/containers.conf" <<'EOF'
# Written by dcd tests/setup.sh (CONTAINERS_CONF of the Podman tests).
[containers]
default_ulimits = []
EOF
cat >"$PODMAN_CONF/registries.conf" <<EOF
# Written by dcd tests/setup.sh (CONTAINERS_REGISTRIES_CONF of the Podman tests): no search
# registries, so short names resolve to local images only; the loopback registry speaks HTTP, and
# so do the tests' proxies in front of it on other loopback ports (a location without a port
# matches every port of the host).
unqualified-search-registries = []
[[registry]]
location = "$REGISTRY"
insecure = true
[[registry]]
location = "${REGISTRY%%:*}"
insecure = true
EOF
chmod 0644 "$PODMAN_CONF/containers.conf" "$PODMAN_CONF/registries.conf"

if ! id "$PODMAN_USER" >/dev/null 2>&1; then
    useradd --create-home --home-dir "$PODMAN_HOME" --shell /usr/sbin/nologin "$PODMAN_USER"
    log "user $PODMAN_USER: created"
fi
PODMAN_RUNTIME=/run/user/$(id -u "$PODMAN_USER")
# useradd gives new users ranges (login.defs SUB_UID_COUNT) unless told otherwise: make sure.
for f in subuid subgid; do
    if ! grep -q "^$PODMAN_USER:" "/etc/$f"; then
        usermod "--add-${f}s" 300000-365535 "$PODMAN_USER"
        log "user $PODMAN_USER: /etc/$f range added"
    fi
done
# Rootless networking (slirp4netns) opens /dev/net/tun as the user: udev's default rule makes it
# 0666 on a Debian host, this machine has no udev.
if [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    chmod 0666 /dev/net/tun
    log "/dev/net/tun: made 0666, as udev does"
fi
# What logind makes at login; the tests give this XDG_RUNTIME_DIR to the rootless service.
install -d -m 0700 -o "$PODMAN_USER" -g "$PODMAN_USER" "$PODMAN_RUNTIME"

as_podman_user() {
    runuser -u "$PODMAN_USER" -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$PODMAN_HOME" \
        XDG_RUNTIME_DIR="$PODMAN_RUNTIME" "${PODMAN_ENV[@]}" "$@"
}

# `podman import` of the test image into one Podman's storage; `$@` runs a command as that Podman.
podman_image() {
    local who=$1 out
    shift
    if "$@" podman image exists "$TEST_IMAGE"; then
        log "podman ($who): image $TEST_IMAGE present"
        return
    fi
    log "podman ($who): importing $TEST_IMAGE"
    busybox_rootfs_tar | "$@" podman import --quiet "${IMPORT_CHANGES[@]}" - "$TEST_IMAGE" >/dev/null
    out=$("$@" podman run --rm "$TEST_IMAGE" sh -c 'echo hello; seq 1 2 | head -n 1' 2>&1) \
        || die "podman ($who) cannot run $TEST_IMAGE: $out"
    [ "$out" = "$(printf 'hello\n1')" ] || die "podman ($who): test image does not run: $out"
}
podman_image rootful env "${PODMAN_ENV[@]}"
podman_image rootless as_podman_user

# ---------------------------------------------------------------------------------------------
# Python venv with the Device Connect client and device SDKs
# ---------------------------------------------------------------------------------------------
venv_ok() {
    [ -x "$PYVENV/bin/python" ] || return 1
    "$PYVENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.metadata as md
import device_connect_agent_tools, device_connect_edge  # noqa: F401
assert md.version("device-connect-agent-tools") == "0.2.5"
assert md.version("device-connect-edge") == "0.2.5"
EOF
}

if venv_ok; then
    log "python venv $PYVENV: ready"
else
    if [ ! -x "$PYVENV/bin/python" ] || ! "$PYVENV/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$PYVENV"
        mkdir -p "$(dirname "$PYVENV")"
        PY=python3
        if ! "$PY" -m venv "$PYVENV" >/dev/null 2>&1; then
            rm -rf "$PYVENV"
            pkg_installed python3-venv || apt_install python3-venv
            PY=/usr/bin/python3
            "$PY" -m venv "$PYVENV" || die "cannot create venv $PYVENV"
        fi
        log "python venv $PYVENV: created with $("$PYVENV/bin/python" --version 2>&1)"
    fi
    log "python venv $PYVENV: installing ${PY_PKGS[*]}"
    "$PYVENV/bin/python" -m pip install --disable-pip-version-check -q "${PY_PKGS[@]}" </dev/null \
        || die "pip install failed"
    venv_ok || die "packages not importable in $PYVENV after pip install"
    log "python venv $PYVENV: ready"
fi

# ---------------------------------------------------------------------------------------------
# Rust targets
# ---------------------------------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup not found"
installed_targets=$(rustup target list --installed)
for t in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
    case $'\n'"$installed_targets"$'\n' in
        *$'\n'"$t"$'\n'*) log "rust target $t: installed" ;;
        *) log "rust target $t: adding"; rustup target add "$t" ;;
    esac
done

log "done"
