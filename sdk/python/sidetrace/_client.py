"""The client: encodes events on the caller's thread, sends them from one
background thread.

Contract:
- No public method blocks on the network or raises into the application
  (flush() and close() wait, but only up to their timeout). Whatever cannot
  be delivered is dropped and counted in Client.stats().
- Arguments of a wrong type never raise either: each is converted to what
  the protocol expects when that is unambiguous (counted in args_coerced) or
  left out (counted in args_dropped); see "Arguments" below.
- Thread-safe: a Client, its Traces and Events may be used from any thread.
- Fork-safe: in a child process each client starts over with an empty queue,
  a new socket and a new sender thread; the parent's queued messages stay
  the parent's.
"""

from __future__ import annotations

import atexit
import collections
import datetime
import functools
import inspect
import math
import numbers
import os
import re
import threading
import time
import uuid
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
    "args_coerced",  # arguments of another type converted (a number given as text, an int id...)
    "args_dropped",  # arguments left out: wrong type, out of range, unknown keyword
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
    """Free trace metadata, e.g. ``Metadata(environment="production")``.
    A positional Mapping is merged first; any other positional is ignored."""

    def __init__(self, *mapping: Any, **fields: Any):
        super().__init__()
        for m in mapping:
            if isinstance(m, Mapping):
                self.update(m)
        self.update(fields)


class User(dict):
    """The end user a trace belongs to: ``User(id="user_123", plan="pro")``.
    Without an id (or with id=None) the map has no "id"."""

    def __init__(self, id: Any = None, **fields: Any):  # noqa: A002 - the page's name
        super().__init__()
        if id is not None:
            self["id"] = id  # id first, as the other SDKs send it
        self.update(fields)
        if id is not None:
            self["id"] = id

    @property
    def id(self) -> Any:
        return self.get("id")


# Arguments ----------------------------------------------------------------
#
# Every public call accepts arguments of any type. Each argument becomes what
# protocol v1 expects, or is left out, by one rule per kind of argument:
#
# - text (name, error, tag, text, conversation_id, ...): a str as is; bytes
#   decoded as UTF-8; anything else as its str() (args_coerced).
# - ids (trace_id, parent, target): a str as is; an Event gives its id; an
#   int, finite float or uuid.UUID as its text (args_coerced); anything else,
#   or an id that is empty or longer than 128 UTF-8 bytes, is left out
#   (args_dropped).
#   A trace id left out is replaced by a new one.
# - event type: text, 1..128 bytes, else "CUSTOM" (args_dropped).
# - status: "ok" or "error" in any case, else left out (args_dropped).
# - ts (ns since the epoch): an int in 0..2**64-1; a float, a datetime, or a
#   str of decimal digits converted (args_coerced); anything else left out,
#   which means "now" (args_dropped).
# - latency (ms) and score: an int or float (not bool); a str holding a
#   number converted (args_coerced); NaN, infinities, a negative latency or
#   anything else left out (args_dropped).
# - attrs, metadata, user: a Mapping (copied to a dict); a user given as a
#   str or number becomes {"id": text} (args_coerced); anything else is left
#   out (args_dropped).
# - input, output: any value; what msgpack cannot encode is sent as its str()
#   (degraded_values).
# - an unknown keyword is left out (args_dropped); a call whose positional
#   arguments do not fit the signature does nothing (args_dropped).

MAX_ID_BYTES = 128
_MAX_NS = (1 << 64) - 1
_MAX_LATENCY_MS = (1 << 63) - 1
_DIGITS = re.compile(r"\s*\+?[0-9]+\s*")


def _coerced(client: Client) -> None:
    client._count("args_coerced")


def _dropped(client: Client, n: int = 1) -> None:
    if n:
        client._count("args_dropped", n)


