"""OTLP/HTTP export as a decoder that is not sidetrace's own sees it.

The agent sends to a small Python HTTP sink with upstream.format = "otlp"; the sink decodes every
body with Python's protobuf package (Debian's python3-protobuf) from otlp/proto/*.proto, which
protoc compiles into a temporary directory when the module starts. Checked: the request line and
headers, the spans and attributes of a trace, a late revision that carries only what changed
(with stable span ids), a partial_success counted and not retried, and the JSON encoding carrying
the same spans.
"""

from __future__ import annotations

import gzip
import http.server
import importlib
import json
import os
import pathlib
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time

import msgpack
import pytest

from harness import wait_until

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTOS = ["common", "resource", "trace", "trace_service", "status"]


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    """The generated Python modules: pb.trace_service, pb.trace, pb.common."""
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.skip("protoc not installed (Debian: protobuf-compiler)")
    out = tmp_path_factory.mktemp("otlp_pb2")
    subprocess.run([protoc, f"--python_out={out}", f"-I{REPO}", "-I/usr/include",
                    *[f"otlp/proto/{n}.proto" for n in PROTOS]], cwd=REPO, check=True)
    sys.path.insert(0, str(out))
    try:
        mods = {n: importlib.import_module(f"otlp.proto.{n}_pb2") for n in PROTOS}
    finally:
        sys.path.remove(str(out))

    class Modules:
        trace_service = mods["trace_service"]
        trace = mods["trace"]
        common = mods["common"]
        status = mods["status"]

    return Modules


class Sink:
    """An OTLP/HTTP receiver on loopback: records each request (path, headers, body after
    Content-Encoding) and answers what `respond(index, request)` returns, (status, content
    type, body); by default 200 with an empty protobuf ExportTraceServiceResponse."""

    def __init__(self, pb):
        self.pb = pb
        self.requests = []
        self.cond = threading.Condition()
        self.respond = lambda i, r: (200, "application/x-protobuf", b"")
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                enc = (self.headers.get("Content-Encoding") or "").lower()
                if enc == "gzip":
                    body = gzip.decompress(body)
                req = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": body}
                with sink.cond:
                    index = len(sink.requests)
                    sink.requests.append(req)
                    sink.cond.notify_all()
                status, ctype, out = sink.respond(index, req)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def decode(self, i):
        req = self.pb.trace_service.ExportTraceServiceRequest()
        req.ParseFromString(self.requests[i]["body"])
        return req

    def wait_requests(self, n, timeout=20.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.requests)} requests, wanted {n}")
                self.cond.wait(left)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink(pb):
    s = Sink(pb)
    yield s
    s.close()


def send(agent, messages):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(agent.stream_path)
        s.sendall(b"".join(msgpack.packb(m) for m in messages))


def a_trace(trace_id, ids):
    """A trace: an agent event with a generation and a failed tool under it, its context,
    and feedback on the generation."""
    t0 = time.time_ns()
    base = {"v": 1, "trace_id": trace_id}
    return [
        dict(base, kind="trace", session_id="sess-7", user={"id": "user-42"},
             metadata={"env": "test"}, ts=t0),
        dict(base, kind="start", id=ids["agent"], type="AGENT", name="answer", input="2+2?",
             ts=t0),
        dict(base, kind="start", id=ids["gen"], parent_id=ids["agent"], type="GENERATION",
             name="llm", input=[{"role": "user", "content": "2+2?"}],
             attrs={"model": "m-1", "temperature": 0.5}, ts=t0 + 1_000_000),
        dict(base, kind="end", id=ids["gen"], output="4",
             attrs={"input_tokens": 12, "output_tokens": 1}, ts=t0 + 5_000_000),
        dict(base, kind="event", id=ids["tool"], parent_id=ids["agent"], type="TOOL",
             name="calc", status="error", error="division by zero", ts=t0 + 6_000_000,
             end_ts=t0 + 7_000_000),
        dict(base, kind="end", id=ids["agent"], output="4", ts=t0 + 9_000_000),
        dict(base, kind="feedback", tag="thumbs", score=1, target_id=ids["gen"],
             ts=t0 + 10_000_000),
    ]


