#!/usr/bin/python3
"""Writes the fuzz seed corpora and the malformed-message corpus.

  tests/fuzz/corpus/decoder/    one valid protocol-v1 message per file, every kind
  tests/fuzz/corpus/splitter/   splitter inputs: a cap byte, chunk sizes, a stream
  tests/fuzz/corpus/config/     TOML documents and `section.key=value` lines
  tests/fuzz/malformed/         hand-made bad (and borderline) messages, with
                                EXPECTED.tsv: file -> expected decode outcome

Inputs the fuzzers found crashing are committed as corpus/<harness>/regress_*
and are kept when this script runs again.

Deterministic: running it again rewrites the same bytes. Needs python3-msgpack.
Usage: tests/fuzz/make_corpus.py
"""

import os
import struct

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
T0 = 1_700_000_000_000_000_000  # ns


# --- msgpack built by hand, so key order, duplicates and encodings are exact.

def s(text):
    """A msgpack str (text is str or raw bytes)."""
    b = text.encode() if isinstance(text, str) else text
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def u(n):
    return msgpack.packb(n)


def mp(value):
    return msgpack.packb(value, use_bin_type=True)


def m(*pairs):
    """A msgpack map from (key, value-bytes) pairs; str keys are packed."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    body = b""
    for k, v in pairs:
        body += (s(k) if isinstance(k, str) else k) + v
    return head + body


def base(kind="event", **extra):
    """The required keys of a kind, then `extra` (values are msgpack bytes)."""
    pairs = [("v", u(1)), ("kind", s(kind)), ("trace_id", s(TRACE_ID))]
    if kind in ("start", "event", "end"):
        pairs.append(("id", s("b7ad6b7169203331")))
    if kind in ("start", "event"):
        pairs.append(("type", s("GENERATION")))
    pairs += list(extra.items())
    return m(*pairs)


def without(key, kind="event"):
    pairs = [("v", u(1)), ("kind", s(kind)), ("trace_id", s(TRACE_ID)),
             ("id", s("b7ad6b7169203331")), ("type", s("TOOL"))]
    return m(*[p for p in pairs if p[0] != key])


def ts32(sec):
    return b"\xd6\xff" + struct.pack(">I", sec)


def ts64(sec, nsec):
    return b"\xd7\xff" + struct.pack(">Q", (nsec << 34) | sec)


def ts96(sec, nsec):
    return b"\xc7\x0c\xff" + struct.pack(">Iq", nsec, sec)


# --- valid messages, one per kind and shape

def valid_messages():
    attrs = mp({"model": "gpt-4o", "input_tokens": 812, "output_tokens": 64,
                "cost_usd": 0.0031, "temperature": 0.2})
    return {
        "trace": m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID)),
                   ("conversation_id", s("conv-1")), ("session_id", s("sess-9")),
                   ("interaction_id", s("int-3")), ("channel_id", s("web")),
                   ("user", mp({"id": "u-42", "plan": "pro"})),
                   ("metadata", mp({"environment": "prod", "release": "1.4.2"}))),
        "start": base("start", name=s("plan"), ts=u(T0), input=mp({"query": "weather in Oslo"})),
        "end": base("end", ts=u(T0 + 5_000_000), output=mp("Sunny, 21 C"), status=s("ok"),
                    attrs=attrs),
        "end_error": base("end", status=s("error"), error=s("tool timed out after 30 s")),
        "event": base("event", parent_id=s("a1a1a1a1a1a1a1a1"), name=s("llm call"),
                      input=mp([{"role": "user", "content": "hi"}]),
                      output=mp({"role": "assistant", "content": "hello"}),
                      ts=u(T0), end_ts=u(T0 + 42_000_000), attrs=attrs),
        "event_latency": base("event", ts=u(T0), latency_ms=u(1250)),
        "event_ts32": base("event", ts=ts32(1_700_000_000), end_ts=ts32(1_700_000_001)),
        "event_ts64": base("event", ts=ts64(1_700_000_000, 123_456_789),
                           end_ts=ts64(1_700_000_000, 999_999_999)),
        "event_ts96": base("event", ts=ts96(1_700_000_000, 1), end_ts=ts96(1_700_000_002, 0)),
        "event_bin_io": base("event", input=mp(b"\x00\x01\x02\xff"), output=mp(3.5)),
        "event_custom_type": m(("v", u(1)), ("kind", s("event")), ("trace_id", s(TRACE_ID)),
                               ("id", s("c0ffee0000000001")), ("type", s("my-custom-step")),
                               ("parent_id", s("b7ad6b7169203331")), ("status", s("ok"))),
        "feedback_trace": m(("v", u(1)), ("kind", s("feedback")), ("trace_id", s(TRACE_ID)),
                            ("tag", s("thumbs")), ("score", mp(1)), ("text", s("great answer"))),
        "feedback_event": m(("v", u(1)), ("kind", s("feedback")), ("trace_id", s(TRACE_ID)),
                            ("target_id", s("b7ad6b7169203331")), ("score", mp(-0.5)),
                            ("tag", s("accuracy"))),
        "sdk_python": mp({"v": 1, "kind": "event", "trace_id": TRACE_ID, "id": "0123456789abcdef",
                          "type": "RETRIEVAL", "name": "search", "input": {"q": "x", "k": 5},
                          "output": [{"doc": "a", "score": 0.9}], "ts": T0,
                          "latency_ms": 12, "status": "ok", "parent_id": None}),
    }


# --- malformed (and borderline) messages: name -> (bytes, expected outcome)

def malformed_messages():
    ev = base("event")
    big = 1 << 20
    cases = {
        # not msgpack at all / cut short
        "empty": (b"", "malformed"),
        "reserved_byte_c1": (b"\xc1", "malformed"),
        "truncated_map16_header": (b"\xde\x00", "malformed"),
        "truncated_half_message": (ev[: len(ev) // 2], "malformed"),
        "truncated_last_byte": (ev[:-1], "malformed"),
        "map_count_too_high": (bytes([0x8F]) + ev[1:], "malformed"),
        "map32_huge_count": (b"\xdf\xff\xff\xff\xff" + s("v") + u(1), "malformed"),
        "key_str8_cut_short": (b"\x81\xd9\xc8abc", "malformed"),
        "value_str32_huge_length": (m(("v", u(1)), ("name", b"\xdb\xff\xff\xff\xf0abc")),
                                    "malformed"),
        "value_bin32_huge_length": (m(("v", u(1)), ("input", b"\xc6\x7f\xff\xff\xffxyz")),
                                    "malformed"),
        "value_ext32_huge_length": (m(("v", u(1)), ("attrs", b"\xc9\x7f\xff\xff\xff\x05xyz")),
                                    "malformed"),
        "value_array32_huge_count": (m(("v", u(1)), ("input", b"\xdd\xff\xff\xff\xff\x01\x02")),
                                     "malformed"),
        "depth_bomb_truncated": (m(("v", u(1)), ("input", b"\x91" * 50000)), "malformed"),
        "depth_bomb_map_truncated": (m(("v", u(1)), ("attrs", b"\x81\xa1k" * 20000)),
                                     "malformed"),
        "nested_reserved_byte": (base("event", attrs=b"\x82\xa1a\x01\xa1b\xc1"), "malformed"),
        "bytes_after_map": (ev + b"\x00", "malformed"),
        "two_maps_back_to_back": (ev + ev, "malformed"),
        # not a map
        "not_map_array": (mp([1, 2, 3]), "not_map"),
        "not_map_str": (mp("hello"), "not_map"),
        "not_map_int": (mp(42), "not_map"),
        "not_map_nil": (b"\xc0", "not_map"),
        "not_map_bin": (mp(b"\x81\xa1v\x01"), "not_map"),
        "not_map_ext": (b"\xd4\x01\x00", "not_map"),
        "not_map_timestamp": (ts32(1), "not_map"),
        "garbage_http_request": (b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n", "not_map"),
        "garbage_json_text": (b'{"v":1,"kind":"event","trace_id":"abc"}', "not_map"),
        "garbage_bytes_stream": (bytes((i * 73 + 41) % 251 for i in range(300)), "not_map"),
        # keys
        "key_int": (m((u(1), s("x"))), "key_not_string"),
        "key_nil": (m((b"\xc0", s("x"))), "key_not_string"),
        "key_bin": (m((mp(b"kind"), s("event"))), "key_not_string"),
        "key_map": (m((mp({"a": 1}), u(1))), "key_not_string"),
        "key_not_string_after_valid": (m(("v", u(1)), (u(7), u(7))), "key_not_string"),
        # required keys
        "empty_map": (b"\x80", "missing_key"),
        "missing_v": (without("v"), "missing_key"),
        "missing_kind": (without("kind"), "missing_key"),
        "missing_trace_id": (without("trace_id"), "missing_key"),
        "start_missing_id": (without("id", "start"), "missing_key"),
        "event_missing_type": (without("type", "event"), "missing_key"),
        "end_missing_id": (without("id", "end"), "missing_key"),
        "nil_trace_id_is_absent": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", b"\xc0")),
                                   "missing_key"),
        # version
        "v_str": (m(("v", s("1")), ("kind", s("trace")), ("trace_id", s(TRACE_ID))), "wrong_type"),
        "v_float": (m(("v", mp(1.0)), ("kind", s("trace")), ("trace_id", s(TRACE_ID))),
                    "wrong_type"),
        "v_2": (m(("v", u(2)), ("kind", s("trace")), ("trace_id", s(TRACE_ID))), "bad_version"),
        "v_0": (m(("v", u(0)), ("kind", s("trace")), ("trace_id", s(TRACE_ID))), "bad_version"),
        "v_negative": (m(("v", mp(-1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID))),
                       "bad_version"),
        "v_uint64_max": (m(("v", b"\xcf" + b"\xff" * 8), ("kind", s("trace")),
                           ("trace_id", s(TRACE_ID))), "bad_version"),
        "duplicate_v_last_wins": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID)),
                                    ("v", u(2))), "bad_version"),
        # kind
        "kind_int": (m(("v", u(1)), ("kind", u(3)), ("trace_id", s(TRACE_ID))), "wrong_type"),
        "kind_bool": (m(("v", u(1)), ("kind", b"\xc3"), ("trace_id", s(TRACE_ID))), "wrong_type"),
        "kind_unknown": (m(("v", u(1)), ("kind", s("span")), ("trace_id", s(TRACE_ID))),
                         "bad_kind"),
        "kind_upper_case": (m(("v", u(1)), ("kind", s("EVENT")), ("trace_id", s(TRACE_ID))),
                            "bad_kind"),
        "kind_empty": (m(("v", u(1)), ("kind", s("")), ("trace_id", s(TRACE_ID))), "bad_kind"),
        "kind_nul_suffix": (m(("v", u(1)), ("kind", s(b"event\x00")), ("trace_id", s(TRACE_ID))),
                            "bad_kind"),
        "duplicate_kind_last_bad": (m(("v", u(1)), ("kind", s("event")), ("trace_id", s(TRACE_ID)),
                                      ("id", s("x")), ("type", s("TOOL")), ("kind", s("bogus"))),
                                    "bad_kind"),
        # ids
        "trace_id_int": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", u(12345))),
                         "wrong_type"),
        "trace_id_bin": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", mp(b"abc"))),
                         "wrong_type"),
        "trace_id_empty": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(""))), "bad_value"),
        "trace_id_129_bytes": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s("a" * 129))),
                               "bad_value"),
        "id_empty": (m(("v", u(1)), ("kind", s("end")), ("trace_id", s(TRACE_ID)), ("id", s(""))),
                     "bad_value"),
        "parent_id_too_long": (base("event", parent_id=s("p" * 300)), "bad_value"),
        "type_empty": (m(("v", u(1)), ("kind", s("start")), ("trace_id", s(TRACE_ID)),
                         ("id", s("x")), ("type", s(""))), "bad_value"),
        "type_array": (m(("v", u(1)), ("kind", s("start")), ("trace_id", s(TRACE_ID)),
                         ("id", s("x")), ("type", mp(["TOOL"]))), "wrong_type"),
        "target_id_empty": (m(("v", u(1)), ("kind", s("feedback")), ("trace_id", s(TRACE_ID)),
                              ("target_id", s(""))), "bad_value"),
        # plain strings and status
        "name_int": (base("event", name=u(5)), "wrong_type"),
        "error_map": (base("end", error=mp({"msg": "x"})), "wrong_type"),
        "conversation_id_int": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID)),
                                  ("conversation_id", u(9))), "wrong_type"),
        "status_unknown": (base("end", status=s("fail")), "bad_value"),
        "status_upper_case": (base("end", status=s("OK")), "bad_value"),
        "status_bool": (base("end", status=b"\xc2"), "wrong_type"),
        # times
        "ts_negative": (base("event", ts=mp(-1)), "bad_value"),
        "ts_int64_min": (base("event", ts=b"\xd3\x80" + b"\x00" * 7), "bad_value"),
        "ts_str": (base("event", ts=s("2024-01-01T00:00:00Z")), "wrong_type"),
        "ts_float": (base("event", ts=mp(1.7e18)), "wrong_type"),
        "ts_ext_other_type": (base("event", ts=b"\xd6\x05\x00\x00\x00\x01"), "wrong_type"),
        "ts_ext_size_3": (base("event", ts=b"\xc7\x03\xff\x00\x00\x01"), "wrong_type"),
        "ts_ext96_negative_seconds": (base("event", ts=ts96(-1, 0)), "bad_value"),
        "ts_ext96_seconds_overflow": (base("event", ts=ts96(1 << 62, 0)), "bad_value"),
        "ts_ext64_nanoseconds_too_big": (base("event", ts=ts64(1, 1_000_000_000)), "bad_value"),
        "ts_ext96_nanoseconds_too_big": (base("event", ts=ts96(1, 0xFFFFFFFF)), "bad_value"),
        "end_ts_negative": (base("event", end_ts=mp(-5)), "bad_value"),
        "latency_negative": (base("event", latency_ms=mp(-1)), "bad_value"),
        "latency_str": (base("event", latency_ms=s("12")), "wrong_type"),
        "latency_uint64_max": (base("event", latency_ms=b"\xcf" + b"\xff" * 8), "bad_value"),
        # maps and numbers
        "score_str": (m(("v", u(1)), ("kind", s("feedback")), ("trace_id", s(TRACE_ID)),
                        ("score", s("5"))), "wrong_type"),
        "attrs_array": (base("event", attrs=mp([1, 2])), "wrong_type"),
        "user_str": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID)),
                       ("user", s("u-1"))), "wrong_type"),
        "metadata_int": (m(("v", u(1)), ("kind", s("trace")), ("trace_id", s(TRACE_ID)),
                           ("metadata", u(1))), "wrong_type"),
        # size
        "too_large_input": (base("event", input=s("x" * big)), "too_large"),
        # borderline cases the protocol accepts
        "ok_nil_optional_keys": (base("event", parent_id=b"\xc0", name=b"\xc0", ts=b"\xc0",
                                      status=b"\xc0"), "ok"),
        "ok_unknown_keys_any_values": (base("event", x_ext=b"\xd5\x07\x00\x01",
                                            x_nested=mp({"a": [1, {"b": None}]}),
                                            x_bin=mp(b"\xff")), "ok"),
        "ok_duplicate_kind_last_wins": (m(("v", u(1)), ("kind", s("bogus")),
                                          ("trace_id", s(TRACE_ID)), ("kind", s("trace"))), "ok"),
        "ok_v_as_int64": (m(("v", b"\xd3" + b"\x00" * 7 + b"\x01"), ("kind", s("trace")),
                            ("trace_id", s(TRACE_ID))), "ok"),
        "ok_invalid_utf8_strings": (m(("v", u(1)), ("kind", s("event")),
                                      ("trace_id", s(b"\xff\xfe\xfd")), ("id", s(b"\xc3\x28")),
                                      ("type", s("TOOL")), ("name", s(b"\xed\xa0\x80")),
                                      ("output", s(b"\xf4\x90\x80\x80"))), "ok"),
        "ok_trace_id_128_bytes": (m(("v", u(1)), ("kind", s("trace")),
                                    ("trace_id", s("a" * 128))), "ok"),
        "ok_depth_bomb_input": (base("event", input=b"\x91" * 50000 + b"\x01"), "ok"),
        "ok_depth_bomb_attrs": (base("event", attrs=b"\x81\xa1k" * 20000 + b"\x01"), "ok"),
        "ok_map_keys_in_input": (base("event", input=b"\x82\x01\x02\x92\x03\x04\xc3"), "ok"),
        "ok_ts_zero_and_max": (base("event", ts=u(0), end_ts=b"\xcf" + b"\xff" * 8), "ok"),
        "ok_feedback_float_score": (m(("v", u(1)), ("kind", s("feedback")),
                                      ("trace_id", s(TRACE_ID)), ("score", b"\xca\x7f\xc0\x00\x00")),
                                    "ok"),
    }
    return cases


# --- splitter inputs: [cap byte][n][n chunk sizes][stream]

def splitter_inputs(valid):
    msgs = list(valid.values())
    stream = b"".join(msgs)
    big = base("event", input=s("y" * 3000))
    return {
        "all_kinds_one_byte_chunks": bytes([255, 1, 0]) + stream,
        "all_kinds_mixed_chunks": bytes([255, 5, 0, 6, 63, 127, 254]) + stream,
        "small_cap_skips_large": bytes([10, 2, 16, 200]) + msgs[0] + big + msgs[1],
        "too_large_then_malformed": bytes([4, 1, 31]) + big + b"\xc1" + msgs[2],
        "trailing_garbage": bytes([255, 0]) + msgs[3] + b"\xc1\x00\x00",
        "truncated_tail": bytes([255, 3, 1, 2, 3]) + msgs[4] + msgs[5][:7],
        "huge_declared_length": bytes([255, 1, 9]) + msgs[6] + b"\xdb\xff\xff\xff\xffabc",
        "scalars_and_arrays": bytes([0, 1, 1]) + mp([1, [2, [3]], {"a": b"b"}]) + mp(7) + mp("z"),
        "depth_bomb": bytes([200, 1, 100]) + b"\x91" * 3000 + b"\xc0",
    }


# --- configuration inputs

def config_inputs():
    full = open(os.path.join(HERE, "..", "..", "systemd", "sidetrace.toml"), "rb").read()
    return {
        "packaged_config.toml": full,
        "every_section.toml": b"""data_dir = "/tmp/st"
