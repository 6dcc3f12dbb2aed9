#!/usr/bin/env bash
# Runs the sidetrace reliability suite (tests/system) against the real agent binary and
# prints the summary table. Short form by default; SIDETRACE_SOAK=1 selects the long form.
#   tests/system/run.sh [BUILD_DIR] [extra pytest args...]
# Environment: SIDETRACE_BIN (default BUILD_DIR/agent/sidetrace), SIDETRACE_SOAK,
# SIDETRACE_SYSTEM_REPORT (JSON lines of the table; default BUILD_DIR/system-report.jsonl).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${1:-build/release}"
[[ $# -gt 0 ]] && shift
case "$build" in /*) ;; *) build="$repo/$build" ;; esac
export SIDETRACE_BIN="${SIDETRACE_BIN:-$build/agent/sidetrace}"
export PYTHONDONTWRITEBYTECODE=1
export SIDETRACE_SYSTEM_REPORT="${SIDETRACE_SYSTEM_REPORT:-$build/system-report.jsonl}"
if [[ ! -x "$SIDETRACE_BIN" ]]; then
  echo "run.sh: agent binary not found: $SIDETRACE_BIN (build it first: make build)" >&2
  exit 2
fi
if ! /usr/bin/python3 -c 'import pytest, msgpack' 2>/dev/null; then
  echo "run.sh: needs python3-pytest and python3-msgpack (apt-get install python3-pytest python3-msgpack)" >&2
  exit 2
fi
rm -f "$SIDETRACE_SYSTEM_REPORT"
mode=short
[[ "${SIDETRACE_SOAK:-0}" != 0 && -n "${SIDETRACE_SOAK:-}" ]] && mode=soak
echo "sidetrace system suite ($mode form): $SIDETRACE_BIN"
cd "$here"
exec /usr/bin/python3 -m pytest -p no:cacheprovider -q -rfEsxX "$@"
