"""System-test harness for sidetrace: drives the real agent binary.

Pieces:
  Agent     one agent process with its own config, sockets, data dir and log file
  Upstream  a threaded HTTP server on 127.0.0.1 accepting the native trace format,
            recording every delivered revision and event id, with fault modes
  Emitter   a thread that sends uniquely numbered events over a chosen transport
  wait_until / record / SOAK

Everything polls with deadlines; nothing sleeps a fixed time to wait for a result.
Run with Debian's /usr/bin/python3 (python3-pytest, python3-msgpack).
"""

from __future__ import annotations

import collections
import gzip
import http.server
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

import msgpack

REPO = pathlib.Path(__file__).resolve().parents[2]
SOAK = os.environ.get("SIDETRACE_SOAK", "") not in ("", "0")
DEFAULT_BIN = REPO / "build" / "release" / "agent" / "sidetrace"


def agent_bin() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SIDETRACE_BIN", str(DEFAULT_BIN)))


# ---------------------------------------------------------------------------
# polling


class WaitTimeout(AssertionError):
    pass


def wait_until(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    """Polls pred() until it returns a truthy value (returned) or timeout seconds pass
    (raises WaitTimeout naming `what`). Exceptions from pred count as falsy."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a probe may fail while things start
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# results table

RESULTS: list[dict] = []


def record(section: str, name: str, **figures):
    """Adds a row to the final table. Conventional figures: load (events/s held),
    faults (faults survived), bad_inputs (bad inputs tried), lost (events lost, must be 0);
    anything else is kept in the JSON output."""
    row = {"section": section, "check": name}
    row.update(figures)
    RESULTS.append(row)
    return row


# ---------------------------------------------------------------------------
# TOML


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, pathlib.Path)):
        return json.dumps(str(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: dict) -> str:
    top, tables = [], []

    def emit_table(prefix, d):
        lines = [f"[{prefix}]"]
        subs = []
        for k, v in d.items():
            if isinstance(v, dict):
                subs.append((f"{prefix}.{k}", v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        tables.append("\n".join(lines))
        for p, s in subs:
            emit_table(p, s)

    for k, v in config.items():
        if isinstance(v, dict):
            emit_table(k, v)
        else:
            top.append(f"{k} = {_toml_value(v)}")
    return "\n".join(top) + "\n\n" + "\n\n".join(tables) + "\n"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------
# metrics

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text -> {"name": v, 'name{a="b",c="d"}': v} (labels sorted by name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), m.group(3)
        try:
            v = float(value)
        except ValueError:
            continue
        out[metric_key(name, **dict(_LABEL.findall(labels or "")))] = v
    return out


def metric_key(name: str, **labels) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
    return f"{name}{{{inner}}}"


# ---------------------------------------------------------------------------
# the agent

LIVE_AGENTS: list["Agent"] = []


class Agent:
    """One sidetrace agent process.

    config: extra/overriding TOML content, e.g. {"buffer": {"sync": "os"}, "upstream":
    {"endpoint": up.url}}. The harness fills in data_dir, the three listeners (stream and
    datagram sockets in a short private directory, UDP and admin on free loopback ports),
    log.level and a short trace.quiet_period_ms unless given.
    """

    def __init__(self, workdir: pathlib.Path, config: dict | None = None, bin=None,
                 extra_args: list[str] | None = None, env: dict | None = None):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bin = pathlib.Path(bin) if bin else agent_bin()
        # Unix socket paths are limited to 107 bytes: keep them short.
        self.sockdir = pathlib.Path(tempfile.mkdtemp(prefix="st", dir="/tmp"))
        self.stream_path = str(self.sockdir / "s.sock")
        self.dgram_path = str(self.sockdir / "d.sock")
        self.udp_addr = ("127.0.0.1", free_port(socket.SOCK_DGRAM))
        self.admin_addr = ("127.0.0.1", free_port())
        self.otlp_addr = ("127.0.0.1", free_port())
        self.otlp_url = f"http://{self.otlp_addr[0]}:{self.otlp_addr[1]}"
        self.admin_url = f"http://{self.admin_addr[0]}:{self.admin_addr[1]}"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "agent.log"
        self.config_path = self.workdir / "sidetrace.toml"
        base = {
            "data_dir": str(self.data_dir),
            "listen": {
                "unix_stream": self.stream_path,
                "unix_dgram": self.dgram_path,
                "udp": f"{self.udp_addr[0]}:{self.udp_addr[1]}",
                "otlp_http": f"{self.otlp_addr[0]}:{self.otlp_addr[1]}",
            },
            "admin": {"listen": f"{self.admin_addr[0]}:{self.admin_addr[1]}"},
            "trace": {"quiet_period_ms": 200},
            "log": {"level": "info"},
        }
        self.config = _merge(base, config or {})
        self.extra_args = list(extra_args or [])
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.started_at = 0.0  # time.monotonic() just before the current process started
        self._log_file = None
        self.write_config()
        LIVE_AGENTS.append(self)

    # -- configuration
    def write_config(self):
        self.config_path.write_text(to_toml(self.config))

    def set_config(self, config: dict, reload: bool = False):
        """Merges `config` into the file; with reload=True sends SIGHUP to a running agent."""
        self.config = _merge(self.config, config)
        self.write_config()
        if reload and self.running():
            os.kill(self.proc.pid, signal.SIGHUP)

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        assert not self.running(), "agent already running"
        if not self.bin.exists():
            raise FileNotFoundError(f"agent binary not found: {self.bin} (set SIDETRACE_BIN)")
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"\n===== harness: start #{self.starts} =====\n".encode())
        env = dict(os.environ)
        # Only the config file configures the agent.
        for k in list(env):
            if k.startswith("SIDETRACE_") and k != "SIDETRACE_ENDPOINT":
                del env[k]
        if self.env:
            env.update(self.env)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self.bin), "agent", "--config", str(self.config_path), *self.extra_args],
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return self

    def wait_ready(self, timeout: float = 20.0):
        """Waits until /healthz answers 200 and the enabled sockets exist."""
        def ok():
            if not self.running():
                raise AssertionError(f"agent exited with {self.proc.returncode} during start-up\n"
                                     + self.log_tail())
            if not self.healthy():
                return False
            if self.config["listen"].get("unix_stream") and not os.path.exists(self.stream_path):
                return False
            if self.config["listen"].get("unix_dgram") and not os.path.exists(self.dgram_path):
                return False
            return True
        try:
            wait_until(ok, timeout, "agent /healthz")
        except WaitTimeout as e:
            raise WaitTimeout(f"{e}\n{self.log_tail()}") from None
        return self

    def kill9(self):
        """SIGKILL and reap the process."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._close_log()
        return self.proc.returncode if self.proc else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for exit, return the exit code (SIGKILL after timeout)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def restart(self, timeout: float = 20.0, kill: bool = False):
        if kill:
            self.kill9()
        else:
            self.stop()
        self.start()
        return self.wait_ready(timeout)

    def _close_log(self):
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def cleanup(self):
        try:
            self.kill9()
        finally:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # -- admin endpoint
    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def http_post(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        # Every POST to the admin endpoint carries X-Sidetrace-Request (a form cannot).
        req = urllib.request.Request(self.admin_url + path, data=b"", method="POST",
                                     headers={"X-Sidetrace-Request": "1"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def operation(self, path: str, timeout: float = 30.0) -> tuple[int, dict]:
        """POSTs `path`, which starts a background operation (a reload, a dead-letter replay or
        purge), and follows it at /operations/<id> until it ends. Returns the status of the
        start (202 new, 200 one already running) and the operation as it ended."""
        status, body = self.http_post(path)
        if status not in (200, 202):
            raise AssertionError(f"POST {path} answered {status}: {body}")
        op = json.loads(body)
        end = time.monotonic() + timeout
        while op["state"] == "running":
            if time.monotonic() > end:
                raise WaitTimeout(f"operation {op} still running after {timeout}s")
            time.sleep(0.02)  # a poll interval
            st, text = self.http_get(f"/operations/{op['id']}")
            assert st == 200, (st, text)
            op = json.loads(text)
        return status, op

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return self.http_get("/healthz", timeout)[0] == 200
        except OSError:
            return False

    def ready(self) -> tuple[int, str]:
        """(status, body) of /readyz."""
        return self.http_get("/readyz")

    def metrics(self) -> dict[str, float]:
        status, body = self.http_get("/metrics", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_prometheus(body)

    def metric(self, name: str, default: float | None = None, **labels) -> float:
        m = self.metrics()
        key = metric_key(name, **labels)
        if key in m:
            return m[key]
        if default is not None:
            return default
        raise KeyError(f"no metric {key}")

    def _status_kib(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def peak_rss_kib(self) -> int:
        return self._status_kib("VmHWM")

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)


# ---------------------------------------------------------------------------
# the upstream

MODES = ("ok", "down", "503", "429", "slow", "reset", "413", "401")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, owner):
        self.owner = owner
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        self.owner._track(request, True)
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        # Connections reset by a killed agent are part of the tests, not errors to print.
        self.owner._count("connection_errors")

    def shutdown_request(self, request):
        self.owner._track(request, False)
        super().shutdown_request(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_POST(self):
        self.server.owner._handle(self)

    def do_GET(self):
        self._reply(404, b"not found")

    def _reply(self, code: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def _walk_events(events, out):
    for e in events:
        out.append(e["id"])
        _walk_events(e.get("children") or [], out)


class Upstream:
    """An HTTP upstream on 127.0.0.1 for the agent's native format.

    Records every accepted (2xx) delivery: `.revisions` Counter of (trace_id, revision),
    `.event_ids()` Counter of event ids over all delivered documents, `.keys` Counter of
    Idempotency-Key values of accepted requests, `.requests` Counter by answer.
    Fault modes (set_mode): ok, down (listening socket closed, connections refused),
    503, 429 (Retry-After: retry_after), slow (answers nothing for slow_s, then closes),
    reset (reads part of the body, then resets the connection), 413 (bodies above
    limit_413 bytes refused, others accepted), 401. flap(period) alternates down/ok.
    """

    def __init__(self, port: int = 0, slow_s: float = 3.0, retry_after: int = 1,
                 limit_413: int = 4096):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.limit_413 = limit_413
        # When set, a request whose Authorization header differs is answered 401 (any mode
        # that would accept it).
        self.required_auth: str | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._mode = "ok"
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set = set()
        self._flapper: threading.Thread | None = None
        self._flap_stop = threading.Event()
        self._closing = threading.Event()
        self.revisions: collections.Counter = collections.Counter()
        self._events: collections.Counter = collections.Counter()
        self.traces: dict[str, dict] = {}  # trace_id -> highest revision document
        self.keys: collections.Counter = collections.Counter()
        self.requests: collections.Counter = collections.Counter()
        self.bodies_bytes: list[int] = []
        self.errors: list[str] = []
        # (monotonic time, mode, traces in body, of them already delivered, handling seconds)
        self.history: list[tuple] = []
        self._listen()

    # -- server lifecycle
    def _listen(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = _Server(("127.0.0.1", self.port), _Handler, self)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _unlisten(self):
        srv = self._server
        self._server = None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # keep-alive connections go too: "down" means nothing answers
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _track(self, sock, add: bool):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def close(self):
        self._closing.set()
        self._stop_flap()
        self._unlisten()

    # -- modes
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str):
        self._stop_flap()
        self._apply(mode)

    def _apply(self, mode: str):
        assert mode in MODES, mode
        with self._lock:
            old, self._mode = self._mode, mode
        if mode == "down" and old != "down":
            self._unlisten()
        elif mode != "down" and self._server is None and not self._closing.is_set():
            self._listen()

    def flap(self, period: float, modes=("down", "ok")):
        """Cycles through `modes` every `period` seconds until the next set_mode()."""
        self._stop_flap()
        self._flap_stop = threading.Event()
        stop = self._flap_stop

        def run():
            i = 0
            while not stop.is_set():
                self._apply(modes[i % len(modes)])
                i += 1
                stop.wait(period)
        self._flapper = threading.Thread(target=run, daemon=True)
        self._flapper.start()

    def _stop_flap(self):
        if self._flapper:
            self._flap_stop.set()
            self._flapper.join()
            self._flapper = None

    # -- request handling
    def _handle(self, h: _Handler):
        t_start = time.monotonic()
        mode = self._mode
        length = int(h.headers.get("Content-Length") or 0)
        if mode == "reset":
            h.rfile.read(min(length, max(1, length // 2)))
            self._count("reset")
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        body = h.rfile.read(length)
        if mode == "slow":
            self._count("slow")
            self._closing.wait(self.slow_s)
            h.close_connection = True
            return
        if mode == "503":
            self._count("503")
            return h._reply(503, b"unavailable")
        if mode == "429":
            self._count("429")
            return h._reply(429, b"slow down", {"Retry-After": str(self.retry_after)})
        if mode == "401" or (self.required_auth is not None
                             and h.headers.get("Authorization") != self.required_auth):
            self._count("401")
            return h._reply(401, b"bad credentials")
        if mode == "413" and length > self.limit_413:
            self._count("413")
            return h._reply(413, b"too large")
        try:
            enc = (h.headers.get("Content-Encoding") or "").lower()
            if enc == "gzip":
                raw = gzip.decompress(body)
            elif enc == "deflate":
                raw = zlib.decompress(body)
            elif enc in ("", "identity"):
                raw = body
            else:
                raise ValueError(f"unsupported Content-Encoding {enc}")
            doc = json.loads(raw)
            traces = doc["traces"]
        except Exception as e:  # noqa: BLE001
            with self._lock:
                self.errors.append(repr(e))
            self._count("bad_request")
            return h._reply(400, repr(e).encode())
        ids = []
        with self._cond:
            if self._mode == "down":
                # Went down while this request was being read: no answer, nothing recorded.
                self.requests["cut_by_down"] += 1
                h.close_connection = True
                return
            self.requests["ok"] += 1
            self.keys[h.headers.get("Idempotency-Key", "")] += 1
            self.bodies_bytes.append(length)
            dups = 0
            for t in traces:
                tid, rev = t["trace_id"], t["revision"]
                dups += 1 if self.revisions[(tid, rev)] else 0
                self.revisions[(tid, rev)] += 1
                ids.clear()
                _walk_events(t.get("events") or [], ids)
                self._events.update(ids)
                cur = self.traces.get(tid)
                if cur is None or cur["revision"] <= rev:
                    self.traces[tid] = t
            self.history.append((t_start, mode, len(traces), dups, time.monotonic() - t_start))
            self._cond.notify_all()
        h._reply(200, b'{"ok":true}', {"Content-Type": "application/json"})

    def _count(self, what):
        with self._lock:
            self.requests[what] += 1

    # -- queries
    def event_ids(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self._events)

    def distinct_events(self) -> int:
        with self._lock:
            return len(self._events)

    def missing_events(self, expected_ids) -> list[str]:
        """The ids of `expected_ids` no accepted delivery held. Copies nothing: a wait
        polling it while millions of events arrive must not hold the interpreter (and
        every other thread of the test, such as a health probe) for long."""
        with self._lock:
            return sorted(i for i in expected_ids if i not in self._events)

    def duplicate_revisions(self) -> int:
        """Deliveries of a (trace_id, revision) beyond the first (at-least-once repeats)."""
        with self._lock:
            return sum(n - 1 for n in self.revisions.values() if n > 1)

    def repeated_keys(self) -> int:
        with self._lock:
            return sum(n - 1 for k, n in self.keys.items() if n > 1)

    def wait_for(self, predicate, timeout: float = 30.0, what: str = "upstream condition"):
        """Waits until predicate(self) is true; re-checked after every delivery."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}")
                self._cond.wait(min(left, 0.2))


# ---------------------------------------------------------------------------
# emitters


def event_message(trace_id: str, event_id: str, seq: int, payload: int = 0) -> dict:
    now = time.time_ns()
    m = {"v": 1, "kind": "event", "trace_id": trace_id, "id": event_id, "type": "TOOL",
         "name": "step", "ts": now, "end_ts": now + 1000, "attrs": {"seq": seq}}
    if payload:
        m["input"] = "x" * payload
    return m


class Emitter:
    """Sends events with unique, sequence-numbered ids from a thread.

    Event n of emitter `name` has id f"{name}-{n}" and belongs to trace
    f"t{name}-{n // per_trace}" (so a trace has `per_trace` events). Transports:
    "stream" (reconnects after a failure; a blocked write is back-pressure), "dgram",
    "udp" (fire and forget, `per_datagram` messages per datagram). rate: events/s
    (None = as fast as possible). payload: bytes of "input" text per event.

    `sent_ids()` lists the ids written successfully, `sent_since(t)` / `ids_sent_since(t)`
    those written on connections opened at or after monotonic time t (e.g. agent.started_at:
    to this agent process). A stream message counts as sent once all its bytes were written;
    a datagram the kernel refused (buffer full) is not sent and counted in send_errors.
    pause()/resume() hold the sender; `limit` caps the total (raise it and resume for more).
    """

    def __init__(self, agent: Agent, name: str = "e0", transport: str = "stream",
                 rate: float | None = 1000.0, per_trace: int = 3, payload: int = 0,
                 per_datagram: int = 1, limit: int | None = None):
        self.agent = agent
        self.name = name
        self.transport = transport
        self.rate = rate
        self.per_trace = per_trace
        self.payload = payload
        self.per_datagram = per_datagram
        self.limit = limit
        self.seq = 0  # next sequence number
        self.sent_seqs: list[int] = []
        self.conn_of: list[float] = []  # monotonic open time of the connection each went on
        self.send_errors = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._conn_opened = 0.0
        self.started_at = 0.0
        self.stopped_at = 0.0

    def event_id(self, n: int) -> str:
        return f"{self.name}-{n}"

    def trace_id(self, n: int) -> str:
        return f"t{self.name}-{n // self.per_trace}"

    def start(self):
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"emitter-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0):
        self._stop.set()
        self._pause.clear()
        if self._thread:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"emitter {self.name} did not stop"
        self.stopped_at = time.monotonic()
        self._drop_conn()

    def pause(self, timeout: float = 30.0):
        """Stops sending and returns once the sending thread is idle."""
        self._paused.clear()
        self._pause.set()
        if self._thread and self._thread.is_alive():
            wait_until(self._paused.is_set, timeout, f"emitter {self.name} paused")

    def resume(self):
        self._pause.clear()

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.sent_seqs)

    def sent_ids(self) -> list[str]:
        with self._lock:
            return [self.event_id(n) for n in self.sent_seqs]

    def sent_since(self, t: float) -> int:
        """Messages sent on stream connections opened at or after monotonic time t."""
        with self._lock:
            return sum(1 for c in self.conn_of if c >= t)

    def ids_sent_since(self, t: float) -> list[str]:
        with self._lock:
            return [self.event_id(n) for n, c in zip(self.sent_seqs, self.conn_of) if c >= t]

    def events_per_s(self) -> float:
        end = self.stopped_at or time.monotonic()
        dur = max(end - self.started_at, 1e-6)
        return self.count / dur

    # -- sending
    def _connect(self):
        if self.transport == "stream":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(1.0)
            s.connect(self.agent.stream_path)
            self._conn_opened = time.monotonic()
        elif self.transport == "dgram":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(self.agent.dgram_path)
            self._conn_opened = time.monotonic()
        elif self.transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.connect(self.agent.udp_addr)
            self._conn_opened = time.monotonic()
        else:
            raise ValueError(self.transport)
        self._sock = s

    def _drop_conn(self):
        if self._sock:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def _send_one(self, data: bytes) -> bool:
        """True once all of data is written; False when stopped mid-way (stream)."""
        if self.transport == "stream":
            mv = memoryview(data)
            while mv:
                if self._stop.is_set():
                    return False
                try:
                    n = self._sock.send(mv)
                    mv = mv[n:]
                except socket.timeout:
                    continue  # back-pressure: keep trying
            return True
        self._sock.send(data)
        return True

    def _run(self):
        period = (self.per_datagram / self.rate) if self.rate else 0.0
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.limit is not None and self.seq >= self.limit:
                self._paused.set()
                self._stop.wait(0.05)
                continue
            if self._pause.is_set():
                self._paused.set()
                time.sleep(0.005)
                next_t = time.monotonic()
                continue
            if self._sock is None:
                try:
                    self._connect()
                    self.reconnects += 1
                except OSError:
                    self._stop.wait(0.02)
                    continue
            n = min(self.per_datagram, (self.limit - self.seq) if self.limit is not None
                    else self.per_datagram)
            seqs = list(range(self.seq, self.seq + n))
            data = b"".join(
                msgpack.packb(event_message(self.trace_id(k), self.event_id(k), k, self.payload))
                for k in seqs)
            try:
                ok = self._send_one(data)
            except (BlockingIOError, InterruptedError):
                # Datagram socket buffer full: not sent; the ids are skipped.
                self.send_errors += 1
                self.seq += n
                ok = None
            except OSError:
                # Connection lost (agent killed or stopped): not sent; a partially written
                # stream message is skipped too. Reconnect on the next round.
                self.send_errors += 1
                self._drop_conn()
                self.seq += n
                continue
            if ok:
                with self._lock:
                    self.sent_seqs.extend(seqs)
                    self.conn_of.extend([self._conn_opened] * n)
                self.seq += n
            elif ok is False:
                break
            if period:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    next_t = time.monotonic()  # do not burst after a long stall
        self._paused.set()


def start_emitters(agent: Agent, n: int, **kw) -> list[Emitter]:
    return [Emitter(agent, name=f"e{i}", **kw).start() for i in range(n)]


def stop_emitters(emitters):
    for e in emitters:
        e.stop()


def all_sent_ids(emitters) -> set[str]:
    out = set()
    for e in emitters:
        out.update(e.sent_ids())
    return out


def missing(expected_ids, upstream: Upstream) -> list[str]:
    return upstream.missing_events(expected_ids)
