#!/usr/bin/env bash
# Builds the GGUF reader's libFuzzer target with clang (ASan + UBSan) and runs
# it for a bounded time on a seed corpus of files our writer produced.
#   scripts/run-fuzz.sh BUILD_DIR SECONDS
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seconds=${2:-30}

if ! command -v clang++ >/dev/null; then
  echo "run-fuzz: clang++ not found; skipping the fuzz run (scripts/install-deps.sh installs it)"
  exit 0
fi

fuzz_build="$build-fuzz"
cmake -S . -B "$fuzz_build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCKPTD_FUZZ=ON -DCKPTD_SANITIZE=address,undefined >/dev/null
ninja -C "$fuzz_build" -j2 gguf_reader_fuzz

corpus="$fuzz_build/corpus"
mkdir -p "$corpus"
for seed in 1 2 3 4 5; do
  "$build/tests/gguf/gguf_fixture_writer" "$corpus/seed$seed.gguf" /dev/null "$seed" >/dev/null
done

echo "run-fuzz: fuzzing the GGUF reader for ${seconds}s"
"$fuzz_build/tests/fuzz/gguf_reader_fuzz" -max_total_time="$seconds" -max_len=65536 \
  -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -n 12
echo "run-fuzz: no crash in ${seconds}s"
