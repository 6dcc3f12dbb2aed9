#include "trace/document.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>
#include <string>

namespace sidetrace::trace {
namespace {

using Packer = msgpack::packer<msgpack::sbuffer>;

std::string bytes_of(const msgpack::sbuffer& b) {
  return std::string(b.data(), b.size());
}

// Packs with `fn` and converts the single value to JSON.
template <typename Fn>
std::string to_json(Fn fn, bool* ok = nullptr) {
  msgpack::sbuffer buf;
  Packer pk(buf);
  fn(pk);
  std::string out;
  JsonWriter w(&out);
  bool r = w.append_msgpack(bytes_of(buf));
  if (ok) *ok = r;
  return out;
}

std::string json_string(std::string_view s) {
  std::string out;
  JsonWriter w(&out);
  w.string(s);
  return out;
}

TEST(TraceJsonWriter, SeparatesValuesAutomatically) {
  std::string out;
  JsonWriter w(&out);
  w.begin_object();
  w.key("a");
  w.begin_array();
  w.int64(-1);
  w.uint64(18446744073709551615ull);
  w.boolean(true);
  w.null();
  w.begin_object();
  w.end_object();
  w.begin_array();
  w.end_array();
  w.end_array();
  w.key("b");
  w.number(1.5);
  w.key("c");
  w.optional_string(nullptr);
  w.end_object();
  EXPECT_EQ(out, R"({"a":[-1,18446744073709551615,true,null,{},[]],"b":1.5,"c":null})");
  EXPECT_TRUE(nlohmann::json::accept(out));
}

TEST(TraceJsonWriter, NonFiniteNumbersBecomeNull) {
  std::string out;
  JsonWriter w(&out);
  w.begin_array();
  w.number(std::nan(""));
  w.number(std::numeric_limits<double>::infinity());
  w.number(-std::numeric_limits<double>::infinity());
  w.number(0.1);
  w.end_array();
  EXPECT_EQ(out, "[null,null,null,0.1]");
}

TEST(TraceJsonWriter, EscapesControlCharactersAndQuotes) {
  EXPECT_EQ(json_string("a\"b\\c"), R"("a\"b\\c")");
  EXPECT_EQ(json_string("\n\r\t\b\f"), R"("\n\r\t\b\f")");
  EXPECT_EQ(json_string(std::string("\x00\x01\x1f", 3)), R"("\u0000\u0001\u001f")");
  EXPECT_EQ(json_string("\x7f"), "\"\x7f\"");
}

TEST(TraceJsonWriter, KeepsValidUtf8) {
  const std::string s = "h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";  // é € 😀
  EXPECT_EQ(json_string(s), "\"" + s + "\"");
}

TEST(TraceJsonWriter, ReplacesInvalidUtf8) {
  const std::string fffd = "\xef\xbf\xbd";
  EXPECT_EQ(json_string("a\xff"
                        "b"),
            "\"a" + fffd + "b\"");
  EXPECT_EQ(json_string("\xc3"), "\"" + fffd + "\"");                        // truncated
  EXPECT_EQ(json_string("\xc0\xaf"), "\"" + fffd + fffd + "\"");             // overlong
  EXPECT_EQ(json_string("\xed\xa0\x80"), "\"" + fffd + fffd + fffd + "\"");  // surrogate
  EXPECT_EQ(json_string("\xf4\x90\x80\x80"), "\"" + fffd + fffd + fffd + fffd + "\"");
  // The result is always valid JSON text that a strict parser accepts.
  std::string all;
  for (int c = 0; c < 256; ++c)
    all.push_back(static_cast<char>(c));
  auto parsed = nlohmann::json::parse(json_string(all));
  EXPECT_TRUE(parsed.is_string());
}

TEST(TraceBase64, MatchesRfc4648Vectors) {
  const std::pair<const char*, const char*> vectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (auto [in, want] : vectors) {
    std::string out;
    append_base64(in, &out);
    EXPECT_EQ(out, want) << in;
  }
}

TEST(TraceMsgpackToJson, Scalars) {
  EXPECT_EQ(to_json([](Packer& p) { p.pack_nil(); }), "null");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_true(); }), "true");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_uint64(18446744073709551615ull); }),
            "18446744073709551615");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_int64(std::numeric_limits<int64_t>::min()); }),
            "-9223372036854775808");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_fix_int8(-5); }), "-5");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_int16(-300); }), "-300");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_float(0.1f); }), "0.1");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_double(2.5); }), "2.5");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_double(std::nan("")); }), "null");
  EXPECT_EQ(to_json([](Packer& p) { p.pack_float(-INFINITY); }), "null");
  EXPECT_EQ(to_json([](Packer& p) { p.pack(std::string("hi\n")); }), R"("hi\n")");
}

