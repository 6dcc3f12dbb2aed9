#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang (the whole tree instrumented with
# ASan+UBSan and fuzzer coverage) and runs each for a while on a copy of its
# seed corpus. Fails if any harness crashes, leaks, times out or runs out of
# memory; the inputs that did are kept in <build_dir>/artifacts/<harness>/.
# Prints one JSON line per harness:
#   {"fuzz":"decoder","seconds":30,"execs":N,"execs_per_s":N,"corpus":N,"crashes":0}
#
# usage: tests/fuzz/run.sh [seconds_per_harness] [build_dir]
#   defaults: 30 seconds, build/fuzz. SIDETRACE_SOURCE_DIR overrides the
#   source tree to configure (default: this checkout).
set -euo pipefail

seconds=${1:-30}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${2:-$root/build/fuzz}
src=${SIDETRACE_SOURCE_DIR:-$root}
harnesses=(decoder splitter config otlp)

if ! command -v clang++ >/dev/null; then
  echo "run.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer"
flags+=" -fno-sanitize-recover=undefined"
# GCC-only warning flags of the project (-Wno-restrict) are unknown to clang.
flags+=" -Wno-unknown-warning-option"
mkdir -p "$build"
if ! cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_CXX_FLAGS="$flags" \
  -DSIDETRACE_FUZZ=ON -DSIDETRACE_BUILD_TESTS=OFF -DSIDETRACE_BUILD_BENCH=OFF \
  >"$build/configure.log" 2>&1; then
  cat "$build/configure.log" >&2
  exit 1
fi
targets=()
for h in "${harnesses[@]}"; do targets+=(--target "fuzz_$h"); done
if ! cmake --build "$build" -j2 "${targets[@]}" >"$build/build.log" 2>&1; then
  tail -n 60 "$build/build.log" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sidetrace-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for h in "${harnesses[@]}"; do
  corpus=$work/$h/corpus
  artifacts=$work/$h/artifacts
  mkdir -p "$corpus" "$artifacts"
  cp "$here/corpus/$h/"* "$corpus/"
  # The hand-made bad messages seed the decoder too.
  if [ "$h" = decoder ]; then cp "$here/malformed/"*.msgpack "$corpus/"; fi
  start=$(date +%s.%N)
  rc=0
  "$build/tests/fuzz/fuzz_$h" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=20 \
    -max_len=16384 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" \
    >"$work/$h/log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$h/log" | tail -n 1)
  execs=${execs:-0}
  crashes=$(find "$artifacts" -type f | wc -l)
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  files=$(find "$corpus" -type f | wc -l)
  rate=$(awk -v n="$execs" -v a="$start" -v b="$end" 'BEGIN { t = b - a; printf "%d", (t > 0 ? n / t : 0) }')
  printf '{"fuzz":"%s","seconds":%s,"execs":%s,"execs_per_s":%s,"corpus":%s,"crashes":%s}\n' \
    "$h" "$seconds" "$execs" "$rate" "$files" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    keep=$build/artifacts/$h
    mkdir -p "$keep"
    cp "$artifacts/"* "$keep/" 2>/dev/null || true
    cp "$work/$h/log" "$keep/fuzz.log"
    echo "run.sh: fuzz_$h failed (exit $rc); inputs and log in $keep" >&2
    grep -E -A 30 'ERROR|invariant broken|runtime error|deadly signal' "$work/$h/log" | head -n 60 >&2 || true
  fi
done
exit "$failed"
