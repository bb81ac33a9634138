#!/usr/bin/env bash
# Install the real engines that tests/support/engines.py starts as throwaway servers: PostgreSQL 15,
# ClickHouse (Debian's 18.16 server and client) and ZooKeeper 3.8.
#
# Idempotent and quick when nothing is missing (one dpkg-query), so `make test` can run it
# every time. The tests start their own servers on free loopback ports with data in temp
# dirs; a packaged service left running would only hold ports and memory, so any engine
# process that appears during the install is stopped again (Debian's maintainer scripts
# start services on machines whose policy-rc.d allows it).
set -euo pipefail

PACKAGES=(postgresql-15 clickhouse-server clickhouse-client zookeeper)
# Command lines of the packaged services (system config/data paths), never the tests' own.
SERVICE_PATTERN='/var/lib/postgresql/|/etc/postgresql/|/etc/clickhouse-server/|/etc/zookeeper/'
say() { echo "install-engines.sh: $*"; }

sudo=""
[[ $EUID -eq 0 ]] || sudo="sudo"
apt_get() { DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 "$@"; }

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }
service_pids() { pgrep -f -- "$SERVICE_PATTERN" | sort || true; }

missing=()
for package in "${PACKAGES[@]}"; do
  installed "$package" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  say "already installed: ${PACKAGES[*]}"
  exit 0
fi

started=$SECONDS
updated=false
for package in "${missing[@]}"; do
  if ! apt-cache show "$package" >/dev/null 2>&1; then
    say "$package is not in the package lists: apt-get update"
    apt_get update -qq
    updated=true
    break
  fi
done

before=$(service_pids)
say "installing ${missing[*]}"
if ! apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  $updated && exit 1
  say "install failed (stale package lists?): apt-get update and retry"
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "installed ${missing[*]} in $((SECONDS - started)) s"

# Stop whatever the maintainer scripts started: through systemd if it runs the services (it
# would restart a killed one), then by pid, waiting for each to exit.
new_pids=$(comm -13 <(echo "$before") <(service_pids) | tr '\n' ' ')
if [[ -n ${new_pids// /} ]]; then
  say "stopping services started by the packages: pids $new_pids"
  if [[ -d /run/systemd/system ]]; then
    $sudo systemctl stop postgresql clickhouse-server zookeeper 2>/dev/null || true
  fi
  for pid in $new_pids; do
    $sudo kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $new_pids; do
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid ignored SIGTERM for 30 s: SIGKILL"
      $sudo kill -KILL "$pid" 2>/dev/null || true
    fi
  done
else
  say "no service was started by the packages"
fi
