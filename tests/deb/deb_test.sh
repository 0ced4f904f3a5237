#!/usr/bin/env bash
# shellcheck disable=SC2016  # dpkg-query's ${Field} formats are its own
# The Debian packages on a clean Debian 12, as a user installs them:
#   1. a minimal bookworm root (debootstrap, cached as a tarball), the
#      packages installed with `apt install ./*.deb` (dependencies from
#      Debian's archive; downloaded .debs cached);
#   2. the daemon started as the unit says (its User=, Group=,
#      RuntimeDirectory= and ExecStart= read from the installed unit), with
#      the packaged config;
#   3. a trainer in the ckptd group saves and restores through the installed
#      Python package, and the example trainer built against the installed
#      C++ SDK (find_package) saves and resumes;
#   4. the config edited, then an upgrade to a rebuilt higher version: the
#      edit and the runs are kept, the daemon restores them exactly;
#   5. remove, then purge: the checkpoints are still there.
# Usage: deb_test.sh SOURCE BUILD   (root; BUILD has `make build`'s tree)
# The cache (CKPTD_TEST_CACHE, default /var/cache/ckptd-test) is only ever
# an accelerator: a missing or stale one is rebuilt.
set -euo pipefail
src=$(realpath "$1")
build=$(realpath "$2")
cache=${CKPTD_TEST_CACHE:-/var/cache/ckptd-test}
work="$build/deb-test"
root="$work/root"
mirror=${CKPTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
t0=$(date +%s)
step() { echo "deb-test: [+$(($(date +%s) - t0))s] $*"; }
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }

