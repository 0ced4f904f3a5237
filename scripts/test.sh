#!/usr/bin/env bash
# `make test`: every suite, in two lanes that share the machine's cores.
#   lane A: the build, ctest (unit, black-box, CLI, interop and the
#           real-service suites: Ceph RGW, network namespaces, the SDK),
#           the clang ASan + UBSan tree (unit suites run; the libFuzzer
#           targets built from the same objects), then a bounded run of
#           each fuzzer
#   lane B: lint (clang-format, flake8, mypy, clang-tidy, clang's
#           thread-safety analysis), the TSan unit suites, then the Debian
#           packages built and tested in a clean Debian 12 root
#           (tests/deb/deb_test.sh) once lane A's build is done
# Both lanes take about the same time (clang-tidy alone is as long as the
# unity build and ctest together), and the machine stays busy throughout.
# Every check runs; the table at the end gives each phase's duration, each
# ctest label's test time, and the total (docs/testing.md keeps the figures).
# Usage: test.sh BUILD JOBS FUZZ_SECONDS
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
build=${1:-build}
jobs=${2:-2}
fuzz_seconds=${3:-15}
logs="$build-logs"
rm -rf "$logs" && mkdir -p "$logs"
start=$(date +%s)
table="$logs/phases.tsv"
: >"$table"

# phase LANE NAME COMMAND...: runs it, logging to $logs/NAME.log, and
# records its start, duration and result.
phase() {
  local lane=$1 name=$2
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "test: [$lane] $name started at +$((t0 - start))s"
  "$@" >"$logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$lane" "$name" "$((t0 - start))" "$(($(date +%s) - t0))" "$rc" >>"$table"
  if [[ $rc -ne 0 ]]; then
    echo "test: [$lane] $name FAILED (exit $rc); its log, $logs/$name.log, ends:"
    tail -n 60 "$logs/$name.log"
  else
    echo "test: [$lane] $name passed in $(($(date +%s) - t0))s"
  fi
  return $rc
}

phase - deps scripts/install-deps.sh || exit 1
# The unit suites the sanitizer tree runs (the Makefile's SANITIZED) are not
# built here too: each unit test runs once, under ASan + UBSan.
sanitized=$(make --no-print-directory -s print-sanitized)
# Unity builds: about half the compile time of a cold tree (docs/testing.md).
cmake_main=(cmake -S . -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DCKPTD_WERROR=ON
            -DCMAKE_INSTALL_PREFIX="${PREFIX:-/usr}" -DCKPTD_SANITIZED_ONLY="${sanitized// /;}"
            -DCMAKE_UNITY_BUILD=ON -B "$build")
phase - configure "${cmake_main[@]}" || exit 1
# What lane B needs of the main tree (the fuzz seeds use the Python stubs;
# lint configures a tree of its own), made before the lanes part so that no
# two ninja runs share the tree.
gen_targets=(ckptd_proto_gen)
ninja -C "$build" -t targets all 2>/dev/null | grep -q '^ckptd_python:' &&
  gen_targets+=(ckptd_python)
phase - generate ninja -C "$build" "${gen_targets[@]}" || exit 1

lane_a() {
  local rc=0
  if phase A build ninja -C "$build" -j"$jobs"; then
    touch "$logs/.built"
    phase A ctest bash -c "cd '$build' && ctest --output-on-failure -j$jobs" || rc=1
  else
    touch "$logs/.build-failed"
    rc=1
  fi
  if phase A sanitize make --no-print-directory sanitize BUILD="$build" JOBS="$jobs" UNITY=ON; then
    phase A fuzz make --no-print-directory fuzz-run BUILD="$build" FUZZ_SECONDS="$fuzz_seconds" || rc=1
  else
    rc=1
  fi
  return $rc
}
lane_b() {
  local rc=0
  # `make lint`, as the Makefile's test recipe spells it (LINT_CMD).
  # shellcheck disable=SC2086  # a command line: split on purpose
  phase B lint ${LINT_CMD:-make --no-print-directory lint} BUILD="$build" JOBS="$jobs" || rc=1
  phase B tsan make --no-print-directory tsan-unit BUILD="$build" JOBS="$jobs" UNITY=ON || rc=1
  # The Debian packages need lane A's build: made and tested in a clean
  # Debian 12 root (mostly downloads and dpkg) while lane A runs ctest.
  local waited=0
  until [[ -e "$logs/.built" || -e "$logs/.build-failed" ]] || ((waited > 3600)); do
    sleep 5
    waited=$((waited + 5))
  done
  if [[ -e "$logs/.built" ]]; then
    phase B deb tests/deb/deb_test.sh . "$build" || rc=1
  else
    echo "test: [B] deb skipped: the build failed or did not finish within an hour"
    rc=1
  fi
  return $rc
}
lane_a &
a=$!
lane_b
rc_b=$?
wait "$a"
rc_a=$?

total=$(($(date +%s) - start))
echo
echo "test: phases (lane A and lane B run side by side; m:ss)"
printf '  %-5s %-10s %8s %8s  %s\n' lane phase start took result
while IFS=$'\t' read -r lane name t0 took rc; do
  printf '  %-5s %-10s %5d:%02d %5d:%02d  %s\n' "$lane" "$name" $((t0 / 60)) $((t0 % 60)) \
    $((took / 60)) $((took % 60)) "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED ($rc)")"
done <"$table"
if [[ -f "$logs/ctest.log" ]]; then
  echo "  ctest labels (test time, summed over tests run side by side):"
  sed -n '/Label Time Summary:/,/^$/p' "$logs/ctest.log" | sed '1d;/^$/d;s/^/    /'
fi
printf '  total %d:%02d\n' $((total / 60)) $((total % 60))
if [[ -f "$logs/ctest.log" ]]; then
  echo
  sed -n '/tests passed/,$p' "$logs/ctest.log"
  # The failing cases by name, last, where a CI log's tail shows them:
  # pytest's summary lines and first assertion lines, gtest's FAILED lines.
  fails=$(grep -E '^(FAILED|ERROR) |^\[  FAILED  \] [A-Za-z]|^E  ' "$logs/ctest.log" | head -n 40)
  if [[ -n "$fails" ]]; then
    echo
    echo "test: the failing cases, as their suites named them:"
    echo "$fails"
  fi
fi
[[ $rc_a -eq 0 && $rc_b -eq 0 ]]
