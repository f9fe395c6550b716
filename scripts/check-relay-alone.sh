#!/usr/bin/env bash
# Checks that the relay builds on its own, without the desktop stack: `cargo build --release
# -p walkie-relay` and `cargo install --path crates/walkie-relay` with `cmake` and `pkg-config`
# replaced by stubs that fail (so nothing that needs libopus, ALSA, Vulkan or X11 can be
# built), the installed `walkie-relay` runs, and the relay's dependency tree stays small (at
# most MAX_LINES lines of `cargo tree -p walkie-relay -e normal --prefix none | sort -u`).
#
# Run from anywhere: bash scripts/check-relay-alone.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# 205 lines before `serve --acme`, which adds 7 (instant-acme, async-trait, base64 0.22,
# tokio-rustls, webpki-roots) and 8 for x509-cert (der, spki, const-oid, ...: reading an ACME
# certificate's validity with a decoder, not by hand); the system roots of walkie-net's trust
# add 6. 226 in all.
MAX_LINES=${MAX_LINES:-230}

stubs="$(mktemp -d)"
trap 'rm -rf "$stubs"' EXIT
for tool in cmake pkg-config; do
  printf '#!/bin/sh\necho "%s is not available here: the relay must build without it" >&2\nexit 1\n' "$tool" >"$stubs/$tool"
  chmod +x "$stubs/$tool"
done

start=$SECONDS
PATH="$stubs:$PATH" cargo build --release -p walkie-relay
echo "check-relay-alone: built target/release/walkie-relay without cmake or pkg-config in $((SECONDS - start)) s"
./target/release/walkie-relay --version
# The install reuses the build above (same target dir, the workspace's lock file).
PATH="$stubs:$PATH" cargo install --locked --path crates/walkie-relay --root "$stubs/installed" --target-dir target
"$stubs/installed/bin/walkie-relay" --version
echo "check-relay-alone: cargo install --path crates/walkie-relay installed walkie-relay"

lines=$(cargo tree -p walkie-relay -e normal --prefix none | sort -u | wc -l)
echo "check-relay-alone: cargo tree -p walkie-relay -e normal --prefix none | sort -u | wc -l = $lines (at most $MAX_LINES)"
[ "$lines" -le "$MAX_LINES" ]
