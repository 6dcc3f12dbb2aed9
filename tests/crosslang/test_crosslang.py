"""Cross-language SDK test: the same program shape, written with the Python,
Node.js and C++ SDKs (shape.py, shape.js, sdk/cpp/examples/shape.cpp), sent to
ONE real agent, must decode to the same trace document once what legitimately
differs (trace id, event ids, timestamps, durations, revision) is normalised.

Environment:
  SIDETRACE_BIN            the agent binary (the test is skipped without it)
  SIDETRACE_BUILD_DIR      the CMake build dir holding sdk/cpp/sidetrace_shape_example
                           (default: derived from SIDETRACE_BIN, <build>/agent/sidetrace)
  SIDETRACE_SHAPE_EXAMPLE  the C++ example binary itself (overrides the two above)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROGRAM_TIMEOUT_S = 30.0
DOCUMENT_TIMEOUT_S = 20.0

# The normalised document every SDK's program must produce. Event ids become
# their tree position ("e1" is the first root event, "e1.2" its second child),
# timestamps "<ts>", durations "<ms>", the change flags (which depend on the
# revision the feedback landed in) "<flag>"; null stays null.
EXPECTED = {
    "trace_id": "<trace>",
    "revision": "<revision>",
    "part": None,
    "trace_changed": "<flag>",
    "conversation_id": "conv_123",
    "session_id": "session_123",
    "interaction_id": None,
    "channel_id": None,
    "user": {"id": "user_123", "plan": "pro"},
    "metadata": {"environment": "production"},
    "start_ts": "<ts>",
    "end_ts": "<ts>",
    "duration_ms": "<ms>",
    "status": "error",
    "partial": False,
    "events": [
        {
            "id": "e1",
            "parent_id": None,
            "type": "MESSAGE",
            "name": None,
            "input": "User: Tell me about neural networks",
            "output": "Bot: Neural networks are...",
            "start_ts": "<ts>",
            "end_ts": "<ts>",
            "duration_ms": "<ms>",
            "status": "ok",
            "error": None,
            "attrs": {},
            "orphan": False,
            "unfinished": False,
            "changed": "<flag>",
            "children": [
                {
                    "id": "e1.1",
                    "parent_id": "e1",
                    "type": "TOOL",
                    "name": "lookup",
                    "input": "lookup(42)",
                    "output": {"found": True},
                    "start_ts": "<ts>",
                    "end_ts": "<ts>",
                    "duration_ms": "<ms>",
                    "status": "ok",
                    "error": None,
                    "attrs": {},
                    "orphan": False,
                    "unfinished": False,
                    "changed": "<flag>",
                    "children": [],
                },
                {
                    "id": "e1.2",
                    "parent_id": "e1",
                    "type": "RETRIEVAL",
                    "name": None,
                    "input": "Searching documentation",
                    "output": "Found 2 relevant articles",
                    "start_ts": "<ts>",
                    "end_ts": "<ts>",
                    "duration_ms": "<ms>",
                    "status": "ok",
                    "error": None,
                    "attrs": {},
                    "orphan": False,
                    "unfinished": False,
                    "changed": "<flag>",
                    "children": [],
                },
                {
                    "id": "e1.3",
                    "parent_id": "e1",
                    "type": "TOOL",
                    "name": "search_docs",
                    "input": {"query": "neural networks"},
                    "output": {"hits": 2},
                    "start_ts": "<ts>",
                    "end_ts": "<ts>",
                    "duration_ms": "<ms>",
                    "status": "ok",
                    "error": None,
                    "attrs": {},
                    "orphan": False,
                    "unfinished": False,
                    "changed": "<flag>",
                    "children": [],
                },
                {
                    "id": "e1.4",
                    "parent_id": "e1",
                    "type": "GENERATION",
                    "name": "Creating explanation",
                    "input": [{"role": "user", "content": "Tell me about neural networks"}],
                    "output": "Neural networks are layered function approximators.",
                    "start_ts": "<ts>",
                    "end_ts": "<ts>",
                    "duration_ms": "<ms>",
                    "status": "ok",
                    "error": None,
                    "attrs": {
                        "model": "gpt-4o-mini",
                        "temperature": 0.2,
                        "input_tokens": 812,
                        "output_tokens": 95,
                    },
                    "orphan": False,
                    "unfinished": False,
                    "changed": "<flag>",
                    "children": [],
                },
                {
                    "id": "e1.5",
                    "parent_id": "e1",
                    "type": "TOOL",
                    "name": "fetch",
                    "input": "https://example.invalid/nn",
                    "output": None,
                    "start_ts": "<ts>",
                    "end_ts": "<ts>",
                    "duration_ms": "<ms>",
                    "status": "error",
                    "error": "timeout",
                    "attrs": {},
                    "orphan": False,
                    "unfinished": False,
                    "changed": "<flag>",
                    "children": [],
                },
            ],
        },
        {
            "id": "e2",
            "parent_id": None,
            "type": "SYSTEM",
            "name": None,
            "input": "Initializing cache",
            "output": "Cache warmed up",
            "start_ts": "<ts>",
            "end_ts": "<ts>",
            "duration_ms": "<ms>",
            "status": "ok",
            "error": None,
            "attrs": {},
            "orphan": False,
            "unfinished": False,
            "changed": "<flag>",
            "children": [],
        },
    ],
    "feedback": [
        {"tag": "THUMBS_UP", "text": "helpful", "score": 1, "target_id": None, "ts": "<ts>",
         "changed": "<flag>"},
        {"tag": "WRONG_SOURCE", "text": None, "score": 0, "target_id": "e1.4", "ts": "<ts>",
         "changed": "<flag>"},
    ],
}


def wait_until(predicate, timeout, interval=0.02):
    """Polls `predicate` until it is truthy or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def executable(path):
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def agent_binary():
    return executable(os.environ.get("SIDETRACE_BIN"))


