#!/usr/bin/env python3
"""Cost of one emitted event on the caller's thread, agent up and agent down.

Prints one JSON object per line:
{"bench":"emit","sdk":"python","agent":"up","p50_us":...,"p99_us":...}
"up": a Unix stream socket drained by another process; "down": nothing
listens (events queue up to the bound, then are dropped and counted).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sidetrace import Client  # noqa: E402

N = int(os.environ.get("SIDETRACE_BENCH_EVENTS", "50000"))
WARMUP = 2000


def drain_forever(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        while conn.recv(1 << 20):
            pass
        conn.close()


def measure(client: Client) -> tuple[float, float]:
    trace = client.trace(conversation_id="bench")
    send = trace.send
    clock = time.perf_counter_ns
    samples = []
    for i in range(N + WARMUP):
        t0 = clock()
        send("TOOL", input="What's the weather in Paris?", output="sunny, 21C", latency=12)
        samples.append(clock() - t0)
    samples = sorted(samples[WARMUP:])
    return samples[len(samples) // 2] / 1000.0, samples[int(len(samples) * 0.99)] / 1000.0


def main() -> None:
    d = tempfile.mkdtemp(prefix="st-bench-", dir="/tmp")
    path = os.path.join(d, "agent.sock")
    pid = os.fork()
    if pid == 0:
        try:
            drain_forever(path)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        results = []
        for agent, endpoint in (("up", f"unix://{path}"), ("down", f"unix://{d}/absent.sock")):
            client = Client(endpoint, max_queue=10000)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            p50, p99 = measure(client)
            stats = client.stats()
            client.close(1.0 if agent == "up" else 0.0)
            results.append(
                {
                    "bench": "emit",
                    "sdk": "python",
                    "agent": agent,
                    "p50_us": round(p50, 2),
                    "p99_us": round(p99, 2),
                    "events": N + WARMUP,
                    "sent": stats["sent"],
                    "dropped": stats["dropped"],
                    "max_rss_growth_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    - rss_before,
                }
            )
        for r in results:
            print(json.dumps(r, separators=(",", ":")), flush=True)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


if __name__ == "__main__":
    main()
