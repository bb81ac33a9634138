# Shared by the install scripts (sourced, not run): Debian packages installed when missing,
# as root or with sudo, refreshing the package lists only when they seem stale.

sudo=""
[[ $EUID -eq 0 ]] || sudo="sudo"
apt_get() { DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 "$@"; }
installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

# The packages among "$@" that are not installed, one a line.
missing_of() {
  for package in "$@"; do
    installed "$package" || echo "$package"
  done
}

# Install "$@": apt-get update first if one is not in the lists, and once more if the
# install fails on lists that were not just updated. Messages go through say().
apt_install() {
  local updated=false package
  for package in "$@"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
      say "$package is not in the package lists: apt-get update"
      apt_get update -qq
      updated=true
      break
    fi
  done
  say "installing $*"
  if ! apt_get install -y -qq --no-install-recommends "$@" >/dev/null; then
    $updated && return 1
    say "install failed (stale package lists?): apt-get update and retry"
    apt_get update -qq
    apt_get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}
