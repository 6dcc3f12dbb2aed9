#!/usr/bin/env bash
# Cross-builds sidetrace for arm64 with Debian's cross toolchain and runs the
# unit tests under qemu-user (make test-arm64).
#
# The arm64 libraries are Debian's own packages, downloaded and unpacked into
# build/arm64/sysroot rather than installed: installing them beside the
# build machine's would replace some (librocksdb-dev, libjemalloc-dev are not
# co-installable across architectures). The machine only gains arm64 as a
# dpkg architecture (so that apt can fetch its package lists), the cross
# compiler and qemu-user.
#
# Environment: ARM64_BUILD (default build/arm64), JOBS (default nproc),
# ARM64_CTEST_ARGS (extra ctest arguments, e.g. "-R Store"), ARM64_TEST_TIMEOUT
# (seconds per test under emulation, default 300).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${ARM64_BUILD:-$root/build/arm64}
sysroot=$out/sysroot
jobs=${JOBS:-$(nproc)}
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "test-arm64: adding arm64 to dpkg's architectures" >&2
  $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
fi
missing=()
for p in crossbuild-essential-arm64 qemu-user; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-arm64: installing ${missing[*]}" >&2
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The arm64 libraries and everything they depend on, except what the cross
# toolchain itself provides (the C library, its headers, the C++ runtime).
read -r -a libs <<<"$(bash "$root/scripts/install-deps.sh" --libraries)"
if [ ! -f "$sysroot/.complete" ]; then
  rm -rf "$sysroot" "$out/debs"
  mkdir -p "$sysroot" "$out/debs"
  # Names for apt: arm64 packages qualified, packages of every architecture
  # ("all") as they are.
  qualify() {
    apt-cache show --no-all-versions "$@" 2>/dev/null |
      awk '/^Package: /{p=$2} /^Architecture: /{print ($2 == "all") ? p : p ":arm64"}' | sort -u
  }
  mapfile -t top < <(qualify "${libs[@]}")
  mapfile -t names < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${top[@]}" |
      grep -E '^[a-z0-9]' | grep -vE ':(amd64|i386)$' | sed 's/:arm64$//' | sort -u |
      grep -vE '^(libc6|libc6-dev|libc-dev-bin|linux-libc-dev|libcrypt1|libcrypt-dev|libgcc-s1|libstdc\+\+6|libstdc\+\+-[0-9]+-dev|libgcc-[0-9]+-dev|gcc-[0-9]+-base|libnsl-dev|libnsl2|libtirpc-dev|libtirpc3|rpcsvc-proto)$')
  mapfile -t closure < <(qualify "${names[@]}")
  echo "test-arm64: downloading ${#closure[@]} arm64 packages" >&2
  # As root, apt would hand the download to its unprivileged user, who may
  # not be able to write here.
  sandbox=()
  [ -z "$sudo" ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$out/debs" && apt-get download -qq "${sandbox[@]}" "${closure[@]}")
  for deb in "$out"/debs/*.deb; do
    dpkg-deb -x "$deb" "$sysroot"
  done
  # Absolute symbolic links (libbz2.so -> /lib/...) point into the sysroot.
  find "$sysroot" -type l -lname '/*' -print0 |
    while IFS= read -r -d '' link; do
      ln -sfn "$sysroot$(readlink "$link")" "$link"
    done
  # Some packages' CMake files name their libraries by absolute path
  # (/usr/lib/aarch64-linux-gnu/...): point those into the sysroot.
  find "$sysroot" -name '*.cmake' -print0 |
    xargs -0 sed -i -E -e "s#([\";( ])/usr/(lib|include)#\1$sysroot/usr/\2#g" \
      -e "s#set\(PACKAGE_PREFIX_DIR \"/usr\"\)#set(PACKAGE_PREFIX_DIR \"$sysroot/usr\")#"
  touch "$sysroot/.complete"
fi

cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
  -DSIDETRACE_ARM64_SYSROOT="$sysroot" -DSIDETRACE_BUILD_BENCH=OFF >/dev/null
[ "${ARM64_CONFIGURE_ONLY:-0}" = 1 ] && exit 0
cmake --build "$out" -j"$jobs"
file "$out/agent/sidetrace"
# shellcheck disable=SC2086
ctest --test-dir "$out" -j"$jobs" --output-on-failure --timeout "${ARM64_TEST_TIMEOUT:-300}" ${ARM64_CTEST_ARGS:-}
