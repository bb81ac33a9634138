#!/usr/bin/env bash
# Install the real browser that the console's tests drive (tests/test_console_browser.py):
# Debian's chromium, driven by Playwright's Python package through executable_path
# (Playwright's own browser download needs the internet; Debian's package does not).
#
# Idempotent and quick when it is there (one dpkg-query), so `make test` runs it every time.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

PACKAGES=(chromium)
say() { echo "install-browser.sh: $*"; }

mapfile -t missing < <(missing_of "${PACKAGES[@]}")
if ((${#missing[@]} == 0)); then
  say "already installed: ${PACKAGES[*]}"
  exit 0
fi
started=$SECONDS
apt_install "${missing[@]}"
say "installed ${missing[*]} in $((SECONDS - started)) s"