def _as_text(client: Client, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            text = bytes(value).decode("utf-8", "replace")
        else:
            text = str(value)
    except Exception:
        _dropped(client)
        return None
    _coerced(client)
    return text


def _id_fits(text: str) -> bool:
    if len(text) <= MAX_ID_BYTES // 4:
        return len(text) > 0
    return len(text.encode("utf-8", "surrogatepass")) <= MAX_ID_BYTES


def _as_id(client: Client, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, Event):
        return value.id
    elif (
        isinstance(value, (int, float, uuid.UUID))
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    ):
        text = str(value)
        _coerced(client)
    else:
        _dropped(client)
        return None
    if _id_fits(text):
        return text
    _dropped(client)
    return None


def _event_type(client: Client, value: Any) -> str:
    if type(value) is str:
        known = _TYPE_NAMES.get(value.lower())
        if known is not None:
            return known
    text = _as_text(client, value)
    if text is None or not _id_fits(text):
        _dropped(client)
        return "CUSTOM"
    return _TYPE_NAMES.get(text.lower(), text)


def _as_status(client: Client, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        low = value.lower()
        if low == "ok" or low == "error":
            return low
    _dropped(client)
    return None


def _as_number(client: Client, value: Any) -> float | int | None:
    """An int or float as is; a numeric str converted (counted); else None
    (not counted: the caller decides)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (numbers.Real, str, bytes)):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        _coerced(client)
        return number
    return None


def _as_time(client: Client, value: Any) -> int | None:
    """ns since the epoch, or None for "now"."""
    if value is None:
        return None
    if type(value) is int and 0 <= value <= _MAX_NS:
        return value
    ns: int | None = None
    if isinstance(value, bool):
        ns = None
    elif isinstance(value, (int, numbers.Integral)):
        ns = int(value)
        if type(value) is not int:
            _coerced(client)
    elif isinstance(value, datetime.datetime):
        try:
            ns = int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
        except (OverflowError, OSError, ValueError):
            ns = None
        _coerced(client)
    elif isinstance(value, (str, bytes)) and _DIGITS.fullmatch(
        value if isinstance(value, str) else value.decode("latin-1")
    ):
        ns = int(value)
        _coerced(client)
    else:
        number = _as_number(client, value)  # counts a numeric str as coerced
        if number is not None and math.isfinite(number):
            if isinstance(value, float):
                _coerced(client)
            ns = int(number)
    if ns is not None and 0 <= ns <= _MAX_NS:
        return ns
    _dropped(client)
    return None


def _as_latency_ms(client: Client, value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is int and 0 <= value <= _MAX_LATENCY_MS:
        return value
    number = _as_number(client, value)
    if number is not None and math.isfinite(number) and 0 <= number <= _MAX_LATENCY_MS:
        return int(round(number))
    _dropped(client)
    return None


def _as_score(client: Client, value: Any) -> float | None:
    if value is None:
        return None
    number = _as_number(client, value)
    if number is not None and math.isfinite(number):
        return float(number)
    _dropped(client)
    return None


def _as_map(client: Client, value: Any, key: str) -> dict | None:
    if value is None:
        return None
    if type(value) is dict:
        return dict(value)
    if isinstance(value, Mapping):
        try:
            return dict(value)
        except Exception:  # a Mapping whose items cannot be read
            _dropped(client)
            return None
    if (
        key == "user"
        and isinstance(value, (str, int, float, uuid.UUID))
        and not isinstance(value, bool)
    ):
        _coerced(client)
        return {"id": str(value)}
    _dropped(client)
    return None


def _as_seconds(client: Client, value: Any, default: float) -> float:
    """A timeout in seconds; negative means 0."""
    number = _as_number(client, value)
    if number is None or math.isnan(number):
        _dropped(client)
        return default
    return min(max(0.0, float(number)), threading.TIMEOUT_MAX)


def _client_of(obj: Any) -> Client:
    if isinstance(obj, Client):
        return obj
    if isinstance(obj, Trace):
        return obj.client
    return obj.trace.client


def _swallowed(obj: Any, fn: Any, args: tuple, kwargs: dict, fallback: Any) -> Any:
    try:
        try:
            inspect.signature(fn).bind(obj, *args, **kwargs)
            key = "internal_errors"
        except TypeError:
            key = "args_dropped"  # the arguments do not fit the signature
        _client_of(obj)._count(key)
        return fallback(obj) if fallback is not None else None
    except Exception:
        return None


def _never_raises(fallback: Any = None) -> Any:
    """Wraps a public method: an exception (other than BaseException's
    KeyboardInterrupt and the like) is counted and `fallback(self)` returned."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except Exception:
                return _swallowed(self, fn, args, kwargs, fallback)

        return guarded

    return wrap


def _trace_of(obj: Any) -> "Trace":
    return obj if isinstance(obj, Trace) else obj.trace


def _detached(obj: Any) -> "Event":
    """The Event a failed start returns: already ended, sends nothing."""
    return Event._finished(_trace_of(obj), _new_event_id(), "CUSTOM")


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
        **unknown: Any,
    ):
        self._endpoint: Endpoint | None = None
        self._max_queue = 10000
        self._max_queue_bytes = 16 << 20
        self._max_message_bytes = 1 << 20
        self.exit_flush_s = 2.0
        self._init_state()
        try:
            self._configure(endpoint, max_queue, max_queue_bytes, max_message_bytes, exit_flush_s)
            _dropped(self, len(unknown))
        except Exception:
            self._count("internal_errors")
        _live_clients.add(self)

    def _configure(
        self,
        endpoint: Any,
        max_queue: Any,
        max_queue_bytes: Any,
        max_message_bytes: Any,
        exit_flush_s: Any,
    ) -> None:
        text = _as_text(self, endpoint) or os.environ.get("SIDETRACE_ENDPOINT") or DEFAULT_ENDPOINT
        try:
            self._endpoint = parse_endpoint(text)
        except EndpointError as e:
            self._endpoint = None
            try:  # an application running with -W error must not see this raise
                warnings.warn(
                    f"sidetrace: {e}; events will be dropped", RuntimeWarning, stacklevel=3
                )
            except Exception:
                pass
        for attr, value, minimum in (
            ("_max_queue", max_queue, 1),
            ("_max_queue_bytes", max_queue_bytes, 1),
            ("_max_message_bytes", max_message_bytes, 1024),
        ):
            number = _as_number(self, value)
            if number is None or not math.isfinite(number):
                _dropped(self)
            else:
                setattr(self, attr, max(minimum, int(number)))
        self.exit_flush_s = _as_seconds(self, exit_flush_s, 2.0)

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

    @_never_raises(lambda self: Trace(self, _new_trace_id()))
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
        **unknown: Any,
    ) -> "Trace":
        """Starts a trace (or continues one, given its ``trace_id``). A
        trace_id that is not a usable id is replaced by a new one."""
        t = Trace(self, _as_id(self, trace_id) or _new_trace_id())
        t.update(
            conversation_id=conversation_id,
            session_id=session_id,
            interaction_id=interaction_id,
            channel_id=channel_id,
            metadata=metadata,
            user=user,
            **unknown,
        )
        return t

    @_never_raises(lambda self: False)
    def flush(self, timeout: float = 2.0) -> bool:
        """Waits up to `timeout` seconds until every message emitted so far
        has been handed to the agent's socket. Returns True if so; False on
        timeout or when some were dropped meanwhile (the agent is unreachable:
        queued messages are then dropped rather than waited for)."""
        try:
            deadline = time.monotonic() + _as_seconds(self, timeout, 2.0)
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
            self._count_quietly("internal_errors")
            return False

    @_never_raises(lambda self: False)
    def close(self, timeout: float = 2.0) -> bool:
        """Flushes for up to `timeout` seconds, then stops the sender; what is
        still queued is dropped (counted). Later emits are dropped. Idempotent."""
        try:
            ok = self.flush(_as_seconds(self, timeout, 2.0))
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
            self._count_quietly("internal_errors")
            return False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        return None

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
            self._count_quietly("internal_errors")

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _count_quietly(self, key: str) -> None:
        try:
            self._count(key)
        except Exception:
            pass

    def _degrade(self, value: Any) -> str:
        self._count("degraded_values")
        try:
            return str(value)
        except Exception:
            return f"<unencodable {type(value).__name__}>"

    def _sanitize(self, value: Any, depth: int = 0) -> Any:
        """A copy of `value` that msgpack can encode: unknown types, ints out
        of range and structures nested deeper than 64 become strings."""
        if isinstance(value, str):
            try:
                value.encode("utf-8")
                return value
            except UnicodeEncodeError:  # lone surrogates
                self._count("degraded_values")
                return value.encode("utf-8", "replace").decode("utf-8")
        if value is None or isinstance(value, (bool, float, bytes)):
            return value
        if isinstance(value, int):
            if -(1 << 63) <= value < (1 << 64):
                return value
            return self._degrade(value)
        if depth >= 64:
            return self._degrade(value)
        try:
            if isinstance(value, Mapping):
                items = list(value.items())
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                return self._degrade(value)
        except Exception:  # a container that cannot be read
            return self._degrade(value)
        if isinstance(value, Mapping):
            return {self._sanitize(k, depth + 1): self._sanitize(v, depth + 1) for k, v in items}
        return [self._sanitize(v, depth + 1) for v in items]

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
        resent = False  # the batch already went to a new connection once
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
                resent = False

            try:
                n = tr.send(memoryview(batch)[offset:])
            except OSError:
                tr.close()
                if ep.is_stream and offset == 0 and not resent:
                    # Nothing of it went out: the agent had closed the
                    # connection (one left idle, or a restart). Send it once
                    # more on a new one.
                    resent = True
                    next_attempt = 0.0
                    continue
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
_START_KEYWORDS = frozenset(("name", "attrs", "ts", "id"))


