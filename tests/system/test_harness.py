"""The harness itself against the real agent: start, send, deliver, metrics, restart."""

import harness
from harness import Emitter, wait_until


def test_roundtrip_all_transports(make_agent, upstream, emitters):
    agent = make_agent({"upstream": {"endpoint": upstream.url, "compression": "gzip",
                                     "flush_interval_ms": 50}})
    for t in ("stream", "dgram", "udp"):
        emitters.append(Emitter(agent, name=f"h{t}", transport=t, rate=2000, limit=300).start())
    wait_until(lambda: all(e.seq >= 300 for e in emitters), 20, "emitters done")
    sent = harness.all_sent_ids(emitters)
    # A datagram the kernel refused (socket buffer full) was not sent; the stream loses nothing.
    assert emitters[0].count == 300 and len(sent) >= 600
    wait_until(lambda: agent.metric("sidetrace_persisted_messages_total") == len(sent), 20,
               "persisted")
    upstream.wait_for(lambda u: all(i in u.event_ids() for i in sent), 30, "all delivered")
    m = agent.metrics()
    received = sum(v for k, v in m.items() if k.startswith("sidetrace_received_messages_total{"))
    assert received == len(sent), (received, len(sent))
    assert agent.metric("sidetrace_dropped_messages_total", cause="quota") == 0
    assert agent.peak_rss_kib() > 0
    assert agent.ready()[0] == 200
    assert agent.stop() == 0
    agent.start()
    agent.wait_ready()
    assert agent.healthy()
    harness.record("harness", "round trip stream+dgram+udp", load=None, faults=0, bad_inputs=0,
                   lost=len(harness.missing(sent, upstream)))