TEST(TraceMsgpackToJson, BinaryBecomesMarker) {
  EXPECT_EQ(to_json([](Packer& p) {
              p.pack_bin(3);
              p.pack_bin_body("foo", 3);
            }),
            R"({"$binary":"Zm9v"})");
}

TEST(TraceMsgpackToJson, ExtBecomesMarker) {
  EXPECT_EQ(to_json([](Packer& p) {
              p.pack_ext(2, 5);
              p.pack_ext_body("fooba", 2);
            }),
            R"({"$ext":5,"$data":"Zm8="})");
  EXPECT_EQ(to_json([](Packer& p) {
              p.pack_ext(1, -7);
              p.pack_ext_body("f", 1);
            }),
            R"({"$ext":-7,"$data":"Zg=="})");
}

// Packs a msgpack timestamp ext (type -1) with the given big-endian body.
std::string timestamp_json(std::initializer_list<uint8_t> body) {
  return to_json([&](Packer& p) {
    std::string b(body.begin(), body.end());
    p.pack_ext(b.size(), -1);
    p.pack_ext_body(b.data(), b.size());
  });
}

TEST(TraceMsgpackToJson, TimestampExtBecomesNanoseconds) {
  // timestamp 32: seconds only
  EXPECT_EQ(timestamp_json({0, 0, 0, 5}), "5000000000");
  // timestamp 64: 30-bit nanoseconds, 34-bit seconds (1700000000 s + 123 ns)
  const uint64_t v64 = (uint64_t{123} << 34) | 1'700'000'000ull;
  std::initializer_list<uint8_t> b64 = {uint8_t(v64 >> 56), uint8_t(v64 >> 48), uint8_t(v64 >> 40),
                                        uint8_t(v64 >> 32), uint8_t(v64 >> 24), uint8_t(v64 >> 16),
                                        uint8_t(v64 >> 8),  uint8_t(v64)};
  EXPECT_EQ(timestamp_json(b64), "1700000000000000123");
  // timestamp 96: 32-bit nanoseconds, signed 64-bit seconds (-1 s + 0 ns)
  EXPECT_EQ(timestamp_json({0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}),
            "-1000000000");
  // beyond int64 nanoseconds, or nanoseconds out of range: the generic marker
  EXPECT_EQ(timestamp_json({0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0}),
            R"({"$ext":-1,"$data":"AAAAAH8AAAAAAAAA"})");
  EXPECT_EQ(timestamp_json({0x3b, 0x9a, 0xca, 0x00, 0, 0, 0, 0, 0, 0, 0, 1}),
            R"({"$ext":-1,"$data":"O5rKAAAAAAAAAAAB"})");
}

TEST(TraceMsgpackToJson, ContainersAndNonStringKeys) {
  const std::string json = to_json([](Packer& p) {
    p.pack_map(5);
    p.pack(std::string("s"));
    p.pack_array(3);
    p.pack(1);
    p.pack(std::string("x"));
    p.pack_array(0);
    p.pack(7);
    p.pack(std::string("int key"));
    p.pack_nil();
    p.pack(true);
    p.pack_array(2);
    p.pack(1);
    p.pack(2);
    p.pack(std::string("array key"));
    p.pack_map(1);
    p.pack(1);
    p.pack(2);
    p.pack_map(0);
  });
  EXPECT_EQ(json,
            R"({"s":[1,"x",[]],"7":"int key","null":true,"[1,2]":"array key","{\"1\":2}":{}})");
  EXPECT_TRUE(nlohmann::json::accept(json));
}

