#!/usr/bin/env bash
# Install the real browser that the console's tests drive (tests/test_console_browser.py):
# Debian's chromium, driven by Playwright's Python package through executable_path
# (Playwright's own browser download needs the internet; Debian's package does not).
#
# Idempotent and quick when it is there (one dpkg-query), so `make test` runs it every time.
set -euo pipefail

PACKAGES=(chromium)
say() { echo "install-browser.sh: $*"; }

sudo=""
[[ $EUID -eq 0 ]] || sudo="sudo"
apt_get() { DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 "$@"; }
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

missing=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  say "already installed: ${PACKAGES[*]}"
  exit 0
fi

started=$SECONDS
if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
  say "${missing[*]} not in the package lists: apt-get update"
  apt_get update -qq
fi
say "installing ${missing[*]}"
if ! apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  say "install failed (stale package lists?): apt-get update and retry"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "installed ${missing[*]} in $((SECONDS - started)) s"
