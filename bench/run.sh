#!/usr/bin/env bash
# Runs every benchmark; each prints one JSON object per result line.
set -euo pipefail
build=${1:-build/release}
for b in "$build"/bench/*_bench; do
  [ -x "$b" ] || continue
  "$b"
done
