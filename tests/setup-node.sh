#!/usr/bin/env bash
# Install the pinned Trubrics JS SDK into tests/node for tests/test_js_sdk.py.
# Idempotent: a no-op when the pinned version is already installed, so `make test` stays fast.
set -euo pipefail
cd "$(dirname "$0")/node"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo=""
  [[ $EUID -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

pinned=$(node -p 'require("./package.json").dependencies["@trubrics/trubrics"]')
installed=$(node -p 'require("./node_modules/@trubrics/trubrics/package.json").version' 2>/dev/null || true)
[[ $installed == "$pinned" ]] && exit 0

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
echo "setup-node.sh: installed @trubrics/trubrics@$pinned with node $(node --version)"
