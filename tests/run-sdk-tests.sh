#!/usr/bin/env bash
# Runs the Python and Node.js SDK tests, and the official OpenTelemetry JS SDK
# against the agent's OTLP/HTTP intake (make test calls it with the build dir).
# Their end-to-end tests use the agent binary of that build when it exists.
# Exits non-zero when either suite fails; prints each runner's summary.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build/release}
case "$build" in /*) ;; *) build="$root/$build" ;; esac
if [ -z "${SIDETRACE_BIN:-}" ] && [ -x "$build/agent/sidetrace" ]; then
  export SIDETRACE_BIN="$build/agent/sidetrace"
fi

status=0

echo "== Python SDK (sdk/python)"
if ! /usr/bin/python3 -c 'import msgpack, pytest' 2>/dev/null; then
  echo "python SDK tests need python3-msgpack and python3-pytest (scripts/install-deps.sh)" >&2
  status=1
else
  (cd "$root/sdk/python" && /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests) || status=1
fi

echo "== Node.js SDK (sdk/node)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node SDK tests need node and npm (scripts/install-deps.sh)" >&2
  status=1
else
  cd "$root/sdk/node" || exit 1
  if [ ! -d node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error || status=1
  fi
  node --test --test-reporter=tap test/*.test.js || status=1
fi

echo "== OpenTelemetry JS SDK into the agent's OTLP/HTTP intake (tests/otel)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "the OpenTelemetry tests need node and npm (scripts/install-deps.sh)" >&2
  status=1
else
  (cd "$root/tests/otel" &&
    { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } &&
    node --test --test-reporter=tap otlp_intake.test.js) || status=1
fi

echo "== Cross-language (tests/crosslang)"
(cd "$root" && /usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests/crosslang) || status=1

exit $status
