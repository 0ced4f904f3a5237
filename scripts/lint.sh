#!/usr/bin/env bash
# `make lint`: clang-format over every tracked C++ file, flake8 over every
# tracked Python file (.flake8), mypy over the built Python package
# (client/python/pyproject.toml), then clang-tidy (the curated list in
# .clang-tidy) with clang's thread-safety analysis over daemon/ and client/.
# Zero findings allowed. Usage: lint.sh [BUILD] [JOBS]
# (BUILD names the tree; lint's own is BUILD-lint)
set -euo pipefail
build=${1:-build}
jobs=${2:-2}
cd "$(dirname "$0")/.."

mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cpp')
echo "lint: clang-format, ${#files[@]} files"
clang-format --dry-run -Werror "${files[@]}"

# clang-tidy wants one compile command per source file, and a unity build
# (make test's) lists its batches instead: lint configures a tree of its
# own, of which it only needs the compile database and the generated API
# headers.
tree="$build-lint"
mkdir -p "$tree"
cmake -S . -B "$tree" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCKPTD_WERROR=ON \
  -DCMAKE_UNITY_BUILD=OFF >"$tree/configure.log" 2>&1 || { cat "$tree/configure.log"; exit 1; }
ninja -C "$tree" ckptd_proto_gen >/dev/null
mapfile -t py < <(git ls-files '*.py')
echo "lint: flake8, ${#py[@]} files"
/usr/bin/python3 -m flake8 "${py[@]}"

echo "lint: mypy over the Python package"
ninja -C "$tree" ckptd_python >/dev/null
/usr/bin/python3 -m mypy --config-file client/python/pyproject.toml --cache-dir "$tree/mypy-cache" \
  "$tree/python/lib/ckptd"

echo "lint: clang-tidy + -Wthread-safety over daemon/ and client/ ($jobs jobs)"
log="$tree/lint-tidy.log"
# Each file once: the SDK compiles some daemon sources a second time as
# position-independent code, and the compile database lists both.
db="$tree/lint-db"
mkdir -p "$db"
/usr/bin/python3 - "$tree/compile_commands.json" "$db/compile_commands.json" <<'PY'
import json, sys
seen, out = set(), []
for entry in json.load(open(sys.argv[1])):
    if entry["file"] not in seen:
        seen.add(entry["file"])
        out.append(entry)
json.dump(out, open(sys.argv[2], "w"))
PY
if ! run-clang-tidy -p "$db" -j "$jobs" -quiet -extra-arg=-Wthread-safety \
    -extra-arg=-Wno-unknown-warning-option "$PWD/(daemon|client)/" >"$log" 2>&1; then
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E "(error|warning): " | grep -v "warnings generated" |
    sort -u
  echo "lint: clang-tidy found the above (full log: $log)"
  exit 1
fi
echo "lint: clean"
