#!/usr/bin/env bash
# Side-by-side benchmark: sidetrace and syslog-ng doing the same durable-delivery
# job on this machine, one after the other (docs/benchmarks.md).
#
#   bench/compare/run.sh            (make bench-compare)
#
# For each agent (sidetrace with buffer.sync "os", then "fsync", then syslog-ng):
#   1. steady load for COMPARE_STEADY_S seconds (default 20), upstream up;
#   2. the upstream down (connection refused) for COMPARE_OUTAGE_S seconds
#      (default 60) while the load goes on;
#   3. the load stops, the upstream comes back, and the agent drains until every
#      message sent has been delivered, or COMPARE_DRAIN_TIMEOUT_S (default 600)
#      says what is missing.
# Prints one JSON line per agent and run, the ratios, and a table (on stderr). A run
# that cannot finish says why on stderr (the failed step, or the line and command that
# failed) and exits non-zero.
#
# Environment: SIDETRACE_BIN (default build/release/agent/sidetrace),
# COMPARE_RATE (messages/s cap of the load generator; default 0 = unthrottled),
# COMPARE_SYNCS (default "os fsync"), COMPARE_AGENTS (default "sidetrace syslog-ng"),
# COMPARE_BUILD (tools build dir, default build/compare), COMPARE_KEEP=1 keeps the
# work directory, COMPARE_LOG_LEVEL (sidetrace's log.level, default warn; debug
# logs RocksDB's flushes and compactions).
set -Eeuo pipefail
# Command substitutions stop at their first failure too, as the script does.
shopt -s inherit_errexit

# A failing command stops the run; this says which one, where and with what status
# (once per shell: a failure inside $(...) is followed by the line that used it).
err_reported=0
on_error() {  # status line command
  local status=$1 line=$2 cmd=$3 where="" i
  [ "$err_reported" = 0 ] || return 0
  err_reported=1
  for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
    where+=" in ${FUNCNAME[i]}() called from line ${BASH_LINENO[i]}"
  done
  printf '[compare %(%H:%M:%S)T] error: line %s%s: "%s" failed with status %s\n' -1 \
    "$line" "$where" "$cmd" "$status" >&2
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR

root=$(cd "$(dirname "$0")/../.." && pwd)
steady=${COMPARE_STEADY_S:-20}
outage=${COMPARE_OUTAGE_S:-60}
drain_timeout=${COMPARE_DRAIN_TIMEOUT_S:-600}
rate=${COMPARE_RATE:-0}
syncs=${COMPARE_SYNCS:-os fsync}
agents=${COMPARE_AGENTS:-sidetrace syslog-ng}
bin=${SIDETRACE_BIN:-$root/build/release/agent/sidetrace}
tools=${COMPARE_BUILD:-$root/build/compare}

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }

