"""Disk: (a) the quota reached with the upstream down, under both buffer.when_full policies;
(b) a real full filesystem (a small tmpfs as the data dir). Drops follow the policy and are
counted, the agent keeps serving, the store is not corrupted, and it recovers."""

import os
import random
import subprocess
import time

import pytest

import harness
from harness import Emitter, wait_until

PAYLOAD = 1000  # bytes of input per event


def quick_upstream(upstream) -> dict:
    """Upstream settings that send and retry quickly, so that recovery shows at once."""
    return {"endpoint": upstream.url, "flush_interval_ms": 50, "retry_initial_ms": 50,
            "retry_max_ms": 300, "connect_timeout_ms": 300}


def dropped_total(agent) -> float:
    m = agent.metrics()
    return sum(v for k, v in m.items() if k.startswith("sidetrace_dropped_messages_total{"))


def settle(agent, emitter, timeout=30.0):
    """Pauses the emitter; waits until every message sent to this agent is either persisted
    or counted dropped. Returns (persisted, dropped) for this agent start."""
    emitter.pause()
    sent = emitter.sent_since(agent.started_at)
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") + dropped_total(agent)
               == sent, timeout, f"{sent} sent messages persisted or counted dropped")
    return agent.metric("sidetrace_persisted_messages_total"), dropped_total(agent)


def watch_health(agent, pred, what, timeout=60.0):
    """Polls pred() until true, failing at once if the agent exits or /healthz fails."""
    deadline = time.monotonic() + timeout
    while True:
        assert agent.running(), f"agent exited ({what})\n{agent.log_tail()}"
        assert agent.healthy(), f"/healthz failed ({what})"
        if pred():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def for_seconds(seconds):
    end = time.monotonic() + seconds
    return lambda: time.monotonic() >= end


@pytest.mark.parametrize("when_full", ["drop_newest",
    "drop_oldest"])
def test_quota(when_full, make_agent, upstream, emitters):
    upstream.set_mode("down")
    agent = make_agent({
        "trace": {"quiet_period_ms": 100},
        "buffer": {"max_bytes": "2MiB", "when_full": when_full, "sync": "os"},
        "upstream": quick_upstream(upstream),
    })
    e = Emitter(agent, name=f"q{when_full[5]}", transport="stream", rate=3000, payload=PAYLOAD)
    emitters.append(e)
    t0 = time.monotonic()
    e.start()
    if when_full == "drop_newest":
        watch_health(agent, lambda: agent.metric("sidetrace_dropped_messages_total",
                                                 cause="quota") > 100, "quota drops counted")
    else:
        watch_health(agent, lambda: agent.metric("sidetrace_dropped_by_policy_total",
                                                 what="outbox_entries") > 10,
                     "undelivered revisions dropped by policy")
    persisted, dropped = settle(agent, e)
    load = e.count / (time.monotonic() - t0)
    phase1 = set(e.sent_ids())
    m = agent.metrics()
    evicted_revisions = m['sidetrace_dropped_by_policy_total{what="outbox_entries"}']
    assert agent.ready()[0] == 200  # a full quota does not make the agent unready

    # The upstream returns: what was kept is delivered (the outbox drains), then new events
    # flow again.
    upstream.set_mode("ok")
    wait_until(lambda: agent.metric("sidetrace_outbox_entries") == 0, 30, "outbox drained")
    e.limit = e.seq + 300
    e.resume()
    wait_until(lambda: e.seq >= e.limit, 20, "recovery events sent")
    phase2 = set(e.sent_ids()) - phase1
    try:
        wait_until(lambda: agent.metric("sidetrace_persisted_messages_total")
                   == persisted + len(phase2), 10, "recovery events persisted")
    except harness.WaitTimeout as err:
        m = agent.metrics()
        keys = ("sidetrace_buffer_bytes", "sidetrace_buffer_max_bytes", "sidetrace_outbox_entries",
                "sidetrace_persisted_messages_total", 'sidetrace_dropped_messages_total{cause="quota"}',
                'sidetrace_dropped_by_policy_total{what="retained_events"}')
        raise AssertionError(f"{err}; upstream back but no room: "
                             + ", ".join(f"{k}={m.get(k)}" for k in keys)) from None
    upstream.wait_for(lambda u: not harness.missing(phase2, u), 30, "recovery events delivered")
    delivered = upstream.event_ids()
    delivered1 = sum(1 for i in phase1 if i in delivered)
    if when_full == "drop_newest":
        # Nothing persisted is ever removed: every persisted event arrives.
        upstream.wait_for(lambda u: sum(1 for i in phase1 if i in u.event_ids()) == persisted, 30,
                          "every persisted event delivered")
        lost = 0
        assert evicted_revisions == 0
    else:
        # Evicted revisions are the policy's counted loss; nothing else may be missing.
        assert evicted_revisions > 0
        lost = 0
        per_trace = e.per_trace
        assert persisted - delivered1 <= evicted_revisions * per_trace, (
            persisted, delivered1, evicted_revisions)
    harness.record("disk", f"quota 2MiB, when_full={when_full}, upstream down", load=load,
                   faults=1, bad_inputs=0, lost=lost, persisted=persisted, dropped=dropped,
                   dropped_by_policy_revisions=evicted_revisions, delivered_of_phase1=delivered1)
    assert agent.stop() == 0


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path, leave_bytes):
    """Creates path as a file taking all free space of its filesystem but leave_bytes."""
    st = os.statvfs(os.path.dirname(path))
    size = st.f_bavail * st.f_frsize - leave_bytes
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:  # unbuffered: closing has nothing left to write
        while size > 0:
            try:
                n = f.write(chunk[:min(size, len(chunk))])
            except OSError:
                break
            size -= n
    return path