[listen]
unix_stream = "/tmp/st/a.sock"
unix_dgram = ""
udp = "127.0.0.1:9999"
socket_mode = "0600"
rcvbuf_bytes = "4MiB"
max_message_bytes = 65536
[intake]
queue_bytes = "8m"
[admin]
listen = "127.0.0.1:0"
[upstream]
endpoint = "https://user:pw@collector.example:4318/v1"
format = "otlp"
compression = "none"
headers = { "X-Team" = "llm", "Authorization" = "Bearer s3cret" }
tls_verify = false
retry_initial_ms = 100
retry_max_ms = 1000
[trace]
quiet_period_ms = 250
max_open_s = 30
[buffer]
max_bytes = "512MiB"
sync = "os"
when_full = "drop_newest"
[exporter]
print = true
[log]
level = "debug"
[redact]
detectors = ["api_keys", "emails"]
fields = ["input", "output"]
max_field_bytes = "1k"
[[redact.rules]]
name = "ssn"
pattern = "\\\\d{3}-\\\\d{2}-\\\\d{4}"
replacement = "[SSN]"
""",
        "escapes.toml": b'data_dir = "/tmp/a\\"b\\\\c\\u00e9\\t"\n[log]\nlevel = "warn"\n',
        "bad_types.toml": b"[trace]\nquiet_period_ms = \"soon\"\nmax_open_s = 1.5\n",
        "unknown_section.toml": b"[tracing]\nx = 1\n",
        "overrides.txt": b"trace.quiet_period_ms=250\nbuffer.max_bytes=2GiB\nlisten.socket_mode=0o640\n"
                         b"upstream.headers=X-A=1,X-B=2\nredact.detectors=emails, api_keys\n"
                         b"upstream.tls_verify=off\nlog.level=trace\nbuffer.max_bytes=18446744073709551615t\n",
        "sizes.txt": b"x=0\nx=1k\nx= 64 MiB \nx=3TB\nx=12q\nx=-1\nx=99999999999999999999\n",
    }


def write_dir(path, files):
    """Replaces the generated files of `path`; keeps the regress_* inputs (found
    by the fuzzers and committed by hand)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if not name.startswith("regress_"):
            os.remove(os.path.join(path, name))
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)


def main():
    valid = valid_messages()
    write_dir(os.path.join(HERE, "corpus", "decoder"), {k + ".msgpack": v for k, v in valid.items()})
    write_dir(os.path.join(HERE, "corpus", "splitter"), splitter_inputs(valid))
    write_dir(os.path.join(HERE, "corpus", "config"), config_inputs())
    cases = malformed_messages()
    files = {name + ".msgpack": data for name, (data, _) in cases.items()}
    manifest = "# file\texpected outcome (a Reject name from ipc/event.h, or ok)\n"
    manifest += "".join(f"{name}.msgpack\t{want}\n" for name, (_, want) in sorted(cases.items()))
    files["EXPECTED.tsv"] = manifest.encode()
    write_dir(os.path.join(HERE, "malformed"), files)
    print(f"{len(valid)} valid messages, {len(cases)} malformed cases")


if __name__ == "__main__":
    main()
