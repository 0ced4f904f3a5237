#!/usr/bin/env bash
# Installs exactly what ckptd's build, tests and benchmarks need on Debian 12,
# and nothing when it is all present. Called by `make run`, `make test` and
# the Dockerfile's build stage, so CI proves the same steps a user runs.
#
#   scripts/install-deps.sh            build + test dependencies (default)
#   scripts/install-deps.sh --build    only what building the Debian packages
#                                      needs (the container's build stage)
set -euo pipefail

cd "$(dirname "$0")/.."

build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libabsl-dev
  libboost-dev libboost-filesystem-dev libssl-dev
  libspdlog-dev libfmt-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libxxhash-dev
  libsystemd-dev liburing-dev
  libcurl4-openssl-dev libxml2-dev
  python3 python3-setuptools python3-wheel
)
test_pkgs=(
  libgtest-dev libgmock-dev libfuse3-dev
  clang libclang-rt-14-dev clang-format
  python3-venv flake8 mypy
  lintian debootstrap
  python3-numpy python3-xxhash python3-grpcio python3-protobuf python3-pytest python3-torch python3-yaml
  prometheus chromium fonts-dejavu-core
  ceph-mon ceph-osd radosgw ceph-common uuid-runtime python3-boto3 iproute2 xfsprogs
)
# Making the Debian packages (make deb); what they need at run time is in
# their Depends (debian/control, and dh_shlibdeps from the binaries).
deb_pkgs=(debhelper dh-python help2man)

# Peers the benchmark measures against (make bench only).
bench_pkgs=(fio iperf3)

mode=${1:-all}
case "$mode" in
  --build) wanted=("${build_pkgs[@]}" "${deb_pkgs[@]}") ;;
  --bench) wanted=("${bench_pkgs[@]}") ;;
  all | --all) wanted=("${build_pkgs[@]}" "${deb_pkgs[@]}" "${test_pkgs[@]}") ;;
  *) echo "usage: $0 [--build|--bench]" >&2; exit 2 ;;
esac

# Node may come from elsewhere (a nodesource build bundles npm and conflicts
# with Debian's npm package): only ask apt for it when there is none.
if [[ "$mode" == "all" || "$mode" == "--all" ]] && ! command -v npm >/dev/null; then
  wanted+=(nodejs npm)
fi

missing=()
for p in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # What was installed, with versions (the log then ties results to them).
  dpkg-query -W -f='  ${Package} ${Version}\n' "${missing[@]}" 2>/dev/null | sort
else
  echo "install-deps: all ${#wanted[@]} Debian packages present"
fi

[[ "$mode" == "--build" || "$mode" == "--bench" ]] && exit 0

# npm test tools (GGUF interop checker, llama.cpp via node-llama-cpp with its
# prebuilt CPU build), pinned in package-lock.json. --ignore-scripts: no
# postinstall downloads; --omit=optional: node-llama-cpp's CUDA/Vulkan/other
# platform builds stay out (the CPU one is a direct dependency).
if [[ ! -f node_modules/.package-lock.json ]] ||
   ! cmp -s package-lock.json node_modules/.ckptd-lock-stamp; then
  echo "install-deps: npm ci"
  npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.ckptd-lock-stamp
else
  echo "install-deps: node_modules matches package-lock.json"
fi
echo "  node $(node --version), npm $(npm --version 2>/dev/null)"
