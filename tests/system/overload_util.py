"""Helpers shared by the overload and bad-input system tests: the C flood generator,
a health prober, per-transport metric deltas and the kernel's UDP receive queue."""

from __future__ import annotations

import json
import pathlib
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

import msgpack

HERE = pathlib.Path(__file__).resolve().parent
FLOOD_SRC = HERE / "flood" / "flood.c"

# Transport names as the agent labels them, by the harness Emitter's names.
AGENT_TRANSPORT = {"stream": "unix_stream", "dgram": "unix_dgram", "udp": "udp"}

REASONS = ("not_map", "key_not_string", "missing_key", "wrong_type", "bad_version", "bad_kind",
           "bad_value", "too_large", "malformed")


def build_flood(outdir: pathlib.Path) -> pathlib.Path:
    """Compiles tests/system/flood/flood.c with the system C compiler into outdir."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the flood generator")
    out = pathlib.Path(outdir) / "flood"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(FLOOD_SRC)],
                   check=True, capture_output=True, text=True)
    return out


class Flood:
    """Runs `procs` flood processes at once; .wait() returns their summed counts."""

    def __init__(self, flood_bin: pathlib.Path, mode: str, target: str, procs: int,
                 prefix: str, **options):
        self.procs = []
        for i in range(procs):
            args = [str(flood_bin), mode, target, "--prefix", f"{prefix}{i}"]
            for k, v in options.items():
                args += ["--" + k.replace("_", "-"), str(v)]
            self.procs.append(subprocess.Popen(args, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True))
        self.results: list[dict] = []

    def wait(self, timeout: float) -> dict:
        total = {"sent": 0, "refused": 0, "errors": 0, "datagrams": 0, "bytes": 0,
                 "seconds": 0.0, "blocked_s": 0.0, "first_error": ""}
        for p in self.procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"flood exited with {p.returncode}: {err.strip()}")
            r = json.loads(out.strip().splitlines()[-1])
            self.results.append(r)
            for k in ("sent", "refused", "errors", "datagrams", "bytes"):
                total[k] += r[k]
            total["seconds"] = max(total["seconds"], r["seconds"])
            total["blocked_s"] += r["blocked_s"]
            total["first_error"] = total["first_error"] or r["first_error"]
        return total

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


# The prober's loop, run in a process of its own: in the test's process it would
# wait for the interpreter's lock whenever the test upstream parses a delivered
# batch (for a second and more under a flood), and count that against the agent.
# One JSON line per check: [t, latency_s, error or null, VmRSS KiB or null, exited].
PROBE_SCRIPT = r"""
import json, sys, time, urllib.request
url, interval, timeout, pid = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def state():
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
        rss = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return rss, st in ("Z", "X")
    except OSError:
        return None, True
t0 = time.monotonic()
while True:
    start = time.monotonic()
    error = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            r.read()
            if r.status != 200:
                error = f"status {r.status}"
    except Exception as e:
        error = repr(e)
    latency = time.monotonic() - start
    rss, exited = state()
    print(json.dumps([start - t0, latency, error, rss, exited]), flush=True)
    if exited:
        break
    time.sleep(max(0.0, interval - (time.monotonic() - start)))
"""


class HealthProbe:
    """Polls GET /healthz every `interval` s from a process of its own, and samples
    VmRSS.

    .checks, .failures (list of (t, error)), .max_latency_s, .max_rss_kib, .exited
    (the agent process was seen dead).
    """

    def __init__(self, agent, interval: float = 0.1, timeout: float = 2.0):
        self.agent = agent
        self.interval = interval
        self.timeout = timeout
        self.checks = 0
        self.failures: list[tuple[float, str]] = []
        self.latencies: list[float] = []
        self.max_rss_kib = 0
        self.exited = False
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._read, name="health-probe", daemon=True)

    def __enter__(self):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", PROBE_SCRIPT, self.agent.admin_url + "/healthz",
             str(self.interval), str(self.timeout), str(self.agent.pid)],
            stdout=subprocess.PIPE, text=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._proc.kill()
        self._proc.wait(10)
        self._thread.join(10)

    @property
    def max_latency_s(self) -> float:
        return max(self.latencies, default=0.0)

    @property
    def p99_latency_s(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def _read(self):
        for line in self._proc.stdout:
            t, latency, error, rss, exited = json.loads(line)
            if error is not None:
                self.failures.append((t, error))
            self.latencies.append(latency)
            if rss is not None:
                self.max_rss_kib = max(self.max_rss_kib, rss)
            if exited:
                self.exited = True
            self.checks += 1


DIAG_KEYS = ("sidetrace_persisted_messages_total", "sidetrace_open_traces",
             'sidetrace_traces_emitted_total{kind="all"}', "sidetrace_intake_queue_bytes",
             "sidetrace_outbox_entries", 'sidetrace_batches_total{outcome="sent"}',
             'sidetrace_batches_total{outcome="retryable"}', "sidetrace_assembler_rescans_total",
             "sidetrace_assembler_spilled_total", "sidetrace_events_delivered_total")


def diag(agent) -> str:
    """A one-line summary of the agent's pipeline counters, for failure messages."""
    try:
        m = agent.metrics()
    except Exception as e:  # noqa: BLE001
        return f"(no metrics: {e!r})"
    return ", ".join(f"{k.replace('sidetrace_', '')}={m.get(k)}" for k in DIAG_KEYS)


def per_transport(metrics: dict, name: str, transport: str) -> float:
    return metrics.get(f'{name}{{transport="{transport}"}}', 0.0)


def rejected(metrics: dict, transport: str) -> dict[str, float]:
    return {r: metrics.get(f'sidetrace_rejected_messages_total{{reason="{r}",'
                           f'transport="{transport}"}}', 0.0) for r in REASONS}


def udp_rx_queue(port: int) -> int | None:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:port
    (from /proc/net/udp), or None if no such socket."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[1] == want:
                return int(cols[4].split(":")[1], 16)
    return None


def event(trace_id: str, event_id: str, **extra) -> dict:
    now = time.time_ns()
    m = {"v": 1, "kind": "event", "trace_id": trace_id, "id": event_id, "type": "TOOL",
         "name": "ok", "ts": now, "end_ts": now + 1000}
    m.update(extra)
    return m


def pack(m) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def paced_send(agent, transport: str, count: int, rate: float, prefix: str):
    """Sends `count` whole events, one per datagram, at `rate` per second over "udp" or
    "dgram". A send refused with EAGAIN (a full Unix datagram queue) waits for the
    socket to become writable (at most 5 s) and is retried, as an emitter that may
    wait briefly would. Returns (ids sent, number of refusals)."""
    if transport == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(agent.udp_addr)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect(agent.dgram_path)
    s.setblocking(False)
    ids, refused = [], 0
    start = time.monotonic()
    try:
        for n in range(count):
            eid = f"{prefix}-{n}"
            data = pack(event(f"t{prefix}-{n // 6}", eid))
            deadline = time.monotonic() + 5
            while True:
                try:
                    s.send(data)
                    break
                except BlockingIOError:
                    refused += 1
                    if time.monotonic() > deadline:
                        raise
                    select.select([], [s], [], 0.5)
            ids.append(eid)
            delay = start + (n + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        s.close()
    return ids, refused
