#!/usr/bin/env bash
# Runs every benchmark; each prints one JSON object per result line.
set -euo pipefail
build=${1:-build/release}
root=$(cd "$(dirname "$0")/.." && pwd)
for b in "$build"/bench/*_bench; do
  [ -x "$b" ] || continue
  "$b"
done
/usr/bin/python3 "$root/bench/footprint.py" "$build"
/usr/bin/python3 "$root/sdk/python/bench_emit.py"
(cd "$root/sdk/node" && { [ -d node_modules ] || npm ci --silent >/dev/null; } && node bench_emit.js)
