"""kill -9 loop: under steady load, the agent is killed and restarted at random points;
every event it had counted as persisted must reach the upstream (duplicates allowed)."""

import random
import time

import pytest

import harness
from harness import Emitter, wait_until

EMITTERS = 3
RATE = 1000  # events/s per emitter


def settle_persisted(agent, emitters, timeout=30.0) -> set[str]:
    """Marker: pauses the emitters, waits until the agent's persisted counter (since this
    start) equals what was written on connections to this agent instance, resumes them and
    returns the ids thereby known to be persisted. Exact: a message is counted persisted
    only if it was sent, so equal counts mean every sent message is persisted."""
    for e in emitters:
        e.pause()
    try:
        expected = sum(e.sent_since(agent.started_at) for e in emitters)
        wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") == expected,
                   timeout, f"persisted == {expected} sent to this agent")
        got = agent.metric("sidetrace_persisted_messages_total")
        assert got == expected, f"persisted {got} != sent {expected}"
        ids = set()
        for e in emitters:
            ids.update(e.ids_sent_since(agent.started_at))
        return ids
    finally:
        for e in emitters:
            e.resume()


@pytest.mark.parametrize("sync", ["fsync", "os"])
def test_kill9_loop(sync, make_agent, upstream, emitters):
    kills = (20 if sync == "fsync" else 10) if harness.SOAK else (3 if sync == "fsync" else 2)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    agent = make_agent({
        "buffer": {"sync": sync},
        "trace": {"quiet_period_ms": 100},
        "upstream": {"endpoint": upstream.url, "compression": "gzip", "flush_interval_ms": 50,
                     "retry_initial_ms": 50, "retry_max_ms": 500},
    })
    for i in range(EMITTERS):
        emitters.append(Emitter(agent, name=f"k{sync[0]}{i}", transport="stream", rate=RATE).start())
    t0 = time.monotonic()
    known: set[str] = set()
    for k in range(kills):
        wait_until(lambda: all(e.sent_since(agent.started_at) > 50 for e in emitters), 20,
                   "emitters sending to the new agent")
        known |= settle_persisted(agent, emitters)
        time.sleep(rng.uniform(0.05, 1.0))  # the kill lands at a random point of the load
        agent.kill9()
        agent.start()
        agent.wait_ready()
    wait_until(lambda: all(e.sent_since(agent.started_at) > 50 for e in emitters), 20,
               "emitters sending after the last restart")
    known |= settle_persisted(agent, emitters)
    for e in emitters:
        e.stop()
    duration = time.monotonic() - t0
    sent = harness.all_sent_ids(emitters)

    # Drain: a clean restart, the upstream healthy. (The exit code of the clean stop is
    # checked at the end, so that delivery is checked whatever it is.)
    stop_code = agent.stop()
    agent.start()
    agent.wait_ready()
    try:
        upstream.wait_for(lambda u: not harness.missing(known, u), 60 if not harness.SOAK else 300,
                          "every persisted event delivered")
    finally:
        lost = harness.missing(known, upstream)
        got = upstream.event_ids()
        unconfirmed = len([i for i in sent - known if i not in got])
        harness.record(
            "kill -9", f"{kills} kills, {EMITTERS} stream emitters, sync={sync}",
            load=len(sent) / duration, faults=kills, bad_inputs=0, lost=len(lost),
            persisted_known=len(known), sent=len(sent), delivered_distinct=len(got),
            duplicate_revisions=upstream.duplicate_revisions(),
            repeated_idempotency_keys=upstream.repeated_keys(),
            traces_delivered=len(upstream.traces), revisions_delivered=len(upstream.revisions),
            clean_stop_exit_code=stop_code,
            sent_unconfirmed_not_delivered=unconfirmed, seed=seed)
    assert not lost, f"{len(lost)} persisted events never delivered, e.g. {lost[:5]} (seed {seed})"
    # Nothing delivered that was never sent; the store was never quarantined.
    assert set(upstream.event_ids()) <= sent
    assert "moved aside" not in agent.log_text()
    assert not list(agent.data_dir.glob("store.corrupt-*"))
    assert agent.metric("sidetrace_deadlettered_total") == 0
    assert stop_code == 0, f"SIGTERM right after the last restart: exit code {stop_code}"
