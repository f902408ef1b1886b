#!/usr/bin/env bash
# Prepares the Python environment of the SDK suite (tests/sdk): a virtualenv with the official
# Wrenn Python SDK 0.3.0 and the pinned packages of tests/sdk/requirements.txt, made with the
# host's Debian python3 (python3-venv, installed by `scripts/deps.sh --with-test-deps`).
# Prints the virtualenv's python as its last line.
#
# The SDK's wheel says it needs Python 3.13 while Debian 12 has 3.11, on which it runs: the
# wheel is fetched as one for 3.13 and installed without that check, its dependencies from
# the pinned list. Safe to run again: an environment made from the same wheel and list is kept
# as it is (no network); pip's cache serves a rebuild.
#
#   scripts/sdk-env.sh            the default place, target/sdk-venv
#   WRENN_SDK_VENV=DIR scripts/sdk-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sdk_version=0.3.0
venv="${WRENN_SDK_VENV:-$PWD/target/sdk-venv}"
requirements=tests/sdk/requirements.txt
python=/usr/bin/python3
[ -x "$python" ] || python="$(command -v python3)"
wheels="$venv.wheels"
stamp="$venv/.wrenn-sdk-env"
want="wrenn==$sdk_version $(sha256sum "$requirements" | cut -d' ' -f1) $("$python" --version 2>&1)"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "==> SDK environment ready ($venv)" >&2
  echo "$venv/bin/python"
  exit 0
fi

echo "==> SDK environment: wrenn $sdk_version and $requirements into $venv" >&2
rm -rf "$venv"
if ! "$python" -m venv "$venv" >&2; then
  echo "error: $python cannot make a virtualenv: install the Debian package python3-venv" \
    "(scripts/deps.sh --with-test-deps)" >&2
  exit 1
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
mkdir -p "$wheels"
"${pip[@]}" download --no-deps --python-version 3.13 --only-binary=:all: \
  -d "$wheels" "wrenn==$sdk_version" >&2
"${pip[@]}" install --no-deps -r "$requirements" >&2
"${pip[@]}" install --no-deps --ignore-requires-python "$wheels/wrenn-$sdk_version-py3-none-any.whl" >&2
"${pip[@]}" check >&2
"$venv/bin/python" -c "import wrenn, httpx_ws, pytest; assert wrenn.__version__ == '$sdk_version'" >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
