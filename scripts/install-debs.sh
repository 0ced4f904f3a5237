#!/bin/sh
# Installs ckptd's Debian packages from DIR (made by `make deb`) with apt,
# their dependencies from Debian's archive. The container image's runtime
# stage runs it, and the packages' test runs that same Dockerfile line in a
# clean Debian 12 root (tests/deb/deb_test.sh), so the two cannot drift.
#   install-debs.sh DIR [PACKAGE...]   (default: every package in DIR)
# Where systemd is not installed (a container, a minimal root), the
# packages' users and directories come from systemd's standalone sysusers
# and tmpfiles instead of all of systemd.
set -eu
dir=$1
shift
if [ $# -eq 0 ]; then
  for deb in "$dir"/*.deb; do set -- "$@" "$(basename "$deb" | cut -d_ -f1)"; done
fi
debs=""
for p in "$@"; do
  found=$(ls "$dir/${p}"_*.deb 2>/dev/null || true)
  [ -n "$found" ] || { echo "install-debs: no ${p}_*.deb in $dir (make deb makes them)" >&2; exit 1; }
  debs="$debs $found"
done
extra=""
dpkg-query -W -f='${Status}' systemd 2>/dev/null | grep -q "ok installed" ||
  extra="systemd-standalone-sysusers systemd-standalone-tmpfiles"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086  # lists of paths and names, split on purpose
apt-get install -y -q --no-install-recommends $extra $debs
