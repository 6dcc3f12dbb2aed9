// A fully decoded protocol-v1 message (see docs/protocol.md), and the
// validator that produces it.
//
// Values the protocol allows to be anything (input, output, attrs, user,
// metadata) are kept as their msgpack encoding, untouched; an empty string
// means the key was absent.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ipc/message.h"

namespace sidetrace::ipc {

// Why a message was refused. Every value is counted per transport.
enum class Reject : uint8_t {
  kNotMap = 0,    // the msgpack value is not a map
  kKeyNotString,  // a map key is not a string
  kMissingKey,    // a required key is absent
  kWrongType,     // a known key holds a value of the wrong msgpack type
  kBadVersion,    // `v` is not a supported protocol version
  kBadKind,       // `kind` is not one of the protocol's kinds
  kBadValue,      // right type, value out of range (empty id, status not ok/error, ...)
  kTooLarge,      // the message exceeds the size cap
  kMalformed,     // the bytes are not valid msgpack
  kNoMemory,      // a stream message did not fit the intake's memory for partial messages
  kCount_,        // number of reasons; not a reason
};

std::string_view reject_name(Reject r);

struct Event {
  Kind kind = Kind::kEvent;
  std::string trace_id;
  std::string id;         // empty when absent
  std::string parent_id;  // empty when absent
  std::string type;       // MESSAGE, TOOL, ... or a custom name; empty when absent
  std::string name;
  std::string input;   // msgpack bytes; empty when absent
  std::string output;  // msgpack bytes; empty when absent
  std::optional<uint64_t> ts_ns;
  std::optional<uint64_t> end_ts_ns;
  std::optional<int64_t> latency_ms;
  std::optional<bool> error;  // status: true = "error", false = "ok"; absent = not given
  std::optional<std::string> error_text;
  std::string attrs;  // msgpack map bytes; empty when absent
  // kind trace
  std::optional<std::string> conversation_id, session_id, interaction_id, channel_id;
  std::string user;      // msgpack map bytes; empty when absent
  std::string metadata;  // msgpack map bytes; empty when absent
  // kind feedback
  std::optional<std::string> tag, text, target_id;
  std::optional<double> score;
};

struct DecodeLimits {
  size_t max_message_bytes = 1 << 20;  // a message larger than this is kTooLarge
  size_t max_id_bytes = 128;           // trace_id, id, parent_id, target_id
};

// Validates `bytes`, which must hold exactly one msgpack map, and fills `out`.
// On refusal returns false with the reason and a short human detail (the key
// at fault). Never throws. Thread-safe (no shared state).
//
// Validation rules beyond the protocol table:
//  - a key whose value is nil is treated as absent (SDKs emit nil for "unset");
//  - signed and unsigned msgpack integers are interchangeable; `ts`, `end_ts`
//    and `latency_ms` must not be negative (kBadValue);
//  - ids (trace_id, id, parent_id, target_id) and `type` must be non-empty
//    and at most limits.max_id_bytes (kBadValue);
//  - keys of other kinds (e.g. `end_ts` on a `start`) are validated and kept;
//  - a repeated key: the last occurrence wins;
//  - bytes after the map, or a map cut short, are kMalformed.
// `detail` and `reason` may be null.
bool decode_event(std::string_view bytes, const DecodeLimits& limits, Event* out, Reject* reason,
                  std::string* detail);

// The routing decode used by intake: applies exactly the validation of
// decode_event() but copies out only kind, trace_id and id into `out`
// (raw and recv_ns are left untouched). Allocation-free on success apart from
// the two id strings. Never throws. Thread-safe.
bool decode_message(std::string_view bytes, const DecodeLimits& limits, Message* out,
                    Reject* reason, std::string* detail);

}  // namespace sidetrace::ipc
