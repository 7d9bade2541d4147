#!/usr/bin/env bash
# Build the static aarch64-unknown-linux-musl release binary of dcd on an x86_64 Debian host,
# WITHOUT Docker (no `cross` container needed):
#
#   bash cross/build-aarch64.sh                                      # default features
#   bash cross/build-aarch64.sh --no-default-features --features nats
#
# Any arguments are passed to `cargo build`. Result: target/aarch64-unknown-linux-musl/release/dcd
#
# How it links:
#   * Rust code is linked by rust-lld (ships with rustup's rustc) against the musl CRT objects and
#     libc.a that rustup's aarch64-unknown-linux-musl target carries (link-self-contained);
#   * C code in dependencies (ring) is compiled by Debian's aarch64-linux-gnu-gcc
#     (gcc-aarch64-linux-gnu), archived with aarch64-linux-gnu-ar;
#   * musl's self-contained libs have no libdl.a (dlopen lives in libc.a) but some crates pass
#     -ldl (libloading, pulled in by zenoh), so an empty libdl.a is created under target/ and put
#     on the link path.
# Needs: rustup, gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (the C headers), file,
# qemu-user-static (for the final check).
set -euo pipefail

TARGET=aarch64-unknown-linux-musl
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf 'build-aarch64: %s\n' "$*"; }
die() { printf 'build-aarch64: ERROR: %s\n' "$*" >&2; exit 1; }

for tool in cargo rustup aarch64-linux-gnu-gcc aarch64-linux-gnu-ar file; do
    command -v "$tool" >/dev/null || die "$tool not found (run tests/setup.sh)"
done

installed_targets=$(rustup target list --installed)
case $'\n'"$installed_targets"$'\n' in
    *$'\n'"$TARGET"$'\n'*) ;;
    *) rustup target add "$TARGET" ;;
esac

# cargo's target directory (honours CARGO_TARGET_DIR).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SHIM_DIR=$TARGET_DIR/$TARGET/musl-shim
mkdir -p "$SHIM_DIR"
if [ ! -s "$SHIM_DIR/libdl.a" ]; then
    rm -f "$SHIM_DIR/libdl.a"
    aarch64-linux-gnu-ar rcs "$SHIM_DIR/libdl.a"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
# No .eh_frame_hdr: with panic = "abort" nothing unwinds, and the lookup table is 200 KiB of
# the 5 MiB budget (a backtrace, when asked for, still walks .eh_frame).
# --icf=all folds identical functions (monomorphised copies): 94 KB of the aarch64 binary.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=yes -L native=$SHIM_DIR -C link-arg=--no-eh-frame-hdr -C link-arg=--icf=all"
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar

log "cargo build --release --target $TARGET $*"
cargo build --release --target "$TARGET" "$@"

BIN=$TARGET_DIR/$TARGET/release/dcd
[ -x "$BIN" ] || die "no binary at $BIN"

info=$(file -L "$BIN")
log "$info"
case "$info" in
    *"ARM aarch64"*) ;;
    *) die "$BIN is not an aarch64 binary" ;;
esac
case "$info" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$BIN is not statically linked" ;;
esac

if command -v qemu-aarch64-static >/dev/null; then
    help_out=$(qemu-aarch64-static "$BIN" --help 2>&1) || die "qemu-aarch64-static $BIN --help failed: $help_out"
    log "qemu-aarch64-static dcd --help: ok ($(printf '%s\n' "$help_out" | head -n 1))"
else
    log "qemu-aarch64-static not installed: skipped running the binary"
fi

size=$(stat -c %s "$BIN")
log "built $BIN ($size bytes, $(( (size + 1023) / 1024 )) KiB)"
# The product's limit: one static binary of at most 5 MiB.
[ "$size" -le $((5 * 1024 * 1024)) ] || die "$BIN is $size bytes, over the 5 MiB (5242880 bytes) limit"
