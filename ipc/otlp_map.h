// OpenTelemetry spans as protocol-v1 messages: decoding an OTLP/HTTP export
// request (protobuf or JSON) and translating its spans into `event` and
// `trace` messages, which then go the way of every other message (validated,
// queued, stored, reconstructed, redacted, delivered). The mapping is
// documented in docs/protocol.md ("OpenTelemetry spans").
//
// In short, per span:
//  - one `event` message (start and end in one): trace and span ids as
//    lower-case hex, parent_span_id as parent_id, the span's name, start and
//    end times, status; the type from gen_ai.operation.name or
//    openinference.span.kind (a value neither knows: CUSTOM; neither
//    attribute: SYSTEM); input/output from input.value/output.value, else
//    from the GenAI prompt and completion attributes or events; the other
//    attributes in `attrs` (a few GenAI ones under the protocol's well-known
//    keys), span events that were not used in `attrs["otel.events"]`;
//  - per trace and resource in a request, one `trace` message carrying the
//    resource's attributes as `metadata`, and gen_ai.conversation.id,
//    session.id and user.id (taken off the spans) as the trace's
//    conversation, session and user.
// A span with an invalid id, or whose message the protocol refuses (too
// large), is rejected alone and reported in the result.
//
// Thread safety: every function is thread-safe (no shared state). None
// throws, except std::bad_alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ipc/event.h"
#include "ipc/message.h"

namespace opentelemetry::proto::collector::trace::v1 {
class ExportTraceServiceRequest;
}

namespace sidetrace::ipc {

using OtlpRequest = opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;

// Parses a binary-protobuf request. False with `error` set when the bytes do
// not decode.
bool parse_otlp_protobuf(std::string_view body, OtlpRequest* out, std::string* error);

// Parses a JSON request as the OTLP/HTTP specification encodes it: field
// names in lowerCamelCase (the proto names are accepted too), trace and span
// ids as hex strings (not base64 as protobuf's JSON mapping has it), 64-bit
// integers as strings or numbers, enums as integers, unknown fields ignored.
// An id that is not hex is left empty, so that its span is rejected alone.
// False with `error` set when the text does not decode.
bool parse_otlp_json(std::string_view body, OtlpRequest* out, std::string* error);

struct OtlpMapped {
  MessageBatch messages;  // each one validated (decode_message) and stamped with recv_ns
  size_t weight = 0;      // sum of Message::weight()
  uint64_t spans = 0;     // spans in the request
  uint64_t rejected_spans = 0;
  // Why spans were rejected (the first few reasons), or a warning about
  // context that could not be kept; empty when there is nothing to say.
  std::string error;
  // The messages passed `max_weight`: mapping stopped, and what it made is
  // not the whole request.
  bool over_weight = false;
};

// Translates every span of `request` into messages (see above) and appends
// them to `out`. Messages longer than limits.max_message_bytes are refused
// by the protocol's validation: such a span is rejected, and a trace
// message that is refused only loses the trace's context (noted in `error`).
// Stops with out->over_weight set once the messages weigh more than
// `max_weight` (a bound on what one request may hold).
void map_otlp_request(const OtlpRequest& request, const DecodeLimits& limits, uint64_t recv_ns,
                      OtlpMapped* out, size_t max_weight = SIZE_MAX);

// The protocol-v1 type of a span whose gen_ai.operation.name and
// openinference.span.kind attributes hold `operation` and `kind` (empty when
// absent): e.g. GENERATION for "chat" or "LLM".
std::string_view otlp_event_type(std::string_view operation, std::string_view kind);

// Lower-case hex of `bytes`.
std::string to_hex(std::string_view bytes);

}  // namespace sidetrace::ipc
