"""Upstream faults: one agent, emitters sending throughout, the upstream goes through
down / flapping / slow / 5xx / reset / 413 / 401 phases, then healthy: everything persisted
arrives, retryable faults dead-letter nothing, 401 pauses with data kept, 413 splits."""

import json
import time

import pytest

import harness
from harness import Emitter, wait_until

EMITTERS = 3
RATE = 300  # events/s per emitter


def test_upstream_fault_phases(make_agent, upstream, emitters):
    long = harness.SOAK
    upstream.slow_s = 3.0
    upstream.limit_413 = 1500
    agent = make_agent({
        "trace": {"quiet_period_ms": 100},
        "upstream": {"endpoint": upstream.url, "compression": "gzip", "flush_interval_ms": 100,
                     "request_timeout_ms": 2000, "connect_timeout_ms": 500,
                     "batch_max_events": 500,
                     "retry_initial_ms": 100, "retry_max_ms": 1000},
    })
    for i in range(EMITTERS):
        emitters.append(Emitter(agent, name=f"u{i}", transport="stream", rate=RATE,
                                payload=64).start())
    t0 = time.monotonic()
    survived = []

    def delivered_now():
        return upstream.distinct_events()

    marks = []

    def phase(mode, seconds, check=None):
        marks.append((time.monotonic(), mode))
        if mode == "flap":
            upstream.flap(0.5)
        else:
            upstream.set_mode(mode)
        before_ok = upstream.requests["ok"]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert agent.running(), f"agent exited during the {mode} phase\n{agent.log_tail()}"
            assert agent.healthy(), f"/healthz failed during the {mode} phase"
            time.sleep(0.2)
        if check:
            check(before_ok)
        survived.append(mode)

    # Healthy first: deliveries flow.
    upstream.set_mode("ok")
    wait_until(lambda: delivered_now() > 100, 20, "first deliveries")

    def down_check(before_ok):
        assert upstream.requests["ok"] == before_ok  # nothing can have been accepted
        assert agent.metric("sidetrace_batches_total", outcome="retryable") > 0

    phase("down", 60 if long else 10, down_check)
    phase("flap", 20 if long else 4)
    phase("slow", 15 if long else 3, lambda b: None)
    phase("503", 15 if long else 3)
    phase("429", 15 if long else 3)
    phase("reset", 15 if long else 3)

    # 413: a backlog makes batches above the limit; the agent splits them.
    upstream.set_mode("down")
    time.sleep(3 if long else 1.5)  # builds a backlog (not a wait for a result)
    splits_before = agent.metric("sidetrace_batches_split_total")
    phase("413", 15 if long else 4)
    wait_until(lambda: agent.metric("sidetrace_batches_split_total") > splits_before, 20,
               "a 413 split")
    assert agent.metric("sidetrace_batches_total", outcome="too_large") > 0

    # 401: sending pauses, data is kept, readiness says why.
    upstream.set_mode("401")
    wait_until(lambda: agent.metric("sidetrace_upstream_auth_failed") == 1, 20, "auth_failed")
    status, body = agent.ready()
    assert status == 503 and "401" in body, (status, body)
    persisted = agent.metric("sidetrace_persisted_messages_total")
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") > persisted + 200, 20,
               "persisting continues while paused")
    requests_401 = upstream.requests["401"]
    time.sleep(5 if long else 1)  # a stretch of pause: the agent must not hammer the upstream
    assert upstream.requests["401"] <= requests_401 + 2, "sending is not paused on 401"
    survived.append("401")

    # Healthy again. The operator changes the upstream settings and reloads: the agent
    # probes the credentials at once (not after auth_probe_interval_ms, 30 s).
    upstream.set_mode("ok")
    agent.set_config({"upstream": {"headers": {"X-Sidetrace-Test": "after-401"}}})
    status, op = agent.operation("/reload")
    assert status == 202 and op["state"] == "ok", (status, op)
    assert op["message"].startswith("reloaded"), op
    wait_until(lambda: agent.metric("sidetrace_upstream_auth_failed") == 0, 10, "auth recovered")
    wait_until(lambda: agent.ready()[0] == 200, 10, "ready again")

    # Stop the load, make sure everything sent is persisted, then everything must arrive.
    for e in emitters:
        e.stop()
    duration = time.monotonic() - t0
    sent = harness.all_sent_ids(emitters)
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") == len(sent), 30,
               f"all {len(sent)} sent events persisted")
    try:
        upstream.wait_for(lambda u: not harness.missing(sent, u), 120 if long else 60,
                          "every persisted event delivered")
    finally:
        lost = harness.missing(sent, upstream)
        m = agent.metrics()
        (agent.workdir / "timeline.json").write_text(
            json.dumps({"t0": t0, "phases": marks, "deliveries": upstream.history}))
        harness.record(
            "upstream faults", " / ".join(survived), load=len(sent) / duration,
            faults=len(survived), bad_inputs=0, lost=len(lost), sent=len(sent),
            duplicate_revisions=upstream.duplicate_revisions(),
            splits=m.get("sidetrace_batches_split_total"),
            retried=m.get("sidetrace_batches_retried_total"),
            requests=dict(upstream.requests))
    assert not lost, f"{len(lost)} persisted events never delivered, e.g. {lost[:5]}"
    assert m["sidetrace_deadlettered_total"] == 0, "a retryable fault dead-lettered data"
    assert m.get('sidetrace_dropped_messages_total{cause="quota"}', 0) == 0
    assert agent.stop() == 0


def test_fixed_api_key_file_and_reload_resumes_at_once(make_agent, upstream, emitters, tmp_path):
    """The documented remedy for a 401 pause: fix the API key and reload. The key lives in a
    file, so the configuration itself does not change; the reload must still re-probe."""
    key_file = tmp_path / "api_key"
    key_file.write_text("wrong-key\n")
    upstream.required_auth = "Bearer right-key"
    agent = make_agent({
        "trace": {"quiet_period_ms": 100},
        "upstream": {"endpoint": upstream.url, "api_key_file": str(key_file),
                     "flush_interval_ms": 50, "retry_initial_ms": 50, "retry_max_ms": 500},
    })
    e = Emitter(agent, name="auth", transport="stream", rate=500, limit=200).start()
    emitters.append(e)
    wait_until(lambda: agent.metric("sidetrace_upstream_auth_failed") == 1, 20, "auth_failed")
    wait_until(lambda: e.count == 200, 20, "all sent")
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") == 200, 20,
               "data kept while paused")
    assert upstream.distinct_events() == 0
    key_file.write_text("right-key\n")
    status, op = agent.operation("/reload")
    assert status == 202 and op == {**op, "state": "ok", "message": "no change"}, (status, op)
    # auth_probe_interval_ms is 30 s: recovery within 5 s means the reload probed.
    wait_until(lambda: agent.metric("sidetrace_upstream_auth_failed") == 0, 5,
               "auth re-probed after the reload")
    sent = set(e.sent_ids())
    upstream.wait_for(lambda u: not harness.missing(sent, u), 20, "all delivered")
    harness.record("upstream faults", "401, key file fixed, reload", load=None, faults=1,
                   bad_inputs=0, lost=len(harness.missing(sent, upstream)))
