#!/usr/bin/env bash
# Install the pinned Node packages into tests/node: the Trubrics JS SDK (tests/test_js_sdk.py),
# OpenTelemetry's packages (tests/test_otlp_apps.py) and Segment's action destinations
# (tests/test_segment_destination.py). The override in package.json pins
# @aws-sdk/client-kinesis (used by another destination, never loaded) to a release the
# registry serves: the one @segment/action-destinations asks for is not there.
# Idempotent: a no-op when every pinned version is already installed, so `make test` stays fast.
set -euo pipefail
cd "$(dirname "$0")/node"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  sudo=""
  [[ $EUID -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

# Every pinned dependency whose installed version differs (or is missing): none, nothing to do.
stale=$(node -p '
  Object.entries(require("./package.json").dependencies).filter(([name, pinned]) => {
    try { return require(`./node_modules/${name}/package.json`).version !== pinned; }
    catch { return true; }
  }).map(([name, pinned]) => `${name}@${pinned}`).join(" ")')
[[ -z $stale ]] && exit 0

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
echo "setup-node.sh: installed $stale with node $(node --version)"
