// Key and value encodings of the store's column families. Integers in keys are
// big-endian so that RocksDB's bytewise order is numeric order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "buffer/store.h"
#include "common/big_endian.h"

namespace sidetrace::buffer::detail {

using sidetrace::get_be32;
using sidetrace::get_be64;
using sidetrace::put_be32;
using sidetrace::put_be64;

inline std::string be64(uint64_t v) {
  std::string s;
  put_be64(&s, v);
  return s;
}

// ---- events, in arrival order: [u8 0][be64 pos] -> [be64 recv_ns][u8 len][trace_id][raw]
// `pos` is the message's place in the log. A trace's messages are found
// through its runs (below). The key's first byte, 0, sets it apart from the
// keys of stores written before the log (a trace id is never empty).

constexpr char kLogTag = '\0';
constexpr size_t kLogKeyBytes = 9;

inline std::string log_key(uint64_t pos) {
  std::string k(1, kLogTag);
  put_be64(&k, pos);
  return k;
}

inline bool is_log_key(std::string_view key) {
  return key.size() == kLogKeyBytes && key[0] == kLogTag;
}

// The value's head: everything before the raw message.
inline std::string log_value_head(uint64_t recv_ns, std::string_view trace_id) {
  std::string v;
  v.reserve(9 + trace_id.size());
  put_be64(&v, recv_ns);
  v.push_back(static_cast<char>(trace_id.size()));
  v.append(trace_id);
  return v;
}

struct LogValue {
  uint64_t recv_ns = 0;
  std::string_view trace_id;
  std::string_view raw;
};

inline bool parse_log_value(std::string_view v, LogValue* out) {
  if (v.size() < 9) return false;
  size_t len = static_cast<uint8_t>(v[8]);
  if (v.size() < 9 + len) return false;
  out->recv_ns = get_be64(v);
  out->trace_id = v.substr(9, len);
  out->raw = v.substr(9 + len);
  return true;
}

// ---- events of stores written before the log: [u8 len][trace_id][be64 seq]
// -> [be64 recv_ns][raw]. Read and dropped as before; never written.

constexpr size_t kMaxTraceIdBytes = 255;

inline std::string event_prefix(std::string_view trace_id) {
  std::string k;
  k.reserve(1 + trace_id.size() + 8);
  k.push_back(static_cast<char>(trace_id.size()));
  k.append(trace_id);
  return k;
}

inline std::string event_key(std::string_view trace_id, uint64_t seq) {
  std::string k = event_prefix(trace_id);
  put_be64(&k, seq);
  return k;
}

inline uint64_t event_key_seq(std::string_view key) {
  return get_be64(key.substr(key.size() - 8));
}

// ---- pending: [be64 seq] -> [be64 recv_ns | flags][be32 n][be64 stored_ns][trace_id]
// One record per trace and group commit, keyed by the seq of the trace's first
// message in the commit; `n` is how many of the commit's messages it stands
// for, `stored_ns` when the commit was written (wall clock). Older records
// lack the time ([be64 recv_ns | kPendingCounted][be32 n][trace_id]) or the
// count as well: [be64 recv_ns][trace_id], one message.

constexpr uint64_t kPendingCounted = 1ull << 63;
constexpr uint64_t kPendingStored = 1ull << 62;

inline std::string pending_value(uint64_t recv_ns, uint32_t messages, uint64_t stored_ns,
                                 std::string_view trace_id) {
  std::string v;
  v.reserve(20 + trace_id.size());
  put_be64(&v, (recv_ns & ~(kPendingCounted | kPendingStored)) | kPendingCounted | kPendingStored);
  for (int shift = 24; shift >= 0; shift -= 8)
    v.push_back(static_cast<char>((messages >> shift) & 0xff));
  put_be64(&v, stored_ns);
  v.append(trace_id);
  return v;
}

// Decodes every form (`*stored_ns` is 0 for those without the time); false
// when `v` is malformed.
inline bool decode_pending(std::string_view v, uint64_t* recv_ns, uint32_t* messages,
                           uint64_t* stored_ns, std::string_view* trace_id) {
  if (v.size() < 9) return false;
  uint64_t head = get_be64(v);
  *stored_ns = 0;
  if ((head & kPendingCounted) == 0) {
    *recv_ns = head;
    *messages = 1;
    *trace_id = v.substr(8);
    return true;
  }
  const bool stored = (head & kPendingStored) != 0;
  const size_t id_at = stored ? 20 : 12;
  if (v.size() <= id_at) return false;
  *recv_ns = head & ~(kPendingCounted | kPendingStored);
  uint32_t n = 0;
  for (size_t i = 8; i < 12; ++i)
    n = (n << 8) | static_cast<unsigned char>(v[i]);
  *messages = n;
  if (stored) *stored_ns = get_be64(v.substr(12));
  *trace_id = v.substr(id_at);
  return n > 0;
}

// What a record counts towards the quota (the same for every form).
inline size_t pending_bytes(std::string_view trace_id) {
  return 8 + 8 + trace_id.size();
}

// ---- traces ------------------------------------------------------------------
// 'S' trace_id                  -> TraceState
// 'R' be64 last_emit_ns trace_id -> ""   emitted, events retained
// 'X' be64 deleted_ns trace_id   -> ""   events deleted, state kept a while
// 'C' name                      -> counters

// 'L' u8 len trace_id be64 seq -> pos, n, bytes (run_value())
//                                       a run: messages seq .. seq+n-1 of the
//                                       trace are in the log at pos .. pos+n-1,
//                                       `bytes` their keys and values
// One run per trace and group commit (the trace's messages of a commit take
// consecutive seqs).

constexpr char kStatePrefix = 'S';
constexpr char kRunPrefix = 'L';

// A run's key is 'L' and what an events key stored before the log was.
inline std::string run_prefix(std::string_view trace_id) {
  return kRunPrefix + event_prefix(trace_id);
}

inline std::string run_key(std::string_view trace_id, uint64_t seq) {
  return kRunPrefix + event_key(trace_id, seq);
}

struct Run {
  uint64_t seq = 0, pos = 0;
  uint32_t n = 0, bytes = 0;
};

// ---- compact integers in values: LEB128 varints, and signed differences
// zigzagged into them (wrapping, so that every pair of values round-trips).

inline void put_varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Reads a varint at `*at` of `s`, moving `*at` past it; false when it is cut
// short or longer than ten bytes.
inline bool get_varint(std::string_view s, size_t* at, uint64_t* v) {
  *v = 0;
  for (unsigned shift = 0; shift < 64; shift += 7) {
    if (*at >= s.size()) return false;
    const auto b = static_cast<uint8_t>(s[(*at)++]);
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

inline void put_delta(std::string* out, uint64_t base, uint64_t v) {
  const auto d = static_cast<int64_t>(v - base);
  put_varint(out, (static_cast<uint64_t>(d) << 1) ^ static_cast<uint64_t>(d >> 63));
}

inline bool get_delta(std::string_view s, size_t* at, uint64_t base, uint64_t* v) {
  uint64_t z = 0;
  if (!get_varint(s, at, &z)) return false;
  *v = base + ((z >> 1) ^ (~(z & 1) + 1));
  return true;
}

// Values in the compact forms begin with this byte. The fixed forms written
// before them begin with the top byte of a big-endian count (a run's log
// position, a state's revision), which never reaches it.
constexpr char kCompactTag = '\xff';

// A run's value: [tag][zigzag pos - seq][varint n][varint bytes], or, as
// written before, [be64 pos][be32 n][be32 bytes]. Either counts
// kRunValueBytes towards the quota.
constexpr size_t kRunValueBytes = 16;

inline std::string run_value(const Run& r) {
  std::string v;
  v.reserve(8);
  v.push_back(kCompactTag);
  put_delta(&v, r.seq, r.pos);
  put_varint(&v, r.n);
  put_varint(&v, r.bytes);
  return v;
}

// `key` is a run key of a trace whose prefix has `prefix_bytes`.
inline bool parse_run(std::string_view key, size_t prefix_bytes, std::string_view value, Run* r) {
  if (key.size() != prefix_bytes + 8 || value.empty()) return false;
  r->seq = get_be64(key.substr(prefix_bytes));
  if (value[0] != kCompactTag) {
    if (value.size() != kRunValueBytes) return false;
    r->pos = get_be64(value);
    r->n = get_be32(value.substr(8));
    r->bytes = get_be32(value.substr(12));
    return r->n > 0;
  }
  size_t at = 1;
  uint64_t n = 0, bytes = 0;
  if (!get_delta(value, &at, r->seq, &r->pos) || !get_varint(value, &at, &n) ||
      !get_varint(value, &at, &bytes) || at != value.size() || n > UINT32_MAX ||
      bytes > UINT32_MAX) {
    return false;
  }
  r->n = static_cast<uint32_t>(n);
  r->bytes = static_cast<uint32_t>(bytes);
  return r->n > 0;
}

constexpr char kRetainedPrefix = 'R';
constexpr char kDeletedPrefix = 'X';

inline std::string state_key(std::string_view trace_id) {
  std::string k(1, kStatePrefix);
  k.append(trace_id);
  return k;
}

inline std::string index_key(char prefix, uint64_t ns, std::string_view trace_id) {
  std::string k(1, prefix);
  put_be64(&k, ns);
  k.append(trace_id);
  return k;
}

// A state's value, compact: [tag][u8 flags][varint revision][be64 first_emit_ns]
// [zigzag last_emit_ns - first_emit_ns][varint max_seq]
// [zigzag deleted_ns - first_emit_ns, when flags has kStateDeletedAt]
// [varint generation][varint parts][varint undelivered][varint pin_first]
// [zigzag pin_last - pin_first]. About 25 bytes for a trace emitted once:
// states are keyed by trace id, so every compaction of the traces family
// rewrites them.
constexpr uint8_t kStateEventsDeleted = 1;
constexpr uint8_t kStateDeletedAt = 2;

// The fixed forms written before it: [be32 revision][be64 first_emit_ns]
// [be64 last_emit_ns][be64 max_seq][be64 deleted_ns][be64 generation]
// [be64 parts][u8 events_deleted][be32 undelivered][be64 pin_first]
// [be64 pin_last]; those written before TraceState::pin_first and pin_last
// existed lack their 16 bytes, and those before TraceState::undelivered its
// 4 too.
constexpr size_t kStateBytes = 4 + 8 * 6 + 1 + 4 + 16;
constexpr size_t kStateBytesV2 = kStateBytes - 16;
constexpr size_t kStateBytesV1 = kStateBytesV2 - 4;
// What a state record counts towards the quota, whichever its form.
constexpr size_t kStateQuotaBytes = kStateBytesV1;

inline std::string encode_state(const TraceState& s) {
  std::string v;
  v.reserve(32);
  v.push_back(kCompactTag);
  v.push_back(static_cast<char>((s.events_deleted ? kStateEventsDeleted : 0) |
                                (s.deleted_ns != 0 ? kStateDeletedAt : 0)));
  put_varint(&v, s.revision);
  put_be64(&v, s.first_emit_ns);
  put_delta(&v, s.first_emit_ns, s.last_emit_ns);
  put_varint(&v, s.max_seq);
  if (s.deleted_ns != 0) put_delta(&v, s.first_emit_ns, s.deleted_ns);
  put_varint(&v, s.generation);
  put_varint(&v, s.parts);
  put_varint(&v, s.undelivered);
  put_varint(&v, s.pin_first);
  put_delta(&v, s.pin_first, s.pin_last);
  return v;
}

// The fixed form (tests write it to stand for a store of an earlier version).
inline std::string encode_state_fixed(const TraceState& s) {
  std::string v;
  v.reserve(kStateBytes);
  put_be32(&v, s.revision);
  put_be64(&v, s.first_emit_ns);
  put_be64(&v, s.last_emit_ns);
  put_be64(&v, s.max_seq);
  put_be64(&v, s.deleted_ns);
  put_be64(&v, s.generation);
  put_be64(&v, s.parts);
  v.push_back(s.events_deleted ? 1 : 0);
  put_be32(&v, s.undelivered);
  put_be64(&v, s.pin_first);
  put_be64(&v, s.pin_last);
  return v;
}

inline bool decode_compact_state(std::string_view v, TraceState* s) {
  if (v.size() < 2) return false;
  const auto flags = static_cast<uint8_t>(v[1]);
  if ((flags & ~(kStateEventsDeleted | kStateDeletedAt)) != 0) return false;
  size_t at = 2;
  uint64_t revision = 0, parts = 0, undelivered = 0;
  if (!get_varint(v, &at, &revision) || revision > UINT32_MAX || v.size() < at + 8) return false;
  s->revision = static_cast<uint32_t>(revision);
  s->first_emit_ns = get_be64(v.substr(at));
  at += 8;
  if (!get_delta(v, &at, s->first_emit_ns, &s->last_emit_ns) || !get_varint(v, &at, &s->max_seq)) {
    return false;
  }
  s->deleted_ns = 0;
  if ((flags & kStateDeletedAt) != 0 && !get_delta(v, &at, s->first_emit_ns, &s->deleted_ns)) {
    return false;
  }
  if (!get_varint(v, &at, &s->generation) || !get_varint(v, &at, &parts) || parts > UINT32_MAX ||
      !get_varint(v, &at, &undelivered) || undelivered > UINT32_MAX ||
      !get_varint(v, &at, &s->pin_first) || !get_delta(v, &at, s->pin_first, &s->pin_last)) {
    return false;
  }
  s->parts = static_cast<uint32_t>(parts);
  s->undelivered = static_cast<uint32_t>(undelivered);
  s->events_deleted = (flags & kStateEventsDeleted) != 0;
  return at == v.size();
}

// Decodes every form; false when `v` is malformed.
inline bool decode_state(std::string_view v, TraceState* s) {
  if (!v.empty() && v[0] == kCompactTag) return decode_compact_state(v, s);
  if (v.size() != kStateBytes && v.size() != kStateBytesV2 && v.size() != kStateBytesV1) {
    return false;
  }
  s->revision = get_be32(v);
  s->first_emit_ns = get_be64(v.substr(4));
  s->last_emit_ns = get_be64(v.substr(12));
  s->max_seq = get_be64(v.substr(20));
  s->deleted_ns = get_be64(v.substr(28));
  s->generation = get_be64(v.substr(36));
  s->parts = static_cast<uint32_t>(get_be64(v.substr(44)));
  s->events_deleted = v[52] != 0;
  s->undelivered = v.size() >= kStateBytesV2 ? get_be32(v.substr(53)) : 0;
  s->pin_first = v.size() == kStateBytes ? get_be64(v.substr(57)) : 0;
  s->pin_last = v.size() == kStateBytes ? get_be64(v.substr(65)) : 0;
  return true;
}

inline const std::string kCounterEventNext = "Cevent_next";    // Put: next event seq
inline const std::string kCounterOutboxNext = "Coutbox_next";  // Put: next outbox seq
inline const std::string kCounterLive = "Clive_bytes";         // Merge: int64 add
inline const std::string kCounterOutboxN = "Coutbox_entries";  // Merge: int64 add
inline const std::string kCounterOutboxB = "Coutbox_bytes";    // Merge: int64 add
inline const std::string kCounterLogFloor = "Clog_floor";      // Put: the log's first pos
inline const std::string kCounterGarbage = "Clog_garbage";     // Merge: int64 add

inline std::string encode_i64(int64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}

inline int64_t decode_i64(std::string_view s) {
  int64_t v = 0;
  if (s.size() == 8) std::memcpy(&v, s.data(), 8);
  return v;
}

// ---- outbox: [be64 seq] -> [be32 revision][be64 emitted_ns][u8 len][trace_id][body]
// The body is the document itself (it begins with '{'), or, for an entry
// written with a recipe (Emission::recipe):
//   [u8 mark][be32 document bytes][recipe]
// from which the document is built again when it is not in memory. The mark
// tells what keeps the trace's messages for it: kPinMark, its trace's state
// bounds it (TraceState::pin_first, pin_last); kRecipeMark (written by
// earlier versions), its trace's state counts it (TraceState::undelivered).

constexpr char kRecipeMark = '\0';
constexpr char kPinMark = '\1';

// The value's head: everything before the body, which follows it in the
// same value.
inline std::string outbox_head(uint32_t revision, uint64_t emitted_ns, std::string_view trace_id) {
  std::string v;
  v.reserve(13 + trace_id.size());
  put_be32(&v, revision);
  put_be64(&v, emitted_ns);
  v.push_back(static_cast<char>(trace_id.size()));
  v.append(trace_id);
  return v;
}

// What goes before the recipe in a recipe entry's body.
inline std::string outbox_recipe_head(size_t document_bytes) {
  std::string v(1, kPinMark);
  put_be32(&v, static_cast<uint32_t>(std::min<size_t>(document_bytes, UINT32_MAX)));
  return v;
}

// An outbox value, its parts viewing the value.
struct OutboxValue {
  uint32_t revision = 0;
  uint64_t emitted_ns = 0;
  std::string_view trace_id;
  std::string_view document;  // empty for a recipe entry
  bool by_recipe = false;
  bool counted = false;  // a recipe entry its state counts (kRecipeMark)
  std::string_view recipe;
  size_t document_bytes = 0;  // the document's size, in either form
};

inline bool parse_outbox(std::string_view v, OutboxValue* out) {
  if (v.size() < 13) return false;
  size_t len = static_cast<uint8_t>(v[12]);
  if (v.size() < 13 + len) return false;
  out->revision = get_be32(v);
  out->emitted_ns = get_be64(v.substr(4));
  out->trace_id = v.substr(13, len);
  std::string_view body = v.substr(13 + len);
  out->counted = !body.empty() && body[0] == kRecipeMark;
  out->by_recipe = out->counted || (!body.empty() && body[0] == kPinMark);
  if (out->by_recipe) {
    if (body.size() < 5) return false;
    out->document = {};
    out->document_bytes = get_be32(body.substr(1));
    out->recipe = body.substr(5);
  } else {
    out->document = body;
    out->document_bytes = body.size();
    out->recipe = {};
  }
  return true;
}

}  // namespace sidetrace::buffer::detail