@pytest.mark.parametrize("sync", ["fsync", pytest.param("os", marks=pytest.mark.soak_only)])
def test_full_filesystem(sync, tmpfs, make_agent, upstream, emitters):
    upstream.set_mode("down")
    agent = make_agent({
        "data_dir": str(tmpfs / "data"),
        "trace": {"quiet_period_ms": 100},
        "buffer": {"sync": sync},
        "upstream": quick_upstream(upstream),
    })
    e = Emitter(agent, name=f"nf{sync[0]}", transport="stream", rate=3000, payload=PAYLOAD)
    emitters.append(e)
    t0 = time.monotonic()
    e.start()
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") > 500, 20, "persisting")
    filler = fill(str(tmpfs / "filler"), 2 << 20)
    watch_health(agent, lambda: agent.metric("sidetrace_dropped_messages_total",
                                             cause="no_space") > 0, "no_space drops counted")
    watch_health(agent, lambda: agent.metric("sidetrace_store_degraded") == 1, "store degraded")
    # Full for a while: the agent keeps serving and does not exit.
    watch_health(agent, for_seconds(10 if harness.SOAK else 2), "full disk")
    load = e.count / (time.monotonic() - t0)
    e.pause()

    # Space returns: writing resumes by itself.
    os.unlink(filler)
    watch_health(agent, lambda: agent.metric("sidetrace_store_degraded") == 0,
                 "store no longer degraded", timeout=15)
    persisted1, dropped1 = settle(agent, e)
    phase1 = set(e.sent_ids())
    e.limit = e.seq + 300
    e.resume()
    wait_until(lambda: e.seq >= e.limit, 20, "post-recovery events sent")
    persisted, dropped = settle(agent, e)
    phase2 = set(e.sent_ids()) - phase1
    assert persisted - persisted1 == len(phase2), "writing did not fully resume after space returned"
    assert dropped == dropped1
    no_space = agent.metric("sidetrace_dropped_messages_total", cause="no_space")
    assert no_space > 0

    # A clean restart opens the store as it is: no quarantine.
    assert agent.stop() == 0
    agent.start()
    agent.wait_ready()
    assert "moved aside" not in agent.log_text()
    assert not list((tmpfs / "data").glob("store.corrupt-*"))

    # Upstream back: everything persisted arrives.
    upstream.set_mode("ok")
    upstream.wait_for(lambda u: u.distinct_events() >= persisted, 60,
                      f"{persisted} persisted events delivered")
    got = upstream.event_ids()
    delivered = sum(1 for i in phase1 | phase2 if i in got)
    assert delivered == persisted, (delivered, persisted)
    assert set(got) <= phase1 | phase2
    harness.record("disk", f"full tmpfs (48 MiB), ENOSPC then space back, sync={sync}", load=load,
                   faults=1, bad_inputs=0, lost=persisted - delivered, persisted=persisted,
                   dropped_no_space=no_space)
    assert agent.stop() == 0


