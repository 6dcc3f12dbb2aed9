// Outcome classification and retry timing: the types that drive the retry
// policy (docs/upstream.md).
//
// Thread safety: free functions without shared state.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include "upstream/upstream.h"

namespace sidetrace::upstream::detail {

// The statuses of each kind for the native format; the OTLP format follows
// the OTLP/HTTP specification, which retries only 429, 502, 503 and 504 (and
// transport failures): every other refusal but 401/403/413 is permanent.
enum class OutcomeKind {
  kSuccess,    // 2xx: ack
  kRetryable,  // connection error, timeout, 3xx, 408, 429, 5xx except 501/505: back off, retry
  kTooLarge,   // 413: split or truncate
  kAuth,       // 401, 403: pause, probe
  kPermanent,  // other 4xx, 501, 505: dead-letter (400 and 422 split first)
};

const char* to_string(OutcomeKind k);

struct Outcome {
  OutcomeKind kind = OutcomeKind::kRetryable;
  int http_status = 0;                     // 0: no response (transport error)
  std::optional<uint64_t> retry_after_ms;  // from Retry-After, when given
  std::string detail;                      // error text or status line, for logs
  std::string body;                        // response body (bounded), for partial_success
  std::string content_type;                // of the response body
};

// Classifies an HTTP status under the rules of `format`; `retry_after` is the
// header value (maybe empty), interpreted against wall-clock `now_ns`.
Outcome classify(int status, std::string_view retry_after, uint64_t now_ns,
                 Format format = Format::kNative);

// Retry-After: delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime).
// Returns the delay in ms (0 for a date in the past), nullopt when unparsable.
std::optional<uint64_t> parse_retry_after(std::string_view value, uint64_t now_ns);

// Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^attempt)],
// at least 1 ms. `attempt` counts from 0.
uint64_t backoff_ms(uint32_t attempt, uint64_t initial_ms, uint64_t max_ms, std::mt19937_64& rng);

// The text of the exception being handled (what() of a std::exception, else
// "unknown exception"). Call only inside a catch handler.
std::string current_exception_text();
// The text of `e` (as current_exception_text()); "" for a null pointer.
std::string exception_text(std::exception_ptr e);

}  // namespace sidetrace::upstream::detail
