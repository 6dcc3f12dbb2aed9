"""The client: encodes events on the caller's thread, sends them from one
background thread.

Contract:
- No public method blocks on the network or raises into the application
  (flush() and close() wait, but only up to their timeout). Whatever cannot
  be delivered is dropped and counted in Client.stats().
- Thread-safe: a Client, its Traces and Events may be used from any thread.
- Fork-safe: in a child process each client starts over with an empty queue,
  a new socket and a new sender thread; the parent's queued messages stay
  the parent's.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
import time
import warnings
import weakref
from typing import Any, Mapping

import msgpack

from ._transport import (
    DATAGRAM_BATCH_BYTES,
    DEFAULT_ENDPOINT,
    Endpoint,
    EndpointError,
    Transport,
    parse_endpoint,
)

PROTOCOL_VERSION = 1
STREAM_BATCH_BYTES = 256 * 1024
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0

_STAT_KEYS = (
    "enqueued",  # accepted into the queue
    "sent",  # handed to the kernel
    "dropped_queue_full",  # the queue was at its bound (drop-newest)
    "dropped_no_agent",  # the agent was not reachable when a flush/close needed it
    "dropped_send_error",  # the connection broke with the message unsent
    "dropped_too_large",  # over max_message_bytes even after truncation
    "dropped_closed",  # emitted after close(), or still queued when close() gave up
    "dropped_bad_endpoint",  # the endpoint could not be parsed
    "degraded_values",  # values msgpack cannot encode, sent as str()
    "truncated",  # messages whose input/output were cut to fit max_message_bytes
    "internal_errors",  # unexpected errors, swallowed to protect the application
    "connects",  # successful connects
    "connect_failures",  # failed connect attempts
)
_DROP_KEYS = tuple(k for k in _STAT_KEYS if k.startswith("dropped_"))

_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _new_trace_id() -> str:
    return os.urandom(16).hex()


def _new_event_id() -> str:
    return os.urandom(8).hex()


class Metadata(dict):
    """Free trace metadata, e.g. ``Metadata(environment="production")``."""

    def __init__(self, **fields: Any):
        super().__init__(fields)


class User(dict):
    """The end user a trace belongs to: ``User(id="user_123", plan="pro")``."""

    def __init__(self, id: str, **fields: Any):  # noqa: A002 - the page's name
        super().__init__(id=id)  # id first, as the other SDKs send it
        self.update(fields)
        self["id"] = id

    @property
    def id(self) -> str:
        return self["id"]


class Client:
    """A connection to the local sidetrace agent.

    endpoint: ``unix://PATH``, ``unixgram://PATH`` or ``udp://HOST:PORT``;
    default ``$SIDETRACE_ENDPOINT``, else ``unix:///run/sidetrace/agent.sock``.
    An endpoint that cannot be parsed does not raise: the client warns once
    and drops (counted) everything.
    max_queue / max_queue_bytes bound the messages waiting for the agent;
    past either bound new messages are dropped (drop-newest, counted).
    exit_flush_s bounds the flush at interpreter exit.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        max_queue: int = 10000,
        max_queue_bytes: int = 16 << 20,
        max_message_bytes: int = 1 << 20,
        exit_flush_s: float = 2.0,
    ):
        text = endpoint or os.environ.get("SIDETRACE_ENDPOINT") or DEFAULT_ENDPOINT
        self._endpoint: Endpoint | None
        try:
            self._endpoint = parse_endpoint(text)
        except EndpointError as e:
            self._endpoint = None
            try:  # an application running with -W error must not see this raise
                warnings.warn(f"sidetrace: {e}; events will be dropped", RuntimeWarning, stacklevel=2)
            except Exception:
                pass
        self._max_queue = max(1, int(max_queue))
        self._max_queue_bytes = max(1, int(max_queue_bytes))
        self._max_message_bytes = max(1024, int(max_message_bytes))
        self.exit_flush_s = exit_flush_s
        self._init_state()
        _live_clients.add(self)

    # ---- state -------------------------------------------------------------

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)  # the sender waits here
        self._done_cv = threading.Condition(self._lock)  # flush() waits here
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_bytes = 0
        self._outstanding = 0  # queued + taken by the sender, not yet sent or dropped
        self._flush_waiters = 0
        self._sender_idle = False
        self._closed = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._stats = dict.fromkeys(_STAT_KEYS, 0)

    def _after_fork_in_child(self) -> None:
        old = self._transport
        self._init_state()
        if old is not None:
            old.close()

    @property
    def endpoint(self) -> str:
        return str(self._endpoint) if self._endpoint else ""

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (see _STAT_KEYS) plus ``queued``."""
        with self._lock:
            out = dict(self._stats)
            out["queued"] = len(self._queue)
            out["dropped"] = sum(self._stats[k] for k in _DROP_KEYS)
        return out

    # ---- the API -----------------------------------------------------------

    def trace(
        self,
        conversation_id: str | None = None,
        session_id: str | None = None,
        *,
        interaction_id: str | None = None,
        channel_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> "Trace":
        """Starts a trace (or continues one, given its ``trace_id``)."""
        t = Trace(self, trace_id or _new_trace_id())
        t.update(
            conversation_id=conversation_id,
            session_id=session_id,
            interaction_id=interaction_id,
            channel_id=channel_id,
            metadata=metadata,
            user=user,
        )
        return t

    def flush(self, timeout: float = 2.0) -> bool:
        """Waits up to `timeout` seconds until every message emitted so far
        has been handed to the agent's socket. Returns True if so; False on
        timeout or when some were dropped meanwhile (the agent is unreachable:
        queued messages are then dropped rather than waited for)."""
        try:
            deadline = time.monotonic() + max(0.0, timeout)
            with self._lock:
                if self._outstanding == 0:
                    return True
                drops_before = sum(self._stats[k] for k in _DROP_KEYS)
                self._flush_waiters += 1
                self._work_cv.notify()
                try:
                    while self._outstanding > 0:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._done_cv.wait(left)
                finally:
                    self._flush_waiters -= 1
                return self._outstanding == 0 and drops_before == sum(
                    self._stats[k] for k in _DROP_KEYS
                )
        except Exception:  # never raise into the application
            return False

    def close(self, timeout: float = 2.0) -> bool:
        """Flushes for up to `timeout` seconds, then stops the sender; what is
        still queued is dropped (counted). Later emits are dropped. Idempotent."""
        try:
            ok = self.flush(timeout)
            with self._lock:
                self._closed = True
                self._stop = True
                self._work_cv.notify()
                thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(0.5)
            _live_clients.discard(self)
            return ok
        except Exception:
            return False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- emitting ----------------------------------------------------------

    def _emit(self, msg: dict) -> None:
        """Encodes and enqueues one message. Never raises, never blocks on I/O."""
        try:
            if self._endpoint is None:
                with self._lock:
                    self._stats["dropped_bad_endpoint"] += 1
                return
            data = self._encode(msg)
            if data is None:
                return
            with self._lock:
                if self._closed:
                    self._stats["dropped_closed"] += 1
                    return
                if (
                    len(self._queue) >= self._max_queue
                    or self._queue_bytes + len(data) > self._max_queue_bytes
                ):
                    self._stats["dropped_queue_full"] += 1
                    return
                self._queue.append(data)
                self._queue_bytes += len(data)
                self._outstanding += 1
                self._stats["enqueued"] += 1
                if self._thread is None:
                    self._start_sender()
                elif self._sender_idle:
                    self._work_cv.notify()
        except Exception:
            try:
                with self._lock:
                    self._stats["internal_errors"] += 1
            except Exception:
                pass

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _degrade(self, value: Any) -> str:
        self._count("degraded_values")
        try:
            return str(value)
        except Exception:
            return f"<unencodable {type(value).__name__}>"

    def _sanitize(self, value: Any, depth: int = 0) -> Any:
        """A copy of `value` that msgpack can encode: unknown types, ints out
        of range and structures nested deeper than 64 become strings."""
        if value is None or isinstance(value, (bool, float, str, bytes)):
            return value
        if isinstance(value, int):
            if -(1 << 63) <= value < (1 << 64):
                return value
            return self._degrade(value)
        if depth >= 64:
            return self._degrade(value)
        if isinstance(value, Mapping):
            return {
                self._sanitize(k, depth + 1): self._sanitize(v, depth + 1) for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self._sanitize(v, depth + 1) for v in value]
        return self._degrade(value)

    def _encode(self, msg: dict) -> bytes | None:
        try:
            data = msgpack.packb(msg, default=self._degrade, use_bin_type=True)
        except Exception:
            data = msgpack.packb(self._sanitize(msg), use_bin_type=True)
        if len(data) <= self._max_message_bytes:
            return data
        # Too large: cut the free-form values so that the event itself arrives.
        budget = self._max_message_bytes // 4
        cut = dict(msg)
        for key in ("input", "output", "attrs", "metadata", "user"):
            if key in cut:
                text = cut[key] if isinstance(cut[key], str) else self._degrade(cut[key])
                if len(text) > budget:
                    cut[key] = text[:budget] + f"... [truncated {len(text) - budget} chars]"
        data = msgpack.packb(self._sanitize(cut), use_bin_type=True)
        if len(data) <= self._max_message_bytes:
            self._count("truncated")
            return data
        self._count("dropped_too_large")
        return None

    # ---- the sender thread -------------------------------------------------

    def _start_sender(self) -> None:
        # Called with the lock held.
        self._transport = Transport(self._endpoint)  # type: ignore[arg-type]
        self._thread = threading.Thread(
            target=self._run_sender, args=(self._transport,), name="sidetrace-sender", daemon=True
        )
        self._thread.start()

    def _resolve(self, n: int, key: str) -> None:
        # Called with the lock held: `n` messages left the pipeline as `key`.
        if n <= 0:
            return
        self._stats[key] += n
        self._outstanding -= n
        if self._outstanding == 0 or key != "sent":
            self._done_cv.notify_all()

    def _take_batch(self, endpoint: Endpoint) -> tuple[bytes, int] | None:
        # Called with the lock held. Returns (bytes, message count).
        if not self._queue:
            return None
        if endpoint.is_stream:
            parts: list[bytes] = []
            size = 0
            while self._queue and (not parts or size + len(self._queue[0]) <= STREAM_BATCH_BYTES):
                item = self._queue.popleft()
                parts.append(item)
                size += len(item)
            self._queue_bytes -= size
            return b"".join(parts), len(parts)
        while self._queue and len(self._queue[0]) > endpoint.max_datagram:
            item = self._queue.popleft()
            self._queue_bytes -= len(item)
            self._resolve(1, "dropped_too_large")
        if not self._queue:
            return None
        parts = [self._queue.popleft()]
        size = len(parts[0])
        while self._queue and size + len(self._queue[0]) <= DATAGRAM_BATCH_BYTES:
            item = self._queue.popleft()
            parts.append(item)
            size += len(item)
        self._queue_bytes -= size
        return b"".join(parts), len(parts)

    def _drop_queued(self, key: str) -> None:
        # Called with the lock held.
        n = len(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        self._resolve(n, key)

    def _run_sender(self, transport: Transport) -> None:
        try:
            self._sender_loop(transport)
        except Exception:
            with self._lock:
                self._stats["internal_errors"] += 1
                self._drop_queued("dropped_send_error")
                self._closed = True
        finally:
            transport.close()

    def _sender_loop(self, tr: Transport) -> None:
        ep = tr.endpoint
        backoff = _BACKOFF_MIN_S
        next_attempt = 0.0
        batch: bytes | None = None  # taken from the queue, not yet fully written
        batch_count = 0
        offset = 0
        while True:
            with self._lock:
                while not self._stop and batch is None:
                    if self._queue:
                        if tr.sock is not None or self._flush_waiters:
                            break
                        wait = next_attempt - time.monotonic()
                        if wait <= 0:
                            break
                    else:
                        wait = None
                    self._sender_idle = True
                    self._work_cv.wait(wait)
                    self._sender_idle = False
                if self._stop:
                    if batch is not None:
                        self._resolve(batch_count, "dropped_closed")
                    self._drop_queued("dropped_closed")
                    return
                flushing = self._flush_waiters > 0

            if tr.sock is None:
                try:
                    tr.connect()
                except OSError:
                    next_attempt = time.monotonic() + backoff
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    with self._lock:
                        self._stats["connect_failures"] += 1
                        if flushing:
                            # Someone waits for delivery: say no now rather
                            # than at their timeout.
                            if batch is not None:
                                self._resolve(batch_count, "dropped_no_agent")
                                batch = None
                            self._drop_queued("dropped_no_agent")
                    continue
                backoff = _BACKOFF_MIN_S
                self._count("connects")

            if batch is None:
                with self._lock:
                    taken = self._take_batch(ep)
                if taken is None:
                    continue
                batch, batch_count = taken
                offset = 0

            try:
                n = tr.send(memoryview(batch)[offset:])
            except OSError:
                tr.close()
                next_attempt = 0.0 if ep.is_stream else time.monotonic() + _BACKOFF_MIN_S
                with self._lock:
                    key = "dropped_send_error" if ep.is_stream else "dropped_no_agent"
                    self._resolve(batch_count, key)
                batch = None
                continue
            if n == 0:
                tr.wait_writable(0.05)  # the agent's socket is full
                continue
            offset += n
            if offset >= len(batch):
                with self._lock:
                    self._resolve(batch_count, "sent")
                batch = None


# Traces and events --------------------------------------------------------

_TYPE_NAMES = {
    t.lower(): t
    for t in ("MESSAGE", "TOOL", "GENERATION", "AGENT", "RETRIEVAL", "ROUTER", "SYSTEM", "CUSTOM")
}


def _event_type(value: str) -> str:
    return _TYPE_NAMES.get(str(value).lower(), str(value))


class Trace:
    """One trace: a tree of events sharing `trace_id`. Thread-safe."""

    __slots__ = ("client", "trace_id")

    def __init__(self, client: Client, trace_id: str):
        self.client = client
        self.trace_id = trace_id

    def update(
        self,
        *,
        conversation_id: str | None = None,
        session_id: str | None = None,
        interaction_id: str | None = None,
        channel_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
    ) -> None:
        """Sends (more) trace context; later values merge over earlier ones."""
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "trace",
            "trace_id": self.trace_id,
            "ts": time.time_ns(),
        }
        for key, value in (
            ("conversation_id", conversation_id),
            ("session_id", session_id),
            ("interaction_id", interaction_id),
            ("channel_id", channel_id),
        ):
            if value is not None:
                msg[key] = str(value)
        if metadata is not None:
            msg["metadata"] = dict(metadata)
        if user is not None:
            msg["user"] = dict(user)
        self.client._emit(msg)

    def _start(self, type_: str, input: Any, parent: "Event | None", **kw: Any) -> "Event":
        return Event(self, type_, input, parent.id if parent is not None else None, **kw)

    def message(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level MESSAGE event. Keywords: name, attrs, ts."""
        return self._start("MESSAGE", input, None, **kw)

    def system(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level SYSTEM event."""
        return self._start("SYSTEM", input, None, **kw)

    def tool(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("TOOL", input, None, **kw)

    def generation(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("GENERATION", input, None, **kw)

    def agent(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("AGENT", input, None, **kw)

    def retrieval(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("RETRIEVAL", input, None, **kw)

    def router(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("ROUTER", input, None, **kw)

    def custom(self, name: str, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level CUSTOM event labelled `name`."""
        return self._start("CUSTOM", input, None, name=name, **kw)

    def feedback(
        self,
        feedback_tag: str | None = None,
        feedback_text: str | None = None,
        *,
        score: float | None = None,
        target: "Event | str | None" = None,
        ts: int | None = None,
    ) -> None:
        """Records user feedback for the trace, or for one event (`target`:
        an Event or an event id). May be sent long after the trace ended."""
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "feedback",
            "trace_id": self.trace_id,
            "ts": time.time_ns() if ts is None else int(ts),
        }
        if feedback_tag is not None:
            msg["tag"] = str(feedback_tag)
        if feedback_text is not None:
            msg["text"] = str(feedback_text)
        if score is not None:
            try:
                msg["score"] = float(score)
            except (TypeError, ValueError):
                self.client._count("degraded_values")
        if target is not None:
            msg["target_id"] = target.id if isinstance(target, Event) else str(target)
        self.client._emit(msg)

    def send(
        self,
        event_type: str = "CUSTOM",
        input: Any = None,
        output: Any = None,
        latency: float | None = None,
        *,
        name: str | None = None,
        parent: "Event | str | None" = None,
        status: str | None = None,
        error: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        ts: int | None = None,
    ) -> "Event":
        """Sends a whole, already finished event in one message. `latency` is
        in milliseconds; without `ts` the event is taken to have ended now."""
        now = time.time_ns()
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "event",
            "trace_id": self.trace_id,
            "id": _new_event_id(),
            "type": _event_type(event_type),
        }
        parent_id = parent.id if isinstance(parent, Event) else parent
        if parent_id is not None:
            msg["parent_id"] = str(parent_id)
        if name is not None:
            msg["name"] = str(name)
        if input is not None:
            msg["input"] = input
        if output is not None:
            msg["output"] = output
        latency_ms = 0
        if latency is not None:
            try:
                latency_ms = max(0, int(round(float(latency))))
            except (TypeError, ValueError):
                self.client._count("degraded_values")
        msg["ts"] = int(ts) if ts is not None else now - latency_ms * 1_000_000
        msg["latency_ms"] = latency_ms
        _put_outcome(msg, status, error, attrs)
        self.client._emit(msg)
        return Event._finished(self, msg["id"], msg["type"])

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _put_outcome(
    msg: dict, status: str | None, error: str | None, attrs: Mapping[str, Any] | None
) -> None:
    if error is not None and status is None:
        status = "error"
    if status is not None:
        msg["status"] = "error" if str(status).lower() == "error" else "ok"
    if error is not None:
        msg["error"] = str(error)
    if attrs is not None:
        msg["attrs"] = dict(attrs)


