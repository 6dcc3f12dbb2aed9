// Fuzzes the OTLP/HTTP intake's decoding and mapping: the first byte picks
// the encoding ('j' JSON, anything else binary protobuf), the rest is the
// request body. Every message the mapping makes must pass the protocol's
// validation again and rebuild into a valid trace document; rejected spans
// are never more than the spans; a weight bound stops the mapping early
// without breaking either.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/event.h"
#include "ipc/otlp_map.h"
#include "otlp/proto/trace_service.pb.h"
#include "tests/fuzz/fuzz_check.h"
#include "trace/reconstruct.h"

namespace {

using sidetrace::ipc::DecodeLimits;
using sidetrace::ipc::Kind;
using sidetrace::ipc::Message;
using sidetrace::ipc::OtlpMapped;
using sidetrace::ipc::OtlpRequest;

void check(const OtlpMapped& mapped, const DecodeLimits& limits) {
  FUZZ_CHECK(mapped.rejected_spans <= mapped.spans);
  FUZZ_CHECK(mapped.rejected_spans == 0 || !mapped.error.empty());
  size_t weight = 0, events = 0;
  std::map<std::string, std::vector<sidetrace::trace::StoredMessage>> traces;
  for (const Message& m : mapped.messages) {
    Message again;
    FUZZ_CHECK(sidetrace::ipc::decode_message(m.raw, limits, &again, nullptr, nullptr));
    FUZZ_CHECK(again.kind == m.kind && again.trace_id == m.trace_id && again.id == m.id);
    FUZZ_CHECK(m.kind == Kind::kEvent || m.kind == Kind::kTrace);
    FUZZ_CHECK(m.trace_id.size() == 32);
    if (m.kind == Kind::kEvent) {
      FUZZ_CHECK(m.id.size() == 16);
      ++events;
    }
    weight += m.weight();
    traces[m.trace_id].push_back({traces[m.trace_id].size() + 1, m.recv_ns, m.raw});
  }
  FUZZ_CHECK(weight == mapped.weight);
  FUZZ_CHECK(events + mapped.rejected_spans == mapped.spans);
  for (const auto& [id, stored] : traces) {
    const auto r = sidetrace::trace::build_trace(id, stored, {});
    FUZZ_CHECK(r.undecodable == 0 && r.foreign == 0);
    FUZZ_CHECK(nlohmann::json::accept(r.document));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool json = data[0] == 'j';
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  OtlpRequest request;
  std::string error;
  const bool ok = json ? sidetrace::ipc::parse_otlp_json(body, &request, &error)
                       : sidetrace::ipc::parse_otlp_protobuf(body, &request, &error);
  if (!ok) {
    FUZZ_CHECK(!error.empty());
    return 0;
  }
  DecodeLimits limits;
  limits.max_message_bytes = 4096;  // so that some spans are too large
  OtlpMapped all;
  sidetrace::ipc::map_otlp_request(request, limits, 1'700'000'000'000'000'000ull, &all);
  FUZZ_CHECK(!all.over_weight);
  check(all, limits);
  if (all.weight > 0) {
    OtlpMapped part;
    sidetrace::ipc::map_otlp_request(request, limits, 1'700'000'000'000'000'000ull, &part,
                                     all.weight / 2);
    check(part, limits);
    FUZZ_CHECK(part.messages.size() <= all.messages.size());
  }
  return 0;
}