class Trace:
    """One trace: a tree of events sharing `trace_id`. Thread-safe."""

    __slots__ = ("client", "trace_id")

    def __init__(self, client: Client, trace_id: str):
        self.client = client
        self.trace_id = trace_id

    @_never_raises()
    def update(
        self,
        *,
        conversation_id: str | None = None,
        session_id: str | None = None,
        interaction_id: str | None = None,
        channel_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        user: Mapping[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        """Sends (more) trace context; later values merge over earlier ones."""
        client = self.client
        if unknown:
            _dropped(client, len(unknown))
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
            text = _as_text(client, value)
            if text is not None:
                msg[key] = text
        for key, value in (("metadata", metadata), ("user", user)):
            mapping = _as_map(client, value, key)
            if mapping is not None:
                msg[key] = mapping
        client._emit(msg)

    def _start(self, type_: str, input: Any, parent_id: str | None, kw: dict) -> "Event":
        return Event._start(self, type_, input, parent_id, kw)

    @_never_raises(_detached)
    def message(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level MESSAGE event. Keywords: name, attrs, ts."""
        return self._start("MESSAGE", input, None, kw)

    @_never_raises(_detached)
    def system(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level SYSTEM event."""
        return self._start("SYSTEM", input, None, kw)

    @_never_raises(_detached)
    def tool(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("TOOL", input, None, kw)

    @_never_raises(_detached)
    def generation(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("GENERATION", input, None, kw)

    @_never_raises(_detached)
    def agent(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("AGENT", input, None, kw)

    @_never_raises(_detached)
    def retrieval(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("RETRIEVAL", input, None, kw)

    @_never_raises(_detached)
    def router(self, input: Any = None, **kw: Any) -> "Event":
        return self._start("ROUTER", input, None, kw)

    @_never_raises(_detached)
    def custom(self, name: str | None = None, input: Any = None, **kw: Any) -> "Event":
        """Starts a root-level CUSTOM event labelled `name`."""
        kw["name"] = name
        return self._start("CUSTOM", input, None, kw)

    @_never_raises()
    def feedback(
        self,
        feedback_tag: str | None = None,
        feedback_text: str | None = None,
        *,
        score: float | None = None,
        target: "Event | str | None" = None,
        ts: int | None = None,
        **unknown: Any,
    ) -> None:
        """Records user feedback for the trace, or for one event (`target`:
        an Event or an event id). May be sent long after the trace ended."""
        client = self.client
        if unknown:
            _dropped(client, len(unknown))
        when = _as_time(client, ts)
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "feedback",
            "trace_id": self.trace_id,
            "ts": time.time_ns() if when is None else when,
        }
        for key, value in (("tag", feedback_tag), ("text", feedback_text)):
            text = _as_text(client, value)
            if text is not None:
                msg[key] = text
        number = _as_score(client, score)
        if number is not None:
            msg["score"] = number
        target_id = _as_id(client, target)
        if target_id is not None:
            msg["target_id"] = target_id
        client._emit(msg)

    @_never_raises(_detached)
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
        **unknown: Any,
    ) -> "Event":
        """Sends a whole, already finished event in one message. `latency` is
        in milliseconds; without `ts` the event is taken to have ended now."""
        client = self.client
        if unknown:
            _dropped(client, len(unknown))
        now = time.time_ns()
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "event",
            "trace_id": self.trace_id,
            "id": _new_event_id(),
            "type": "CUSTOM" if event_type is None else _event_type(client, event_type),
        }
        if parent is not None:
            parent_id = _as_id(client, parent)
            if parent_id is not None:
                msg["parent_id"] = parent_id
        if name is not None:
            label = _as_text(client, name)
            if label is not None:
                msg["name"] = label
        if input is not None:
            msg["input"] = input
        if output is not None:
            msg["output"] = output
        latency_ms = _as_latency_ms(client, latency) or 0
        when = _as_time(client, ts) if ts is not None else None
        msg["ts"] = when if when is not None else max(0, now - latency_ms * 1_000_000)
        msg["latency_ms"] = latency_ms
        if status is not None or error is not None or attrs is not None:
            _put_outcome(client, msg, status, error, attrs)
        client._emit(msg)
        return Event._finished(self, msg["id"], msg["type"])

    def __enter__(self) -> "Trace":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _put_outcome(client: Client, msg: dict, status: Any, error: Any, attrs: Any) -> None:
    status = _as_status(client, status)
    error = _as_text(client, error)
    if error is not None and status is None:
        status = "error"
    if status is not None:
        msg["status"] = status
    if error is not None:
        msg["error"] = error
    mapping = _as_map(client, attrs, "attrs")
    if mapping is not None:
        msg["attrs"] = mapping


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
        self.id = ""
        self.type = type_
        self.parent_id = parent_id
        self._ended = True  # until the start is built
        client = trace.client
        given = _as_id(client, id) if id is not None else None
        self.id = given if given is not None else _new_event_id()
        when = _as_time(client, ts) if ts is not None else None
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "start",
            "trace_id": trace.trace_id,
            "id": self.id,
            "type": type_,
            "ts": time.time_ns() if when is None else when,
        }
        if parent_id is not None:
            msg["parent_id"] = parent_id
        if name is not None:
            label = _as_text(client, name)
            if label is not None:
                msg["name"] = label
        if input is not None:
            msg["input"] = input
        if attrs is not None:
            mapping = _as_map(client, attrs, "attrs")
            if mapping is not None:
                msg["attrs"] = mapping
        self._ended = False
        client._emit(msg)

    @classmethod
    def _start(
        cls, trace: Trace, type_: str, input: Any, parent_id: str | None, kw: dict
    ) -> "Event":
        """Starts an event; keywords other than name, attrs, ts and id are
        left out (counted)."""
        if kw and not _START_KEYWORDS.issuperset(kw):
            known = {k: v for k, v in kw.items() if k in _START_KEYWORDS}
            _dropped(trace.client, len(kw) - len(known))
            kw = known
        return cls(trace, type_, input, parent_id, **kw)

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
    def _child(self, type_: str, input: Any, kw: dict) -> "Event":
        return Event._start(self.trace, type_, input, self.id, kw)

    @_never_raises(_detached)
    def tool(self, input: Any = None, **kw: Any) -> "Event":
        """Starts a TOOL event under this one. Keywords: name, attrs, ts."""
        return self._child("TOOL", input, kw)

    @_never_raises(_detached)
    def generation(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("GENERATION", input, kw)

    @_never_raises(_detached)
    def agent(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("AGENT", input, kw)

    @_never_raises(_detached)
    def retrieval(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("RETRIEVAL", input, kw)

    @_never_raises(_detached)
    def router(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("ROUTER", input, kw)

    @_never_raises(_detached)
    def message(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("MESSAGE", input, kw)

    @_never_raises(_detached)
    def system(self, input: Any = None, **kw: Any) -> "Event":
        return self._child("SYSTEM", input, kw)

    @_never_raises(_detached)
    def custom(self, name: str | None = None, input: Any = None, **kw: Any) -> "Event":
        """Starts a CUSTOM event labelled `name` under this one."""
        kw["name"] = name
        return self._child("CUSTOM", input, kw)

    @_never_raises(_detached)
    def send(self, event_type: str = "CUSTOM", input: Any = None, **kw: Any) -> "Event":
        """A whole finished child event in one message (see Trace.send)."""
        kw["parent"] = self
        return self.trace.send(event_type, input, **kw)

    @_never_raises()
    def end(
        self,
        output: Any = None,
        *,
        status: str | None = None,
        error: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        ts: int | None = None,
        **unknown: Any,
    ) -> None:
        """Ends the event. `status` is "ok" (default) or "error"; giving
        `error` implies "error". `attrs` merge into the event's attributes.
        Only the first end() of an event is sent."""
        if self._ended:
            return
        self._ended = True
        client = self.trace.client
        if unknown:
            _dropped(client, len(unknown))
        when = _as_time(client, ts) if ts is not None else None
        msg: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "kind": "end",
            "trace_id": self.trace.trace_id,
            "id": self.id,
            "ts": time.time_ns() if when is None else when,
        }
        if output is not None:
            msg["output"] = output
        if status is not None or error is not None or attrs is not None:
            _put_outcome(client, msg, status, error, attrs)
        client._emit(msg)

    @_never_raises()
    def feedback(
        self,
        feedback_tag: str | None = None,
        feedback_text: str | None = None,
        *,
        score: float | None = None,
        ts: int | None = None,
        **unknown: Any,
    ) -> None:
        """Records user feedback for this event."""
        if "target" in unknown:  # this event is the target
            del unknown["target"]
            _dropped(self.trace.client)
        self.trace.feedback(feedback_tag, feedback_text, score=score, target=self, ts=ts, **unknown)

    def __enter__(self) -> "Event":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc_type is None:
            self.end()
        else:
            self.end(status="error", error=_exception_text(exc_type, exc))
        return False


def _exception_text(exc_type: Any, exc: BaseException | None) -> str:
    name = getattr(exc_type, "__name__", None)
    if not isinstance(name, str):
        name = "Exception"
    try:
        detail = str(exc) if exc is not None else ""
    except Exception:  # an exception whose __str__ raises
        detail = ""
    return f"{name}: {detail}" if detail else name


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
