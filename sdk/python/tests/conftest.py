"""Real listening sockets standing in for the agent, decoding what arrives."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import msgpack
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def wait_until(predicate, timeout=5.0, interval=0.005):
    """Polls `predicate` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Collector:
    """Decoded messages received by a fake agent socket, in arrival order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._messages = []
        self.connections = 0

    def add(self, msg):
        with self._lock:
            self._messages.append(msg)

    @property
    def messages(self):
        with self._lock:
            return list(self._messages)

    def wait_count(self, n, timeout=5.0):
        return wait_until(lambda: len(self.messages) >= n, timeout)


class FakeAgent:
    """A listening Unix stream, Unix datagram or UDP socket."""

    def __init__(self, scheme, path=None, read=True):
        self.scheme = scheme
        self.collector = Collector()
        self._stop = False
        self._threads = []
        self._conns = []
        if scheme == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.sock.listen(16)
            self.endpoint = f"unix://{path}"
            target = self._accept_loop
        elif scheme == "unixgram":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
            self.endpoint = f"unixgram://{path}"
            target = self._dgram_loop
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.endpoint = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"
            target = self._dgram_loop
        self.sock.settimeout(0.05)
        if read:
            self._spawn(target)

    def _spawn(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(0.05)
            self._conns.append(conn)
            self.collector.connections += 1
            self._spawn(self._stream_loop, conn)

    def _stream_loop(self, conn):
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while not self._stop:
            try:
                data = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            unpacker.feed(data)
            for msg in unpacker:
                self.collector.add(msg)

    def _dgram_loop(self):
        while not self._stop:
            try:
                data = self.sock.recv(1 << 20)
            except (socket.timeout, OSError):
                continue
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            unpacker.feed(data)
            for msg in unpacker:
                self.collector.add(msg)

    @property
    def messages(self):
        return self.collector.messages

    def close(self):
        self._stop = True
        for t in self._threads:
            t.join(1.0)
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def sockdir():
    # Unix socket paths are limited to 108 bytes: keep them short.
    d = tempfile.mkdtemp(prefix="st-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_agent(sockdir):
    agents = []

    def make(scheme="unix", read=True, name=None):
        path = os.path.join(sockdir, name or f"{scheme}{len(agents)}.sock")
        agent = FakeAgent(scheme, path, read=read)
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.close()


@pytest.fixture
def clients():
    made = []

    def make(*args, **kwargs):
        from sidetrace import Client

        c = Client(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close(0.5)


_KINDS = {"trace", "start", "end", "event", "feedback"}
_ID_KEYS = ("trace_id", "id", "parent_id", "target_id", "type")
_STR_KEYS = (
    "kind",
    "name",
    "error",
    "conversation_id",
    "session_id",
    "interaction_id",
    "channel_id",
    "tag",
    "text",
)
_REQUIRED = {
    "trace": ("v", "kind", "trace_id"),
    "feedback": ("v", "kind", "trace_id"),
    "start": ("v", "kind", "trace_id", "id", "type"),
    "event": ("v", "kind", "trace_id", "id", "type"),
    "end": ("v", "kind", "trace_id", "id"),
}


def protocol_problem(msg):
    """Why the agent would reject the decoded message `msg`, or None: the
    checks of ipc/event.cpp (validate), on msgpack-decoded Python values."""
    if not isinstance(msg, dict):
        return "not_map"
    if not all(isinstance(k, str) for k in msg):
        return "key_not_string"
    m = {k: v for k, v in msg.items() if v is not None}  # nil is absent
    if m.get("kind") not in _KINDS:
        return f"bad kind {m.get('kind')!r}"
    for key in _REQUIRED[m["kind"]]:
        if key not in m:
            return f"missing {key}"
    if type(m["v"]) is not int or m["v"] != 1:
        return "bad_version"
    for key in _ID_KEYS:
        if key in m:
            if not isinstance(m[key], str):
                return f"{key}: wrong_type {type(m[key]).__name__}"
            if not 1 <= len(m[key].encode()) <= 128:
                return f"{key}: bad_value length {len(m[key].encode())}"
    for key in _STR_KEYS:
        if key in m and not isinstance(m[key], str):
            return f"{key}: wrong_type {type(m[key]).__name__}"
    if "status" in m and m["status"] not in ("ok", "error"):
        return f"status: bad_value {m['status']!r}"
    for key in ("ts", "end_ts", "latency_ms"):
        if key in m:
            if type(m[key]) is not int:
                return f"{key}: wrong_type {type(m[key]).__name__}"
            if not 0 <= m[key] < (1 << 64) or (key == "latency_ms" and m[key] >= 1 << 63):
                return f"{key}: bad_value {m[key]}"
    if "score" in m and (type(m["score"]) not in (int, float)):
        return f"score: wrong_type {type(m['score']).__name__}"
    for key in ("attrs", "user", "metadata"):
        if key in m and not isinstance(m[key], dict):
            return f"{key}: wrong_type {type(m[key]).__name__}"
    return None
