#!/usr/bin/python3
"""Footprint benchmark: what the real agent costs its host at fixed offered loads.

    /usr/bin/python3 bench/footprint.py [BUILD_DIR]        (part of make bench)

For each exporter (a loopback HTTP sink, the file exporter) and each offered load
(idle, then FOOTPRINT_RATES messages/s of realistic 5-message traces sent by
compare_loadgen over the Unix stream socket, the SDKs' default, or with
FOOTPRINT_TRANSPORT=dgram over the Unix datagram socket, as emitters send: without
blocking, a message that finds the socket full dropped and counted), the agent starts on a fresh store
with the default buffer.sync = "fsync", the load runs for a warm-up, and then for
FOOTPRINT_SECONDS the agent's CPU is read from /proc/<pid>/stat (per thread name
from /proc/<pid>/task/*/schedstat) and its messages from its own accepted counter. With the quota
variant (FOOTPRINT_QUOTA=1, the default) the same loads are measured again on a
store already filled to a small buffer.max_bytes, where a long-running agent lives.
Last, one trace of FOOTPRINT_BIG_EVENTS events of 2 KB (100 MB) goes through each exporter:
its peak RSS, and the agent's CPU once it is delivered and after a restart.

One JSON line per measurement:
  {"bench":"footprint","exporter":"http","transport":"stream","rate":2000,"at_quota":false,
   "messages":20000,"cpu_us_per_msg":..,"core_pct":..,"threads_us_per_msg":{..},
   "threads_wakes_per_s":{..},"page_faults_per_msg":..,"cache_builds_pct":..,
   "peak_rss_mib":..,"rss_mib":..,"delivered_events":..,"sender_dropped":0}
Idle lines give core_pct (no messages). Environment: SIDETRACE_BIN,
FOOTPRINT_RATES (default "200,2000,20000"), FOOTPRINT_SECONDS (default 10),
FOOTPRINT_WARMUP_S (default 3), FOOTPRINT_IDLE_S (default 30),
FOOTPRINT_EXPORTERS (default "http,file"), FOOTPRINT_TRANSPORT (default "stream"),
FOOTPRINT_QUOTA (default 1), FOOTPRINT_BIG_EVENTS (default 50000; 0 skips the big
trace), FOOTPRINT_DIR (parent of the work directory).
"""
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build/release")
BIN = os.environ.get("SIDETRACE_BIN", os.path.join(BUILD, "agent/sidetrace"))
TOOLS = os.path.join(ROOT, "build/compare")
RATES = [int(r) for r in os.environ.get("FOOTPRINT_RATES", "200,2000,20000").split(",") if r]
SECONDS = float(os.environ.get("FOOTPRINT_SECONDS", "10"))
WARMUP = float(os.environ.get("FOOTPRINT_WARMUP_S", "3"))
IDLE_SECONDS = float(os.environ.get("FOOTPRINT_IDLE_S", "30"))
EXPORTERS = os.environ.get("FOOTPRINT_EXPORTERS", "http,file").split(",")
QUOTA = os.environ.get("FOOTPRINT_QUOTA", "1") == "1"
TRANSPORT = os.environ.get("FOOTPRINT_TRANSPORT", "stream")
BIG_EVENTS = int(os.environ.get("FOOTPRINT_BIG_EVENTS", "50000"))
QUOTA_BYTES = 64 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[footprint {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def build_tools():
    subprocess.run(["cmake", "-S", os.path.join(ROOT, "bench/compare"), "-B", TOOLS,
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", TOOLS, "-j2"], check=True, stdout=subprocess.DEVNULL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_cpu(pid):
    """Per thread name, summed over same-named threads: (CPU seconds, times it
    was switched out, i.e. its wake-ups). The CPU time is the scheduler's own
    count in nanoseconds (schedstat) where the kernel has it: utime + stime
    come in 10 ms ticks, a coarse step for a thread that runs a few ms a
    second."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    run_s = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                run_s = None
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if run_s is None:
            run_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
        switches = sum(int(m) for m in re.findall(r"ctxt_switches:\s+(\d+)", status))
        # Thread pools (RocksDB's, jemalloc's) are summed under one name.
        name = re.sub(r"[:\d]+$", "", name) or name
        cpu, wakes = out.get(name, (0.0, 0))
        out[name] = (cpu + run_s, wakes + switches)
    return out


def process_cpu(pid):
    """Seconds of CPU the process has used, and its page faults (minor ones:
    fresh or returned memory touched again; each one a trip into the kernel,
    whose cost bench/kernel_bench measures)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[7])


def status_mib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Agent:
    def __init__(self, work, exporter, sink_port, max_bytes=None):
        self.dir = work
        self.admin = free_port()
        self.sock = os.path.join(work, "app.dgram.sock")
        self.stream = os.path.join(work, "app.sock")
        upstream = (f'[upstream]\nendpoint = "http://127.0.0.1:{sink_port}"\n'
                    if exporter == "http" else "")
        buffer = '[buffer]\nsync = "fsync"\n'
        if max_bytes:
            buffer += f"max_bytes = {max_bytes}\n"
        with open(os.path.join(work, "agent.toml"), "w") as f:
            f.write(f'data_dir = "{work}/data"\n\n[listen]\nunix_stream = "{self.stream}"\n'
                    f'unix_dgram = "{self.sock}"\nudp = ""\notlp_http = ""\n\n'
                    f'[admin]\nlisten = "127.0.0.1:{self.admin}"\n\n'
                    f'{upstream}{buffer}\n[log]\nlevel = "warn"\n')
        self.start()

    def start(self):
        work = self.dir
        self.log = open(os.path.join(work, "agent.log"), "a")
        self.proc = subprocess.Popen([BIN, "agent", "--config", os.path.join(work, "agent.toml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.ready(), 30, "the agent to be ready")

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited ({self.proc.returncode}); see {self.log.name}")
        try:
            return self.get("/readyz") is not None and os.path.exists(self.sock)
        except OSError:
            return False

    def metric(self, name, labels=None):
        # The sum of the samples of `name`; with `labels` (text such as
        # 'source="cache"'), of those whose labels begin with it.
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if labels is not None:
                match = line.startswith(name + "{" + labels)
            else:
                match = line.startswith(name + "{") or line.startswith(name + " ")
            if match:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def builds(self):
        # Traces built, and of them built from the event cache.
        name = "sidetrace_assembler_builds_total"
        return self.metric(name), self.metric(name, 'source="cache"')

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


RUNS = itertools.count(1)


def loadgen(agent, rate, seconds, nonblocking=True):
    # Each run sends traces of its own: the same trace ids again would make
    # every trace of the run a late revision of one of an earlier run.
    salt = f"{0x5eed0f00d0000000 + os.getpid() * 4096 + next(RUNS):016x}"
    sock = agent.stream if TRANSPORT == "stream" else agent.sock
    return subprocess.Popen([os.path.join(TOOLS, "compare_loadgen"), "--socket", sock,
                             "--format", "msgpack", "--seconds", str(seconds),
                             "--rate", str(rate), "--salt", salt, "--transport", TRANSPORT]
                            + (["--nonblocking"] if nonblocking else []),
                            stdout=subprocess.PIPE, text=True)


def measure(agent, rate, exporter, at_quota):
    pid = agent.proc.pid
    gen = None
    if rate > 0:
        gen = loadgen(agent, rate, WARMUP + SECONDS + 1)
        time.sleep(WARMUP)  # the load generator runs on; this is the warm-up it gets
    accepted0 = agent.metric("sidetrace_accepted_messages_total")
    delivered0 = agent.metric("sidetrace_events_delivered_total")
    moved0 = agent.metric("sidetrace_buffer_log_moved_total")
    builds0 = agent.builds()
    threads0, (cpu0, faults0), t0 = thread_cpu(pid), process_cpu(pid), time.monotonic()
    # The measured window; idle CPU is read in 10 ms ticks, so it gets longer.
    time.sleep(SECONDS if rate > 0 else IDLE_SECONDS)
    threads1, (cpu1, faults1), t1 = thread_cpu(pid), process_cpu(pid), time.monotonic()
    accepted1 = agent.metric("sidetrace_accepted_messages_total")
    delivered1 = agent.metric("sidetrace_events_delivered_total")
    moved1 = agent.metric("sidetrace_buffer_log_moved_total")
    builds1 = agent.builds()
    sent = {}
    if gen:
        out, _ = gen.communicate(timeout=WARMUP + SECONDS + 60)
        sent = json.loads(out.strip().splitlines()[-1])
    msgs = accepted1 - accepted0
    cpu = cpu1 - cpu0
    line = {"bench": "footprint", "exporter": exporter, "transport": TRANSPORT, "rate": rate,
            "at_quota": at_quota,
            "seconds": round(t1 - t0, 2), "messages": int(msgs),
            "core_pct": round(100 * cpu / (t1 - t0), 3),
            "peak_rss_mib": round(status_mib(pid, "VmHWM"), 1),
            "rss_mib": round(status_mib(pid, "VmRSS"), 1),
            "delivered_events": int(delivered1 - delivered0),
            # Messages the store's log moved from its front to its head.
            "log_moved": int(moved1 - moved0)}
    if gen:
        # Messages the load generator dropped because its socket was full, as
        # an emitter does (over its whole run, warm-up included).
        line["sender_dropped"] = sent.get("dropped", 0)
    built = builds1[0] - builds0[0]
    if built > 0:
        # The traces built from the messages the writer handed over, not read
        # back from the store (the event cache's bound, trace/assembler.h).
        line["cache_builds_pct"] = round(100 * (builds1[1] - builds0[1]) / built, 1)
    if msgs > 0:
        line["cpu_us_per_msg"] = round(1e6 * cpu / msgs, 2)
        line["page_faults_per_msg"] = round((faults1 - faults0) / msgs, 3)
        before = {k: threads0.get(k, (0.0, 0)) for k in threads1}
        line["threads_us_per_msg"] = {
            k: round(1e6 * (threads1[k][0] - before[k][0]) / msgs, 2)
            for k in sorted(threads1) if threads1[k][0] - before[k][0] > 0}
        line["threads_wakes_per_s"] = {
            k: round((threads1[k][1] - before[k][1]) / (t1 - t0))
            for k in sorted(threads1) if threads1[k][1] > before[k][1]}
    print(json.dumps(line), flush=True)


def big_trace(agent, exporter):
    """One trace of BIG_EVENTS events of 2 KB over one stream connection: peak RSS
    while it goes through, and the agent's CPU once it is delivered and after a restart."""
    import msgpack
    pad = "x" * 2000
    t0 = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(agent.stream)
        chunk = []
        for i in range(BIG_EVENTS):
            chunk.append(msgpack.packb({"v": 1, "kind": "event", "trace_id": "big-trace",
                                        "id": f"e{i}", "type": "TOOL", "name": "step",
                                        "input": pad}))
            if len(chunk) == 256:
                s.sendall(b"".join(chunk))
                chunk = []
        s.sendall(b"".join(chunk))
    sent_mib = BIG_EVENTS * 2000 / (1 << 20)
    wait_until(lambda: agent.metric("sidetrace_events_delivered_total") >= BIG_EVENTS, 600,
               "the big trace to be delivered", interval=0.5)
    seconds = time.monotonic() - t0
    parts = agent.metric("sidetrace_traces_emitted_total{kind=\"part\"}")
    pid = agent.proc.pid
    peak = status_mib(pid, "VmHWM")
    # Back to idle within 5 s of the delivery, and after a restart.
    time.sleep(5)
    (c0, _), w0 = process_cpu(pid), time.monotonic()
    time.sleep(10)
    idle_after = 100 * (process_cpu(pid)[0] - c0) / (time.monotonic() - w0)
    agent.stop()
    agent.start()
    pid = agent.proc.pid
    time.sleep(5)
    (c0, _), w0 = process_cpu(pid), time.monotonic()
    time.sleep(10)
    idle_restart = 100 * (process_cpu(pid)[0] - c0) / (time.monotonic() - w0)
    print(json.dumps({"bench": "footprint_big_trace", "exporter": exporter, "events": BIG_EVENTS,
                      "mib": round(sent_mib, 1), "seconds": round(seconds, 1), "parts": int(parts),
                      "peak_rss_mib": round(peak, 1), "core_pct_after": round(idle_after, 3),
                      "core_pct_after_restart": round(idle_restart, 3)}), flush=True)


def fill_to_quota(agent):
    """Floods the agent until its store holds buffer.max_bytes (it then evicts)."""
    gen = loadgen(agent, 0, 120, nonblocking=False)  # as fast as the agent reads
    try:
        wait_until(lambda: agent.metric("sidetrace_buffer_bytes") >= 0.9 * QUOTA_BYTES and
                   agent.metric("sidetrace_dropped_by_policy_total") > 0,
                   120, "the store to reach its quota", interval=0.5)
    finally:
        gen.terminate()
        gen.communicate()
    # Let the flood's backlog reach the exporter before measuring.
    wait_until(lambda: agent.metric("sidetrace_open_traces") < 1000, 120,
               "the flood to be assembled", interval=0.5)


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"footprint: no agent binary at {BIN}")
    build_tools()
    parent = os.environ.get("FOOTPRINT_DIR") or None
    work = tempfile.mkdtemp(prefix="sidetrace-footprint.", dir=parent)
    sink = None
    try:
        ports = os.path.join(work, "sink.ports")
        sink = subprocess.Popen([os.path.join(TOOLS, "compare_sink"), "--ports-file", ports],
                                stderr=subprocess.DEVNULL)
        wait_until(lambda: os.path.exists(ports) and os.path.getsize(ports) > 0, 10, "the sink")
        with open(ports) as f:
            sink_port = int(f.read().split()[0])
        variants = [(False, None)] + ([(True, QUOTA_BYTES)] if QUOTA else [])
        if BIG_EVENTS > 0:
            for exporter in EXPORTERS:
                d = tempfile.mkdtemp(dir=work)
                log(f"{exporter} exporter: one trace of {BIG_EVENTS} events")
                agent = Agent(d, exporter, sink_port)
                try:
                    big_trace(agent, exporter)
                finally:
                    agent.stop()
                    shutil.rmtree(d, ignore_errors=True)
        for exporter in EXPORTERS:
            for at_quota, max_bytes in variants:
                d = tempfile.mkdtemp(dir=work)
                log(f"{exporter} exporter{' at quota' if at_quota else ''}")
                agent = Agent(d, exporter, sink_port, max_bytes)
                try:
                    if at_quota:
                        fill_to_quota(agent)
                    else:
                        measure(agent, 0, exporter, at_quota)
                    for rate in RATES:
                        measure(agent, rate, exporter, at_quota)
                finally:
                    agent.stop()
                    shutil.rmtree(d, ignore_errors=True)
    finally:
        if sink:
            sink.terminate()
            sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
