"""Bad input against the real agent, over all three transports, interleaved with valid
events: the hand-made malformed corpus (tests/fuzz/malformed/ with EXPECTED.tsv) plus
cases of this file, random garbage, oversized messages, garbage in the middle of a
stream, messages cut short by a disconnect, and a thousand connections opened and
abandoned. Each bad input must be counted under its reason in
sidetrace_rejected_messages_total (or closed as garbage), logged at a limited rate,
and every valid event sent among them must reach the upstream."""

from __future__ import annotations

import pathlib
import random
import re
import resource
import select
import socket
import time

import msgpack
import pytest

import harness
from harness import wait_until
from overload_util import AGENT_TRANSPORT, REASONS, diag, event, pack, per_transport, rejected

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "malformed"
TRANSPORTS = ("stream", "dgram", "udp")
UDP_MAX = 65507
MAX_CONNECTIONS = 200
ABANDONED = 3000 if harness.SOAK else 1000


# ---------------------------------------------------------------------------
# inputs


def handmade() -> list[tuple[str, bytes, str]]:
    """(name, bytes, expected reason) made here; each is one whole msgpack value unless
    the reason is malformed or too_large."""
    ok = event("hm", "x1")

    def with_(**kw):
        m = dict(ok)
        for k, v in kw.items():
            if v is ... and k in m:
                del m[k]
            elif v is not ...:
                m[k] = v
        return pack(m)
    whole = pack(ok)
    return [
        ("not_map_int", pack(5), "not_map"),
        ("not_map_array", pack([1, 2, 3]), "not_map"),
        ("not_map_str", pack("hello"), "not_map"),
        ("key_int", pack({1: 1, "v": 1, "kind": "event", "trace_id": "t", "id": "i",
                          "type": "TOOL"}), "key_not_string"),
        ("missing_v", with_(v=...), "missing_key"),
        ("missing_trace_id", with_(trace_id=...), "missing_key"),
        ("missing_type", with_(type=...), "missing_key"),
        ("ts_str", with_(ts="yesterday"), "wrong_type"),
        ("attrs_array", with_(attrs=[1, 2]), "wrong_type"),
        ("trace_id_int", with_(trace_id=42), "wrong_type"),
        ("v_str", with_(v="1"), "wrong_type"),
        ("input_ok_but_name_map", with_(name={"a": 1}), "wrong_type"),
        ("v_2", with_(v=2), "bad_version"),
        ("kind_bogus", with_(kind="bogus"), "bad_kind"),
        ("id_empty", with_(id=""), "bad_value"),
        ("id_129", with_(id="i" * 129), "bad_value"),
        ("status_maybe", with_(status="maybe"), "bad_value"),
        ("ts_negative", with_(ts=-1), "bad_value"),
        ("latency_negative", with_(latency_ms=-5, end_ts=...), "bad_value"),
        ("reserved_c1", b"\xc1", "malformed"),
        ("cut_in_half", whole[: len(whole) // 2], "malformed"),
        ("str32_claims_4GiB", b"\x81\xa1v\xdb\xff\xff\xff\xff", "malformed"),
    ]


# The test upstream parses documents with Python's json module, which refuses nesting
# deeper than its recursion limit (about 1000) with a 400, and the agent then
# dead-letters the whole batch, valid neighbours included. Valid messages nested that
# deep are therefore left out of the interleaved runs (see DEEP_SKIPPED).
UPSTREAM_MAX_DEPTH = 500
DEEP_SKIPPED: list[str] = []


def nesting_depth(data: bytes) -> int:
    try:
        top = msgpack.unpackb(data, raw=True, strict_map_key=False)
    except msgpack.exceptions.StackError:
        return 1 << 30  # deeper than the msgpack module itself goes
    except Exception:  # noqa: BLE001 - not one whole value: nothing to deliver
        return 0
    depth, stack = 0, [(top, 1)]
    while stack:
        v, d = stack.pop()
        depth = max(depth, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
    return depth


def corpus() -> list[tuple[str, bytes, str]]:
    """The shared malformed corpus, if present: (file name, bytes, expected outcome)."""
    manifest = CORPUS / "EXPECTED.tsv"
    if not manifest.exists():
        return []
    out = []
    for line in manifest.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, expected = line.split("\t")[:2]
        data = (CORPUS / name).read_bytes()
        if expected.strip() == "ok" and nesting_depth(data) > UPSTREAM_MAX_DEPTH:
            if name not in DEEP_SKIPPED:
                DEEP_SKIPPED.append(name)
            continue
        out.append((name, data, expected.strip()))
    return out


def single_value(data: bytes) -> bool:
    """True when data is exactly one whole msgpack value (then every transport must give
    the decoder's own verdict); False for garbage, cut-short or several values."""
    try:
        msgpack.unpackb(data, raw=True, strict_map_key=False)
        return True
    except Exception:  # noqa: BLE001 - any refusal means "not one whole value"
        return False


# ---------------------------------------------------------------------------
# senders


class Valid:
    """Numbers valid events per transport and remembers what was sent."""

    def __init__(self, tag: str):
        self.tag = tag
        self.n = 0
        self.ids: list[str] = []

    def next(self) -> bytes:
        n = self.n
        self.n += 1
        eid = f"{self.tag}-{n}"
        self.ids.append(eid)
        return pack(event(f"b{self.tag}-{n // 4}", eid))


def dgram_socket(agent, transport: str) -> socket.socket:
    """A blocking datagram socket to the agent (blocking: no sender-side drops)."""
    if transport == "dgram":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect(agent.dgram_path)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(agent.udp_addr)
    s.settimeout(5)
    return s


def stream_socket(agent) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(agent.stream_path)
    return s


def wait_closed_by_agent(s: socket.socket, timeout: float = 5.0) -> bool:
    """Reads until EOF (or reset); True when the agent closed the connection in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if s.recv(4096) == b"":
                return True
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
    return False


def transport_counts(agent, t: str) -> dict:
    m = agent.metrics()
    at = AGENT_TRANSPORT[t]
    r = rejected(m, at)
    r["accepted"] = per_transport(m, "sidetrace_accepted_messages_total", at)
    r["received"] = per_transport(m, "sidetrace_received_messages_total", at)
    r["queue_full"] = per_transport(m, "sidetrace_intake_queue_full_drops_total", at)
    r["datagrams"] = per_transport(m, "sidetrace_received_datagrams_total", at)
    r["connections"] = per_transport(m, "sidetrace_connections_total", at)
    r["garbage_closed"] = per_transport(m, "sidetrace_connections_closed_garbage_total", at)
    return r


def delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in b if b[k] != a[k]}


def adds_up(d: dict) -> bool:
    """Every message counted received is also counted accepted, rejected or dropped on a
    full queue: no batch is between being counted and being queued."""
    return d.get("received", 0) == (d.get("accepted", 0) + d.get("queue_full", 0)
                                    + sum(d.get(r, 0) for r in REASONS))


# Waiting for counts. The agent reads a socket's datagrams in order, one receiver per
# socket, and counts a batch of datagrams in steps (datagrams, then received and
# rejected, then accepted once the batch is queued); a scrape of /metrics may fall
# between the steps. A wait that ends on "accepted grew by at least N" can therefore end
# before everything sent was counted, and the rest lands in the next baseline. The
# helpers below end on a condition that holds only once everything sent since `before`
# is counted, so each result is also a settled baseline for what follows.


def settle_datagrams(agent, up, t: str, before: dict, datagrams: int, marker: str,
                     expect: dict | None = None, timeout: float = 15.0) -> dict:
    """Waits until the `datagrams` datagrams sent on transport t since the counts `before`
    are all counted, and returns the counts. The last of them was the valid event with id
    `marker`.

    With `expect` (the exact change of the counts, when the outcome is known) the wait
    ends as soon as the counts are exactly before + expect. Otherwise, or when they never
    get there, it ends once the marker has reached the upstream (then everything sent on
    the socket before it was counted, up to its own batch being queued), all
    `datagrams` were read and the counts add up (that batch is counted accepted too)."""
    state = {}

    def done():
        seen = not harness.missing([marker], up)  # before the scrape
        c = transport_counts(agent, t)
        d = state["d"] = delta(before, c)
        if expect is not None and d == expect:
            return c
        if seen and d.get("datagrams") == datagrams and adds_up(d):
            return c
        return None
    try:
        if expect is None:
            up.wait_for(lambda u: not harness.missing([marker], u), timeout,
                        f"marker {marker} delivered")
        return wait_until(done, timeout, f"marker {marker} and what was sent before it counted")
    except harness.WaitTimeout as e:
        pytest.fail(f"{e}: counted {state.get('d')}, expected {expect or 'any outcome'} for "
                    f"{datagrams} datagrams; marker delivered: "
                    f"{not harness.missing([marker], up)}; agent {diag(agent)}")


def settle_stream(agent, before: dict, connections: int, timeout: float = 15.0) -> dict:
    """Waits until the `connections` stream connections opened since the counts `before`
    were accepted by the agent and are gone, and returns the counts (final: a session
    counts everything it read before it ends)."""
    wait_until(lambda: transport_counts(agent, "stream")["connections"]
               - before["connections"] == connections, timeout,
               f"{connections} stream connections accepted")
    # A session ends after its counts; the gauge went up before the total above.
    wait_until(lambda: agent.metric("sidetrace_connections_open", transport="unix_stream") == 0,
               timeout, "stream connections ended")
    return transport_counts(agent, "stream")


def assert_delivered(upstream, agent, ids: list[str], what: str, timeout: float = 60):
    try:
        wait_until(lambda: not harness.missing(ids, upstream), timeout, what)
    except harness.WaitTimeout as e:
        miss = harness.missing(ids, upstream)
        pytest.fail(f"{e}: {len(miss)} of {len(ids)} valid events lost, e.g. {miss[:5]}; "
                    f"agent {diag(agent)}; upstream {dict(upstream.requests)} "
                    f"{[x[:200] for x in upstream.errors[:3]]}")


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * ABANDONED))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    up = harness.Upstream()
    agent = harness.Agent(tmp_path_factory.mktemp("bad_input") / "agent", {
        "upstream": {"endpoint": up.url, "compression": "gzip", "flush_interval_ms": 50},
        "listen": {"max_connections": MAX_CONNECTIONS},
    })
    agent.start()
    agent.wait_ready()
    started = time.monotonic()
    yield agent, up, started
    try:
        assert agent.running(), "the agent exited"
    finally:
        agent.cleanup()
        up.close()
        if agent in harness.LIVE_AGENTS:
            harness.LIVE_AGENTS.remove(agent)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("transport", ["dgram", "udp"])
def test_malformed_datagrams(env, transport):
    """Every corpus file and hand-made case as one datagram, each followed by a valid
    event, its marker; each is checked on its own: the expected reason is counted. A case
    ends once its own datagrams are all counted (settle_datagrams), and its counts are the
    next case's baseline."""
    agent, up, _ = env
    valid = Valid(f"md{transport}")
    sock = dgram_socket(agent, transport)
    cases = corpus() + handmade()
    tried, skipped, wrong = 0, [], []
    before = transport_counts(agent, transport)
    for name, data, expected in cases:
        if not data:
            skipped.append(f"{name}: an empty datagram carries no message")
            continue
        if transport == "udp" and len(data) > UDP_MAX:
            skipped.append(f"{name}: {len(data)} bytes do not fit a UDP datagram")
            continue
        if len(data) > 64 * 1024:
            expected = "too_large"  # a datagram above max_datagram_bytes, whatever it holds
        try:
            sock.send(data)
        except OSError as e:
            skipped.append(f"{name}: send failed: {e}")
            continue
        tried += expected != "ok"
        sock.send(valid.next())
        marker = valid.ids[-1]
        known = single_value(data) or expected == "too_large"
        expect = None
        if known:
            expect = {"datagrams": 2, "received": 2, "accepted": 2} if expected == "ok" else \
                {"datagrams": 2, "received": 2, "accepted": 1, expected: 1}
        after = settle_datagrams(agent, up, transport, before, 2, marker, expect)
        d = delta(before, after)
        before = after
        reasons = {r: int(d[r]) for r in REASONS if r in d}
        if known:
            ok = d == expect
        else:
            # Garbage, a cut-short value or several values in one datagram: the whole
            # values in it are judged one by one (trailing bytes that decode as a value
            # get that value's reason, e.g. a stray 0 is not_map) and bytes that are not
            # a whole value are counted as malformed; something must be counted either
            # way, and the marker accepted.
            ok = (bool(reasons) or d.get("accepted", 0) > 1) and d.get("accepted", 0) >= 1
        if not ok:
            wrong.append(f"{name}: expected {expected}, counted {d}")
    sock.close()
    assert not wrong, f"{len(wrong)} bad inputs miscounted:\n" + "\n".join(wrong)
    assert_delivered(up, agent, valid.ids, f"valid {transport} events among bad ones")
    harness.record("bad input", f"malformed corpus over {transport}", bad_inputs=tried,
                   lost=len(harness.missing(valid.ids, up)), valid_sent=len(valid.ids),
                   skipped=skipped + [f"{n}: nested too deep for the test upstream"
                                      for n in DEEP_SKIPPED])


def test_malformed_stream(env):
    """Each corpus file and hand-made case on its own stream connection, after a valid
    event: whole values get the decoder's reason and the connection stays usable;
    bytes that are not msgpack close the connection; the valid event is kept."""
    agent, up, _ = env
    valid = Valid("ms")
    tried, wrong = 0, []
    before = settle_stream(agent, transport_counts(agent, "stream"), 0)
    for name, data, expected in corpus() + handmade():
        s = stream_socket(agent)
        s.sendall(valid.next() + data)
        whole = single_value(data)
        if whole:
            # The connection survives a refused message: a valid event after it counts.
            s.sendall(valid.next())
        s.shutdown(socket.SHUT_WR)
        closed = wait_closed_by_agent(s)
        s.close()
        tried += expected != "ok"
        want = (3 if expected == "ok" else 2) if whole else 1
        after = settle_stream(agent, before, 1)
        d = delta(before, after)
        before = after
        reasons = {r: int(d[r]) for r in REASONS if r in d}
        if not closed:
            wrong.append(f"{name}: connection not closed after EOF")
        elif whole:
            exp = {} if expected == "ok" else {expected: 1}
            if reasons != exp or d.get("accepted") != want:
                wrong.append(f"{name}: expected {expected}, counted {d}")
        elif d.get("accepted", 0) < want:
            wrong.append(f"{name}: the valid event before it was not accepted: {d}")
        if d.get("garbage_closed") and reasons.get("malformed", 0) < 1:
            wrong.append(f"{name}: closed as garbage without a malformed count: {d}")
    assert not wrong, f"{len(wrong)} bad inputs mishandled:\n" + "\n".join(wrong)
    assert_delivered(up, agent, valid.ids, "valid stream events among bad ones")
    harness.record("bad input", "malformed corpus over stream", bad_inputs=tried,
                   lost=len(harness.missing(valid.ids, up)), valid_sent=len(valid.ids))


def test_oversized(env):
    """Above listen.max_message_bytes (1 MiB) on a stream: skipped, counted too_large,
    the connection goes on. A Unix datagram above the datagram size: too_large."""
    agent, up, _ = env
    valid = Valid("big")
    before = {"stream": settle_stream(agent, transport_counts(agent, "stream"), 0),
              "dgram": transport_counts(agent, "dgram")}
    big = pack(event("big", "huge", input="x" * (2 << 20)))
    s = stream_socket(agent)
    for _ in range(3):
        s.sendall(valid.next() + big + valid.next())
    s.close()
    d = dgram_socket(agent, "dgram")
    for size in (70_000, 200_000):
        d.send(pack(event("big", "dg", input="y" * size)))
        d.send(valid.next())
    d.close()
    ds = delta(before["stream"], settle_stream(agent, before["stream"], 1))
    dd = delta(before["dgram"], settle_datagrams(
        agent, up, "dgram", before["dgram"], 4, valid.ids[-1],
        {"datagrams": 4, "received": 4, "accepted": 2, "too_large": 2}))
    assert ds.get("too_large") == 3 and ds.get("accepted") == 6, ds
    assert dd.get("too_large") == 2 and dd.get("accepted") == 2, dd
    assert_delivered(up, agent, valid.ids, "valid events around oversized ones")
    harness.record("bad input", "oversized messages", bad_inputs=5,
                   lost=len(harness.missing(valid.ids, up)), valid_sent=len(valid.ids))


def test_random_garbage(env):
    """Random bytes over every transport, interleaved with valid events."""
    agent, up, _ = env
    rng = random.Random(7)
    n = 300 if harness.SOAK else 100
    valid = {t: Valid(f"rg{t}") for t in TRANSPORTS}
    before = {t: transport_counts(agent, t) for t in TRANSPORTS}
    tried = 0
    for t in ("dgram", "udp"):
        s = dgram_socket(agent, t)
        for _ in range(n):
            # A leading reserved byte (0xc1) makes sure the datagram is never one
            # valid message; the rest is random.
            s.send(b"\xc1" + rng.randbytes(rng.randint(0, 1500)))
            s.send(valid[t].next())
            tried += 1
        s.close()
    closed = 0
    for _ in range(n // 4):
        s = stream_socket(agent)
        s.sendall(valid["stream"].next() + rng.randbytes(rng.randint(1, 1500)))
        s.shutdown(socket.SHUT_WR)
        closed += wait_closed_by_agent(s)
        s.close()
        tried += 1
    assert closed == n // 4, f"only {closed} of {n // 4} garbage connections were closed"
    for t in ("dgram", "udp"):
        after = settle_datagrams(agent, up, t, before[t], 2 * n, valid[t].ids[-1],
                                 {"datagrams": 2 * n, "received": 2 * n, "accepted": n,
                                  "malformed": n})
        d = delta(before[t], after)
        reasons = {r: int(d[r]) for r in REASONS if r in d}
        assert d["accepted"] == n, d
        # A datagram that starts with a byte that is never msgpack holds no message:
        # exactly one malformed each.
        assert reasons == {"malformed": n}, f"{t}: garbage datagrams miscounted: {d}"
    for ids in valid.values():
        assert_delivered(up, agent, ids.ids, "valid events among garbage")
    all_ids = [i for v in valid.values() for i in v.ids]
    harness.record("bad input", "random garbage, 3 transports", bad_inputs=tried,
                   lost=len(harness.missing(all_ids, up)), valid_sent=len(all_ids))


def test_stream_garbage_midstream_and_cut_short(env):
    """Garbage in the middle of a stream closes that connection after the messages
    before it are kept; a message cut short by a disconnect is dropped alone (counted
    as malformed)."""
    agent, up, _ = env
    valid = Valid("mid")
    before = settle_stream(agent, transport_counts(agent, "stream"), 0)
    conns = 10
    for _ in range(conns):
        s = stream_socket(agent)
        s.sendall(b"".join(valid.next() for _ in range(20)))
        s.sendall(b"\xc1\xc1 not msgpack at all")
        assert wait_closed_by_agent(s), "the agent kept a connection that sent garbage"
        s.close()
    for _ in range(conns):
        s = stream_socket(agent)
        whole = b"".join(valid.next() for _ in range(5))
        cut = pack(event("cut", "never"))
        s.sendall(whole + cut[: len(cut) // 2])
        s.close()
    d = delta(before, settle_stream(agent, before, 2 * conns))
    assert d.get("garbage_closed") == conns and d.get("malformed") == 2 * conns, d
    assert d["accepted"] == conns * 25, d
    assert_delivered(up, agent, valid.ids, "events before garbage and before a cut")
    harness.record("bad input", "stream garbage mid-stream, cut short", bad_inputs=2 * conns,
                   lost=len(harness.missing(valid.ids, up)), valid_sent=len(valid.ids))


def test_abandoned_connections(env):
    """ABANDONED connections opened and left: the agent holds at most
    listen.max_connections of them, closes the rest at once, keeps serving datagrams,
    and takes new stream connections again once they are gone."""
    agent, up, _ = env
    valid = Valid("ab")
    conns: list[socket.socket] = []
    closed_by_agent = 0
    probe = pack(event("half", "h"))
    try:
        for i in range(ABANDONED):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(agent.stream_path)
            s.setblocking(False)
            if i % 2:
                try:
                    s.send(probe[:7])  # half a message, never finished
                except OSError:
                    pass  # already closed by the agent
            conns.append(s)
        wait_until(lambda: agent.metric("sidetrace_connections_open", transport="unix_stream")
                   == MAX_CONNECTIONS, 20, f"{MAX_CONNECTIONS} connections held")

        def count_closed():
            nonlocal closed_by_agent
            poller = select.poll()
            by_fd = {c.fileno(): c for c in conns}
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            closed_by_agent = 0
            for fd, _ in poller.poll(0):
                try:
                    if by_fd[fd].recv(1, socket.MSG_PEEK) == b"":
                        closed_by_agent += 1
                except BlockingIOError:
                    pass
                except OSError:  # reset
                    closed_by_agent += 1
            return closed_by_agent == ABANDONED - MAX_CONNECTIONS
        wait_until(count_closed, 20, "connections beyond the limit closed by the agent")
        assert agent.metric("sidetrace_connections_refused_total",
                            transport="unix_stream") == ABANDONED - MAX_CONNECTIONS
        # The agent still serves everything else meanwhile.
        assert agent.healthy()
        for t in ("dgram", "udp"):
            s = dgram_socket(agent, t)
            for _ in range(50):
                s.send(valid.next())
            s.close()
        assert_delivered(up, agent, valid.ids, "datagrams while connections are held")
    finally:
        for c in conns:
            c.close()
    wait_until(lambda: agent.metric("sidetrace_connections_open", transport="unix_stream") == 0,
               20, "abandoned connections released")
    s = stream_socket(agent)
    s.sendall(b"".join(valid.next() for _ in range(50)))
    s.close()
    assert_delivered(up, agent, valid.ids, "stream events after the abandoned connections")
    harness.record("bad input", f"{ABANDONED} abandoned connections", bad_inputs=ABANDONED,
                   lost=len(harness.missing(valid.ids, up)), valid_sent=len(valid.ids),
                   refused_by_limit=closed_by_agent)


def test_rejections_logged_rate_limited(env):
    """Runs last: the agent logged rejections with transport, reason and detail, and no
    more than its rate allows (10 lines per 10 s for the intake), with the suppressed
    ones counted in the next line."""
    agent, _, started = env
    # The lines held back are reported with the next line that gets through, in the
    # next 10 s window: keep sending one bad datagram every 200 ms until it shows.
    s = dgram_socket(agent, "udp")

    def reported():
        s.send(pack("not a map"))
        return "similar messages suppressed" in agent.log_text()
    wait_until(reported, 25, "a line reporting suppressed ones", interval=0.2)
    s.close()
    text = agent.log_text()
    lines = [ln for ln in text.splitlines() if re.search(r"\bintake \S+: ", ln)]
    rejects = [ln for ln in lines if "rejected message (" in ln]
    assert rejects, "no rejection was logged"
    assert re.search(r"intake (unix_dgram|udp|unix_stream): rejected message "
                     r"\((not_map|malformed|wrong_type|bad_value|missing_key|too_large|"
                     r"key_not_string|bad_kind|bad_version)\): \S", text)
    suppressed = sum(int(n) for n in re.findall(r"\((\d+) similar messages suppressed\)", text))
    assert suppressed > 0, "suppressed lines not reported"
    elapsed = time.monotonic() - started
    bound = 10 * (int(elapsed // 10) + 2)
    assert len(lines) <= bound, f"{len(lines)} intake log lines in {elapsed:.0f}s (bound {bound})"
    assert agent.healthy() and agent.running()
    harness.record("bad input", "rejections logged, rate-limited", log_lines=len(lines),
                   suppressed_reported=suppressed)