mounted=()
daemon_pid=""
cleanup() {
  [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, chroot, mounts)"

in_root() { timeout "${TIMEOUT:-600}" chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@" </dev/null; }
as_trainer() { in_root setpriv --reuid=trainer --regid=trainer --init-groups --reset-env \
  /usr/bin/env CKPTD_SOCKET=unix:/run/ckptd/ckptd.sock "$@"; }

step "1. the packages, version 1 and a rebuilt version 2"
rm -rf "$work" && mkdir -p "$work"
"$src/scripts/make-deb.sh" "$build" "$work/v1" >"$work/make-deb-v1.log" 2>&1 ||
  fail "make deb: $(tail -20 "$work/make-deb-v1.log")"
v1=$(dpkg-deb -f "$work"/v1/ckptd_*.deb Version)
v2="${v1%-*}-$((${v1##*-} + 1))"
CKPTD_DEB_LINTIAN=0 "$src/scripts/make-deb.sh" "$build" "$work/v2" "$v2" >"$work/make-deb-v2.log" 2>&1 ||
  fail "make deb $v2: $(tail -20 "$work/make-deb-v2.log")"

step "2. a clean bookworm root"
mkdir -p "$cache/apt-archives/partial"
base="$cache/bookworm-minbase.tar"
# A month-old base is rebuilt: the archive moves on, and apt would fetch more.
if [[ ! -s "$base" ]] || [[ -n $(find "$base" -mtime +30) ]]; then
  rm -rf "$work/base"
  timeout 900 debootstrap --variant=minbase bookworm "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap: $(tail -5 "$work/debootstrap.log")"
  tar -C "$work/base" -cf "$base.tmp" . && mv "$base.tmp" "$base" && rm -rf "$work/base"
  step "   debootstrap made $base"
fi
mkdir -p "$root" && tar -C "$root" -xf "$base"
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mount --bind /dev/pts "$root/dev/pts" && mounted+=("$root/dev/pts")
mount -t tmpfs tmpfs "$root/run" && mounted+=("$root/run")
mount --bind "$cache/apt-archives" "$root/var/cache/apt/archives" && mounted+=("$root/var/cache/apt/archives")
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Keep downloaded packages for the next run (the cache above).
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' >"$root/etc/apt/apt.conf.d/99keep"
mkdir -p "$root/tmp/debs" "$root/tmp/v2" "$root/tmp/sdk"
cp "$work"/v1/*.deb "$root/tmp/debs/" && cp "$work"/v2/*.deb "$root/tmp/v2/"
cp "$src/scripts/install-debs.sh" "$root/tmp/install-debs.sh"
cp "$src/tests/deb/trainer.py" "$root/tmp/trainer.py"
cp "$src/examples/cpp/trainer.cc" "$src/examples/cpp/CMakeLists.txt" "$root/tmp/sdk/"

# The container image's runtime install line, read from docker/Dockerfile
# and run here as it is (so the image and this test cannot drift apart).
docker_line=$(sed -n 's|^RUN \(/tmp/install-debs.sh [^&]*\)&&.*|\1|p' "$src/docker/Dockerfile")
[[ "$docker_line" == "/tmp/install-debs.sh /tmp/debs "* ]] || fail "no install-debs.sh line in docker/Dockerfile"
step "3. the Dockerfile's line: $docker_line; then the -dev package and a compiler"
# shellcheck disable=SC2086  # a command line
in_root $docker_line >"$work/apt.log" 2>&1 || fail "$docker_line: $(tail -20 "$work/apt.log")"
in_root /tmp/install-debs.sh /tmp/debs libckptd-client0.1 libckptd-client-dev >>"$work/apt.log" 2>&1 ||
  fail "installing libckptd-client-dev: $(tail -20 "$work/apt.log")"
in_root apt-get install -y -q --no-install-recommends g++ cmake make >>"$work/apt.log" 2>&1 ||
  fail "apt install g++ cmake make: $(tail -20 "$work/apt.log")"
in_root dpkg-query -W -f='${Package} ${Version}\n' ckptd libckptd-client0.1 libckptd-client-dev python3-ckptd

unit="$root/lib/systemd/system/ckptd.service"
[[ -f "$unit" ]] || fail "no unit at /lib/systemd/system/ckptd.service"
unit_value() { sed -n "s/^$1=//p" "$unit" | tail -1; }
user=$(unit_value User) group=$(unit_value Group) exec_start=$(unit_value ExecStart)
runtime_dir=$(unit_value RuntimeDirectory) runtime_mode=$(unit_value RuntimeDirectoryMode)
state_dir=$(unit_value StateDirectory) state_mode=$(unit_value StateDirectoryMode)
in_root getent passwd "$user" >/dev/null || fail "the package did not create the user $user"
[[ -d "$root/var/lib/ckptd/runs" ]] || fail "/var/lib/ckptd/runs was not made"
grep -q '^/etc/ckptd/ckptd.toml$' "$root/var/lib/dpkg/info/ckptd.conffiles" || fail "ckptd.toml is not a conffile"

start_daemon() {
  # What systemd does for this unit, then its ExecStart as its User/Group.
  in_root install -d -o "$user" -g "$group" -m "$runtime_mode" "/run/$runtime_dir"
  in_root install -d -o "$user" -g "$group" -m "$state_mode" "/var/lib/$state_dir"
  # shellcheck disable=SC2086  # ExecStart is a command line
  chroot "$root" setpriv --reuid="$user" --regid="$group" --init-groups --reset-env \
    $exec_start >>"$work/daemon.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 300); do [[ -S "$root/run/ckptd/ckptd.sock" ]] && break; sleep 0.1; done
  [[ -S "$root/run/ckptd/ckptd.sock" ]] || fail "the daemon did not start: $(tail -5 "$work/daemon.log")"
}
stop_daemon() {
  kill -TERM "$daemon_pid"
  timeout 60 tail --pid="$daemon_pid" -f /dev/null || fail "the daemon did not stop on SIGTERM"
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}

step "4. the daemon as the unit runs it: $user:$group, $exec_start"
start_daemon
# chroot and setpriv exec: the pid is the daemon's.
daemon_uid=$(ps -o uid= -p "$daemon_pid" | tr -d ' ')
[[ "$daemon_uid" == "$(in_root id -u "$user")" ]] || fail "the daemon runs as uid $daemon_uid, not $user"
in_root useradd --create-home --groups "$group" trainer

step "5. a trainer saves and restores through python3-ckptd"
as_trainer python3 /tmp/trainer.py save >"$work/py-save.log" 2>&1 || fail "python save: $(tail -20 "$work/py-save.log")"
as_trainer python3 /tmp/trainer.py restore >"$work/py-restore.log" 2>&1 ||
  fail "python restore: $(tail -20 "$work/py-restore.log")"
cat "$work/py-save.log" "$work/py-restore.log"

step "6. the example trainer built against libckptd-client-dev (find_package, and pkg-config)"
in_root bash -c 'cmake -S /tmp/sdk -B /tmp/sdk/build -DCMAKE_BUILD_TYPE=Release && make -C /tmp/sdk/build -j2' \
  >"$work/sdk-build.log" 2>&1 || fail "building against the installed SDK: $(tail -20 "$work/sdk-build.log")"
in_root bash -c 'c++ -O1 /tmp/sdk/trainer.cc -o /tmp/sdk/trainer-pkgconfig $(pkg-config --cflags --libs ckptd)' \
  >>"$work/sdk-build.log" 2>&1 || fail "building with pkg-config ckptd: $(tail -20 "$work/sdk-build.log")"
chmod -R a+rX "$root/tmp/sdk"
as_trainer /tmp/sdk/build/ckptd_example_trainer --socket unix:/run/ckptd/ckptd.sock --run cpp-deb \
  --steps 120 --every 50 >"$work/cpp-1.log" 2>&1 || fail "C++ trainer: $(tail -5 "$work/cpp-1.log")"
as_trainer /tmp/sdk/build/ckptd_example_trainer --socket unix:/run/ckptd/ckptd.sock --run cpp-deb \
  --steps 30 --every 50 >"$work/cpp-2.log" 2>&1 || fail "C++ trainer (resume): $(tail -5 "$work/cpp-2.log")"
if ! grep -qx "restored step 120" "$work/cpp-2.log" || ! grep -q "^closed at step 150" "$work/cpp-2.log"; then
  fail "C++ trainer did not resume: $(cat "$work/cpp-2.log")"
fi
as_trainer /tmp/sdk/trainer-pkgconfig --socket unix:/run/ckptd/ckptd.sock --run cpp-pc --steps 60 --every 50 \
  >"$work/cpp-pc.log" 2>&1 || fail "C++ trainer (pkg-config): $(tail -5 "$work/cpp-pc.log")"
grep -qx "saved step 50" "$work/cpp-pc.log" || fail "the pkg-config trainer did not save: $(cat "$work/cpp-pc.log")"
as_trainer ckptctl ls cpp-deb | tee "$work/ls-cpp.txt"

step "7. the config edited, then an upgrade to $v2"
printf '\n# edited by the administrator: kept across upgrades\n' >>"$root/etc/ckptd/ckptd.toml"
sum_before=$(md5sum <"$root/etc/ckptd/ckptd.toml")
find "$root/var/lib/ckptd/runs" -name 'step_*.gguf' | sort >"$work/checkpoints-before"
stop_daemon
in_root /tmp/install-debs.sh /tmp/v2 >"$work/upgrade.log" 2>&1 ||
  fail "upgrade: $(tail -20 "$work/upgrade.log")"
[[ "$(in_root dpkg-query -W -f='${Version}' ckptd)" == "$v2" ]] || fail "ckptd was not upgraded to $v2"
[[ "$(md5sum <"$root/etc/ckptd/ckptd.toml")" == "$sum_before" ]] || fail "the upgrade changed the edited config"
[[ ! -e "$root/etc/ckptd/ckptd.toml.dpkg-new" ]] || fail "the upgrade left ckptd.toml.dpkg-new"
find "$root/var/lib/ckptd/runs" -name 'step_*.gguf' | sort | cmp -s - "$work/checkpoints-before" ||
  fail "the upgrade changed the checkpoints"
start_daemon
as_trainer python3 /tmp/trainer.py restore >"$work/py-restore-2.log" 2>&1 ||
  fail "python restore after the upgrade: $(tail -20 "$work/py-restore-2.log")"
cat "$work/py-restore-2.log"
stop_daemon

step "8. remove, then purge: the checkpoints stay"
in_root apt-get remove -y -q ckptd python3-ckptd libckptd-client-dev libckptd-client0.1 \
  >"$work/remove.log" 2>&1 || fail "remove: $(tail -20 "$work/remove.log")"
find "$root/var/lib/ckptd/runs" -name 'step_*.gguf' | sort | cmp -s - "$work/checkpoints-before" ||
  fail "removing the packages deleted checkpoints"
# (apt has no record of local .debs once removed: dpkg purges them)
in_root dpkg --purge ckptd python3-ckptd libckptd-client-dev libckptd-client0.1 \
  >>"$work/remove.log" 2>&1 || fail "purge: $(tail -20 "$work/remove.log")"
find "$root/var/lib/ckptd/runs" -name 'step_*.gguf' | sort | cmp -s - "$work/checkpoints-before" ||
  fail "purging the packages deleted checkpoints"
[[ ! -e "$root/usr/bin/ckptd" && ! -e "$root/etc/ckptd/ckptd.toml" ]] || fail "purge left ckptd's files"
! in_root dpkg -s ckptd >/dev/null 2>&1 || fail "dpkg still lists ckptd after the purge"
step "   $(wc -l <"$work/checkpoints-before") checkpoints still in /var/lib/ckptd/runs after purge"

step "passed in $(($(date +%s) - t0))s"