def cpp_example_binary():
    explicit = os.environ.get("SIDETRACE_SHAPE_EXAMPLE")
    if explicit:
        return executable(explicit)
    build = os.environ.get("SIDETRACE_BUILD_DIR")
    if not build and os.environ.get("SIDETRACE_BIN"):
        # <build>/agent/sidetrace
        build = os.path.dirname(os.path.dirname(os.path.abspath(os.environ["SIDETRACE_BIN"])))
    if not build:
        return None
    return executable(os.path.join(build, "sdk", "cpp", "sidetrace_shape_example"))


def node_binary():
    return shutil.which("node")


# ---- normalisation -----------------------------------------------------------


def _normalise_events(events, prefix, ids):
    """Assigns each event its tree position (pre-order), recording id -> position."""
    for i, ev in enumerate(events, start=1):
        pos = f"{prefix}{i}"
        ids[ev["id"]] = pos
        _normalise_events(ev["children"], pos + ".", ids)


def _ts(value):
    return "<ts>" if isinstance(value, int) and not isinstance(value, bool) else value


def _ms(value):
    return "<ms>" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _flag(value):
    return "<flag>" if isinstance(value, bool) else value


def _mapped(ids, value):
    if value is None:
        return None
    return ids.get(value, f"<not in trace: {value}>")


def _rewrite_event(ev, ids):
    out = dict(ev)
    out["id"] = ids[ev["id"]]
    out["parent_id"] = _mapped(ids, ev["parent_id"])
    out["start_ts"] = _ts(ev["start_ts"])
    out["end_ts"] = _ts(ev["end_ts"])
    out["duration_ms"] = _ms(ev["duration_ms"])
    out["changed"] = _flag(ev.get("changed"))
    out["children"] = [_rewrite_event(c, ids) for c in ev["children"]]
    return out


def normalise(doc):
    """The document with only what must not differ between emitters left as is."""
    ids = {}
    _normalise_events(doc["events"], "e", ids)
    out = dict(doc)
    out["trace_id"] = "<trace>"
    out["revision"] = "<revision>"
    out["start_ts"] = _ts(doc["start_ts"])
    out["end_ts"] = _ts(doc["end_ts"])
    out["duration_ms"] = _ms(doc["duration_ms"])
    out["trace_changed"] = _flag(doc.get("trace_changed"))
    out["events"] = [_rewrite_event(e, ids) for e in doc["events"]]
    out["feedback"] = [
        dict(f, target_id=_mapped(ids, f["target_id"]), ts=_ts(f["ts"]),
             changed=_flag(f.get("changed")))
        for f in doc["feedback"]
    ]
    return out


