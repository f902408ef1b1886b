#!/usr/bin/env bash
# Installs the Debian packages Wrenn needs on a host (run as root), then checks that every
# program the system runs is there and runs, naming the package to install when one is not.
# Safe to run again: the whole package set goes to one `apt-get install` every time (a no-op
# when satisfied), so apt resolves it as one consistent set and never drops a package the
# host already had.
#
# The programs and their packages are listed in crates/wrenn-agent/src/doctor/programs.txt,
# the same list `wrenn doctor` checks. On Debian 12 QEMU comes from bookworm-backports (10.0):
# the suite is added if missing and only the QEMU packages are pinned to it (see
# docs/ARCHITECTURE.md, "QEMU 10.0 from bookworm-backports").
#
#   scripts/deps.sh                    packages for running Wrenn, then the check
#   scripts/deps.sh --with-test-deps   also what scripts/test needs
#   scripts/deps.sh --check [--with-test-deps]   the check only, no apt
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
list=crates/wrenn-agent/src/doctor/programs.txt

with_test=0
check_only=0
for arg in "$@"; do
  case "$arg" in
    --with-test-deps) with_test=1 ;;
    --check) check_only=1 ;;
    *) echo "usage: $0 [--with-test-deps] [--check]" >&2; exit 2 ;;
  esac
done

# The listed entries this run cares about: program package need probe min (one per line).
entries() {
  awk -v t="$with_test" '!/^#/ && NF >= 5 && ($3 != "test" || t) { print $1, $2, $3, $4, $5 }' "$list"
}

# The QEMU packages taken from bookworm-backports. Their other dependencies come from
# bookworm itself: seabios is the only one QEMU 10.0 needs in a newer version.
qemu_packages="qemu-system-x86 qemu-system-common qemu-system-data qemu-system-gui qemu-utils qemu-block-extra seabios"
backports_source=/etc/apt/sources.list.d/bookworm-backports.sources
pin_file=/etc/apt/preferences.d/wrenn-qemu-backports

# Adds bookworm-backports when no apt source has it, and pins the QEMU packages to it.
# Prints "changed" when apt's package lists need refreshing.
prepare_backports() {
  if ! grep -qsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources; then
    echo "==> adding the bookworm-backports suite ($backports_source)" >&2
    cat > "$backports_source" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    echo changed
  fi
  local pin
  pin="# Written by Wrenn's scripts/deps.sh: QEMU 10.0 from bookworm-backports, nothing else.
Package: $qemu_packages
Pin: release n=bookworm-backports
Pin-Priority: 990"
  if [ "$(cat "$pin_file" 2>/dev/null)" != "$pin" ]; then
    echo "==> pinning the QEMU packages to bookworm-backports ($pin_file)" >&2
    printf '%s\n' "$pin" > "$pin_file"
  fi
  if ! apt-cache policy 2>/dev/null | grep -q 'n=bookworm-backports'; then
    echo changed
  fi
}

install_packages() {
  local codename changed=""
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  if [ "$codename" = "bookworm" ]; then
    changed="$(prepare_backports)"
  fi
  local packages
  mapfile -t packages < <(entries | awk '{ print $2 }' | sort -u)
  echo "==> apt-get install: ${packages[*]}"
  local install=(apt-get install -y -q --no-install-recommends --no-remove "${packages[@]}")
  if [ -n "$changed" ]; then
    apt-get update -q
  fi
  # A failure may come from stale package lists (a removed .deb); refresh them once and retry.
  if ! DEBIAN_FRONTEND=noninteractive "${install[@]}"; then
    echo "==> apt-get install failed; refreshing the package lists and trying again" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${install[@]}"
  fi
}

# The first dotted number in a line (`QEMU emulator version 10.0.2 (Debian …)` → 10.0.2).
version_in() {
  grep -oE '[0-9]+(\.[0-9]+)+' <<<"$1" | head -n 1 || true
}

# Runs every listed program's probe; on failure names the package to install.
check_programs() {
  # The agent runs as root, whose PATH has the sbin directories; a non-login shell may not.
  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
  local failed=0 count=0 program package need probe min out first version
  while read -r program package need probe min; do
    count=$((count + 1))
    if [ "$probe" = "-" ]; then
      [ -e "$program" ] && continue
      echo "error: $program is missing: install the Debian package $package" >&2
      failed=1
      continue
    fi
    if ! command -v "$program" >/dev/null; then
      echo "error: $program is not installed: install the Debian package $package" >&2
      failed=1
      continue
    fi
    local args=()
    IFS=, read -r -a args <<<"$probe"
    if ! out="$("$program" "${args[@]}" 2>&1)"; then
      echo "error: \`$program ${args[*]}\` does not run (${out%%$'\n'*}): install the Debian package $package" >&2
      failed=1
      continue
    fi
    if [ "$min" != "-" ]; then
      first="${out%%$'\n'*}"
      version="$(version_in "$first")"
      if [ -z "$version" ] || dpkg --compare-versions "$version" lt "$min"; then
        echo "error: $program is version ${version:-unknown} ($first); Wrenn needs $min or newer from the Debian package $package" >&2
        failed=1
        continue
      fi
      echo "    $program $version"
    fi
  done < <(entries)
  if [ "$failed" = 1 ]; then
    echo "error: some programs Wrenn runs are missing or too old (see above)" >&2
    return 1
  fi
  echo "==> all $count listed programs run"
}

# Node.js and npm build the web console (scripts/build.sh); the running system needs neither.
# Installed from Debian only when missing: a host may have its own Node.js already.
install_node() {
  command -v npm >/dev/null && command -v node >/dev/null && return 0
  echo "==> apt-get install: nodejs npm (to build the web console)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends nodejs npm; }
}

if [ "$check_only" = 0 ]; then
  start=$SECONDS
  install_packages
  install_node
  echo "==> packages ready in $((SECONDS - start)) s"
fi
if ! command -v npm >/dev/null; then
  echo "error: npm is not installed (it builds the web console): install the Debian packages nodejs and npm" >&2
  exit 1
fi
check_programs
if [ "$check_only" = 0 ] && ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain (cargo) on PATH; install one with rustup first" >&2
  exit 1
fi
