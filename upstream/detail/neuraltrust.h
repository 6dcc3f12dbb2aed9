// The NeuralTrust format: a trace document becomes the requests the
// NeuralTrust SDK itself would have sent for that trace, one
// `POST {endpoint}/v1/trace` per event and one per feedback item, each with a
// flat JSON body. The mapping is documented in docs/upstream.md
// ("neuraltrust").
//
// Thread safety: free functions without shared state.
// Errors: nothing throws for a bad document; neuraltrust_requests() returns
// false with a reason (an exhausted resource may still throw std::bad_alloc).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::upstream::detail {

// The resource the requests go to, under the endpoint's base path.
inline constexpr std::string_view kNeuralTrustPath = "/v1/trace";

struct NeuralTrustRequests {
  // Request bodies in sending order: the events first, parents before their
  // children and siblings in document order, then the feedback items in
  // document order (by ts).
  std::vector<std::string> bodies;
  // One per body: the event id, or the id derived for a feedback item (the
  // body's `trace_id`), for logs and reasons.
  std::vector<std::string> ids;
  size_t events = 0;  // bodies[0, events) are events, the rest feedback
};

// The requests for one trace document. On a revision above 1, events and
// feedback items whose "changed" key is false are left out (they went with an
// earlier revision); without the key every one is sent. Returns false (and
// sets *error) when the document is not a JSON object.
bool neuraltrust_requests(std::string_view doc, NeuralTrustRequests* out, std::string* error);

// After a 413: replaces the larger of the body's `input` and `output` with
// "[truncated N bytes]" (N: the JSON size of the value replaced). False when
// neither is worth truncating (null, absent, already a marker or shorter than
// one) or the body is not a JSON object.
bool truncate_neuraltrust_body(std::string* body);

// The `trace_id` sent for a feedback item (`item_json`, an element of the
// document's "feedback" array): the first 32 lowercase hex digits of
// SHA-256 over `trace_id`, "\n" and the compact JSON array
// [tag, text, score, target_id, ts] of the item, so that every revision
// (and every resend) names the same item the same way. Empty when the item
// is not a JSON object.
std::string neuraltrust_feedback_id(std::string_view trace_id, std::string_view item_json);

}  // namespace sidetrace::upstream::detail