class Event:
    """One started event. End it with end(), or use it as a context manager:
    leaving the block ends it; an exception ends it with status "error" and
    the exception's text, then propagates."""

    __slots__ = ("trace", "id", "type", "parent_id", "_ended")

    def __init__(
        self,
        trace: Trace,
        type_: str,
        input: Any,
        parent_id: str | None,
        *,
        name: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        ts: int | None = None,
        id: str | None = None,  # noqa: A002
    ):
        self.trace = trace
        self.id = id or _new_event_id()
        self.type = type_
        self.parent_id = parent_id
        self._ended = False
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "start",
            "trace_id": trace.trace_id,
            "id": self.id,
            "type": type_,
            "ts": time.time_ns() if ts is None else int(ts),
        }
        if parent_id is not None:
            msg["parent_id"] = parent_id
        if name is not None:
            msg["name"] = str(name)
        if input is not None:
            msg["input"] = input
        if attrs is not None:
            msg["attrs"] = dict(attrs)
        trace.client._emit(msg)

    @classmethod
    def _finished(cls, trace: Trace, event_id: str, type_: str) -> "Event":
        ev = cls.__new__(cls)
        ev.trace = trace
        ev.id = event_id
        ev.type = type_
        ev.parent_id = None
        ev._ended = True
        return ev

    @property
    def trace_id(self) -> str:
        return self.trace.trace_id

    @property
    def ended(self) -> bool:
        return self._ended

    # Children.
    def _child(self, type_: str, input: Any, **kw: Any) -> "Event":
        return Event(self.trace, type_, input, self.id, **kw)

    def tool(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a TOOL event under this one. Keywords: name, attrs, ts."""
        return self._child("TOOL", input, **kw)

    def generation(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("GENERATION", input, **kw)

    def agent(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("AGENT", input, **kw)

    def retrieval(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("RETRIEVAL", input, **kw)

    def router(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("ROUTER", input, **kw)

    def message(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("MESSAGE", input, **kw)

    def system(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("SYSTEM", input, **kw)

    def custom(self, name: str, input: Any = None, **kw: Any) -> "Event":
        """Starts a CUSTOM event labelled `name` under this one."""
        return self._child("CUSTOM", input, name=name, **kw)

    def send(self, event_type: str = "CUSTOM", input: Any = None, **kw: Any) -> "Event":
        """A whole finished child event in one message (see Trace.send)."""
        return self.trace.send(event_type, input, parent=self, **kw)

    def end(
        self,
        output: Any = None,
        *,
        status: str | None = None,
        error: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        ts: int | None = None,
    ) -> None:
        """Ends the event. `status` is "ok" (default) or "error"; giving
        `error` implies "error". `attrs` merge into the event's attributes.
        Only the first end() of an event is sent."""
        if self._ended:
            return
        self._ended = True
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "end",
            "trace_id": self.trace.trace_id,
            "id": self.id,
            "ts": time.time_ns() if ts is None else int(ts),
        }
        if output is not None:
            msg["output"] = output
        _put_outcome(msg, status, error, attrs)
        self.trace.client._emit(msg)

    def feedback(
        self,
        feedback_tag: str | None = None,
        feedback_text: str | None = None,
        *,
        score: float | None = None,
        ts: int | None = None,
    ) -> None:
        """Records user feedback for this event."""
        self.trace.feedback(feedback_tag, feedback_text, score=score, target=self, ts=ts)

    def __enter__(self) -> "Event":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc_type is None:
            self.end()
        else:
            text = f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__
            self.end(status="error", error=text)
        return False


def _after_fork_in_child() -> None:
    for client in list(_live_clients):
        try:
            client._after_fork_in_child()
        except Exception:
            pass


def _flush_at_exit() -> None:
    for client in list(_live_clients):
        try:
            client.close(client.exit_flush_s)
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
