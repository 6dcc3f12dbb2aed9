"""OTLP/HTTP intake under kill -9: the agent answers an export 200 only once its spans are
stored, so every span of a request it answered 200 must reach the upstream, however often
the agent is killed while requests are in flight (duplicates allowed)."""

import gzip
import http.client
import json
import random
import threading
import time

import pytest

import harness
from harness import wait_until

SPANS_PER_REQUEST = 50


def otlp_request(n: int) -> tuple[bytes, list[str]]:
    """Request `n`: one trace of SPANS_PER_REQUEST spans (a root and its children), gzip'd
    OTLP JSON, and the span ids."""
    trace_id = f"{0x5b8e0000 + n:032x}"
    ids = [f"{n:08x}{i + 1:08x}" for i in range(SPANS_PER_REQUEST)]
    now = time.time_ns()
    spans = []
    for i, sid in enumerate(ids):
        span = {"traceId": trace_id, "spanId": sid, "name": f"step {i}",
                "startTimeUnixNano": str(now + i), "endTimeUnixNano": str(now + i + 1000),
                "attributes": [{"key": "input.value", "value": {"stringValue": "x" * 200}}]}
        if i:
            span["parentSpanId"] = ids[0]
        spans.append(span)
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "t"}}]},
        "scopeSpans": [{"spans": spans}]}]}
    return gzip.compress(json.dumps(body).encode()), ids


class Sender:
    """Sends requests back to back over a keep-alive connection, reconnecting when the
    agent is down; remembers the span ids of every request answered 200."""

    def __init__(self, agent):
        self.agent = agent
        self.acked: set[str] = set()
        self.sent = 0
        self.refused = 0  # requests not answered 200 (agent down, killed mid-request, 429/503)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(30)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _run(self):
        host, port = self.agent.otlp_addr
        conn = None
        n = 0
        while not self._stop.is_set():
            n += 1
            body, ids = otlp_request(n)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("POST", "/v1/traces", body, {
                    "Content-Type": "application/json", "Content-Encoding": "gzip"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)
            with self.lock:
                self.sent += 1
                if ok:
                    self.acked.update(ids)
                else:
                    self.refused += 1
        if conn is not None:
            conn.close()


@pytest.mark.parametrize("sync", ["fsync", "os"])
def test_otlp_acknowledged_spans_survive_kill9(sync, make_agent, upstream):
    kills = 10 if harness.SOAK else 3
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    agent = make_agent({
        "buffer": {"sync": sync},
        "trace": {"quiet_period_ms": 100},
        "upstream": {"endpoint": upstream.url, "compression": "gzip", "flush_interval_ms": 50,
                     "retry_initial_ms": 50, "retry_max_ms": 500},
    })
    sender = Sender(agent).start()
    t0 = time.monotonic()
    try:
        for _ in range(kills):
            before = sender.acked_count()
            wait_until(lambda: sender.acked_count() >= before + 5 * SPANS_PER_REQUEST, 30,
                       "requests acknowledged by the new agent")
            time.sleep(rng.uniform(0.0, 0.5))  # the kill lands at a random point of a request
            agent.kill9()
            agent.start()
            agent.wait_ready()
        before = sender.acked_count()
        wait_until(lambda: sender.acked_count() >= before + 5 * SPANS_PER_REQUEST, 30,
                   "requests acknowledged after the last restart")
    finally:
        sender.stop()
    duration = time.monotonic() - t0
    acked = set(sender.acked)

    stop_code = agent.stop()
    agent.start()
    agent.wait_ready()
    try:
        upstream.wait_for(lambda u: not harness.missing(acked, u), 60,
                          "every acknowledged span delivered")
    finally:
        lost = harness.missing(acked, upstream)
        harness.record(
            "OTLP/HTTP", f"{kills} kills, sync={sync}",
            load=sender.sent * SPANS_PER_REQUEST / duration, faults=kills, bad_inputs=0,
            lost=len(lost), spans_acknowledged=len(acked), requests=sender.sent,
            requests_not_acknowledged=sender.refused, seed=seed)
    assert not lost, f"{len(lost)} acknowledged spans never delivered, e.g. {lost[:5]} (seed {seed})"
    assert stop_code == 0
