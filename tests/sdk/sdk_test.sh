#!/bin/bash
# The C++ SDK as a user gets it. The example trainer (examples/cpp) is built
#   1. with find_package(ckptd) against a DESTDIR install of the sdk component,
#   2. with `pkg-config --cflags --libs ckptd` against the same install,
#   3. from a parent project that pulls ckptd in with add_subdirectory,
# and each build trains against a real daemon: the first run saves on the
# schedule and closes with its final snapshot, the next resumes from it.
#
# The version is one number (CMake's project version): the binaries report
# it, the package and ckptd.pc carry it, every checkpoint records it.
#
# usage: sdk_test.sh SOURCE_DIR BUILD_DIR CKPTD_BINARY CKPTCTL_BINARY
set -euo pipefail
SRC=$(realpath "$1")
BUILD=$(realpath "$2")
CKPTD=$(realpath "$3")
CKPTCTL=$(realpath "$4")
OUT=$BUILD/sdk-test
rm -rf "$OUT"
mkdir -p "$OUT"
step() { echo "sdk_test: $*"; }
fail() { echo "sdk_test: FAILED: $*" >&2; exit 1; }

VERSION=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt")
for bin in "$CKPTD" "$CKPTCTL"; do
  out=$("$bin" --version) || fail "$bin --version exits $?"
  [ "$out" = "$(basename "$bin") $VERSION" ] || fail "$bin --version prints '$out'"
done
step "ckptd --version and ckptctl --version: $VERSION, exit 0"

step "install the sdk component into $OUT/root"
DESTDIR=$OUT/root cmake --install "$BUILD" --component sdk >"$OUT/install.log"
PREFIX=$OUT/root$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD/CMakeCache.txt")
PC=$(find "$PREFIX" -name ckptd.pc)
[ -n "$PC" ] || fail "no ckptd.pc installed"
for f in include/ckptd/client.h include/ckptd/checkpointer.h include/ckptd/restore.h \
         include/ckptd/v1/ckptd.grpc.pb.h; do
  [ -f "$PREFIX/$f" ] || fail "$f not installed"
done
SO=$(find "$PREFIX" -name 'libckptd_client.so.*.*.*')
[ -n "$SO" ] || fail "no versioned libckptd_client.so"
SONAME=$(objdump -p "$SO" | awk '/SONAME/ {print $2}')
case "$SONAME" in libckptd_client.so.[0-9]*) ;; *) fail "SONAME '$SONAME'" ;; esac
[ -f "$(dirname "$SO")/libckptd_client.a" ] || fail "no libckptd_client.a"
step "installed $(basename "$SO") (SONAME $SONAME), ckptd.pc, headers"

step "1. find_package(ckptd)"
cmake -S "$SRC/examples/cpp" -B "$OUT/find_package" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIX" >"$OUT/find_package.log"
ninja -C "$OUT/find_package" >>"$OUT/find_package.log"

step "2. pkg-config"
export PKG_CONFIG_PATH=$(dirname "$PC")
LIBDIR=$(pkg-config --variable=libdir ckptd)
[ "$(pkg-config --modversion ckptd)" = "$VERSION" ] ||
  fail "ckptd.pc version $(pkg-config --modversion ckptd)"
# shellcheck disable=SC2046
c++ -O1 "$SRC/examples/cpp/trainer.cc" -o "$OUT/trainer-pkgconfig" \
  $(pkg-config --cflags --libs ckptd) -Wl,-rpath,"$LIBDIR"

step "3. add_subdirectory from a parent project"
mkdir -p "$OUT/parent"
cat >"$OUT/parent/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(parent LANGUAGES CXX)
add_subdirectory("$SRC" ckptd EXCLUDE_FROM_ALL)
add_executable(trainer "$SRC/examples/cpp/trainer.cc")
target_link_libraries(trainer PRIVATE ckptd::client)
CMAKE
cmake -S "$OUT/parent" -B "$OUT/parent/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$OUT/parent-prefix" >"$OUT/parent.log"
grep -q "CMAKE_INSTALL_PREFIX:PATH=$OUT/parent-prefix" "$OUT/parent/build/CMakeCache.txt" ||
  fail "add_subdirectory changed the parent's install prefix"
ninja -C "$OUT/parent/build" -j"${JOBS:-2}" trainer >>"$OUT/parent.log"

step "train with each build against a daemon"
ROOT=$OUT/runs
mkdir -p "$ROOT"
"$CKPTD" --root "$ROOT" --listen "unix:$OUT/ckptd.sock" --http-listen "" >"$OUT/daemon.log" 2>&1 &
DAEMON=$!
trap 'kill $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -S "$OUT/ckptd.sock" ] && grep -q "ready: listening" "$OUT/daemon.log" && break; sleep 0.1; done
grep -q "ready: listening" "$OUT/daemon.log" || fail "ckptd did not start: $(tail -5 "$OUT/daemon.log")"
n=0
for t in "$OUT/find_package/ckptd_example_trainer" "$OUT/trainer-pkgconfig" "$OUT/parent/build/trainer"; do
  n=$((n + 1))
  run="sdk-$n"
  "$t" --socket "unix:$OUT/ckptd.sock" --run "$run" --steps 120 --every 50 >"$OUT/$run.1.log" 2>&1 ||
    fail "$t: $(cat "$OUT/$run.1.log")"
  "$t" --socket "unix:$OUT/ckptd.sock" --run "$run" --steps 30 --every 50 >"$OUT/$run.2.log" 2>&1 ||
    fail "$t (resume): $(cat "$OUT/$run.2.log")"
  # First run: steps 50 and 100 on the schedule, 120 by Close (once: no
  # second save of the last step). Second run: resumes at 121, saves 150 by
  # Close.
  grep -qx "saved step 50" "$OUT/$run.1.log" && grep -qx "saved step 100" "$OUT/$run.1.log" &&
    grep -q "^closed at step 120" "$OUT/$run.1.log" || fail "$t: $(cat "$OUT/$run.1.log")"
  grep -qx "restored step 120" "$OUT/$run.2.log" && grep -q "^closed at step 150" "$OUT/$run.2.log" ||
    fail "$t (resume): $(cat "$OUT/$run.2.log")"
  ls "$ROOT/$run/weights" | grep -E '^step_[0-9]+\.gguf$' | sort >"$OUT/$run.steps"
  [ "$(tr '\n' ' ' <"$OUT/$run.steps")" = "step_100.gguf step_120.gguf step_150.gguf step_50.gguf " ] ||
    fail "$run checkpoints: $(cat "$OUT/$run.steps")"
  step "$(basename "$t"): saved 50 100 120, resumed at 121, closed at 150"
done
"$CKPTCTL" inspect --json "$ROOT/sdk-1/weights/step_150.gguf" >"$OUT/inspect.json"
/usr/bin/python3 - "$OUT/inspect.json" "$VERSION" <<'PY' || fail "ckpt.daemon.version"
import json, sys
md = {m["key"]: m["value"] for m in json.load(open(sys.argv[1]))["metadata"]}
assert md["ckpt.daemon.version"] == sys.argv[2], (md["ckpt.daemon.version"], sys.argv[2])
PY
step "step_150.gguf records ckpt.daemon.version = $VERSION"
step "ok"
