"""Arguments of any type: no public call raises, every message that leaves
is valid protocol v1, and each conversion or omission is counted."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest

from conftest import protocol_problem
from sidetrace import Client, Metadata, User


class BrokenStr:
    def __str__(self):
        raise RuntimeError("no text")

    __repr__ = __str__


class BrokenMapping(dict):
    def items(self):
        raise RuntimeError("no items")

    def keys(self):
        raise RuntimeError("no keys")

    def __iter__(self):
        raise RuntimeError("no iteration")


BAD_VALUES = [
    5,
    -1,
    2**80,
    -(2**80),
    1.5,
    float("nan"),
    float("inf"),
    True,
    "x",
    "",
    "9" * 300,
    "\ud800",
    b"\xff\x00",
    [1, 2],
    {"k": object()},
    {1: "int key"},
    object(),
    BrokenStr(),
    BrokenMapping(a=1),
    uuid.UUID(int=7),
    datetime.datetime(2020, 1, 1),
    type,
]

START_KEYWORDS = ["input", "name", "attrs", "ts"]
CONTEXT_KEYWORDS = [
    "conversation_id",
    "session_id",
    "interaction_id",
    "channel_id",
    "metadata",
    "user",
]
SEND_KEYWORDS = [
    *("event_type", "input", "output", "latency", "name", "status", "error", "attrs", "ts")
]
# Every public call: a name, how to call it, and the keywords it takes.
CALLS = [
    ("client.trace", lambda c, t, e, kw: c.trace(**kw), [*CONTEXT_KEYWORDS, "trace_id"]),
    ("trace.update", lambda c, t, e, kw: t.update(**kw), CONTEXT_KEYWORDS),
    *[
        (f"trace.{m}", (lambda m: lambda c, t, e, kw: getattr(t, m)(**kw))(m), START_KEYWORDS)
        for m in ("message", "system", "tool", "generation", "agent", "retrieval", "router")
    ],
    *[
        (f"event.{m}", (lambda m: lambda c, t, e, kw: getattr(e, m)(**kw))(m), START_KEYWORDS)
        for m in ("message", "system", "tool", "generation", "agent", "retrieval", "router")
    ],
    ("trace.custom", lambda c, t, e, kw: t.custom(**kw), ["name", "input", "attrs", "ts"]),
    ("event.custom", lambda c, t, e, kw: e.custom(**kw), ["name", "input", "attrs", "ts"]),
    ("trace.send", lambda c, t, e, kw: t.send(**kw), [*SEND_KEYWORDS, "parent"]),
    ("event.send", lambda c, t, e, kw: e.send(**kw), SEND_KEYWORDS),
    ("trace.feedback", lambda c, t, e, kw: t.feedback(**kw),
     ["feedback_tag", "feedback_text", "score", "target", "ts"]),
    ("event.feedback", lambda c, t, e, kw: e.feedback(**kw),
     ["feedback_tag", "feedback_text", "score", "ts"]),
    ("event.end", lambda c, t, e, kw: t.message("m").end(**kw),
     ["output", "status", "error", "attrs", "ts"]),
    ("client.flush", lambda c, t, e, kw: c.flush(**kw), ["timeout"]),
]


def check_all_valid(messages):
    problems = [(protocol_problem(m), m) for m in messages if protocol_problem(m)]
    assert not problems, problems[:5]


@pytest.mark.parametrize("name,call,keywords", CALLS, ids=[c[0] for c in CALLS])
def test_every_public_call_takes_any_type(make_agent, clients, name, call, keywords):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    event = trace.message("parent")
    for keyword in keywords:
        for value in BAD_VALUES:
            call(client, trace, event, {keyword: value})  # must not raise
    call(client, trace, event, {"no_such_keyword": 1})
    assert client.flush(5.0)
    stats = client.stats()
    assert stats["internal_errors"] == 0, stats
    assert stats["args_dropped"] > 0
    assert stats["dropped"] == 0
    assert agent.collector.wait_count(stats["sent"])
    check_all_valid(agent.messages)


def test_positional_arguments_that_do_not_fit_do_nothing(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    ev = trace.message("a", "b", "c", "d")
    assert ev.ended and ev.trace is trace
    ev.tool("child").end()  # a child of the returned stand-in still works
    trace.feedback(1, 2, 3, 4)
    ev.end(1, 2, 3)
    assert client.flush(2.0) and agent.collector.wait_count(3)
    stats = client.stats()
    assert stats["args_dropped"] == 3 and stats["internal_errors"] == 0
    assert [m["kind"] for m in agent.messages] == ["trace", "start", "end"]


def test_conversions(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace(trace_id=12345, conversation_id=7, metadata=5, user="user_9")
    long_id = client.trace(trace_id="t" * 129)
    m = trace.message(
        "q", name=3, attrs=["not", "a", "map"], ts="1700000000000000000", colour="red"
    )
    m.end(status="failed", error=ValueError("timeout"), ts=1.7e18)
    trace.send(
        "tool", latency="35", parent=m, score_typo=1, status="OK", attrs={1: "x"}
    )
    trace.send(event_type="", latency=-5, ts=-1)
    new_year = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    trace.send(event_type="x" * 129, latency=True, ts=new_year)
    trace.feedback(feedback_tag=b"UP", score="0.5", target=42, ts="soon")
    trace.feedback(score=float("nan"), target=[1])
    assert client.flush(2.0) and agent.collector.wait_count(9)
    check_all_valid(agent.messages)
    msgs = [x for x in agent.messages if x["trace_id"] == "12345"]
    tr, start, end, ev1, ev2, ev3, fb1, fb2 = msgs
    assert tr["conversation_id"] == "7" and tr["user"] == {"id": "user_9"}
    assert "metadata" not in tr
    assert len(long_id.trace_id) == 32 and long_id.trace_id != "t" * 129
    assert start["name"] == "3" and "attrs" not in start
    assert start["ts"] == 1700000000000000000
    assert end["status"] == "error" and end["error"] == "timeout"
    assert end["ts"] == int(1.7e18)
    assert ev1["type"] == "TOOL" and ev1["latency_ms"] == 35 and ev1["parent_id"] == m.id
    assert ev1["status"] == "ok" and ev1["attrs"] == {1: "x"}
    assert ev2["type"] == "CUSTOM" and ev2["latency_ms"] == 0
    now = time.time_ns()
    assert now - 10**10 < ev2["ts"] <= now
    assert ev3["type"] == "CUSTOM" and ev3["latency_ms"] == 0
    assert ev3["ts"] == 1577836800 * 10**9
    assert fb1["tag"] == "UP" and fb1["score"] == 0.5 and fb1["target_id"] == "42"
    assert now - 10**10 < fb1["ts"] <= time.time_ns()
    assert "score" not in fb2 and "target_id" not in fb2
    stats = client.stats()
    # coerced: trace_id, conversation_id, user, name, ts text, error, ts float,
    # latency text, ts datetime, tag bytes, score text, target int
    assert stats["args_coerced"] == 12, stats
    # dropped: metadata, long trace_id, attrs, colour, status, score_typo,
    # type "", latency -5, ts -1, long type, latency True, ts "soon", score nan, target list
    assert stats["args_dropped"] == 14, stats
    assert stats["internal_errors"] == 0


def test_client_options_of_any_type(sockdir):
    # Nothing listens: the queue keeps what fits.
    c = Client(
        f"unix://{sockdir}/nobody.sock",
        max_queue="3",
        max_queue_bytes=None,
        max_message_bytes=[1],
        exit_flush_s="x",
        nonsense=1,
    )
    t = c.trace()
    for i in range(10):
        t.send("TOOL", input=i)
    stats = c.stats()
    assert stats["queued"] == 3 and stats["dropped_queue_full"] == 8
    assert stats["args_coerced"] == 1 and stats["args_dropped"] == 4
    assert c.exit_flush_s == 2.0
    t0 = time.monotonic()
    assert c.flush("1.5") is False and time.monotonic() - t0 < 1.4  # answered before the timeout
    assert c.close(timeout=object()) is True  # the failed flush left nothing queued
    assert c.stats()["args_coerced"] == 2 and c.stats()["args_dropped"] == 5  # "1.5", object()
    with pytest.warns(RuntimeWarning, match="sidetrace"):
        bad = Client(endpoint=12)
    assert bad.stats()["args_coerced"] == 1
    bad.trace().message("x")
    assert bad.stats()["dropped_bad_endpoint"] == 2
    bad.close(0)


def test_context_manager_with_an_exception_whose_text_raises(make_agent, clients):
    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("cannot describe")

    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    with pytest.raises(Nasty):
        with trace.message("q") as m:
            raise Nasty()
    with client:  # the client's own context manager closes it without raising
        pass
    assert agent.collector.wait_count(3)
    end = agent.messages[2]
    assert end["id"] == m.id and end["status"] == "error" and end["error"] == "Nasty"
    assert client.stats()["internal_errors"] == 0


def test_user_and_metadata_helpers_take_any_arguments():
    assert User() == {}
    assert User(5, plan="pro") == {"id": 5, "plan": "pro"} and User(5).id == 5
    assert Metadata({"a": 1}, 7, b=2) == {"a": 1, "b": 2}


def test_keywords_that_collide_with_internal_names_are_dropped(make_agent, clients):
    agent = make_agent("unix")
    client = clients(agent.endpoint)
    trace = client.trace()
    m = trace.message("q", parent_id="p", type_="X", trace="t", input_="i")
    m.feedback(target="other", feedback_tag="UP")
    m.end()
    assert client.flush(2.0) and agent.collector.wait_count(4)
    start, fb = agent.messages[1], agent.messages[2]
    assert start["type"] == "MESSAGE" and "parent_id" not in start
    assert fb["target_id"] == m.id
    stats = client.stats()
    assert stats["args_dropped"] == 5 and stats["internal_errors"] == 0
