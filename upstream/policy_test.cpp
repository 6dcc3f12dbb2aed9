#include "upstream/detail/policy.h"

#include <gtest/gtest.h>

#include "otlp/proto/status.pb.h"
#include "otlp/proto/trace_service.pb.h"
#include "upstream/detail/otlp.h"

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

// OTLP/HTTP retries only 429, 502, 503 and 504; every other refusal but
// the auth and size answers (which keep their handling) is permanent, where
// the native format retries 408, 500 and the other 5xx, 3xx and 1xx.
TEST(UpstreamPolicy, OtlpRetriesOnlyWhatTheSpecificationSays) {
  for (int s : {429, 502, 503, 504}) {
    EXPECT_EQ(classify(s, "", 0, Format::kOtlp).kind, OutcomeKind::kRetryable) << s;
  }
  for (int s : {400, 404, 405, 408, 409, 415, 422, 500, 501, 505, 507, 307, 100}) {
    EXPECT_EQ(classify(s, "", 0, Format::kOtlp).kind, OutcomeKind::kPermanent) << s;
  }
  EXPECT_EQ(classify(200, "", 0, Format::kOtlp).kind, OutcomeKind::kSuccess);
  EXPECT_EQ(classify(413, "", 0, Format::kOtlp).kind, OutcomeKind::kTooLarge);
  EXPECT_EQ(classify(401, "", 0, Format::kOtlp).kind, OutcomeKind::kAuth);
  EXPECT_EQ(classify(403, "", 0, Format::kOtlp).kind, OutcomeKind::kAuth);
  EXPECT_EQ(classify(503, "3", 0, Format::kOtlp).retry_after_ms, 3000u);
  for (int s : {408, 500, 307}) {
    EXPECT_EQ(classify(s, "", 0, Format::kNative).kind, OutcomeKind::kRetryable) << s;
  }
}

TEST(UpstreamPolicy, OtlpPartialSuccessInEitherEncoding) {
  namespace coll = opentelemetry::proto::collector::trace::v1;
  PartialSuccess ps;
  // JSON, as the specification spells it (int64 as a string) and as some
  // receivers do (a number, snake_case).
  ASSERT_TRUE(decode_partial_success(
      R"({"partialSuccess":{"rejectedSpans":"3","errorMessage":"bad"}})", "application/json", &ps));
  EXPECT_EQ(ps.rejected_spans, 3);
  EXPECT_EQ(ps.error_message, "bad");
  ASSERT_TRUE(decode_partial_success(R"({"partial_success":{"rejected_spans":2}})",
                                     "application/json; charset=utf-8", &ps));
  EXPECT_EQ(ps.rejected_spans, 2);
  EXPECT_TRUE(ps.any());
  ASSERT_TRUE(decode_partial_success(R"({"partialSuccess":{}})", "application/json", &ps));
  EXPECT_FALSE(ps.any());
  ASSERT_TRUE(decode_partial_success("", "", &ps));  // an empty body: all accepted
  EXPECT_FALSE(ps.any());
  EXPECT_FALSE(decode_partial_success("not json", "application/json", &ps));
  // Protobuf, by its content type, and by its first byte when untyped.
  coll::ExportTraceServiceResponse r;
  r.mutable_partial_success()->set_rejected_spans(7);
  r.mutable_partial_success()->set_error_message("span too old");
  const std::string bin = r.SerializeAsString();
  for (const char* type : {"application/x-protobuf", "Application/Protobuf", ""}) {
    ASSERT_TRUE(decode_partial_success(bin, type, &ps)) << type;
    EXPECT_EQ(ps.rejected_spans, 7) << type;
    EXPECT_EQ(ps.error_message, "span too old") << type;
  }
  // A message alone (a warning) is something to log too.
  r.mutable_partial_success()->set_rejected_spans(0);
  ASSERT_TRUE(decode_partial_success(r.SerializeAsString(), "application/x-protobuf", &ps));
  EXPECT_EQ(ps.rejected_spans, 0);
  EXPECT_TRUE(ps.any());
  EXPECT_FALSE(decode_partial_success("\xff\xff\xff", "application/x-protobuf", &ps));
}

TEST(UpstreamPolicy, ARefusalsStatusBodyIsReadable) {
  google::rpc::Status st;
  st.set_code(3);
  st.set_message("invalid span id\nin span 4");
  EXPECT_EQ(describe_error_body(st.SerializeAsString(), "application/x-protobuf"),
            "code 3 (INVALID_ARGUMENT): invalid span id in span 4");
  EXPECT_EQ(
      describe_error_body(R"({"code":8,"message":"slow down","details":[]})", "application/json"),
      "code 8 (RESOURCE_EXHAUSTED): slow down");
  // Not a Status: text as it is (bounded), binary not at all.
  EXPECT_EQ(describe_error_body("upstream connect error\r\n", "text/plain"),
            "upstream connect error");
  EXPECT_EQ(describe_error_body(std::string(1000, 'x'), "text/html").size(), 300u);
  EXPECT_EQ(describe_error_body("\xff\x01\x02", "application/x-protobuf"), "");
  EXPECT_EQ(describe_error_body("", "application/json"), "");
  EXPECT_EQ(log_safe("a\x1b[31mb", 10), "a [31mb");
  EXPECT_EQ(log_safe("\xc3\xa9\xc3\xa9", 3), "\xc3\xa9");  // never cut inside a character
}

}  // namespace
}  // namespace sidetrace::upstream::detail
