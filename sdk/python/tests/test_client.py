"""The Python SDK against real sockets: what arrives, and what it does when
the agent is absent, slow or fed values msgpack cannot encode."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import wait_until
from sidetrace import Client, Metadata, User

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
SDK_DIR = os.path.join(os.path.dirname(__file__), "..")


def by_kind(messages, kind):
    return [m for m in messages if m["kind"] == kind]


@pytest.mark.parametrize("scheme", ["unix", "unixgram", "udp"])
def test_nested_trace_arrives_on_every_transport(make_agent, clients, scheme):
    agent = make_agent(scheme)
    client = clients(agent.endpoint)
    trace = client.trace(
        conversation_id="conv_123",
        session_id="s1",
        interaction_id="i1",
        channel_id="web",
        metadata=Metadata(environment="production"),
        user=User(id="user_123", plan="pro"),
    )
    message = trace.message("User: hi")
    tool = message.tool("Calling weather API", name="weather", attrs={"model": "m1"})
    tool.end({"temp": 21}, attrs={"output_tokens": 3})
    message.end("Bot: sunny")
    assert client.flush(2.0)
    assert agent.collector.wait_count(5)
    msgs = agent.messages
    assert [m["kind"] for m in msgs] == ["trace", "start", "start", "end", "end"]
    tr, m_start, t_start, t_end, m_end = msgs
    assert all(m["v"] == 1 and m["trace_id"] == trace.trace_id for m in msgs)
    assert HEX32.match(trace.trace_id)
    assert tr["conversation_id"] == "conv_123" and tr["session_id"] == "s1"
    assert tr["interaction_id"] == "i1" and tr["channel_id"] == "web"
    assert tr["metadata"] == {"environment": "production"}
    assert tr["user"] == {"id": "user_123", "plan": "pro"}
    assert m_start["type"] == "MESSAGE" and "parent_id" not in m_start
    assert m_start["input"] == "User: hi" and "name" not in m_start
    assert HEX16.match(m_start["id"]) and HEX16.match(t_start["id"])
    assert t_start["type"] == "TOOL" and t_start["parent_id"] == m_start["id"]
    assert t_start["name"] == "weather" and t_start["attrs"] == {"model": "m1"}
    assert t_end["id"] == t_start["id"] and t_end["output"] == {"temp": 21}
    assert t_end["attrs"] == {"output_tokens": 3}
    assert m_end["id"] == m_start["id"] and m_end["output"] == "Bot: sunny"
    now = time.time_ns()
    for m in msgs:
        assert isinstance(m["ts"], int) and now - 10**10 < m["ts"] <= now
    assert m_end["ts"] >= m_start["ts"]
    assert client.stats()["sent"] == 5


@pytest.mark.parametrize("scheme", ["unix", "unixgram", "udp"])
def test_many_events_from_many_threads_all_arrive(make_agent, clients, scheme):
    agent = make_agent(scheme)
    client = clients(agent.endpoint)
    trace = client.trace()
    per_thread, threads = 250, 4

    def work(k):
        for i in range(per_thread):
            trace.send("TOOL", input=f"{k}-{i}", output="x", latency=1)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert client.flush(5.0)
    assert agent.collector.wait_count(1 + per_thread * threads)
    events = by_kind(agent.messages, "event")
    assert sorted(e["input"] for e in events) == sorted(
        f"{k}-{i}" for k in range(threads) for i in range(per_thread)
    )
    assert len({e["id"] for e in events}) == per_thread * threads
    assert client.stats()["dropped"] == 0


def test_send_one_shot_and_feedback(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace(conversation_id="c")
    before = time.time_ns()
    ev = trace.send(event_type="generation", input="q", output="a", latency=250)
    trace.feedback(feedback_tag="THUMBS_UP", feedback_text="helpful", score=1)
    ev.feedback(feedback_tag="WRONG", score=0.5)
    trace.send("cache_lookup", input="k", error="miss")
    assert client.flush(2.0)
    assert agent.collector.wait_count(5)
    one, fb_trace, fb_event, custom = agent.messages[1:]
    assert one["kind"] == "event" and one["type"] == "GENERATION"
    assert one["latency_ms"] == 250 and one["input"] == "q" and one["output"] == "a"
    assert before - 250 * 10**6 <= one["ts"] <= time.time_ns() - 250 * 10**6
    assert fb_trace == {
        "v": 1,
        "kind": "feedback",
        "trace_id": trace.trace_id,
        "ts": fb_trace["ts"],
        "tag": "THUMBS_UP",
        "text": "helpful",
        "score": 1.0,
    }
    assert fb_event["target_id"] == ev.id and fb_event["score"] == 0.5
    assert custom["type"] == "cache_lookup"
    assert custom["status"] == "error" and custom["error"] == "miss"


def test_custom_and_system_events(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    sys_ev = trace.system("Initializing cache")
    c = sys_ev.custom("cache_warm", {"keys": 3})
    c.end()
    sys_ev.end("ok")
    r = trace.router("route?")
    r.end("to agent", status="error")
    assert client.flush(2.0)
    assert agent.collector.wait_count(7)
    starts = by_kind(agent.messages, "start")
    assert [s["type"] for s in starts] == ["SYSTEM", "CUSTOM", "ROUTER"]
    assert starts[1]["name"] == "cache_warm" and starts[1]["input"] == {"keys": 3}
    assert starts[1]["parent_id"] == starts[0]["id"]
    ends = by_kind(agent.messages, "end")
    assert ends[-1]["status"] == "error" and "error" not in ends[-1]


def test_end_is_sent_once(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    m = client.trace().message("x")
    m.end("a")
    m.end("b")
    assert client.flush(2.0) and agent.collector.wait_count(3)
    assert [e["output"] for e in by_kind(agent.messages, "end")] == ["a"]
    assert m.ended


def test_context_manager_ends_and_error_path_reraises(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    with trace.message("q") as message:
        with message.tool("fine") as t:
            pass
        with pytest.raises(ValueError, match="boom"):
            with message.generation("fails") as g:
                raise ValueError("boom")
        with message.agent("set output itself") as a:
            a.end("done")
    assert client.flush(2.0) and agent.collector.wait_count(9)
    ends = {e["id"]: e for e in by_kind(agent.messages, "end")}
    assert ends[t.id].get("status") is None
    assert ends[g.id]["status"] == "error" and ends[g.id]["error"] == "ValueError: boom"
    assert ends[a.id]["output"] == "done"
    assert message.id in ends and ends[message.id].get("status") is None
    assert len(by_kind(agent.messages, "end")) == 4


def test_agent_absent_never_raises_counts_and_is_fast(sockdir, clients):
    client = clients(f"unix://{sockdir}/nobody-listens.sock", max_queue=50)
    t0 = time.monotonic()
    trace = client.trace(conversation_id="c")
    for i in range(500):
        with trace.message(f"m{i}") as m:
            m.tool("t").end("r")
    emit_s = time.monotonic() - t0
    t1 = time.monotonic()
    assert client.flush(2.0) is False
    flush_s = time.monotonic() - t1
    assert emit_s < 2.0 and flush_s < 1.0
    stats = client.stats()
    assert stats["sent"] == 0 and stats["queued"] == 0
    assert stats["dropped_queue_full"] > 0 and stats["dropped_no_agent"] > 0
    assert stats["dropped_queue_full"] + stats["dropped_no_agent"] == 1 + 500 * 4
    assert stats["connect_failures"] >= 1


def test_queue_is_bounded_while_the_agent_is_down_then_delivered(make_agent, sockdir, clients):
    path = f"{sockdir}/late.sock"
    client = clients(f"unix://{path}", max_queue=10)
    trace = client.trace()
    for i in range(99):
        trace.send("TOOL", input=i)
    stats = client.stats()
    assert stats["queued"] == 10 and stats["dropped_queue_full"] == 90
    agent = make_agent("unix", name="late.sock")  # the agent starts late
    assert agent.collector.wait_count(10, timeout=5.0)
    assert client.flush(2.0)
    assert [m.get("input") for m in agent.messages] == [None] + list(range(9))


def test_reconnects_after_the_agent_restarts(make_agent, clients):
    agent = make_agent("unix", name="restart.sock")
    client = clients(agent.endpoint)
    trace = client.trace()
    trace.send("TOOL", input="before")
    assert client.flush(2.0) and agent.collector.wait_count(2)
    agent.close()
    os.unlink(agent.endpoint[len("unix://") :])
    agent2 = make_agent("unix", name="restart.sock")

    def delivered():
        trace.send("TOOL", input="after")
        client.flush(0.5)
        return any(m.get("input") == "after" for m in agent2.messages)

    assert wait_until(delivered, timeout=5.0, interval=0.05)
    assert client.stats()["connects"] >= 2


def _read_messages(conn, want, timeout=5.0):
    """Messages read from `conn` until `want` of them or the timeout."""
    import msgpack

    conn.settimeout(0.05)
    unpacker = msgpack.Unpacker(raw=False)
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        try:
            data = conn.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        unpacker.feed(data)
        out.extend(unpacker)
    return out


def test_a_batch_sent_after_the_agent_closed_the_connection_goes_out_on_a_new_one(
    sockdir, clients
):
    # The agent closes a connection that stayed idle (listen.idle_timeout_s):
    # shut for reading, then closed. The app's next batch fails to go out on
    # it, whole, and is sent again on a new connection instead of dropped.
    path = os.path.join(sockdir, "idle.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    server.settimeout(5.0)
    try:
        client = clients(f"unix://{path}")
        trace = client.trace()
        trace.send("TOOL", input="first")
        assert client.flush(2.0)
        conn, _ = server.accept()
        assert [m.get("input") for m in _read_messages(conn, 2)] == [None, "first"]
        conn.shutdown(socket.SHUT_RD)
        conn.close()

        trace.send("TOOL", input="second")
        assert client.flush(2.0)
        again, _ = server.accept()
        assert [m.get("input") for m in _read_messages(again, 1)] == ["second"]
        again.close()
        stats = client.stats()
        assert stats["dropped"] == 0 and stats["connects"] == 2
    finally:
        server.close()


def test_full_agent_socket_never_blocks_the_app(make_agent, clients):
    agent = make_agent("unixgram", read=False)  # bound but never read: fills up
    client = clients(agent.endpoint, max_queue=100)
    trace = client.trace()
    big = "x" * 4000
    t0 = time.monotonic()
    for _ in range(2000):
        trace.send("TOOL", input=big)
    assert time.monotonic() - t0 < 3.0
    assert client.flush(0.2) is False
    stats = client.stats()
    assert stats["dropped_queue_full"] > 0
    assert stats["queued"] <= 100


def test_unencodable_values_are_sent_as_strings(make_agent, clients):
    class Thing:
        def __str__(self):
            return "a thing"

    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace(metadata=Metadata(when=Thing()))
    m = trace.message({"obj": Thing(), "set": {1}, "ok": [1, 2.5, b"\x00"]})
    m.end(2**70, attrs={"broken": Broken()})
    deep = []
    for _ in range(600):
        deep = [deep]
    trace.send("TOOL", input=deep)
    assert client.flush(2.0)
    assert agent.collector.wait_count(4)
    tr, start, end, tool = agent.messages
    assert tr["metadata"] == {"when": "a thing"}
    assert start["input"]["obj"] == "a thing" and start["input"]["set"] == "{1}"
    assert start["input"]["ok"] == [1, 2.5, b"\x00"]
    assert end["output"] == str(2**70)
    assert end["attrs"] == {"broken": "<unencodable Broken>"}
    assert tool["kind"] == "event"
    assert client.stats()["degraded_values"] >= 5
    assert client.stats()["internal_errors"] == 0


def test_oversized_values_are_truncated(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint, max_message_bytes=64 * 1024)
    trace = client.trace()
    trace.message("q" * 200_000).end("ok")
    assert client.flush(2.0) and agent.collector.wait_count(3)
    start = agent.messages[1]
    assert len(start["input"]) < 64 * 1024 and "[truncated" in start["input"]
    assert client.stats()["truncated"] == 1


def test_endpoint_from_environment_and_bad_endpoint(make_agent, monkeypatch):
    agent = make_agent("udp")
    monkeypatch.setenv("SIDETRACE_ENDPOINT", agent.endpoint)
    c = Client()
    assert c.endpoint == agent.endpoint
    c.trace().send("TOOL", input=1)
    assert c.close(2.0) and agent.collector.wait_count(2)
    with pytest.warns(RuntimeWarning, match="sidetrace"):
        bad = Client("http://nope")
    bad.trace().message("x").end("y")
    assert bad.stats()["dropped_bad_endpoint"] == 3
    assert bad.close(0.1)


def test_emit_after_close_is_dropped_and_counted(make_agent):
    agent = make_agent("unix")
    c = Client(agent.endpoint)
    t = c.trace()
    assert c.close(1.0)
    t.message("late")
    assert c.stats()["dropped_closed"] == 1


def test_fork_child_gets_its_own_sender(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace(conversation_id="parent")
    trace.send("TOOL", input="from-parent")
    assert client.flush(2.0)
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's thread or socket
        code = 1
        try:
            trace.send("TOOL", input="from-child")
            ok = client.flush(2.0)
            code = 0 if ok and client.stats()["sent"] == 1 else 2
        finally:
            os._exit(code)
    trace.send("TOOL", input="parent-after-fork")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(2.0)
    assert agent.collector.wait_count(4)
    inputs = sorted(m.get("input") or "" for m in agent.messages)
    assert inputs == ["", "from-child", "from-parent", "parent-after-fork"]
    assert agent.collector.connections == 2


def run_script(body, env_extra, timeout=20):
    env = dict(os.environ, PYTHONPATH=SDK_DIR, **env_extra)
    script = textwrap.dedent(body)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.monotonic() - t0


def test_interpreter_exit_flushes(make_agent):
    agent = make_agent("unix")
    proc, _ = run_script(
        """
        from sidetrace import Client
        c = Client()
        t = c.trace(conversation_id="exit")
        for i in range(300):
            t.send("TOOL", input=i)
        """,
        {"SIDETRACE_ENDPOINT": agent.endpoint},
    )
    assert proc.returncode == 0, proc.stderr
    assert agent.collector.wait_count(301)


def test_interpreter_exit_is_fast_without_agent(sockdir):
    proc, took = run_script(
        """
        from sidetrace import Client
        c = Client()
        t = c.trace()
        for i in range(300):
            t.message(i).end(i)
        print(c.stats()["enqueued"])
        """,
        {"SIDETRACE_ENDPOINT": f"unix://{sockdir}/absent.sock"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "601" and proc.stderr == ""
    assert took < 3.0
