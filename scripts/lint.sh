#!/usr/bin/env bash
# `make lint`: clang-format over every tracked C++ file, then clang-tidy (the
# curated list in .clang-tidy) with clang's thread-safety analysis over
# daemon/ and client/. Zero findings allowed. Usage: lint.sh [BUILD] [JOBS]
set -euo pipefail
build=${1:-build}
jobs=${2:-2}
cd "$(dirname "$0")/.."

mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cpp')
echo "lint: clang-format, ${#files[@]} files"
clang-format --dry-run -Werror "${files[@]}"

echo "lint: clang-tidy + -Wthread-safety over daemon/ and client/ ($jobs jobs)"
log="$build/lint-tidy.log"
# Each file once: the SDK compiles some daemon sources a second time as
# position-independent code, and the compile database lists both.
db="$build/lint-db"
mkdir -p "$db"
/usr/bin/python3 - "$build/compile_commands.json" "$db/compile_commands.json" <<'PY'
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
