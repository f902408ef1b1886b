#!/usr/bin/env bash
# Builds the web console, the `wrenn` binary and the static in-guest daemon `wrenn-envd`, and puts the daemon
# where `wrenn` looks for it (beside the binary). Prints the binaries' directory last.
# WRENN_PROFILE=debug builds `wrenn` without optimisations (the tests do); envd is always
# an optimised static binary, since it runs inside every guest.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${WRENN_PROFILE:-release}"
flag=(); [ "$profile" = "release" ] && flag=(--release)
echo "==> building wrenn-envd (static)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p wrenn-envd \
  --target x86_64-unknown-linux-gnu
# The web console, embedded into the binary by crates/wrenn-server/build.rs (needs npm:
# scripts/deps.sh installs it). WRENN_SKIP_CONSOLE=1 builds without it.
if [ "${WRENN_SKIP_CONSOLE:-0}" != 1 ]; then
  echo "==> building the web console (npm ci, vite build)" >&2
  (cd console && npm ci --no-audit --no-fund --loglevel=error >&2 && npm run -s build >&2)
fi
echo "==> building wrenn ($profile)" >&2
cargo build -q "${flag[@]}" -p wrenn-cli
target="${CARGO_TARGET_DIR:-target}"
install -m 0755 "$target/x86_64-unknown-linux-gnu/release/wrenn-envd" "$target/$profile/wrenn-envd"
echo "$target/$profile"
