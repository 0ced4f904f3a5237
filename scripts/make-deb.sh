#!/usr/bin/env bash
# `make deb`: Debian packages of the tree `make build` built, into BUILD/deb:
# ckptd, libckptd-client0.1, libckptd-client-dev and python3-ckptd, then
# lintian over them (errors fail; its full output is OUT/lintian.txt).
#   make-deb.sh BUILD [OUT [VERSION]]
# OUT defaults to BUILD/deb. VERSION (optional) builds them as a newer
# version than debian/changelog's (the upgrade test's "rebuilt higher
# version"). CKPTD_DEB_LINTIAN=0 skips lintian.
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(realpath "${1:-build}")
out=$(realpath -m "${2:-$build/deb}")
version=${3:-}
rm -rf "$out" && mkdir -p "$out/src"
cp -r debian "$out/src/"
# The system user, through dh_installsysusers (its postinst snippet).
cp systemd/ckptd.sysusers "$out/src/debian/ckptd.sysusers"
if [[ -n "$version" ]]; then
  {
    printf 'ckptd (%s) bookworm; urgency=medium\n\n  * Rebuilt as %s.\n\n' "$version" "$version"
    printf ' -- ckptd developers <ckptd@packages.invalid>  %s\n\n' "$(date -R)"
    cat debian/changelog
  } >"$out/src/debian/changelog"
fi
(cd "$out/src" && CKPTD_BUILD="$build" dpkg-buildpackage -b -uc -us --no-sign >"$out/build.log" 2>&1) ||
  { tail -n 40 "$out/build.log"; echo "make-deb: dpkg-buildpackage failed (log: $out/build.log)" >&2; exit 1; }
rm -rf "$out/src"
echo "make-deb: packages in $out"
for deb in "$out"/*.deb; do
  printf '  %-48s %8s KiB installed %6s KiB\n' "$(basename "$deb")" "$(($(stat -c %s "$deb") / 1024))" \
    "$(dpkg-deb -f "$deb" Installed-Size)"
done
[[ "${CKPTD_DEB_LINTIAN:-1}" == 0 ]] && exit 0
# --fail-on error: a warning is reported (and explained in docs/operations.md), an error fails.
if lintian --fail-on error --info --allow-root "$out"/*.changes >"$out/lintian.txt" 2>&1; then
  echo "make-deb: lintian: $(grep -c '^[EWIP]: ' "$out/lintian.txt" || true) tags, no errors"
else
  cat "$out/lintian.txt"
  echo "make-deb: lintian found errors" >&2
  exit 1
fi
sed 's/^/  /' "$out/lintian.txt" | grep -v '^  *N:' || true
