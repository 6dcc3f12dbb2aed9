// Request-body encoding cost: the CPU time the encoder thread spends per
// event to turn batches of trace documents (4 events of ~500 bytes each, as
// deliver_bench) into a request body, by format and compression, at
// compression level 1 (the default). Beside the full cost, the part of the
// OTLP encoding that reads the documents (JsonDom) alone; and, for
// comparison, parsing the documents into nlohmann::json, and building and
// serialising the same requests with the protobuf library's generated
// classes. Prints one line per case:
//   {"bench":"encode","format":"otlp","encoding":"protobuf","compression":"gzip",
//    "us_per_event":...,"body_bytes_per_event":...}
#include <fmt/format.h>
#include <time.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/thread_cpu.h"
#include "bench/trace_docs.h"
#include "otlp/proto/trace_service.pb.h"
#include "upstream/detail/encode.h"
#include "upstream/detail/json_dom.h"
#include "upstream/detail/otlp.h"
#include "upstream/upstream.h"

using namespace sidetrace;
using bench::thread_cpu_s;
using upstream::Compression;
using upstream::OtlpEncoding;

namespace {

constexpr int kEventsPerTrace = 4;
constexpr size_t kTracesPerBatch = 1000;  // ~2.7 MB of documents: a full default batch
constexpr int kBatches = 40;

const char* name(Compression c) {
  return c == Compression::kGzip ? "gzip" : c == Compression::kZstd ? "zstd" : "none";
}

// Runs `encode` over every batch (after one warm-up pass) and prints its
// CPU time per event and the body bytes it produced per event.
void measure(const std::string& labels, const std::vector<std::vector<std::string_view>>& batches,
             const std::function<size_t(std::span<const std::string_view>)>& encode) {
  for (const auto& b : batches)
    encode(b);
  size_t bytes = 0, events = 0;
  const double t0 = thread_cpu_s();
  for (int round = 0; round < kBatches; ++round) {
    const auto& b = batches[static_cast<size_t>(round) % batches.size()];
    bytes += encode(b);
    events += b.size() * kEventsPerTrace;
  }
  const double secs = thread_cpu_s() - t0;
  fmt::print(
      "{{\"bench\":\"encode\",{},\"us_per_event\":{:.3f},\"body_bytes_per_event\":{:.0f}}}\n",
      labels, secs * 1e6 / static_cast<double>(events),
      static_cast<double>(bytes) / static_cast<double>(events));
}

}  // namespace

int main() {
  // Distinct documents for a few batches, so that the caches see new text.
  std::vector<std::string> docs;
  for (uint64_t n = 0; n < 4 * kTracesPerBatch; ++n)
    docs.push_back(bench::make_trace_document(n, kEventsPerTrace));
  std::vector<std::vector<std::string_view>> batches(4);
  for (size_t i = 0; i < docs.size(); ++i)
    batches[i / kTracesPerBatch].push_back(docs[i]);

  upstream::detail::BodyEncoder enc;
  std::string body;
  for (Compression c : {Compression::kNone, Compression::kGzip, Compression::kZstd}) {
    measure(fmt::format(R"("format":"native","compression":"{}")", name(c)), batches,
            [&](std::span<const std::string_view> b) {
              if (!enc.native(c, 1, b, &body)) throw std::runtime_error("native");
              return body.size();
            });
    for (OtlpEncoding e : {OtlpEncoding::kProtobuf, OtlpEncoding::kJson}) {
      measure(fmt::format(R"("format":"otlp","encoding":"{}","compression":"{}")",
                          e == OtlpEncoding::kProtobuf ? "protobuf" : "json", name(c)),
              batches, [&](std::span<const std::string_view> b) {
                std::string err;
                if (!enc.otlp(e, c, 1, b, &body, &err)) throw std::runtime_error(err);
                return body.size();
              });
    }
  }
  // The parts of the OTLP encoding.
  measure(R"("format":"otlp","part":"nlohmann_parse")", batches,
          [&](std::span<const std::string_view> b) {
            size_t n = 0;
            for (auto d : b)
              n += nlohmann::json::parse(d).size();
            return n * 0;
          });
  upstream::detail::JsonDom dom;
  measure(R"("format":"otlp","part":"read_documents")", batches,
          [&](std::span<const std::string_view> b) {
            for (auto d : b) {
              if (!dom.parse(d)) throw std::runtime_error("parse");
            }
            return size_t{0};
          });
  // For comparison: the same requests built with the protobuf library's
  // generated classes (copied message by message into an arena, as a
  // builder allocates them) and serialised by it. The direct encoder's
  // "protobuf"/"none" line above does the same work from the documents.
  std::vector<opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest> decoded(
      batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    std::string bin, err;
    if (!upstream::detail::append_otlp_protobuf(batches[i], &bin, &err) ||
        !decoded[i].ParseFromString(bin)) {
      throw std::runtime_error("decode");
    }
  }
  size_t which = 0;
  measure(R"("format":"otlp","part":"library_build_and_serialize")", batches,
          [&](std::span<const std::string_view>) {
            google::protobuf::Arena arena;
            auto* m = google::protobuf::Arena::CreateMessage<
                opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest>(&arena);
            m->CopyFrom(decoded[which++ % decoded.size()]);
            body.clear();
            m->SerializeToString(&body);
            return body.size();
          });
  return 0;
}
