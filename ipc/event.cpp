#include "ipc/event.h"

#include <array>
#include <cstring>
#include <limits>

#include "ipc/detail/msgpack_reader.h"

namespace sidetrace::ipc {

std::string_view reject_name(Reject r) {
  switch (r) {
    case Reject::kNotMap:
      return "not_map";
    case Reject::kKeyNotString:
      return "key_not_string";
    case Reject::kMissingKey:
      return "missing_key";
    case Reject::kWrongType:
      return "wrong_type";
    case Reject::kBadVersion:
      return "bad_version";
    case Reject::kBadKind:
      return "bad_kind";
    case Reject::kBadValue:
      return "bad_value";
    case Reject::kTooLarge:
      return "too_large";
    case Reject::kMalformed:
      return "malformed";
    case Reject::kNoMemory:
      return "no_memory";
    case Reject::kCount_:
      break;
  }
  return "unknown";
}

namespace {

using detail::MpItem;
using detail::MpType;

enum Key : uint8_t {
  kV,
  kKind,
  kTraceId,
  kId,
  kParentId,
  kType,
  kName,
  kInput,
  kOutput,
  kTs,
  kEndTs,
  kLatencyMs,
  kStatus,
  kError,
  kAttrs,
  kConversationId,
  kSessionId,
  kInteractionId,
  kChannelId,
  kUser,
  kMetadata,
  kTag,
  kText,
  kScore,
  kTargetId,
  kKeyCount,
  kUnknownKey,
};

constexpr std::array<std::string_view, kKeyCount> kKeyNames = {
    "v",          "kind",
    "trace_id",   "id",
    "parent_id",  "type",
    "name",       "input",
    "output",     "ts",
    "end_ts",     "latency_ms",
    "status",     "error",
    "attrs",      "conversation_id",
    "session_id", "interaction_id",
    "channel_id", "user",
    "metadata",   "tag",
    "text",       "score",
    "target_id",
};

template <size_t N>
inline bool eq(const char* p, const char (&lit)[N]) {
  return std::memcmp(p, lit, N - 1) == 0;
}

Key lookup_key(const char* p, size_t n) {
  switch (n) {
    case 1:
      return p[0] == 'v' ? kV : kUnknownKey;
    case 2:
      if (eq(p, "id")) return kId;
      if (eq(p, "ts")) return kTs;
      return kUnknownKey;
    case 3:
      return eq(p, "tag") ? kTag : kUnknownKey;
    case 4:
      if (eq(p, "kind")) return kKind;
      if (eq(p, "type")) return kType;
      if (eq(p, "name")) return kName;
      if (eq(p, "text")) return kText;
      if (eq(p, "user")) return kUser;
      return kUnknownKey;
    case 5:
      if (eq(p, "input")) return kInput;
      if (eq(p, "error")) return kError;
      if (eq(p, "attrs")) return kAttrs;
      if (eq(p, "score")) return kScore;
      return kUnknownKey;
    case 6:
      if (eq(p, "output")) return kOutput;
      if (eq(p, "end_ts")) return kEndTs;
      if (eq(p, "status")) return kStatus;
      return kUnknownKey;
    case 8:
      if (eq(p, "trace_id")) return kTraceId;
      if (eq(p, "metadata")) return kMetadata;
      return kUnknownKey;
    case 9:
      if (eq(p, "parent_id")) return kParentId;
      if (eq(p, "target_id")) return kTargetId;
      return kUnknownKey;
    case 10:
      if (eq(p, "latency_ms")) return kLatencyMs;
      if (eq(p, "session_id")) return kSessionId;
      if (eq(p, "channel_id")) return kChannelId;
      return kUnknownKey;
    case 14:
      return eq(p, "interaction_id") ? kInteractionId : kUnknownKey;
    case 15:
      return eq(p, "conversation_id") ? kConversationId : kUnknownKey;
    default:
      return kUnknownKey;
  }
}

// Where a known key's value sits in the message.
struct Field {
  const uint8_t* begin = nullptr;  // null: absent (or nil)
  uint32_t size = 0;               // whole encoded value
  uint8_t header = 0;              // header bytes before a str/bin/ext payload
  MpItem item;
  bool present() const { return begin != nullptr; }
  std::string_view raw() const { return {reinterpret_cast<const char*>(begin), size}; }
  std::string_view payload() const {
    return {reinterpret_cast<const char*>(begin) + header, item.len};
  }
};

// The validated view of one message: spans into the input bytes.
struct Parsed {
  std::array<Field, kKeyCount> f;
  Kind kind = Kind::kEvent;
  std::string_view trace_id, id;
  uint64_t ts = 0, end_ts = 0;
};

class Refusal {
 public:
  Refusal(Reject* reason, std::string* detail) : reason_(reason), detail_(detail) {}
  bool operator()(Reject r, std::string_view key, std::string_view what) const {
    if (reason_) *reason_ = r;
    if (detail_) {
      detail_->assign(key);
      if (!key.empty()) detail_->append(": ");
      detail_->append(what);
    }
    return false;
  }

