"""End to end: the page's nested example through the real agent binary, read
back as a finished trace document from $SIDETRACE_DATA_DIR/traces.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import wait_until
from sidetrace import Client, Metadata, User

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def agent_binary():
    path = os.environ.get("SIDETRACE_BIN") or os.path.join(
        REPO, "build", "release", "agent", "sidetrace"
    )
    return path if os.access(path, os.X_OK) else None


@pytest.fixture
def real_agent():
    binary = agent_binary()
    if binary is None:
        pytest.skip(
            "the agent binary is not built yet ($SIDETRACE_BIN or build/release/agent/sidetrace)"
        )
    d = tempfile.mkdtemp(prefix="st-e2e-", dir="/tmp")
    env = dict(
        os.environ,
        SIDETRACE_DATA_DIR=os.path.join(d, "data"),
        SIDETRACE_LISTEN_UNIX_STREAM=os.path.join(d, "a.sock"),
        SIDETRACE_LISTEN_UNIX_DGRAM=os.path.join(d, "a.dgram"),
        SIDETRACE_LISTEN_UDP="127.0.0.1:0",
        SIDETRACE_LISTEN_OTLP_HTTP="127.0.0.1:0",
        SIDETRACE_ADMIN_LISTEN="127.0.0.1:0",
        SIDETRACE_TRACE_QUIET_PERIOD_MS="100",
    )
    log = open(os.path.join(d, "agent.log"), "w+")
    proc = subprocess.Popen(
        [binary, "agent", "--print"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        up = wait_until(
            lambda: os.path.exists(env["SIDETRACE_LISTEN_UNIX_STREAM"]) or proc.poll() is not None,
            timeout=15.0,
        )
        if not up or proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the agent did not start: {log.read()[-2000:]}")
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def read_documents(path, trace_id):
    try:
        with open(path) as f:
            # A last line without its newline is still being written.
            docs = [json.loads(line) for line in f if line.strip() and line.endswith("\n")]
    except FileNotFoundError:
        return []
    return [d for d in docs if d.get("trace_id") == trace_id]


@pytest.mark.parametrize("transport", ["unix", "unixgram"])
def test_nested_example_becomes_a_trace_tree(real_agent, transport):
    env = real_agent
    sock = env["SIDETRACE_LISTEN_UNIX_STREAM" if transport == "unix" else "SIDETRACE_LISTEN_UNIX_DGRAM"]
    client = Client(f"{transport}://{sock}")

    # The page's nested example.
    trace = client.trace(
        conversation_id="conv_123",
        metadata=Metadata(environment="production"),
        user=User(id="user_123"),
    )
    try:
        message = trace.message("User: Tell me about neural networks")
        retrieval = message.retrieval("Searching documentation")
        retrieval.end("Found 2 relevant articles")
        generation = message.generation("Creating explanation")
        generation.end("Generated response about neural networks")
        message.end("Bot: Neural networks are...")
    except Exception as e:
        message.end(f"Error: {str(e)}")

    assert client.close(5.0)
    jsonl = os.path.join(env["SIDETRACE_DATA_DIR"], "traces.jsonl")
    docs = wait_until(lambda: read_documents(jsonl, trace.trace_id), timeout=15.0, interval=0.05)
    assert docs, f"no document for trace {trace.trace_id} in {jsonl}"
    doc = max(docs, key=lambda d: d["revision"])
    assert doc["conversation_id"] == "conv_123"
    assert doc["metadata"] == {"environment": "production"}
    assert doc["user"]["id"] == "user_123"
    assert doc["status"] == "ok" and not doc["partial"]
    assert len(doc["events"]) == 1
    root = doc["events"][0]
    assert root["id"] == message.id and root["type"] == "MESSAGE"
    assert root["input"] == "User: Tell me about neural networks"
    assert root["output"] == "Bot: Neural networks are..."
    assert not root["unfinished"] and not root["orphan"]
    kids = {c["type"]: c for c in root["children"]}
    assert set(kids) == {"RETRIEVAL", "GENERATION"}
    assert kids["RETRIEVAL"]["id"] == retrieval.id
    assert kids["RETRIEVAL"]["output"] == "Found 2 relevant articles"
    assert kids["GENERATION"]["input"] == "Creating explanation"
    assert all(c["children"] == [] for c in kids.values())
    assert doc["start_ts"] <= root["start_ts"] <= root["end_ts"] <= doc["end_ts"]


def test_arguments_of_wrong_types_still_make_a_complete_trace(real_agent):
    env = real_agent
    client = Client(f"unix://{env['SIDETRACE_LISTEN_UNIX_STREAM']}")
    trace = client.trace(trace_id=987654321, conversation_id=5, metadata="prod", user=42)
    message = trace.message({"q": 1}, name=object(), attrs=5, ts="x")
    tool = message.tool("t", ts=-1, attrs=[1])
    tool.end(status="done", error=RuntimeError("late"), ts=float("nan"))
    message.send(event_type="", latency="-3", parent=object(), ts="1e400")
    message.send(event_type="x" * 200, latency="12", score=1)
    trace.feedback(score="high", target=message, ts=True)
    message.end(ts=str(time.time_ns()), status=True)

    assert client.close(5.0)
    stats = client.stats()
    assert stats["internal_errors"] == 0 and stats["dropped"] == 0
    assert stats["args_dropped"] >= 10 and stats["args_coerced"] >= 4
    jsonl = os.path.join(env["SIDETRACE_DATA_DIR"], "traces.jsonl")
    docs = wait_until(lambda: read_documents(jsonl, "987654321"), timeout=15.0, interval=0.05)
    assert docs, f"no document for trace 987654321 in {jsonl}"
    doc = max(docs, key=lambda d: d["revision"])
    assert doc["conversation_id"] == "5" and doc["user"] == {"id": "42"}
    assert not doc["partial"]
    assert len(doc["events"]) == 1
    root = doc["events"][0]
    assert root["id"] == message.id and not root["unfinished"]
    kids = sorted(root["children"], key=lambda c: c["type"])
    assert [k["type"] for k in kids] == ["CUSTOM", "CUSTOM", "TOOL"]
    assert kids[2]["status"] == "error" and kids[2]["error"] == "late"
    assert all(not k["unfinished"] for k in kids)
    assert doc["feedback"][0]["target_id"] == message.id