TEST(TraceMsgpackToJson, MalformedBytesBecomeNull) {
  const std::string cases[] = {
      std::string(""),
      std::string("\xc1", 1),      // never used
      std::string("\x92\x01", 2),  // array missing an element
      std::string("\xa5"
                  "ab",
                  3),                          // truncated string
      std::string("\xdd\xff\xff\xff\xff", 5),  // array count beyond the bytes
      std::string("\x81\x01", 2),              // map missing a value
  };
  for (const auto& c : cases) {
    std::string out = "[1";
    JsonWriter w(&out);
    EXPECT_FALSE(w.append_msgpack(c));
    w.end_array();
    EXPECT_EQ(out, "[1,null]");
  }
}

TEST(TraceMsgpackToJson, DeepNestingDoesNotExhaustTheStack) {
  const size_t depth = 200'000;
  std::string bytes(depth, '\x91');  // [[[[...]]]]
  bytes.push_back('\x01');
  std::string out;
  JsonWriter w(&out);
  ASSERT_TRUE(w.append_msgpack(bytes));
  EXPECT_EQ(out.size(), depth * 2 + 1);
  EXPECT_EQ(msgpack_value_size(bytes), bytes.size());
}

TEST(TraceMsgpackValueSize, MeasuresOneValue) {
  msgpack::sbuffer buf;
  Packer p(buf);
  p.pack_map(1);
  p.pack(std::string("k"));
  p.pack_array(2);
  p.pack(1.5);
  p.pack(std::string("v"));
  const size_t one = buf.size();
  p.pack(42);  // trailing value
  EXPECT_EQ(msgpack_value_size(bytes_of(buf)), one);
  EXPECT_EQ(msgpack_value_size(bytes_of(buf).substr(0, one - 1)), 0u);
}

TEST(TraceMergeMsgpackMap, LaterKeysReplaceInPlace) {
  msgpack::sbuffer a, b;
  Packer pa(a), pb(b);
  pa.pack_map(2);
  pa.pack(std::string("model"));
  pa.pack(std::string("m1"));
  pa.pack(std::string("tokens"));
  pa.pack(10);
  pb.pack_map(2);
  pb.pack(std::string("tokens"));
  pb.pack(12);
  pb.pack(3);
  pb.pack(std::string("three"));
  const std::string sa = bytes_of(a), sb = bytes_of(b);
  std::vector<MapEntry> merged;
  ASSERT_TRUE(merge_msgpack_map(sa, &merged));
  ASSERT_TRUE(merge_msgpack_map(sb, &merged));
  std::string out;
  JsonWriter w(&out);
  write_entries(w, merged);
  EXPECT_EQ(out, R"({"model":"m1","tokens":12,"3":"three"})");
}

TEST(TraceMergeMsgpackMap, RefusesNonMapsAndLeavesTheResultAlone) {
  std::vector<MapEntry> merged{{"k", "\x01"}};
  EXPECT_FALSE(merge_msgpack_map(std::string("\x91\x01", 2), &merged));
  EXPECT_FALSE(merge_msgpack_map(std::string("\x82\xa1k\x02", 4), &merged));  // truncated
  ASSERT_EQ(merged.size(), 1u);
  EXPECT_EQ(merged[0].value, "\x01");
}

TEST(TraceMergeMsgpackMap, LargeMapsMergeThroughTheIndex) {
  msgpack::sbuffer a, b;
  Packer pa(a), pb(b);
  pa.pack_map(100);
  for (int k = 0; k < 100; ++k) {
    pa.pack(std::to_string(k));
    pa.pack(k);
  }
  pb.pack_map(50);
  for (int k = 50; k < 150; k += 2) {
    pb.pack(std::to_string(k));
    pb.pack(-k);
  }
  const std::string sa = bytes_of(a), sb = bytes_of(b);
  std::vector<MapEntry> merged;
  ASSERT_TRUE(merge_msgpack_map(sa, &merged));
  ASSERT_TRUE(merge_msgpack_map(sb, &merged));
  EXPECT_EQ(merged.size(), 125u);
  std::string out;
  JsonWriter w(&out);
  write_entries(w, merged);
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["49"], 49);
  EXPECT_EQ(j["50"], -50);
  EXPECT_EQ(j["51"], 51);
  EXPECT_EQ(j["148"], -148);
}

}  // namespace
}  // namespace sidetrace::trace