def attrs(kvs):
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def test_protobuf_export_decodes_with_pythons_protobuf(make_agent, sink, pb):
    agent = make_agent({"upstream": {"endpoint": sink.url + "/otlp", "format": "otlp",
                                     "compression": "gzip", "flush_interval_ms": 20}})
    trace_id = os.urandom(16).hex()
    ids = {k: os.urandom(8).hex() for k in ("agent", "gen", "tool")}
    # The second request (the late revision) is answered with a partial_success.
    rejected = pb.trace_service.ExportTraceServiceResponse()
    rejected.partial_success.rejected_spans = 1
    rejected.partial_success.error_message = "kept for test"
    sink.respond = lambda i, r: (200, "application/x-protobuf",
                                 rejected.SerializeToString() if i == 1 else b"")
    send(agent, a_trace(trace_id, ids))
    sink.wait_requests(1)

    first = sink.requests[0]
    assert first["path"] == "/otlp/v1/traces"
    assert first["headers"]["content-type"] == "application/x-protobuf"
    assert first["headers"]["content-encoding"] == "gzip"
    req = sink.decode(0)
    assert len(req.resource_spans) == 1
    rs = req.resource_spans[0]
    res = attrs(rs.resource.attributes)
    assert res["service.name"] == "sidetrace"
    assert res["sidetrace.trace_id"] == trace_id
    assert res["sidetrace.trace.revision"] == 1
    assert res["session.id"] == "sess-7" and res["user.id"] == "user-42"
    assert rs.scope_spans[0].scope.name == "sidetrace"
    spans = {s.span_id.hex(): s for s in rs.scope_spans[0].spans}
    assert set(spans) == set(ids.values())
    Span = pb.trace.Span
    root, gen, tool = spans[ids["agent"]], spans[ids["gen"]], spans[ids["tool"]]
    for s in spans.values():
        assert s.trace_id.hex() == trace_id
        assert s.end_time_unix_nano >= s.start_time_unix_nano > 0
    assert root.parent_span_id == b"" and root.name == "answer"
    assert gen.parent_span_id.hex() == ids["agent"] and tool.parent_span_id.hex() == ids["agent"]
    assert gen.kind == Span.SPAN_KIND_CLIENT and root.kind == Span.SPAN_KIND_INTERNAL
    assert gen.end_time_unix_nano - gen.start_time_unix_nano == 4_000_000
    g = attrs(gen.attributes)
    assert g["openinference.span.kind"] == "LLM" and g["gen_ai.operation.name"] == "chat"
    assert g["gen_ai.request.model"] == "m-1" and g["gen_ai.request.temperature"] == 0.5
    assert g["gen_ai.usage.input_tokens"] == 12 and g["gen_ai.usage.output_tokens"] == 1
    assert json.loads(g["input.value"]) == [{"role": "user", "content": "2+2?"}]
    assert g["input.mime_type"] == "application/json" and g["output.value"] == "4"
    assert json.loads(g["metadata"]) == {"env": "test"}
    assert g["annotation.thumbs.score"] == 1
    assert [e.name for e in gen.events] == ["feedback"]
    assert attrs(gen.events[0].attributes) == {"feedback.tag": "thumbs", "feedback.score": 1}
    assert tool.status.code == pb.trace.Status.STATUS_CODE_ERROR
    assert tool.status.message == "division by zero"
    assert root.status.code == pb.trace.Status.STATUS_CODE_OK

    # Late whole-trace feedback: revision 2 carries only the root span, with the same id.
    t = time.time_ns()
    send(agent, [{"v": 1, "kind": "feedback", "trace_id": trace_id, "tag": "overall",
                  "text": "late", "ts": t}])
    sink.wait_requests(2)
    late = sink.decode(1)
    assert len(late.resource_spans) == 1
    assert attrs(late.resource_spans[0].resource.attributes)["sidetrace.trace.revision"] == 2
    only = late.resource_spans[0].scope_spans[0].spans
    assert [s.span_id.hex() for s in only] == [ids["agent"]]
    assert attrs(only[0].attributes)["annotation.overall.text"] == "late"
    assert [attrs(e.attributes)["feedback.tag"] for e in only[0].events] == ["overall"]
    # Its partial_success is counted, and the request is not sent again.
    wait_until(lambda: agent.metric("sidetrace_spans_rejected_total") == 1, 10, "counted")
    assert "partial success, 1 spans rejected: kept for test" in agent.log_text()
    assert len(sink.requests) == 2
    assert agent.metric("sidetrace_batches_total", outcome="sent") == 2


def test_json_encoding_carries_the_same_spans(make_agent, sink, pb):
    trace_id = os.urandom(16).hex()
    ids = {k: os.urandom(8).hex() for k in ("agent", "gen", "tool")}
    messages = a_trace(trace_id, ids)
    for i, encoding in enumerate(("protobuf", "json")):
        agent = make_agent({"upstream": {"endpoint": sink.url, "format": "otlp",
                                         "otlp_encoding": encoding, "compression": "none",
                                         "flush_interval_ms": 20}}, name=encoding)
        send(agent, messages)
        sink.wait_requests(i + 1)
    assert sink.requests[0]["headers"]["content-type"] == "application/x-protobuf"
    assert sink.requests[1]["headers"]["content-type"] == "application/json"
    assert "content-encoding" not in sink.requests[1]["headers"]
    binary = sink.decode(0).resource_spans[0].scope_spans[0].spans
    text = json.loads(sink.requests[1]["body"])["resourceSpans"][0]["scopeSpans"][0]["spans"]

    def from_json_value(v):
        ((kind, x),) = v.items()
        return int(x) if kind == "intValue" else x

    want = {(s.span_id.hex(), s.parent_span_id.hex(), s.name, s.kind, s.start_time_unix_nano,
             s.end_time_unix_nano, s.status.code, tuple(sorted(attrs(s.attributes).items())))
            for s in binary}
    got = {(s["spanId"], s.get("parentSpanId", ""), s["name"], s["kind"],
            int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"]), s["status"]["code"],
            tuple(sorted((a["key"], from_json_value(a["value"])) for a in s["attributes"])))
           for s in text}
    assert got == want