# --- prerequisites -----------------------------------------------------------
if [[ " $agents " == *" syslog-ng "* ]] &&
   { ! command -v syslog-ng >/dev/null || [ ! -e /usr/lib/syslog-ng/3.38/libhttp.so ]; }; then
  log "installing syslog-ng-core and syslog-ng-mod-http"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    syslog-ng-core syslog-ng-mod-http >&2 ||
    { "${sudo_cmd[@]}" apt-get update >&2 &&
      "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends syslog-ng-core syslog-ng-mod-http >&2; }
fi
if [[ " $agents " == *" sidetrace "* ]]; then
  [ -x "$bin" ] || die "no sidetrace binary at $bin (build it or set SIDETRACE_BIN)"
fi
log "building the load generator and the sink in $tools"
cmake -S "$root/bench/compare" -B "$tools" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$tools" -j2 >/dev/null

work=$(mktemp -d /tmp/sidetrace-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${COMPARE_KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- the upstream ------------------------------------------------------------
"$tools/compare_sink" --ports-file "$work/ports" 2>"$work/sink.log" &
sink_pid=$!
pids+=("$sink_pid")
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
[ -s "$work/ports" ] || die "the sink did not start"
read -r data_port control_port <"$work/ports"
sink_log() { { tail -n 5 "$work/sink.log" 2>/dev/null || true; } | tr '\n' ' '; }
ctl() {
  curl -sf -X POST "http://127.0.0.1:$control_port/$1" >/dev/null ||
    die "the sink did not take POST /$1 (curl status $?); sink log: $(sink_log)"
}
stats() {
  curl -sf "http://127.0.0.1:$control_port/stats" ||
    die "the sink did not answer GET /stats (curl status $?); sink log: $(sink_log)"
}
jget() { sed -E "s/.*\"$2\":([^,}]*).*/\1/" <<<"$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
clk_tck=$(getconf CLK_TCK)
cpu_seconds() { awk -v t="$clk_tck" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
peak_rss_mib() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
# CPU seconds of the process's threads named `name` (RocksDB names its compaction threads
# rocksdb:low, its flush threads rocksdb:high); 0 when it has none.
thread_cpu_seconds() {  # pid name
  local t sum=0 c
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ] || continue
    c=$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null) || continue
    sum=$((sum + c))
  done
  awk -v s="$sum" -v t="$clk_tck" 'BEGIN {print s / t}'
}
# Bytes the process had written to storage (the kernel's I/O accounting, less what it
# deleted before writeback): its own writes, flushes and compactions or disk buffer.
disk_written_bytes() {
  awk '/^write_bytes:/ {w = $2} /^cancelled_write_bytes:/ {c = $2} END {print w - c}' "/proc/$1/io"
}
is_count() { [[ $1 =~ ^[0-9]+$ ]]; }
running() {  # pid: true while the process exists and has not exited (a child not yet reaped)
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# MiB used under a directory (du -sm). The agents delete files while du walks the tree
# (RocksDB's WAL and compactions, syslog-ng's disk buffer); du then reports "No such file
# or directory" and exits with status 1, having counted the rest. A clean walk is tried
# three times; otherwise the last total stands, and the run goes on either way.
disk_mib() {  # dir
  local dir=$1 out="" rc=0 _
  for _ in 1 2 3; do
    rc=0
    out=$(du -sm "$dir" 2>"$work/du.err") || rc=$?
    if [ "$rc" = 0 ]; then break; fi
  done
  out=${out%%[[:space:]]*}
  if ! is_count "$out"; then
    log "warning: du could not measure $dir (status $rc: $(tail -n 1 "$work/du.err"));" \
      "outage_disk_mib reported as 0"
    out=0
  elif [ "$rc" != 0 ]; then
    log "note: files under $dir vanished while du walked it ($(head -n 1 "$work/du.err"));" \
      "its total stands"
  fi
  echo "$out"
}

results=()
declare -A R  # R[agent/sync/field]

# --- agents ------------------------------------------------------------------
start_sidetrace() {  # dir sync
  local dir=$1 sync=$2 admin
  admin=$(free_port)
  echo "$admin" >"$dir/admin_port"
  cat >"$dir/sidetrace.toml" <<EOF
# sidetrace side of bench/compare/run.sh (generated).
data_dir = "$dir/data"

[listen]
unix_stream = ""
unix_dgram = "$dir/app.dgram.sock"
udp = ""
otlp_http = ""
rcvbuf_bytes = "8MiB"

[admin]
listen = "127.0.0.1:$admin"

[upstream]
endpoint = "http://127.0.0.1:$data_port"
format = "native"
compression = "gzip"
batch_max_events = 2000
batch_max_bytes = "4MiB"
flush_interval_ms = 200
max_in_flight = 4
retry_initial_ms = 500
retry_max_ms = 1000

[buffer]
sync = "$sync"
max_bytes = "32GiB"

[log]
level = "${COMPARE_LOG_LEVEL:-warn}"
EOF
  "$bin" agent --config "$dir/sidetrace.toml" >"$dir/agent.log" 2>&1 &
  agent_pid=$!
}

start_syslog_ng() {  # dir
  local dir=$1
  mkdir -p "$dir/diskbuf"
  sed -e "s#@DIR@#$dir#g" -e "s#@PORT@#$data_port#g" "$root/bench/compare/syslog-ng.conf.in" \
    >"$dir/syslog-ng.conf"
  syslog-ng -F -e --no-caps -f "$dir/syslog-ng.conf" -R "$dir/syslog-ng.persist" \
    --pidfile "$dir/syslog-ng.pid" --control "$dir/syslog-ng.ctl" >"$dir/agent.log" 2>&1 &
  agent_pid=$!
}

agent_counters() {  # agent dir -> "dropped" figure from the agent's own counters
  local agent=$1 dir=$2
  if [ "$agent" = sidetrace ]; then
    curl -sf "http://127.0.0.1:$(cat "$dir/admin_port")/metrics" >"$dir/metrics.txt" || true
    awk '/^sidetrace_(intake_queue_full_drops|kernel_drops|rejected_messages|dropped_messages|dropped_by_policy)_total/ {s += $NF} END {printf "%d", s}' "$dir/metrics.txt"
  else
    syslog-ng-ctl stats -c "$dir/syslog-ng.ctl" >"$dir/metrics.txt" 2>/dev/null || true
    awk -F';' '$6 == "dropped" {s += $7} END {printf "%d", s}' "$dir/metrics.txt"
  fi
}

run_one() {  # agent sync
  local agent=$1 sync=$2 dir="$work/$1-$2" fmt=msgpack
  mkdir -p "$dir"
  ctl up
  ctl reset
  if [ "$agent" = sidetrace ]; then start_sidetrace "$dir" "$sync"; else start_syslog_ng "$dir"; fmt=json; fi
  pids+=("$agent_pid")
  for _ in $(seq 600); do [ -S "$dir/app.dgram.sock" ] && break; sleep 0.05; done
  [ -S "$dir/app.dgram.sock" ] || { cat "$dir/agent.log" >&2; die "$agent did not open its socket"; }
  log "$agent ($sync): steady load ${steady}s, upstream up"

  local t_up s_up s_down s_end sent disk
  "$tools/compare_loadgen" --socket "$dir/app.dgram.sock" --format "$fmt" \
    --seconds "$(awk -v a="$steady" -v b="$outage" 'BEGIN {print a + b}')" --rate "$rate" \
    >"$dir/loadgen.json" &
  local gen_pid=$!
  sleep "$steady"
  s_down=$(stats)
  ctl down
  log "$agent ($sync): upstream down for ${outage}s, load continues"
  sleep "$outage"
  wait "$gen_pid" || die "load generator failed: $(cat "$dir/loadgen.json")"
  disk=$(disk_mib "$dir")
  ctl up
  t_up=$(now)
  s_up=$(stats)
  local gen
  gen=$(cat "$dir/loadgen.json")
  sent=$(jget "$gen" sent)
  is_count "$sent" || die "the load generator reported no count: $gen"
  log "$agent ($sync): load stopped ($sent sent), upstream up, draining"
  local deadline unique
  deadline=$(awk -v t="$t_up" -v d="$drain_timeout" 'BEGIN {printf "%.3f", t + d}')
  while :; do
    s_end=$(stats)
    unique=$(jget "$s_end" unique)
    is_count "$unique" || die "the sink's stats hold no count: $s_end"
    if [ "$unique" -ge "$sent" ]; then break; fi
    if awk -v n="$(now)" -v d="$deadline" 'BEGIN {exit !(n > d)}'; then
      log "$agent ($sync): drain timeout, $((sent - unique)) of $sent messages missing"
      break
    fi
    sleep 0.2
  done
  # Late duplicates (a retried batch) still count: give in-flight requests a moment.
  sleep 1
  s_end=$(stats)
  local cpu rss written compaction dropped
  running "$agent_pid" ||
    die "$agent ($sync) exited during the run; its log ends: $(tail -n 20 "$dir/agent.log" || true)"
  cpu=$(cpu_seconds "$agent_pid")
  rss=$(peak_rss_mib "$agent_pid")
  written=$(disk_written_bytes "$agent_pid")
  compaction=$(thread_cpu_seconds "$agent_pid" rocksdb:low)
  dropped=$(agent_counters "$agent" "$dir")
  kill -TERM "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true

  local line
  line=$(awk -v agent="$agent" -v sync="$sync" -v sent="$sent" \
    -v gen_s="$(jget "$gen" seconds)" -v eagain="$(jget "$gen" eagain)" \
    -v steady="$steady" -v outage="$outage" \
    -v u_down="$(jget "$s_down" unique)" -v u_up="$(jget "$s_up" unique)" \
    -v up_ns="$(jget "$s_up" now_ns)" \
    -v unique="$(jget "$s_end" unique)" -v dups="$(jget "$s_end" duplicates)" \
    -v last_ns="$(jget "$s_end" last_unique_ns)" -v requests="$(jget "$s_end" requests)" \
    -v cpu="$cpu" -v rss="$rss" -v written="$written" -v compaction="$compaction" -v dropped="$dropped" -v disk="$disk" 'BEGIN {
      lost = sent - unique; if (lost < 0) lost = 0
      drain_s = (last_ns - up_ns) / 1e9; if (drain_s < 0) drain_s = 0
      ingest = sent / gen_s
      durable = (sent - lost) / gen_s
      delivered = unique / (steady + drain_s)
      drain_rate = drain_s > 0 ? (unique - u_up) / drain_s : 0
      printf "{\"bench\":\"compare\",\"agent\":\"%s\",\"sync\":\"%s\",\"events\":%d,", agent, sync, sent
      printf "\"ingest_events_per_s\":%.0f,\"durable_events_per_s\":%.0f,", ingest, durable
      printf "\"delivered_events_per_s\":%.0f,\"steady_delivered_events_per_s\":%.0f,", delivered, u_down / steady
      printf "\"drain_events_per_s\":%.0f,\"drain_s\":%.1f,", drain_rate, drain_s
      pending = lost - dropped; if (pending < 0) pending = 0
      printf "\"lost\":%d,\"duplicates\":%d,\"agent_dropped\":%d,\"undelivered\":%d,", lost, dups, dropped, pending
      printf "\"sender_eagain\":%d,", eagain
      printf "\"peak_rss_mib\":%s,\"cpu_us_per_event\":%.2f,\"outage_disk_mib\":%d,", rss, cpu * 1e6 / sent, disk
      printf "\"disk_written_bytes_per_event\":%.0f,", written / sent
      if (agent == "sidetrace") printf "\"compaction_cpu_us_per_event\":%.2f,", compaction * 1e6 / sent
      printf "\"requests\":%d,", requests
      printf "\"steady_s\":%s,\"outage_s\":%s}\n", steady, outage
    }')
  echo "$line"
  results+=("$line")
  for f in durable_events_per_s delivered_events_per_s; do
    R[$agent/$sync/$f]=$(jget "$line" "$f")
  done
  [ "${COMPARE_KEEP:-0}" = 1 ] || rm -rf "$dir/data" "$dir/diskbuf"
}

log "load $( [ "$rate" = 0 ] && echo unthrottled || echo "capped at $rate/s"), steady ${steady}s, outage ${outage}s; $(uptime)"
for agent in $agents; do
  if [ "$agent" = sidetrace ]; then
    for sync in $syncs; do run_one sidetrace "$sync"; done
  else
    run_one syslog-ng disk-buffer
  fi
done
log "done; $(uptime)"

if [[ " $agents " == *" sidetrace "* && " $agents " == *" syslog-ng "* ]]; then
  for sync in $syncs; do
    line=$(awk -v a="${R[sidetrace/$sync/durable_events_per_s]}" \
      -v b="${R[syslog-ng/disk-buffer/durable_events_per_s]}" \
      -v c="${R[sidetrace/$sync/delivered_events_per_s]}" \
      -v d="${R[syslog-ng/disk-buffer/delivered_events_per_s]}" -v sync="$sync" 'BEGIN {
        printf "{\"bench\":\"compare\",\"sync\":\"%s\",\"ratio_durable_throughput\":%.2f,\"ratio_delivered_throughput\":%.2f}\n",
          sync, (b > 0 ? a / b : 0), (d > 0 ? c / d : 0) }')
    echo "$line"
    results+=("$line")
  done
fi

{
  printf '\n%-10s %-11s %10s %12s %12s %9s %6s %6s %9s %9s %9s\n' agent sync events "durable/s" \
    "delivered/s" "drain/s" lost dups "rss MiB" "cpu us/ev" "disk B/ev"
  for line in "${results[@]}"; do
    [[ "$line" == *'"agent"'* ]] || continue
    printf '%-10s %-11s %10s %12s %12s %9s %6s %6s %9s %9s %9s\n' "$(jget "$line" agent | tr -d '"')" \
      "$(jget "$line" sync | tr -d '"')" "$(jget "$line" events)" \
      "$(jget "$line" durable_events_per_s)" "$(jget "$line" delivered_events_per_s)" \
      "$(jget "$line" drain_events_per_s)" "$(jget "$line" lost)" "$(jget "$line" duplicates)" \
      "$(jget "$line" peak_rss_mib)" "$(jget "$line" cpu_us_per_event)" \
      "$(jget "$line" disk_written_bytes_per_event)"
  done
} >&2
