#include "ipc/redact.h"

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <atomic>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "ipc/event.h"
#include "ipc/test_support.h"

namespace sidetrace::ipc {
namespace {

using testing::MapBuilder;
using testing::pack;

const std::vector<std::string> kAllDetectors = {"api_keys", "bearer_tokens", "emails",
                                                "card_numbers"};

std::shared_ptr<const Redactor> make(RedactOptions o) {
  std::string error;
  auto r = Redactor::create(o, &error);
  EXPECT_TRUE(r) << error;
  return r;
}

std::shared_ptr<const Redactor> with_detectors(std::vector<std::string> d, size_t max = 0) {
  RedactOptions o;
  o.detectors = std::move(d);
  o.max_field_bytes = max;
  return make(o);
}

Message message(MapBuilder b) {
  Message m;
  m.kind = Kind::kEvent;
  m.trace_id = "t1";
  m.id = "e1";
  m.raw = b.build();
  return m;
}

MapBuilder event_with(std::string_view key, std::string_view packed_value) {
  MapBuilder b;
  b.uint("v", 1).str("kind", "event").str("trace_id", "t1").str("id", "e1").str("type", "TOOL");
  b.raw(key, packed_value);
  return b;
}

Event decoded(const Message& m) {
  Event e;
  Reject why{};
  std::string detail;
  EXPECT_TRUE(decode_event(m.raw, DecodeLimits{}, &e, &why, &detail))
      << reject_name(why) << ": " << detail;
  return e;
}

std::string as_string(std::string_view packed) {
  msgpack::object_handle oh = msgpack::unpack(packed.data(), packed.size());
  return oh.get().as<std::string>();
}

// Runs `r` over `text` as the `input` of an event; returns the text stored.
std::string run(const Redactor& r, std::string_view text, RedactStats* stats = nullptr) {
  Message m = message(event_with("input", pack(std::string(text))));
  r.apply(m, stats);
  return as_string(decoded(m).input);
}

TEST(Redact, ApiKeys) {
  auto r = with_detectors({"api_keys"});
  const std::string openai = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0";
  const std::string anthropic = "sk-ant-api03-AAAABBBBCCCCDDDDEEEEFFFF-gggg";
  EXPECT_EQ(run(*r, "key " + openai + " end"), "key [REDACTED:api_keys] end");
  EXPECT_EQ(run(*r, anthropic), "[REDACTED:api_keys]");
  EXPECT_EQ(run(*r, "aws AKIAIOSFODNN7EXAMPLE."), "aws [REDACTED:api_keys].");
  EXPECT_EQ(run(*r, "(ghp_0123456789abcdefghijABCDEFGHIJ012345)"), "([REDACTED:api_keys])");
  EXPECT_EQ(run(*r, "slack xoxb-1234-5678-abcdefghij"), "slack [REDACTED:api_keys]");
  EXPECT_EQ(run(*r, "xoxp-99999999999-abc"), "[REDACTED:api_keys]");
  // The generic form keeps the key name and hides the value.
  EXPECT_EQ(run(*r, "api_key=abc123 rest"), "api_key=[REDACTED:api_keys] rest");
  EXPECT_EQ(run(*r, "X-API-Key: hunter2"), "X-API-Key: [REDACTED:api_keys]");
  EXPECT_EQ(run(*r, R"({"apikey": "s3cr3t", "n": 1})"),
            R"({"apikey": "[REDACTED:api_keys]", "n": 1})");

  // Negatives: too short, inside a word, wrong shape, no value.
  for (std::string_view keep :
       {"sk-short", "task-abcdefghijklmnopqrstuvwxyz0123", "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLE1", "ghp_short", "xoxz-1234567890123", "the api key is missing",
        "api_key= ", "ask-me-anything"}) {
    EXPECT_EQ(run(*r, keep), keep);
  }
}

TEST(Redact, BearerTokens) {
  auto r = with_detectors({"bearer_tokens"});
  EXPECT_EQ(run(*r, "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_x"),
            "Authorization: Bearer [REDACTED:bearer_tokens]");
  EXPECT_EQ(run(*r, "bearer abc123XYZ=="), "bearer [REDACTED:bearer_tokens]");
  for (std::string_view keep :
       {"the Bearer of bad news", "Bearer short1", "Bearer", "forbearer x1234567"})
    EXPECT_EQ(run(*r, keep), keep);
}

TEST(Redact, Emails) {
  auto r = with_detectors({"emails"});
  EXPECT_EQ(run(*r, "mail jane.doe+tag@example.co.uk now"), "mail [REDACTED:emails] now");
  EXPECT_EQ(run(*r, "<a@b.io>."), "<[REDACTED:emails]>.");
  for (std::string_view keep : {"user@localhost", "@handle", "x@y.z", "a@.com", "me @ home.com"})
    EXPECT_EQ(run(*r, keep), keep);
}

TEST(Redact, CardNumbersPassingLuhn) {
  auto r = with_detectors({"card_numbers"});
  EXPECT_EQ(run(*r, "card 4111111111111111 ok"), "card [REDACTED:card_numbers] ok");
  EXPECT_EQ(run(*r, "4111 1111 1111 1111"), "[REDACTED:card_numbers]");
  EXPECT_EQ(run(*r, "amex 3782-822463-10005."), "amex [REDACTED:card_numbers].");
  // 16 digits failing Luhn, too short, too long, inside a word: kept.
  for (std::string_view keep :
       {"4111111111111112", "411111111111", "41111111111111111111", "id4111111111111111",
        "4111111111111111x", "4111  1111 1111 1111"}) {
    EXPECT_EQ(run(*r, keep), keep);
  }
}

TEST(Redact, OnlyEnabledDetectorsRun) {
  auto r = with_detectors({"emails"});
  EXPECT_EQ(run(*r, "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0 4111111111111111"),
            "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0 4111111111111111");
}

TEST(Redact, SeveralMatchesAndOverlaps) {
  auto r = with_detectors(kAllDetectors);
  RedactStats stats;
  EXPECT_EQ(run(*r,
                "to bob@example.com, key api_key=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0, "
                "card 4111111111111111, auth Bearer tok_1234567890",
                &stats),
            "to [REDACTED:emails], key api_key=[REDACTED:api_keys], card "
            "[REDACTED:card_numbers], auth Bearer [REDACTED:bearer_tokens]");
  RedactCounters c = stats.snapshot();
  EXPECT_EQ(c.messages_checked, 1u);
  EXPECT_EQ(c.messages_redacted, 1u);
  EXPECT_EQ(c.matches["emails"], 1u);
  EXPECT_EQ(c.matches["api_keys"], 1u);
  EXPECT_EQ(c.matches["card_numbers"], 1u);
  EXPECT_EQ(c.matches["bearer_tokens"], 1u);
}

TEST(Redact, NestedValuesAreWalkedAndKeysAndNonStringsKept) {
  auto r = with_detectors(kAllDetectors);
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> p(buf);
  // {"messages": [{"role": "user", "content": "mail a@b.io"}], "bob@x.com": 4111111111111111,
  //  "blob": bin("a@b.io"), "ok": true, "n": 1.5}
  p.pack_map(5);
  p.pack(std::string("messages"));
  p.pack_array(1);
  p.pack_map(2);
  p.pack(std::string("role")).pack(std::string("user"));
  p.pack(std::string("content")).pack(std::string("mail a@b.io"));
  p.pack(std::string("bob@x.com")).pack(uint64_t{4111111111111111});
  p.pack(std::string("blob"));
  p.pack_bin(6);
  p.pack_bin_body("a@b.io", 6);
  p.pack(std::string("ok")).pack(true);
  p.pack(std::string("n")).pack(1.5);
  std::string nested(buf.data(), buf.size());

  Message m = message(event_with("input", nested).raw("attrs", nested));
  ASSERT_TRUE(r->apply(m, nullptr));
  Event e = decoded(m);
  for (const std::string& v : {e.input, e.attrs}) {
    msgpack::object_handle oh = msgpack::unpack(v.data(), v.size());
    auto root = oh.get().as<std::map<std::string, msgpack::object>>();
    auto msgs = root.at("messages").as<std::vector<std::map<std::string, std::string>>>();
    EXPECT_EQ(msgs.at(0).at("content"), "mail [REDACTED:emails]");
    EXPECT_EQ(msgs.at(0).at("role"), "user");
    EXPECT_EQ(root.at("bob@x.com").as<uint64_t>(), 4111111111111111u);  // key and int kept
    EXPECT_EQ(root.at("blob").type, msgpack::type::BIN);
    EXPECT_EQ(std::string(root.at("blob").via.bin.ptr, root.at("blob").via.bin.size), "a@b.io");
    EXPECT_TRUE(root.at("ok").as<bool>());
    EXPECT_EQ(root.at("n").as<double>(), 1.5);
  }
}

TEST(Redact, FieldSelection) {
  RedactOptions o;
  o.detectors = {"emails"};
  o.fields = {"output", "text"};
  auto r = make(o);
  Message m = message(MapBuilder()
                          .uint("v", 1)
                          .str("kind", "event")
                          .str("trace_id", "t1")
                          .str("id", "e1")
                          .str("type", "TOOL")
                          .str("name", "a@b.io")
                          .str("input", "a@b.io")
                          .str("output", "a@b.io")
                          .str("error", "a@b.io")
                          .str("text", "a@b.io"));
  ASSERT_TRUE(r->apply(m, nullptr));
  Event e = decoded(m);
  EXPECT_EQ(e.name, "a@b.io");
  EXPECT_EQ(as_string(e.input), "a@b.io");
  EXPECT_EQ(as_string(e.output), "[REDACTED:emails]");
  EXPECT_EQ(e.error_text.value(), "a@b.io");
  EXPECT_EQ(e.text.value(), "[REDACTED:emails]");

  // The default fields include error, feedback text, metadata and attrs.
  auto d = with_detectors({"emails"});
  Message f =
      message(MapBuilder()
                  .uint("v", 1)
                  .str("kind", "feedback")
                  .str("trace_id", "t1")
                  .str("text", "reach me at a@b.io")
                  .str("error", "from a@b.io")
                  .raw("metadata", pack(std::map<std::string, std::string>{{"k", "a@b.io"}})));
  ASSERT_TRUE(d->apply(f, nullptr));
  Event fe = decoded(f);
  EXPECT_EQ(fe.text.value(), "reach me at [REDACTED:emails]");
  EXPECT_EQ(fe.error_text.value(), "from [REDACTED:emails]");
  msgpack::object_handle oh = msgpack::unpack(fe.metadata.data(), fe.metadata.size());
  EXPECT_EQ((oh.get().as<std::map<std::string, std::string>>().at("k")), "[REDACTED:emails]");
}

TEST(Redact, UserRulesWithGroupsAndDefaultReplacement) {
  RedactOptions o;
  o.rules = {{"password", R"((password\s*[:=]\s*)\S+)", "$1***"},
             {"ssn", R"(\b\d{3}-\d{2}-\d{4}\b)", ""}};
  auto r = make(o);
  RedactStats stats;
  EXPECT_EQ(run(*r, "password: hunter2 and ssn 123-45-6789, also password=x", &stats),
            "password: *** and ssn [REDACTED:ssn], also password=***");
  RedactCounters c = stats.snapshot();
  EXPECT_EQ(c.matches["password"], 2u);
  EXPECT_EQ(c.matches["ssn"], 1u);
  EXPECT_EQ(run(*r, "nothing here 123-456-789"), "nothing here 123-456-789");
}

TEST(Redact, TruncatesAtUtf8BoundaryWithMarker) {
  RedactOptions o;
  o.max_field_bytes = 64;
  auto r = make(o);
  RedactStats stats;
  // 100 two-byte characters: 200 bytes.
  std::string text;
  for (int i = 0; i < 100; ++i)
    text += "\xc3\xa9";  // é
  std::string out = run(*r, text, &stats);
  EXPECT_LE(out.size(), 64u);
  const std::string marker_prefix = "\xe2\x80\xa6[truncated ";
  size_t at = out.find(marker_prefix);
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(at % 2, 0u) << "cut inside a UTF-8 sequence";
  EXPECT_EQ(out.substr(0, at), text.substr(0, at));
  const size_t removed = text.size() - at;
  EXPECT_EQ(out.substr(at), marker_prefix + std::to_string(removed) + " bytes]");
  RedactCounters c = stats.snapshot();
  EXPECT_EQ(c.fields_truncated, 1u);
  EXPECT_EQ(c.bytes_removed, removed);

  // Three- and four-byte characters, at every length around the limit.
  for (size_t n = 60; n < 90; ++n) {
    std::string s;
    while (s.size() < n)
      s += (s.size() % 7 == 0) ? "\xf0\x9f\x98\x80" : "\xe2\x82\xac";  // 😀 €
    std::string got = run(*r, s);
    EXPECT_LE(got.size(), 64u);
    size_t m = got.find(marker_prefix);
    if (s.size() <= 64) {
      EXPECT_EQ(got, s);
      continue;
    }
    ASSERT_NE(m, std::string::npos);
    EXPECT_EQ(got.substr(0, m), s.substr(0, m));
    EXPECT_TRUE(m == s.size() || (static_cast<uint8_t>(s[m]) & 0xc0) != 0x80);
  }
  // Short strings are kept.
  EXPECT_EQ(run(*r, "short"), "short");
}

TEST(Redact, TruncationHappensAfterRedactionAndCreatesNoNewMatch) {
  RedactOptions o;
  o.detectors = kAllDetectors;
  o.max_field_bytes = 64;
  auto r = make(o);
  // The secret straddles the cut: it is redacted, not cut in half.
  std::string text =
      std::string(40, 'x') + " sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0 " + std::string(100, 'y');
  std::string out = run(*r, text);
  EXPECT_EQ(out.find("Ab3d"), std::string::npos);
  // A 20-digit run is no card number, but a cut to 16 digits could make one.
  std::string digits = std::string(20, 'z') + " 4111111111111111" + "0000" + std::string(60, 'w');
  std::string once = run(*r, digits);
  EXPECT_LE(once.size(), 64u);
  EXPECT_EQ(run(*r, once), once);
}

TEST(Redact, IdempotentOnItsOwnOutput) {
  RedactOptions o;
  o.detectors = kAllDetectors;
  o.rules = {{"password", R"((password=)\S+)", "$1[REDACTED:password]"}};
  o.max_field_bytes = 100;
  auto r = make(o);
  const std::vector<std::string> inputs = {
      "api_key=abc123 and Bearer abcdefgh1234 to a@b.io", "password=hunter2 4111 1111 1111 1111",
      std::string(300, 'a') + " sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0",
      "ghp_0123456789abcdefghijABCDEFGHIJ012345 " + std::string(200, '9'), "plain text"};
  for (const std::string& in : inputs) {
    Message m = message(event_with("input", pack(in)).str("error", in));
    r->apply(m, nullptr);
    std::string once = m.raw;
    RedactStats stats;
    EXPECT_FALSE(r->apply(m, &stats)) << in;
    EXPECT_EQ(m.raw, once);
    EXPECT_EQ(stats.snapshot().matches.size(), 0u);
  }
}

TEST(Redact, UntouchedMessagesStayByteIdentical) {
  RedactOptions o;
  o.detectors = kAllDetectors;
  o.rules = {{"pw", "password=\\S+", ""}};
  o.max_field_bytes = 4096;
  auto r = make(o);
  RedactStats stats;
  for (uint64_t n = 0; n < 20; ++n) {
    Message m;
    m.trace_id = "t";
    m.raw = testing::realistic_event(n);
    const std::string before = m.raw;
    EXPECT_FALSE(r->apply(m, &stats));
    EXPECT_EQ(m.raw, before);
  }
  RedactCounters c = stats.snapshot();
  EXPECT_EQ(c.messages_checked, 20u);
  EXPECT_EQ(c.messages_redacted, 0u);
}

TEST(Redact, RewriteKeepsEverythingElseByteIdentical) {
  auto r = with_detectors({"emails"});
  // A non-canonical str16 header on an untouched key must survive as is.
  std::string odd_name = std::string("\xda\x00\x03", 3) + "abc";
  Message m = message(event_with("input", pack(std::string("to a@b.io"))).raw("name", odd_name));
  const std::string before = m.raw;
  ASSERT_TRUE(r->apply(m, nullptr));
  const std::string old_value = pack(std::string("to a@b.io"));
  const std::string new_value = pack(std::string("to [REDACTED:emails]"));
  size_t at = before.find(old_value);
  ASSERT_NE(at, std::string::npos);
  std::string expected = before;
  expected.replace(at, old_value.size(), new_value);
  EXPECT_EQ(m.raw, expected);
  EXPECT_EQ(m.trace_id, "t1");
  EXPECT_EQ(m.id, "e1");
  EXPECT_EQ(decoded(m).name, "abc");
}

TEST(Redact, LongStringsGetWiderHeaders) {
  auto r = with_detectors({"emails"});
  for (size_t len : {20u, 250u, 70000u}) {
    std::string text = "a@b.io " + std::string(len, 'x');
    Message m = message(event_with("output", pack(text)));
    ASSERT_TRUE(r->apply(m, nullptr));
    EXPECT_EQ(as_string(decoded(m).output), "[REDACTED:emails] " + std::string(len, 'x'));
  }
}

TEST(Redact, FailuresLeaveTheMessageUnchangedAndAreCounted) {
  RedactOptions o;
  o.rules = {{"evil", "(a+)+b", ""}};
  o.detectors = {"emails"};
  auto r = make(o);
  RedactStats stats;
  // Catastrophic backtracking: Boost.Regex gives up instead of hanging.
  Message m = message(event_with("input", pack("x@y.io " + std::string(1000, 'a'))));
  const std::string before = m.raw;
  EXPECT_FALSE(r->apply(m, &stats));
  EXPECT_EQ(m.raw, before);

  Message bad;
  bad.trace_id = "t";
  bad.raw = std::string("\x92\x01\x02", 3);  // an array, not a map
  EXPECT_FALSE(r->apply(bad, &stats));
  Message cut = message(event_with("input", pack(std::string("a@b.io"))));
  cut.raw.pop_back();
  const std::string cut_before = cut.raw;
  EXPECT_FALSE(r->apply(cut, &stats));
  EXPECT_EQ(cut.raw, cut_before);
  RedactCounters c = stats.snapshot();
  EXPECT_EQ(c.failures, 3u);
  EXPECT_EQ(c.messages_redacted, 0u);
}

TEST(Redact, BadOptionsAreRefused) {
  auto refused = [](RedactOptions o) {
    std::string error;
    bool ok = Redactor::create(o, &error) != nullptr;
    EXPECT_FALSE(error.empty());
    return !ok;
  };
  RedactOptions o;
  o.detectors = {"phone_numbers"};
  EXPECT_TRUE(refused(o));
  o = {};
  o.rules = {{"r", "(unclosed", ""}};
  EXPECT_TRUE(refused(o));
  o.rules = {{"", "x", ""}};
  EXPECT_TRUE(refused(o));
  o.rules = {{"emails", "x", ""}};
  EXPECT_TRUE(refused(o));
  o.rules = {{"a", "x", ""}, {"a", "y", ""}};
  EXPECT_TRUE(refused(o));
  o = {};
  o.fields = {"input", "trace_id"};
  EXPECT_TRUE(refused(o));
  o = {};
  o.max_field_bytes = 10;
  EXPECT_TRUE(refused(o));
  o.max_field_bytes = 64;
  std::string error;
  EXPECT_TRUE(Redactor::create(o, &error));
  EXPECT_FALSE(Redactor::create(RedactOptions{}, &error)->active());
}

TEST(Redact, SlotSwapsWhileOtherThreadsApply) {
  RedactorSlot slot(with_detectors({"emails"}));
  RedactStats stats;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> redacted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        Message m = message(event_with(
            "input", pack(std::string("a@b.io sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0"))));
        if (slot.apply(m, &stats)) redacted.fetch_add(1);
        std::string in = as_string(decoded(m).input);
        EXPECT_NE(in.find("[REDACTED:emails]"), std::string::npos);
      }
    });
  }
  for (int i = 0; i < 50; ++i)
    slot.store(with_detectors(i % 2 ? std::vector<std::string>{"emails"} : kAllDetectors));
  stop.store(true);
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(stats.snapshot().messages_redacted, redacted.load());
  EXPECT_EQ(stats.snapshot().matches["emails"], redacted.load());
  slot.store(nullptr);
  Message m = message(event_with("input", pack(std::string("a@b.io"))));
  EXPECT_FALSE(slot.apply(m, nullptr));
}

}  // namespace
}  // namespace sidetrace::ipc