def typed(value):
    """`value` with every number tagged by its JSON kind, so that 1 and 1.0
    (an integer and a float on the wire) compare unequal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value)
    if isinstance(value, list):
        return [typed(v) for v in value]
    return {k: typed(v) for k, v in value.items()}


def differences(a, b, path="$"):
    """Human-readable differences between two JSON values (type-aware)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                out.append(f"{path}.{k}: {'missing' if k not in a else a[k]!r} != "
                           f"{'missing' if k not in b else b[k]!r}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)} items"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if typed(a) == typed(b) else [f"{path}: {a!r} != {b!r}"]


def find_event(doc, pos):
    events, ev = doc["events"], None
    for i in pos[1:].split("."):
        ev = events[int(i) - 1]
        events = ev["children"]
    return ev


# ---- the agent and the programs ------------------------------------------------


@pytest.fixture(scope="module")
def agent():
    binary = agent_binary()
    if binary is None:
        pytest.skip("no agent binary: set $SIDETRACE_BIN to a built agent/sidetrace")
    d = tempfile.mkdtemp(prefix="st-crosslang-", dir="/tmp")
    env = dict(
        os.environ,
        SIDETRACE_DATA_DIR=os.path.join(d, "data"),
        SIDETRACE_LISTEN_UNIX_STREAM=os.path.join(d, "agent.sock"),
        SIDETRACE_LISTEN_UNIX_DGRAM=os.path.join(d, "agent.dgram.sock"),
        SIDETRACE_LISTEN_UDP="127.0.0.1:0",
        SIDETRACE_LISTEN_OTLP_HTTP="127.0.0.1:0",
        SIDETRACE_ADMIN_LISTEN="127.0.0.1:0",
        SIDETRACE_TRACE_QUIET_PERIOD_MS="50",
        SIDETRACE_BUFFER_SYNC="os",
    )
    log_path = os.path.join(d, "agent.log")
    log = open(log_path, "w+")
    proc = subprocess.Popen([binary, "agent"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        sock = env["SIDETRACE_LISTEN_UNIX_STREAM"]
        wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, timeout=15.0)
        if proc.poll() is not None or not os.path.exists(sock):
            log.seek(0)
            pytest.fail(f"the agent did not start: {log.read()[-2000:]}")
        yield {
            "endpoint": f"unix://{sock}",
            "jsonl": os.path.join(env["SIDETRACE_DATA_DIR"], "traces.jsonl"),
            "log": log_path,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def programs():
    """(sdk name, argv prefix or None, reason when unavailable)."""
    node = node_binary()
    modules = os.path.join(REPO, "sdk", "node", "node_modules", "@msgpack")
    node_ready = node and os.path.isdir(modules)
    cpp = cpp_example_binary()
    return [
        ("python", [sys.executable, os.path.join(HERE, "shape.py")], None),
        (
            "node",
            [node, os.path.join(HERE, "shape.js")] if node_ready else None,
            "node is not installed"
            if not node
            else "sdk/node/node_modules is missing (npm ci in sdk/node)",
        ),
        (
            "cpp",
            [cpp] if cpp else None,
            "the C++ example is not built: cmake --build <build> --target sidetrace_shape_example, "
            "then set $SIDETRACE_BUILD_DIR (or $SIDETRACE_SHAPE_EXAMPLE)",
        ),
    ]


def read_latest(jsonl, trace_id):
    """The highest revision of `trace_id` in the file, or None."""
    best = None
    try:
        with open(jsonl) as f:
            for line in f:
                # A last line without its newline is still being written.
                if not line.strip() or not line.endswith("\n"):
                    continue
                doc = json.loads(line)
                if doc.get("trace_id") != trace_id:
                    continue
                if best is None or doc["revision"] > best["revision"]:
                    best = doc
    except FileNotFoundError:
        return None
    return best


def complete(doc):
    return doc is not None and len(doc["feedback"]) == 2 and not any(
        e["unfinished"] for e in doc["events"]
    )


@pytest.fixture(scope="module")
def documents(agent):
    """Runs each SDK's program once against the agent; {sdk: latest document}."""
    available = [(name, argv) for name, argv, _ in programs() if argv]
    missing = {name: reason for name, argv, reason in programs() if not argv}
    if missing:
        pytest.skip("; ".join(f"{name}: {reason}" for name, reason in missing.items()))
    trace_ids = {}
    for i, (name, argv) in enumerate(available):
        trace_id = f"{i + 1:02x}" + os.urandom(15).hex()
        trace_ids[name] = trace_id
        env = dict(os.environ, SIDETRACE_ENDPOINT=agent["endpoint"])
        r = subprocess.run(argv + [trace_id], env=env, capture_output=True, text=True,
                           timeout=PROGRAM_TIMEOUT_S)
        assert r.returncode == 0, f"{name} program failed ({r.returncode}): {r.stdout}{r.stderr}"
    docs = {}

    def collect():
        for name, trace_id in trace_ids.items():
            doc = read_latest(agent["jsonl"], trace_id)
            if complete(doc):
                docs[name] = doc
        return len(docs) == len(trace_ids)

    if not wait_until(collect, timeout=DOCUMENT_TIMEOUT_S):
        with open(agent["log"]) as f:
            tail = f.read()[-2000:]
        missing = sorted(set(trace_ids) - set(docs))
        pytest.fail(f"documents missing for {missing}; agent log: {tail}")
    for name, doc in docs.items():
        assert doc["trace_id"] == trace_ids[name]
    return docs


# ---- the tests -------------------------------------------------------------------


def test_each_sdk_gives_the_expected_document(documents):
    problems = []
    for name, doc in documents.items():
        for d in differences(EXPECTED, normalise(doc)):
            problems.append(f"{name}: {d}")
    assert not problems, "documents differ from the expected shape:\n" + "\n".join(problems)


def test_the_three_documents_are_equal_after_normalisation(documents):
    names = sorted(documents)
    ref = names[0]
    problems = []
    for other in names[1:]:
        for d in differences(normalise(documents[ref]), normalise(documents[other])):
            problems.append(f"{ref} vs {other}: {d}")
    assert not problems, "\n".join(problems)


def test_change_flags_follow_the_revision(documents):
    """Revision 1 marks everything changed; a later one at least what it added."""
    for name, doc in documents.items():
        flags = [doc["trace_changed"]] + [f["changed"] for f in doc["feedback"]]

        def walk(events):
            for ev in events:
                flags.append(ev["changed"])
                walk(ev["children"])

        walk(doc["events"])
        assert all(isinstance(f, bool) for f in flags), (name, flags)
        if doc["revision"] == 1:
            assert all(flags), (name, doc)
        else:
            assert any(flags), (name, doc)


def test_ids_and_times_are_well_formed(documents):
    for name, doc in documents.items():
        ids = []

        def walk(events, parent):
            for ev in events:
                ids.append(ev["id"])
                assert len(ev["id"]) == 16, (name, ev)
                assert all(c in "0123456789abcdef" for c in ev["id"]), (name, ev)
                assert ev["parent_id"] == parent, (name, ev["id"])
                times = (doc["start_ts"], ev["start_ts"], ev["end_ts"], doc["end_ts"])
                assert list(times) == sorted(times), (name, ev["id"])
                walk(ev["children"], ev["id"])

        walk(doc["events"], None)
        assert len(set(ids)) == len(ids) == 7, name
        # The whole event sent with a 35 ms latency lasts exactly that long.
        lookup = find_event(doc, "e1.1")
        assert lookup["end_ts"] - lookup["start_ts"] == 35_000_000, name
        assert lookup["duration_ms"] == 35, name
        # Feedback on the generation names its real id.
        assert doc["feedback"][1]["target_id"] == find_event(doc, "e1.4")["id"], name
        assert doc["feedback"][0]["ts"] <= doc["feedback"][1]["ts"], name
