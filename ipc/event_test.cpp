#include "ipc/event.h"

#include <gtest/gtest.h>

#include <ctime>
#include <string>

#include "ipc/test_support.h"

namespace sidetrace::ipc {
namespace {

using testing::MapBuilder;

MapBuilder base(std::string_view kind) {
  MapBuilder b;
  b.uint("v", 1).str("kind", kind).str("trace_id", "0123456789abcdef0123456789abcdef");
  return b;
}

struct Outcome {
  bool ok;
  Reject reason;
  std::string detail;
  Event ev;
};

Outcome decode(const std::string& bytes, DecodeLimits limits = {}) {
  Outcome o{false, Reject::kCount_, {}, {}};
  o.ok = decode_event(bytes, limits, &o.ev, &o.reason, &o.detail);
  return o;
}

void expect_reject(const std::string& bytes, Reject r, std::string_view key_in_detail,
                   DecodeLimits limits = {}) {
  auto o = decode(bytes, limits);
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(reject_name(o.reason), reject_name(r)) << o.detail;
  EXPECT_NE(o.detail.find(key_in_detail), std::string::npos) << o.detail;
  // The routing decode applies the same validation.
  Message m;
  Reject r2 = Reject::kCount_;
  EXPECT_FALSE(decode_message(bytes, limits, &m, &r2, nullptr));
  EXPECT_EQ(r2, r);
}

TEST(IpcEvent, EveryKindWithItsRequiredKeys) {
  auto trace = decode(
      base("trace")
          .str("conversation_id", "c1")
          .str("session_id", "s1")
          .str("interaction_id", "i1")
          .str("channel_id", "ch")
          .raw("user",
               testing::pack(std::map<std::string, std::string>{{"id", "u1"}, {"email", "a@b"}}))
          .raw("metadata",
               testing::pack(std::map<std::string, std::string>{{"environment", "prod"}}))
          .build());
  ASSERT_TRUE(trace.ok) << trace.detail;
  EXPECT_EQ(trace.ev.kind, Kind::kTrace);
  EXPECT_EQ(trace.ev.conversation_id, "c1");
  EXPECT_EQ(trace.ev.session_id, "s1");
  EXPECT_EQ(trace.ev.interaction_id, "i1");
  EXPECT_EQ(trace.ev.channel_id, "ch");
  EXPECT_EQ(trace.ev.user,
            testing::pack(std::map<std::string, std::string>{{"id", "u1"}, {"email", "a@b"}}));
  EXPECT_FALSE(trace.ev.metadata.empty());

  auto start = decode(base("start")
                          .str("id", "e1")
                          .str("type", "TOOL")
                          .str("name", "search")
                          .str("parent_id", "p0")
                          .str("input", "q")
                          .build());
  ASSERT_TRUE(start.ok) << start.detail;
  EXPECT_EQ(start.ev.kind, Kind::kStart);
  EXPECT_EQ(start.ev.id, "e1");
  EXPECT_EQ(start.ev.type, "TOOL");
  EXPECT_EQ(start.ev.name, "search");
  EXPECT_EQ(start.ev.parent_id, "p0");
  EXPECT_EQ(start.ev.input, testing::pack(std::string("q")));
  EXPECT_TRUE(start.ev.output.empty());

  auto end = decode(base("end")
                        .str("id", "e1")
                        .str("status", "error")
                        .str("error", "boom")
                        .raw("output", testing::pack(std::vector<int>{1, 2, 3}))
                        .build());
  ASSERT_TRUE(end.ok) << end.detail;
  EXPECT_EQ(end.ev.kind, Kind::kEnd);
  EXPECT_EQ(end.ev.error, std::optional<bool>(true));
  EXPECT_EQ(end.ev.error_text, "boom");
  EXPECT_EQ(end.ev.output, testing::pack(std::vector<int>{1, 2, 3}));

  auto event = decode(testing::realistic_event(7));
  ASSERT_TRUE(event.ok) << event.detail;
  EXPECT_EQ(event.ev.kind, Kind::kEvent);
  EXPECT_EQ(event.ev.type, "GENERATION");
  EXPECT_EQ(event.ev.latency_ms, std::optional<int64_t>(842));
  EXPECT_EQ(event.ev.error, std::optional<bool>(false));
  EXPECT_FALSE(event.ev.attrs.empty());

  auto fb = decode(base("feedback")
                       .str("tag", "thumbs")
                       .str("text", "great")
                       .dbl("score", 0.5)
                       .str("target_id", "e1")
                       .build());
  ASSERT_TRUE(fb.ok) << fb.detail;
  EXPECT_EQ(fb.ev.kind, Kind::kFeedback);
  EXPECT_EQ(fb.ev.tag, "thumbs");
  EXPECT_EQ(fb.ev.text, "great");
  EXPECT_EQ(fb.ev.score, std::optional<double>(0.5));
  EXPECT_EQ(fb.ev.target_id, "e1");
  auto fb_int = decode(base("feedback").sint("score", -1).build());
  ASSERT_TRUE(fb_int.ok);
  EXPECT_EQ(fb_int.ev.score, std::optional<double>(-1.0));
}

TEST(IpcEvent, RoutingDecodeCopiesKindAndIds) {
  Message m;
  Reject r;
  std::string detail;
  ASSERT_TRUE(decode_message(testing::realistic_event(41), {}, &m, &r, &detail)) << detail;
  EXPECT_EQ(m.kind, Kind::kEvent);
  EXPECT_EQ(m.trace_id.size(), 32u);
  EXPECT_EQ(m.id, "000000000000002a");
  ASSERT_TRUE(decode_message(base("trace").build(), {}, &m, &r, &detail));
  EXPECT_EQ(m.kind, Kind::kTrace);
  EXPECT_TRUE(m.id.empty());
}

TEST(IpcEvent, UnknownKeysAndNilValuesAreIgnored) {
  auto o = decode(base("start")
                      .str("id", "e1")
                      .str("type", "CUSTOM_THING")
                      .raw("future_key", testing::pack(std::map<std::string, int>{{"x", 1}}))
                      .nil("parent_id")
                      .nil("output")
                      .build());
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.type, "CUSTOM_THING");
  EXPECT_TRUE(o.ev.parent_id.empty());
  EXPECT_TRUE(o.ev.output.empty());
}

TEST(IpcEvent, TimestampsInEveryForm) {
  const uint64_t sec = 1'700'000'123;
  const uint32_t nsec = 456'789'012;
  // int ns
  auto o = decode(base("trace").uint("ts", sec * 1'000'000'000ull + nsec).build());
  ASSERT_TRUE(o.ok);
  EXPECT_EQ(o.ev.ts_ns, sec * 1'000'000'000ull + nsec);
  // timestamp 32: fixext4 type -1, seconds
  std::string t32 = "\xd6\xff";
  for (int s = 24; s >= 0; s -= 8)
    t32.push_back(static_cast<char>((sec >> s) & 0xff));
  o = decode(base("start").str("id", "a").str("type", "T").raw("ts", t32).build());
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.ts_ns, sec * 1'000'000'000ull);
  // timestamp 64: fixext8, nsec in the upper 30 bits, seconds in the lower 34
  const uint64_t v64 = (uint64_t{nsec} << 34) | sec;
  std::string t64 = "\xd7\xff";
  for (int s = 56; s >= 0; s -= 8)
    t64.push_back(static_cast<char>((v64 >> s) & 0xff));
  o = decode(base("event").str("id", "a").str("type", "T").raw("end_ts", t64).build());
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.end_ts_ns, sec * 1'000'000'000ull + nsec);
  // timestamp 96: ext8 len 12, nsec uint32 then int64 seconds
  std::string t96 = std::string("\xc7\x0c\xff", 3);
  for (int s = 24; s >= 0; s -= 8)
    t96.push_back(static_cast<char>((nsec >> s) & 0xff));
  for (int s = 56; s >= 0; s -= 8)
    t96.push_back(static_cast<char>((sec >> s) & 0xff));
  o = decode(base("trace").raw("ts", t96).build());
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.ts_ns, sec * 1'000'000'000ull + nsec);
  // msgpack-cxx's own encoding of a time point round-trips too.
  o = decode(
      base("trace").raw("ts", testing::pack(timespec{static_cast<time_t>(sec), nsec})).build());
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.ts_ns, sec * 1'000'000'000ull + nsec);

  // Refusals: negative int, negative 96-bit seconds, nsec overflow, other ext, wrong type.
  expect_reject(base("trace").sint("ts", -5).build(), Reject::kBadValue, "ts");
  std::string neg96 = std::string("\xc7\x0c\xff\0\0\0\0", 7) + std::string(8, '\xff');
  expect_reject(base("trace").raw("ts", neg96).build(), Reject::kBadValue, "ts");
  std::string bad_ns = std::string("\xc7\x0c\xff\x3b\x9a\xca\x00", 7) + std::string(8, '\0');
  expect_reject(base("trace").raw("ts", bad_ns).build(), Reject::kBadValue, "ts");
  expect_reject(base("trace").raw("ts", std::string("\xd6\x05\0\0\0\0", 6)).build(),
                Reject::kWrongType, "ts");
  expect_reject(base("trace").raw("ts", std::string("\xd5\xff\0\0", 4)).build(), Reject::kWrongType,
                "ts");
  expect_reject(base("trace").str("end_ts", "yesterday").build(), Reject::kWrongType, "end_ts");
}

TEST(IpcEvent, EveryRejectionReason) {
  expect_reject(testing::pack(std::vector<int>{1, 2}), Reject::kNotMap, "array");
  expect_reject(testing::pack(7), Reject::kNotMap, "int");
  expect_reject(base("trace").raw_entry(testing::pack(5), testing::pack(1)).build(),
                Reject::kKeyNotString, "key");
  expect_reject(MapBuilder().str("kind", "trace").str("trace_id", "t").build(), Reject::kMissingKey,
                "v");
  expect_reject(MapBuilder().uint("v", 1).str("trace_id", "t").build(), Reject::kMissingKey,
                "kind");
  expect_reject(MapBuilder().uint("v", 1).str("kind", "trace").build(), Reject::kMissingKey,
                "trace_id");
  expect_reject(base("start").str("type", "TOOL").build(), Reject::kMissingKey, "id");
  expect_reject(base("start").str("id", "e").build(), Reject::kMissingKey, "type");
  expect_reject(base("event").str("id", "e").build(), Reject::kMissingKey, "type");
  expect_reject(base("end").build(), Reject::kMissingKey, "id");
  expect_reject(MapBuilder().str("v", "1").str("kind", "trace").str("trace_id", "t").build(),
                Reject::kWrongType, "v");
  expect_reject(base("trace").uint("trace_id", 5).build(), Reject::kWrongType, "trace_id");
  expect_reject(base("end").raw("id", testing::pack(std::vector<char>{'a'})).build(),
                Reject::kWrongType, "id");
  expect_reject(base("trace").str("attrs", "x").build(), Reject::kWrongType, "attrs");
  expect_reject(base("trace").str("user", "u").build(), Reject::kWrongType, "user");
  expect_reject(base("trace").uint("metadata", 1).build(), Reject::kWrongType, "metadata");
  expect_reject(base("feedback").str("score", "high").build(), Reject::kWrongType, "score");
  expect_reject(base("event").str("id", "e").str("type", "T").str("latency_ms", "3").build(),
                Reject::kWrongType, "latency_ms");
  expect_reject(base("trace").uint("session_id", 3).build(), Reject::kWrongType, "session_id");
  expect_reject(MapBuilder().uint("v", 2).str("kind", "trace").str("trace_id", "t").build(),
                Reject::kBadVersion, "v");
  expect_reject(MapBuilder().sint("v", -1).str("kind", "trace").str("trace_id", "t").build(),
                Reject::kBadVersion, "v");
  expect_reject(base("span").build(), Reject::kBadKind, "span");
  expect_reject(base("trace").str("trace_id", "").build(), Reject::kBadValue, "trace_id");
  expect_reject(base("trace").str("trace_id", std::string(129, 'a')).build(), Reject::kBadValue,
                "trace_id");
  expect_reject(base("start").str("id", "e").str("type", "").build(), Reject::kBadValue, "type");
  expect_reject(base("end").str("id", "e").str("status", "fine").build(), Reject::kBadValue,
                "status");
  expect_reject(base("event").str("id", "e").str("type", "T").sint("latency_ms", -3).build(),
                Reject::kBadValue, "latency_ms");
  expect_reject(base("feedback").str("target_id", "").build(), Reject::kBadValue, "target_id");
  DecodeLimits small;
  small.max_message_bytes = 64;
  expect_reject(base("trace").str("name", std::string(100, 'n')).build(), Reject::kTooLarge, "",
                small);
  // Malformed: cut short, trailing bytes, the reserved byte, an absurd count.
  const std::string good = testing::realistic_event(1);
  for (size_t cut : {size_t{1}, size_t{10}, good.size() / 2, good.size() - 1}) {
    expect_reject(good.substr(0, cut), Reject::kMalformed, "");
  }
  expect_reject(good + "\x01", Reject::kMalformed, "after");
  expect_reject(base("trace").raw("input", "\xc1").build(), Reject::kMalformed, "");
  expect_reject(base("trace").raw("input", std::string("\xdd\xff\xff\xff\xff", 5)).build(),
                Reject::kMalformed, "");
  expect_reject(std::string("\xc1"), Reject::kMalformed, "");
  expect_reject(std::string(), Reject::kMalformed, "");
}

TEST(IpcEvent, DeepNestingCostsNoStack) {
  // 200k nested arrays as the input value: validated iteratively.
  std::string deep(200'000, '\x91');
  deep.push_back('\x01');
  auto o = decode(base("trace").raw("input", deep).build(), DecodeLimits{1 << 20, 128});
  ASSERT_TRUE(o.ok) << o.detail;
  EXPECT_EQ(o.ev.input.size(), deep.size());
}

TEST(IpcEvent, NamesOfReasonsAndKinds) {
  for (size_t i = 0; i < static_cast<size_t>(Reject::kCount_); ++i) {
    EXPECT_NE(reject_name(static_cast<Reject>(i)), "unknown");
  }
  EXPECT_EQ(kind_name(Kind::kFeedback), "feedback");
  EXPECT_EQ(transport_name(Transport::kUdp), "udp");
}

}  // namespace
}  // namespace sidetrace::ipc