 private:
  Reject* reason_;
  std::string* detail_;
};

std::string_view type_name(MpType t) {
  switch (t) {
    case MpType::kNil:
      return "nil";
    case MpType::kBool:
      return "bool";
    case MpType::kUint:
    case MpType::kInt:
      return "int";
    case MpType::kFloat:
      return "float";
    case MpType::kStr:
      return "str";
    case MpType::kBin:
      return "bin";
    case MpType::kArray:
      return "array";
    case MpType::kMap:
      return "map";
    case MpType::kExt:
      return "ext";
  }
  return "?";
}

// Walks the top-level map, recording known keys. Checks well-formedness of
// every value, known or not.
bool walk(std::string_view bytes, const DecodeLimits& limits, Parsed* out, const Refusal& refuse) {
  if (bytes.size() > limits.max_message_bytes) {
    return refuse(Reject::kTooLarge, "", "message exceeds the size cap");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  MpItem top;
  int h = detail::read_header(p, n, &top);
  if (h <= 0) return refuse(Reject::kMalformed, "", "not valid msgpack");
  if (top.type != MpType::kMap) {
    return refuse(Reject::kNotMap, "",
                  std::string("top-level value is ").append(type_name(top.type)));
  }
  size_t pos = static_cast<size_t>(h);
  if (top.len > (n - pos) / 2) return refuse(Reject::kMalformed, "", "map is cut short");
  for (uint32_t i = 0; i < top.len; ++i) {
    MpItem k;
    h = detail::read_header(p + pos, n - pos, &k);
    if (h <= 0) return refuse(Reject::kMalformed, "", "map is cut short or invalid");
    if (k.type != MpType::kStr) {
      return refuse(Reject::kKeyNotString, "",
                    std::string("a map key is ").append(type_name(k.type)));
    }
    pos += static_cast<size_t>(h);
    if (k.len > n - pos) return refuse(Reject::kMalformed, "", "key string is cut short");
    const Key key = lookup_key(reinterpret_cast<const char*>(p + pos), k.len);
    pos += k.len;
    // The value.
    const uint8_t* vbegin = p + pos;
    MpItem v;
    h = detail::read_header(vbegin, n - pos, &v);
    if (h <= 0) return refuse(Reject::kMalformed, "", "value is cut short or invalid");
    size_t vsize = static_cast<size_t>(h);
    const uint64_t pay = detail::payload_bytes(v);
    if (pay > n - pos - vsize) return refuse(Reject::kMalformed, "", "value is cut short");
    vsize += static_cast<size_t>(pay);
    const uint64_t children = detail::child_values(v);
    if (children > 0) {
      int64_t s = detail::skip_values(vbegin + vsize, n - pos - vsize, children);
      if (s < 0) return refuse(Reject::kMalformed, "", "nested value is cut short or invalid");
      vsize += static_cast<size_t>(s);
    }
    if (key != kUnknownKey) {
      Field& f = out->f[key];
      if (v.type == MpType::kNil) {
        f = Field{};
      } else {
        f.begin = vbegin;
        f.size = static_cast<uint32_t>(vsize);
        f.header = static_cast<uint8_t>(h);
        f.item = v;
      }
    }
    pos += vsize;
  }
  if (pos != n) return refuse(Reject::kMalformed, "", "bytes after the map");
  return true;
}

bool get_str(const Field& f, Key key, std::string_view* out, const Refusal& refuse) {
  if (f.item.type != MpType::kStr) {
    return refuse(Reject::kWrongType, kKeyNames[key],
                  std::string("expected str, got ").append(type_name(f.item.type)));
  }
  *out = f.payload();
  return true;
}

bool get_id(const Field& f, Key key, const DecodeLimits& limits, std::string_view* out,
            const Refusal& refuse) {
  if (!get_str(f, key, out, refuse)) return false;
  if (out->empty()) return refuse(Reject::kBadValue, kKeyNames[key], "empty");
  if (out->size() > limits.max_id_bytes) {
    return refuse(Reject::kBadValue, kKeyNames[key], "longer than the id limit");
  }
  return true;
}

bool get_time(const Field& f, Key key, uint64_t* ns, const Refusal& refuse) {
  const MpItem& it = f.item;
  if (it.type == MpType::kUint) {
    *ns = it.u;
    return true;
  }
  if (it.type == MpType::kInt) return refuse(Reject::kBadValue, kKeyNames[key], "negative");
  if (it.type != MpType::kExt || it.ext_type != -1) {
    return refuse(Reject::kWrongType, kKeyNames[key],
                  std::string("expected int ns or timestamp, got ").append(type_name(it.type)));
  }
  const uint8_t* q = f.begin + f.header;
  uint64_t sec = 0;
  uint32_t nsec = 0;
  if (it.len == 4) {
    sec = detail::load_be32(q);
  } else if (it.len == 8) {
    const uint64_t v = detail::load_be64(q);
    nsec = static_cast<uint32_t>(v >> 34);
    sec = v & ((uint64_t{1} << 34) - 1);
  } else if (it.len == 12) {
    nsec = detail::load_be32(q);
    const auto s = static_cast<int64_t>(detail::load_be64(q + 4));
    if (s < 0) return refuse(Reject::kBadValue, kKeyNames[key], "before the Unix epoch");
    sec = static_cast<uint64_t>(s);
  } else {
    return refuse(Reject::kWrongType, kKeyNames[key], "timestamp ext of unknown size");
  }
  if (nsec > 999'999'999u) return refuse(Reject::kBadValue, kKeyNames[key], "nanoseconds >= 1e9");
  constexpr uint64_t kMaxSec = std::numeric_limits<uint64_t>::max() / 1'000'000'000u - 1;
  if (sec > kMaxSec) return refuse(Reject::kBadValue, kKeyNames[key], "out of range");
  *ns = sec * 1'000'000'000u + nsec;
  return true;
}

bool check_map(const Field& f, Key key, const Refusal& refuse) {
  if (f.present() && f.item.type != MpType::kMap) {
    return refuse(Reject::kWrongType, kKeyNames[key],
                  std::string("expected map, got ").append(type_name(f.item.type)));
  }
  return true;
}

bool check_str(const Field& f, Key key, const Refusal& refuse) {
  std::string_view unused;
  return !f.present() || get_str(f, key, &unused, refuse);
}

bool require(const Field& f, Key key, const Refusal& refuse) {
  if (!f.present()) return refuse(Reject::kMissingKey, kKeyNames[key], "required");
  return true;
}

// Full validation. On success `out` holds the spans of every present key.
bool validate(std::string_view bytes, const DecodeLimits& limits, Parsed* out,
              const Refusal& refuse) {
  if (!walk(bytes, limits, out, refuse)) return false;
  auto& f = out->f;

  // v
  if (!require(f[kV], kV, refuse)) return false;
  if (f[kV].item.type != MpType::kUint && f[kV].item.type != MpType::kInt) {
    return refuse(Reject::kWrongType, "v",
                  std::string("expected int, got ").append(type_name(f[kV].item.type)));
  }
  if (f[kV].item.type != MpType::kUint || f[kV].item.u != 1) {
    return refuse(Reject::kBadVersion, "v", "unsupported protocol version");
  }
  // kind
  std::string_view kind;
  if (!require(f[kKind], kKind, refuse) || !get_str(f[kKind], kKind, &kind, refuse)) return false;
  if (kind == "event") {
    out->kind = Kind::kEvent;
  } else if (kind == "start") {
    out->kind = Kind::kStart;
  } else if (kind == "end") {
    out->kind = Kind::kEnd;
  } else if (kind == "trace") {
    out->kind = Kind::kTrace;
  } else if (kind == "feedback") {
    out->kind = Kind::kFeedback;
  } else {
    std::string what = "unknown kind '";
    what.append(kind.substr(0, 32)).append("'");
    return refuse(Reject::kBadKind, "kind", what);
  }
  // ids
  if (!require(f[kTraceId], kTraceId, refuse) ||
      !get_id(f[kTraceId], kTraceId, limits, &out->trace_id, refuse)) {
    return false;
  }
  std::string_view unused;
  if (f[kId].present() && !get_id(f[kId], kId, limits, &out->id, refuse)) return false;
  if (f[kParentId].present() && !get_id(f[kParentId], kParentId, limits, &unused, refuse)) {
    return false;
  }
  if (f[kTargetId].present() && !get_id(f[kTargetId], kTargetId, limits, &unused, refuse)) {
    return false;
  }
  if (f[kType].present() && !get_id(f[kType], kType, limits, &unused, refuse)) return false;
  // plain strings
  for (Key k :
       {kName, kError, kConversationId, kSessionId, kInteractionId, kChannelId, kTag, kText}) {
    if (!check_str(f[k], k, refuse)) return false;
  }
  // status
  if (f[kStatus].present()) {
    std::string_view s;
    if (!get_str(f[kStatus], kStatus, &s, refuse)) return false;
    if (s != "ok" && s != "error") return refuse(Reject::kBadValue, "status", "not ok or error");
  }
  // times
  if (f[kTs].present() && !get_time(f[kTs], kTs, &out->ts, refuse)) return false;
  if (f[kEndTs].present() && !get_time(f[kEndTs], kEndTs, &out->end_ts, refuse)) return false;
  if (f[kLatencyMs].present()) {
    const MpType t = f[kLatencyMs].item.type;
    if (t == MpType::kInt) return refuse(Reject::kBadValue, "latency_ms", "negative");
    if (t != MpType::kUint) {
      return refuse(Reject::kWrongType, "latency_ms",
                    std::string("expected int, got ").append(type_name(t)));
    }
    if (f[kLatencyMs].item.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return refuse(Reject::kBadValue, "latency_ms", "out of range");
    }
  }
  // score
  if (f[kScore].present()) {
    const MpType t = f[kScore].item.type;
    if (t != MpType::kUint && t != MpType::kInt && t != MpType::kFloat) {
      return refuse(Reject::kWrongType, "score",
                    std::string("expected number, got ").append(type_name(t)));
    }
  }
  // maps
  for (Key k : {kAttrs, kUser, kMetadata}) {
    if (!check_map(f[k], k, refuse)) return false;
  }
  // required keys per kind
  switch (out->kind) {
    case Kind::kStart:
    case Kind::kEvent:
      if (!require(f[kId], kId, refuse) || !require(f[kType], kType, refuse)) return false;
      break;
    case Kind::kEnd:
      if (!require(f[kId], kId, refuse)) return false;
      break;
    case Kind::kTrace:
    case Kind::kFeedback:
      break;
  }
  return true;
}

void set_opt_str(const Field& f, std::optional<std::string>* out) {
  if (f.present()) {
    *out = std::string(f.payload());
  } else {
    out->reset();
  }
}

}  // namespace

bool decode_event(std::string_view bytes, const DecodeLimits& limits, Event* out, Reject* reason,
                  std::string* detail) {
  Parsed p;
  const Refusal refuse(reason, detail);
  if (!validate(bytes, limits, &p, refuse)) return false;
  const auto& f = p.f;
  auto str = [&](Key k) { return f[k].present() ? f[k].payload() : std::string_view(); };
  auto raw = [&](Key k) { return f[k].present() ? f[k].raw() : std::string_view(); };
  out->kind = p.kind;
  out->trace_id.assign(p.trace_id);
  out->id.assign(p.id);
  out->parent_id.assign(str(kParentId));
  out->type.assign(str(kType));
  out->name.assign(str(kName));
  out->input.assign(raw(kInput));
  out->output.assign(raw(kOutput));
  out->ts_ns = f[kTs].present() ? std::optional<uint64_t>(p.ts) : std::nullopt;
  out->end_ts_ns = f[kEndTs].present() ? std::optional<uint64_t>(p.end_ts) : std::nullopt;
  out->latency_ms = f[kLatencyMs].present()
                        ? std::optional<int64_t>(static_cast<int64_t>(f[kLatencyMs].item.u))
                        : std::nullopt;
  out->error =
      f[kStatus].present() ? std::optional<bool>(f[kStatus].payload() == "error") : std::nullopt;
  set_opt_str(f[kError], &out->error_text);
  out->attrs.assign(raw(kAttrs));
  set_opt_str(f[kConversationId], &out->conversation_id);
  set_opt_str(f[kSessionId], &out->session_id);
  set_opt_str(f[kInteractionId], &out->interaction_id);
  set_opt_str(f[kChannelId], &out->channel_id);
  out->user.assign(raw(kUser));
  out->metadata.assign(raw(kMetadata));
  set_opt_str(f[kTag], &out->tag);
  set_opt_str(f[kText], &out->text);
  set_opt_str(f[kTargetId], &out->target_id);
  if (f[kScore].present()) {
    const MpItem& it = f[kScore].item;
    out->score = it.type == MpType::kFloat  ? it.f
                 : it.type == MpType::kUint ? static_cast<double>(it.u)
                                            : static_cast<double>(it.i);
  } else {
    out->score.reset();
  }
  return true;
}

bool decode_message(std::string_view bytes, const DecodeLimits& limits, Message* out,
                    Reject* reason, std::string* detail) {
  Parsed p;
  if (!validate(bytes, limits, &p, Refusal(reason, detail))) return false;
  out->kind = p.kind;
  out->trace_id.assign(p.trace_id);
  out->id.assign(p.id);
  return true;
}

}  // namespace sidetrace::ipc