def test_fill_cycles(tmpfs, make_agent, upstream, emitters):
    """The disk fills up and frees again and again under load from three emitters, leaving
    from nothing to a few MiB free: each time RocksDB's files fail at a different point (the
    WAL, a flush, the MANIFEST). The agent never exits, recovers every time, and delivers
    everything it counted persisted, except the revisions its quota counted evicted."""
    # The upstream stays up: the test is about the disk, and delivery is what keeps the
    # agent's own data small.
    agent = make_agent({
        "data_dir": str(tmpfs / "data"),
        "trace": {"quiet_period_ms": 100, "max_open_s": 3},  # traces that lost an event to the full disk
        # The quota keeps what the agent keeps for late revisions well below the 48 MiB
        # disk (drop_oldest evicts it): only the filler makes the disk full.
        "buffer": {"sync": "fsync", "max_bytes": "16MiB"},
        "upstream": quick_upstream(upstream),
    })
    es = [Emitter(agent, name=f"fc{k}", transport="stream", rate=2000, payload=PAYLOAD)
          for k in range(3)]
    emitters.extend(es)
    t0 = time.monotonic()
    for e in es:
        e.start()
    rnd = random.Random(7)
    cycles = 12 if harness.SOAK else 5
    for cycle in range(cycles):
        before = agent.metric("sidetrace_persisted_messages_total")
        watch_health(agent, lambda: agent.metric("sidetrace_persisted_messages_total")
                     > before + 300, f"persisting (cycle {cycle})")
        filler = fill(str(tmpfs / "filler"), rnd.choice([0, 4 << 10, 256 << 10, 1 << 20, 2 << 20]))
        watch_health(agent, for_seconds(rnd.uniform(0.3, 1.5)), f"full disk (cycle {cycle})")
        os.unlink(filler)
        watch_health(agent, lambda: agent.metric("sidetrace_store_degraded") == 0,
                     f"store no longer degraded (cycle {cycle})", timeout=20)
    load = sum(e.count for e in es) / (time.monotonic() - t0)
    for e in es:
        e.pause()
    total = sum(e.sent_since(agent.started_at) for e in es)
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") + dropped_total(agent)
               == total, 30, f"{total} sent messages persisted or counted dropped")
    persisted = agent.metric("sidetrace_persisted_messages_total")
    sent = set()
    for e in es:
        sent |= set(e.sent_ids())
    no_space = agent.metric("sidetrace_dropped_messages_total", cause="no_space")
    # While the disk is full, acknowledgements cannot be written and delivery falls behind
    # (more so on a busy machine): the quota may then evict undelivered revisions, the
    # policy's counted loss (drop_oldest). Nothing else may be missing.
    per_trace = es[0].per_trace

    def evicted():
        return agent.metric("sidetrace_dropped_by_policy_total", what="outbox_entries")

    try:
        upstream.wait_for(lambda u: u.distinct_events() >= persisted - evicted() * per_trace
                          and agent.metric("sidetrace_outbox_entries") == 0
                          and agent.metric("sidetrace_open_traces") == 0, 90,
                          f"{persisted} persisted events delivered or counted evicted")
    except harness.WaitTimeout as err:
        m = agent.metrics()
        keys = [k for k in m if k.startswith(("sidetrace_outbox", "sidetrace_open_traces",
                                              "sidetrace_store_degraded", "sidetrace_pending",
                                              "sidetrace_dropped_by_policy", "sidetrace_assembler",
                                              "sidetrace_traces_emitted"))]
        raise AssertionError(f"{err}; delivered {upstream.distinct_events()}; "
                             + ", ".join(f"{k}={m[k]}" for k in keys)) from None
    got = upstream.event_ids()
    delivered = sum(1 for i in sent if i in got)
    evicted_revisions = evicted()
    if evicted_revisions == 0:
        assert delivered == persisted, (delivered, persisted)
    else:
        assert persisted - delivered <= evicted_revisions * per_trace, (
            delivered, persisted, evicted_revisions)
    harness.record("disk", f"tmpfs filled and freed {cycles} times under load, sync=fsync",
                   load=load, faults=cycles, bad_inputs=0, lost=0, persisted=persisted,
                   dropped_no_space=no_space, dropped_by_policy_revisions=evicted_revisions,
                   undelivered=persisted - delivered)
    assert agent.stop() == 0
