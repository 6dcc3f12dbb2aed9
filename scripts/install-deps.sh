#!/usr/bin/env bash
# Installs every Debian package that sidetrace's build, tests and benchmarks need,
# or with --build only those that building the agent needs (the container image).
# Idempotent: packages already present are skipped, and the package lists are
# refreshed at most once per run. Uses sudo when not run as root.
set -euo pipefail

# The libraries the agent builds against (also unpacked for arm64 by
# scripts/test-arm64.sh, which reads them with --libraries).
libraries=(
  libboost-dev libboost-system-dev libboost-regex-dev
  libmsgpack-cxx-dev librocksdb-dev libjemalloc-dev
  libspdlog-dev libfmt-dev
  libtomlplusplus-dev libcli11-dev
  libssl-dev zlib1g-dev libzstd-dev libisal-dev
  nlohmann-json3-dev libsystemd-dev
  libprotobuf-dev
)
# Building the agent.
packages=(build-essential cmake make pkg-config protobuf-compiler "${libraries[@]}")
build_only=0
if [ "${1:-}" = "--build" ]; then
  build_only=1
elif [ "${1:-}" = "--libraries" ]; then
  echo "${libraries[@]}" libgtest-dev libgmock-dev
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--build | --libraries]" >&2
  exit 2
fi
# The tests, the benchmarks and the tools around them.
if [ $build_only -eq 0 ]; then
  packages+=(
    git openssl
    libgtest-dev libgmock-dev
    python3 python3-msgpack python3-pytest python3-protobuf
    clang-format clang libclang-rt-14-dev
    systemd
    chromium
  )
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# Node.js runs the Node SDK's tests; a machine that already has it (with its own
# npm) keeps it, since Debian's npm conflicts with other Node.js builds.
if [ $build_only -eq 0 ] && ! command -v node >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
