#!/usr/bin/env bash
# Runs each libFuzzer target (built by `make fuzz` or `make sanitize` in the
# clang ASan + UBSan tree, BUILD-asan) for a bounded time on a seed corpus:
#   gguf_reader_fuzz     GGUF header and tensor-table reader (files our writer produced)
#   request_fuzz         save/OpenRun request checks and conversions (protobuf)
#   arena_request_fuzz   the arena socket's request parser
#   export_profile_fuzz  export profiles (TOML -> compiled profile)
#   config_fuzz          the config loader (TOML -> validated Config)
# A crash leaves its input in BUILD-asan/fuzz/crashes/ and fails the run.
#   scripts/run-fuzz.sh BUILD_DIR SECONDS_PER_TARGET
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
seconds=${2:-30}
targets=(gguf_reader_fuzz request_fuzz arena_request_fuzz export_profile_fuzz config_fuzz)

if ! command -v clang++ >/dev/null; then
  echo "run-fuzz: clang++ not found; skipping the fuzz run (scripts/install-deps.sh installs it)"
  exit 0
fi

fuzz_build="$build-asan"
for target in "${targets[@]}"; do
  if [[ ! -x "$fuzz_build/tests/fuzz/$target" ]]; then
    echo "run-fuzz: $fuzz_build/tests/fuzz/$target is not built (make fuzz builds it)" >&2
    exit 1
  fi
done
work="$fuzz_build/fuzz"
seeds="$work/seeds"
rm -rf "$seeds" && mkdir -p "$seeds"/{gguf_reader_fuzz,request_fuzz,arena_request_fuzz,export_profile_fuzz,config_fuzz}
for seed in 1 2 3 4 5; do
  "$fuzz_build/tests/gguf/gguf_fixture_writer" "$seeds/gguf_reader_fuzz/seed$seed.gguf" /dev/null \
    "$seed" >/dev/null
done
cp config/ckptd.example.toml "$seeds/config_fuzz/example.toml"
printf '[server]\nlisten = "0.0.0.0:1"\ninsecure = true\n' >"$seeds/config_fuzz/tcp.toml"
# The built-in export profiles, as their TOML.
awk '/R"toml\(/{f=1; n++; next} /\)toml"/{f=0} f{print > (dir "/builtin" n ".toml")}' \
  dir="$seeds/export_profile_fuzz" daemon/export/builtin_profiles.cc
printf '\001REGISTER 0123456789abcdef' >"$seeds/arena_request_fuzz/register"
printf '\000ATTACH 0123456789abcdef 140737488355328 4096' >"$seeds/arena_request_fuzz/attach"
printf '\000HOT llama-7b 1000' >"$seeds/arena_request_fuzz/hot"
# Requests as the clients send them (Debian's protobuf, the stubs make build generated).
PYTHONPATH="$build/python/lib" /usr/bin/python3 - "$seeds/request_fuzz" <<'PY' || echo "run-fuzz: no protobuf seeds (python3-protobuf missing?)"
import sys
from ckptd.v1 import ckptd_pb2 as pb
out = sys.argv[1]
h = pb.SaveHeader(run_id="llama", step=100, force=True, metrics={"loss": 1.5})
h.tensors.add(name="token_embd.weight", type=pb.TENSOR_TYPE_F32, ne=[64, 32])
h.tensors.add(name="opt.0.exp_avg", type=pb.TENSOR_TYPE_F32, ne=[64], group=pb.TENSOR_GROUP_TRAIN)
h.train_metadata.add(key="ckpt.extra", value=pb.MetadataValue(string_value='{"lr": 0.1}'))
open(f"{out}/save", "wb").write(b"\x00" + h.SerializeToString())
r = pb.OpenRunRequest(run_id="llama", schedule=pb.Schedule(every_steps=500))
r.model_metadata.add(key="general.architecture", value=pb.MetadataValue(string_value="llama"))
r.model_metadata.add(key="llama.block_count", value=pb.MetadataValue(u32=2))
r.provenance.git_commit = "abc123"
open(f"{out}/open_run", "wb").write(b"\x01" + r.SerializeToString())
PY

mkdir -p "$work/crashes"
# One libFuzzer process is one thread: the targets run FUZZ_JOBS at a time
# (default: one per core), each for the same SECONDS as when run alone.
jobs=${FUZZ_JOBS:-$(nproc)}
run_one() {
  local target=$1 corpus="$work/corpus/$1" status=0
  mkdir -p "$corpus"
  "$fuzz_build/tests/fuzz/$target" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
    -artifact_prefix="$work/crashes/$target-" -print_final_stats=1 \
    "$corpus" "$seeds/$target" >"$work/$target.log" 2>&1 || status=$?
  {
    echo "run-fuzz: $target for ${seconds}s"
    tail -n 6 "$work/$target.log"
    if [ "$status" -ne 0 ]; then
      echo "run-fuzz: $target failed (exit $status); inputs in $work/crashes/, its log $work/$target.log"
    fi
  }
  return "$status"
}
failed=0
running=()
for target in "${targets[@]}"; do
  run_one "$target" &
  running+=("$!")
  if ((${#running[@]} >= jobs)); then
    wait "${running[0]}" || failed=1 # all run equally long: the oldest ends first
    running=("${running[@]:1}")
  fi
done
for pid in "${running[@]}"; do
  wait "$pid" || failed=1
done
if ((failed)); then
  echo "run-fuzz: a target failed (above)"
  exit 1
fi
echo "run-fuzz: no crash in ${#targets[@]} targets × ${seconds}s, $jobs at a time"
