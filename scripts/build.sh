#!/usr/bin/env bash
# Builds the `wrenn` binary (release) and the static in-guest daemon `wrenn-envd`, and puts
# the daemon where `wrenn` looks for it (beside the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${WRENN_PROFILE:-release}"
flag=(); [ "$profile" = "release" ] && flag=(--release)
echo "==> building wrenn-envd (static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q "${flag[@]}" -p wrenn-envd \
  --target x86_64-unknown-linux-gnu
echo "==> building wrenn"
cargo build -q "${flag[@]}" -p wrenn-cli
target="${CARGO_TARGET_DIR:-target}"
install -m 0755 "$target/x86_64-unknown-linux-gnu/$profile/wrenn-envd" "$target/$profile/wrenn-envd"
echo "$target/$profile"
