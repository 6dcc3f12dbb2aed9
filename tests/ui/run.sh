#!/bin/sh
# Runs the viewer's headless-Chromium test against a build:
#   tests/ui/run.sh BUILD_DIR
# Installs the pinned playwright-core (npm ci) when it is missing or stale.
# Skips, with exit 0, only when Chromium is not installed.
set -eu
if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
chromium=${SIDETRACE_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "tests/ui: SKIPPED: $chromium is not installed (apt-get install chromium)"
  exit 0
fi
bin="$build/agent/sidetrace"
if [ ! -x "$bin" ]; then
  echo "tests/ui: $bin not found; build the sidetrace target first" >&2
  exit 1
fi
cd "$here"
if [ ! -f node_modules/playwright-core/package.json ] ||
   [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
SIDETRACE_BIN="$bin" SIDETRACE_BUILD_DIR="$build" SIDETRACE_CHROMIUM="$chromium" \
  exec node --test --test-reporter=spec viewer.test.mjs
