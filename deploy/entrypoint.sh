#!/bin/sh
# Container entrypoint for the sidetrace agent. Configuration comes from the
# environment alone (SIDETRACE_<SECTION>_<KEY>, see docs/deploy.md); this
# script only makes sure the directories those settings name exist and are
# writable, then replaces itself with the agent so that the agent is the
# process the container runtime signals (SIGTERM stops it cleanly).
#
#   SIDETRACE_BIN     the binary (default /usr/bin/sidetrace)
#   SIDETRACE_CONFIG  an optional TOML file (e.g. a mounted ConfigMap); the
#                     environment still overrides it
# Arguments are passed on to `sidetrace agent`.
set -eu

bin="${SIDETRACE_BIN:-/usr/bin/sidetrace}"

fail() {
  echo "sidetrace entrypoint: $*" >&2
  exit 78  # EX_CONFIG: restarting will not help
}

# ensure_dir VARIABLE DIRECTORY: creates DIRECTORY and checks it is writable.
ensure_dir() {
  mkdir -p -- "$2" 2>/dev/null || fail "$1: cannot create $2"
  [ -w "$2" ] || fail "$1: $2 is not writable by uid $(id -u)"
}

[ -x "$bin" ] || fail "SIDETRACE_BIN: $bin is not an executable"

ensure_dir SIDETRACE_DATA_DIR "${SIDETRACE_DATA_DIR:-/var/lib/sidetrace}"
stream="${SIDETRACE_LISTEN_UNIX_STREAM-/run/sidetrace/agent.sock}"
dgram="${SIDETRACE_LISTEN_UNIX_DGRAM-/run/sidetrace/agent.dgram.sock}"
[ -z "$stream" ] || ensure_dir SIDETRACE_LISTEN_UNIX_STREAM "$(dirname -- "$stream")"
[ -z "$dgram" ] || ensure_dir SIDETRACE_LISTEN_UNIX_DGRAM "$(dirname -- "$dgram")"
if [ -n "${SIDETRACE_EXPORTER_FILE:-}" ]; then
  ensure_dir SIDETRACE_EXPORTER_FILE "$(dirname -- "$SIDETRACE_EXPORTER_FILE")"
fi

if [ -n "${SIDETRACE_CONFIG:-}" ]; then
  [ -r "$SIDETRACE_CONFIG" ] || fail "SIDETRACE_CONFIG: cannot read $SIDETRACE_CONFIG"
  exec "$bin" agent --config "$SIDETRACE_CONFIG" "$@"
fi
exec "$bin" agent "$@"
