// The OTLP/HTTP wire format: trace documents as an ExportTraceServiceRequest
// (protobuf or its JSON encoding), and the bodies an OTLP receiver answers
// with (ExportTraceServiceResponse, google.rpc.Status). The mapping is
// documented in docs/upstream.md.
//
// Thread safety: OtlpEncoder has none (one per thread); the free functions
// share no state.
// Errors: nothing throws on bad input; a document that is not a JSON object
// makes build() return false with a reason.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "upstream/upstream.h"

namespace sidetrace::upstream::detail {

// Encodes requests one after another, a document at a time, reusing its
// buffers: a steady load allocates nothing per batch once they have grown to
// the size of its documents.
//
// The request holds one ResourceSpans per document, one span per event, in
// depth-first order. A revision after the first carries only what changed in
// it (the document's "changed" flags, docs/trace-document.md): the changed
// events' spans, the span every changed feedback item lands on, and the first
// root span when the trace context or any feedback changed; a document left
// with no span adds no ResourceSpans. A document without the flags (written
// before they existed) is sent whole.
//
// The protobuf encoding is written directly rather than through the
// generated message classes, which cost several times as much per event
// (bench/encode_bench.cpp); the tests decode it with the protobuf library,
// which re-encodes it to the same bytes.
class OtlpEncoder {
 public:
  OtlpEncoder();
  ~OtlpEncoder();
  OtlpEncoder(const OtlpEncoder&) = delete;
  OtlpEncoder& operator=(const OtlpEncoder&) = delete;

  // Encodes `docs` as one ExportTraceServiceRequest in `encoding`, handing
  // the body to `sink` in pieces as they are made (one per document, and the
  // JSON encoding's opening and closing), so that the request is never held
  // whole. False (and *error set) when a document is not a JSON object; the
  // pieces given until then are not a valid body.
  bool encode(std::span<const std::string_view> docs, OtlpEncoding encoding,
              const std::function<void(std::string_view)>& sink, std::string* error);
  // Spans in the request encoded last.
  size_t spans() const { return spans_; }

  struct State;

 private:
  std::unique_ptr<State> s_;
  size_t spans_ = 0;
};

// The partial_success of an ExportTraceServiceResponse body, decoded as
// protobuf or JSON according to `content_type` (a body without a known
// type is taken as JSON when it starts with '{', else as protobuf).
struct PartialSuccess {
  int64_t rejected_spans = 0;
  std::string error_message;
  // Rejected spans or a message: something to log.
  bool any() const { return rejected_spans > 0 || !error_message.empty(); }
};
// False when the body does not decode; an empty body is a full success.
bool decode_partial_success(std::string_view body, std::string_view content_type,
                            PartialSuccess* out);

// A refusal's body for a log line: a google.rpc.Status (protobuf or JSON, as
// above) as "code N (NAME): message", otherwise the body's text when it is
// text, at most `limit` bytes with control characters replaced. Empty when
// there is nothing readable.
std::string describe_error_body(std::string_view body, std::string_view content_type,
                                size_t limit = 300);

// `text` cut to `limit` bytes (not inside a UTF-8 sequence) with control
// characters replaced by spaces: what a peer says, safe for one log line.
std::string log_safe(std::string_view text, size_t limit = 300);

// True when `content_type` names the protobuf encoding
// ("application/x-protobuf" or "application/protobuf", any parameters).
bool is_protobuf_type(std::string_view content_type);

}  // namespace sidetrace::upstream::detail
