// Fuzzes the per-message path: the validating decoders (decode_event and the
// routing decode_message, which must agree on every input), the datagram
// value splitter on each accepted message, and the reconstruction of a trace
// from that one message.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ipc/event.h"
#include "ipc/splitter.h"
#include "tests/fuzz/fuzz_check.h"
#include "trace/reconstruct.h"

namespace {

using sidetrace::ipc::DecodeLimits;
using sidetrace::ipc::Event;
using sidetrace::ipc::Kind;
using sidetrace::ipc::Message;
using sidetrace::ipc::Reject;

void check_trace(const Event& ev, std::string_view bytes) {
  using sidetrace::trace::build_trace;
  using sidetrace::trace::BuildOptions;
  using sidetrace::trace::StoredMessage;
  const StoredMessage once[] = {{1, 1'700'000'000'000'000'000ull, bytes}};
  const auto r = build_trace(ev.trace_id, once, BuildOptions{});
  FUZZ_CHECK(r.undecodable == 0);
  FUZZ_CHECK(r.foreign == 0);
  FUZZ_CHECK(r.events <= 1);
  FUZZ_CHECK(r.unfinished <= r.events);
  FUZZ_CHECK(nlohmann::json::accept(r.document));
  // A kind that names an event is idempotent: the same message stored twice
  // builds the same document.
  if (ev.kind == Kind::kStart || ev.kind == Kind::kEnd || ev.kind == Kind::kEvent ||
      ev.kind == Kind::kTrace) {
    const StoredMessage twice[] = {once[0], {2, 1'700'000'000'000'000'001ull, bytes}};
    const auto r2 = build_trace(ev.trace_id, twice, BuildOptions{});
    FUZZ_CHECK(r2.document == r.document);
    FUZZ_CHECK(r2.complete == r.complete);
  }
  // Marking open events unfinished never drops one.
  BuildOptions unfinished;
  unfinished.mark_unfinished = true;
  const auto r3 = build_trace(ev.trace_id, once, unfinished);
  FUZZ_CHECK(r3.events == r.events);
  FUZZ_CHECK(nlohmann::json::accept(r3.document));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const DecodeLimits limits;

  Event ev;
  Reject r1 = Reject::kCount_;
  std::string d1;
  const bool ok1 = sidetrace::ipc::decode_event(bytes, limits, &ev, &r1, &d1);

  Message m;
  Reject r2 = Reject::kCount_;
  std::string d2;
  const bool ok2 = sidetrace::ipc::decode_message(bytes, limits, &m, &r2, &d2);

  // Both decoders apply the same validation.
  FUZZ_CHECK(ok1 == ok2);
  if (!ok1) {
    FUZZ_CHECK(r1 == r2);
    FUZZ_CHECK(d1 == d2);
    FUZZ_CHECK(r1 < Reject::kCount_);
    FUZZ_CHECK(!d1.empty());
    FUZZ_CHECK(sidetrace::ipc::reject_name(r1) != "unknown");
    // Null out-parameters are allowed.
    FUZZ_CHECK(!sidetrace::ipc::decode_event(bytes, limits, &ev, nullptr, nullptr));
    return 0;
  }
  FUZZ_CHECK(m.kind == ev.kind);
  FUZZ_CHECK(m.trace_id == ev.trace_id);
  FUZZ_CHECK(m.id == ev.id);
  FUZZ_CHECK(!ev.trace_id.empty() && ev.trace_id.size() <= limits.max_id_bytes);
  FUZZ_CHECK(ev.id.size() <= limits.max_id_bytes);
  FUZZ_CHECK(ev.parent_id.size() <= limits.max_id_bytes);
  if (ev.kind == Kind::kStart || ev.kind == Kind::kEvent) {
    FUZZ_CHECK(!ev.id.empty() && !ev.type.empty());
  }
  if (ev.kind == Kind::kEnd) FUZZ_CHECK(!ev.id.empty());
  if (ev.latency_ms) FUZZ_CHECK(*ev.latency_ms >= 0);
  FUZZ_CHECK(bytes.size() <= limits.max_message_bytes);

  // An accepted message is exactly one msgpack value, as a datagram carries it.
  size_t values = 0;
  const size_t rest = sidetrace::ipc::for_each_value(bytes, [&](std::string_view v) {
    FUZZ_CHECK(v.size() == bytes.size());
    ++values;
  });
  FUZZ_CHECK(rest == 0 && values == 1);

  // A tighter cap refuses it as too large, and nothing else.
  if (!bytes.empty()) {
    DecodeLimits tight = limits;
    tight.max_message_bytes = bytes.size() - 1;
    Reject r = Reject::kCount_;
    FUZZ_CHECK(!sidetrace::ipc::decode_event(bytes, tight, &ev, &r, nullptr));
    FUZZ_CHECK(r == Reject::kTooLarge);
    FUZZ_CHECK(sidetrace::ipc::decode_event(bytes, limits, &ev, nullptr, nullptr));
  }

  check_trace(ev, bytes);
  return 0;
}
