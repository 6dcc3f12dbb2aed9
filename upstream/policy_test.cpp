#include "upstream/detail/policy.h"

#include <gtest/gtest.h>

namespace sidetrace::upstream::detail {
namespace {

TEST(UpstreamPolicy, ClassifiesStatuses) {
  EXPECT_EQ(classify(200, "", 0).kind, OutcomeKind::kSuccess);
  EXPECT_EQ(classify(204, "", 0).kind, OutcomeKind::kSuccess);
  for (int s : {408, 429, 500, 502, 503, 504, 307}) {
    EXPECT_EQ(classify(s, "", 0).kind, OutcomeKind::kRetryable) << s;
  }
  EXPECT_EQ(classify(413, "", 0).kind, OutcomeKind::kTooLarge);
  EXPECT_EQ(classify(401, "", 0).kind, OutcomeKind::kAuth);
  EXPECT_EQ(classify(403, "", 0).kind, OutcomeKind::kAuth);
  for (int s : {400, 404, 409, 422, 501}) {
    EXPECT_EQ(classify(s, "", 0).kind, OutcomeKind::kPermanent) << s;
  }
}

TEST(UpstreamPolicy, RetryAfterSecondsAndDates) {
  EXPECT_EQ(parse_retry_after("7", 0), 7000u);
  EXPECT_EQ(parse_retry_after(" 0 ", 0), 0u);
  // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s.
  uint64_t now = 784111770ull * 1'000'000'000ull;
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), 7000u);
  EXPECT_EQ(parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now), 7000u);
  EXPECT_EQ(parse_retry_after("Sun Nov  6 08:49:37 1994", now), 7000u);
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 60'000'000'000ull), 0u);
  EXPECT_FALSE(parse_retry_after("soon", now).has_value());
  EXPECT_FALSE(parse_retry_after("-3", now).has_value());
  EXPECT_EQ(classify(503, "2", 0).retry_after_ms, 2000u);
}

TEST(UpstreamPolicy, BackoffIsJitteredAndCapped) {
  std::mt19937_64 rng(1);
  uint64_t max_seen = 0;
  for (int i = 0; i < 1000; ++i) {
    uint64_t d = backoff_ms(0, 100, 1000, rng);
    EXPECT_GE(d, 1u);
    EXPECT_LE(d, 100u);
    uint64_t late = backoff_ms(20, 100, 1000, rng);
    EXPECT_LE(late, 1000u);
    max_seen = std::max(max_seen, late);
  }
  EXPECT_GT(max_seen, 500u);  // full jitter reaches up to the cap
}

TEST(UpstreamPolicy, OtlpPartialSuccess) {
  std::string msg;
  EXPECT_EQ(
      otlp_rejected_spans(R"({"partialSuccess":{"rejectedSpans":"3","errorMessage":"bad"}})", &msg),
      3u);
  EXPECT_EQ(msg, "bad");
  EXPECT_EQ(otlp_rejected_spans(R"({"partialSuccess":{}})", &msg), 0u);
  EXPECT_EQ(otlp_rejected_spans("not json", &msg), 0u);
}

}  // namespace
}  // namespace sidetrace::upstream::detail
