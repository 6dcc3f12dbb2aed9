#include "upstream/detail/json_dom.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace sidetrace::upstream::detail {
namespace {

using nlohmann::json;
using Type = JsonDom::Type;

// The DOM's tree as an nlohmann::json, for comparison with its parser.
json to_json(const JsonDom& d, JsonDom::Index i) {
  std::string scratch;
  switch (d.type(i)) {
    case Type::kNull:
      return nullptr;
    case Type::kBool:
      return d.boolean(i);
    case Type::kString:
      return std::string(d.string(i, &scratch));
    case Type::kNumber:
      if (auto v = d.int64(i)) return *v;
      if (auto v = d.uint64(i)) return *v;
      return d.number(i);
    case Type::kArray: {
      json a = json::array();
      for (auto c = d.first_child(i); c != JsonDom::kNone; c = d.next(i, c))
        a.push_back(to_json(d, c));
      return a;
    }
    case Type::kObject: {
      json o = json::object();
      for (auto c = d.first_child(i); c != JsonDom::kNone; c = d.next(i, c))
        o[std::string(d.key(c, &scratch))] = to_json(d, c);
      return o;
    }
  }
  return nullptr;
}

TEST(JsonDom, ReadsValuesInPlace) {
  const std::string text =
      R"( {"a":1,"b":[true,false,null,-2,3.5e2,18446744073709551615,1e400],)"
      R"("s":"plain","e":"tab\there \"q\" \u00e9 \ud83d\ude00 \ud800 \/","n":{"x":{}},"a":7} )";
  JsonDom d;
  ASSERT_TRUE(d.parse(text));
  const auto root = d.root();
  ASSERT_EQ(d.type(root), Type::kObject);
  EXPECT_EQ(d.int64(d.find(root, "a")), 7);  // the last of a repeated key
  EXPECT_EQ(d.find(root, "absent"), JsonDom::kNone);
  EXPECT_EQ(d.find(d.find(root, "a"), "x"), JsonDom::kNone);  // not an object
  std::string scratch;
  const auto s = d.find(root, "s");
  EXPECT_EQ(d.string(s, &scratch), "plain");
  EXPECT_EQ(d.string(s, &scratch).data(), text.data() + text.find("plain"));  // a view
  EXPECT_EQ(d.string(d.find(root, "e"), &scratch),
            "tab\there \"q\" \xc3\xa9 \xf0\x9f\x98\x80 \xef\xbf\xbd /");
  const auto b = d.find(root, "b");
  std::vector<JsonDom::Index> items;
  for (auto c = d.first_child(b); c != JsonDom::kNone; c = d.next(b, c))
    items.push_back(c);
  ASSERT_EQ(items.size(), 7u);
  EXPECT_TRUE(d.boolean(items[0]));
  EXPECT_FALSE(d.boolean(items[1]));
  EXPECT_TRUE(d.is_null(items[2]));
  EXPECT_EQ(d.int64(items[3]), -2);
  EXPECT_FALSE(d.uint64(items[3]));
  EXPECT_FALSE(d.is_integer(items[4]));
  EXPECT_EQ(d.number(items[4]), 350.0);
  EXPECT_FALSE(d.int64(items[5]));
  EXPECT_EQ(d.uint64(items[5]), UINT64_MAX);
  EXPECT_GT(d.number(items[6]), 1e308);  // out of range: the largest double
  EXPECT_EQ(d.text(b), R"([true,false,null,-2,3.5e2,18446744073709551615,1e400])");
  EXPECT_EQ(d.text(d.find(root, "n")), R"({"x":{}})");
  EXPECT_EQ(d.first_child(d.find(d.find(root, "n"), "x")), JsonDom::kNone);
  // The tree is replaced by the next document.
  ASSERT_TRUE(d.parse("[]"));
  EXPECT_EQ(d.type(d.root()), Type::kArray);
  EXPECT_EQ(d.first_child(d.root()), JsonDom::kNone);
}

TEST(JsonDom, RejectsWhatIsNotJson) {
  JsonDom d;
  for (std::string bad : {"",
                          "  ",
                          "{",
                          "}",
                          "[1,]",
                          "{\"a\":1,}",
                          "{\"a\" 1}",
                          "{a:1}",
                          "{'a':1}",
                          "[01]",
                          "[1.]",
                          "[.5]",
                          "[-]",
                          "[1e]",
                          "[+1]",
                          "[NaN]",
                          "[tru]",
                          "[nul]",
                          "\"open",
                          "\"ctl\x01\"",
                          "\"\\x\"",
                          "\"\\u12\"",
                          "\"\\u12g4\"",
                          "\"\xff\"",
                          "\"\xc0\xaf\"",
                          "\"\xed\xa0\x80\"",
                          "\"\xf4\x90\x80\x80\"",
                          "\"\xe2\x82\"",
                          "[1] [2]",
                          "{\"a\":1}x",
                          "[1,,2]",
                          "[\"a\" \"b\"]"}) {
    EXPECT_FALSE(d.parse(bad)) << bad;
    EXPECT_EQ(d.root(), JsonDom::kNone) << bad;
  }
}

// Nesting of any depth costs no stack.
TEST(JsonDom, DeepNestingIsNotRecursive) {
  const size_t depth = 1'000'000;
  std::string text(depth, '[');
  text.append(depth, ']');
  JsonDom d;
  ASSERT_TRUE(d.parse(text));
  JsonDom::Index i = d.root();
  for (size_t k = 1; k < depth; ++k)
    i = d.first_child(i);
  EXPECT_EQ(d.text(i), "[]");
  text.pop_back();
  EXPECT_FALSE(d.parse(text));
}

class Gen {
 public:
  explicit Gen(uint64_t seed) : rng_(seed) {}
  uint64_t below(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng_); }
  std::string str() {
    static const char* pieces[] = {"a",
                                   "Z",
                                   " ",
                                   "\"",
                                   "\\",
                                   "/",
                                   "\n",
                                   "\t",
                                   "\x01",
                                   "\x7f",
                                   "\xc3\xa9",
                                   "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80",
                                   "key",
                                   "0"};
    std::string s;
    for (uint64_t k = below(6); k > 0; --k)
      s += pieces[below(std::size(pieces))];
    return s;
  }
  json value(int depth) {
    switch (below(depth > 4 ? 6 : 8)) {
      case 0:
        return nullptr;
      case 1:
        return below(2) == 0;
      case 2:
        return static_cast<int64_t>(rng_()) >> below(64);
      case 3:
        return rng_() >> below(64);
      case 4:
        return std::ldexp(static_cast<double>(rng_() % 1000000) - 500000.0,
                          static_cast<int>(below(200)) - 100);
      case 5:
        return str();
      case 6: {
        json a = json::array();
        for (uint64_t k = below(5); k > 0; --k)
          a.push_back(value(depth + 1));
        return a;
      }
      default: {
        json o = json::object();
        for (uint64_t k = below(5); k > 0; --k)
          o[str()] = value(depth + 1);
        return o;
      }
    }
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  std::mt19937_64 rng_;
};

// Random documents, compact and indented, read as nlohmann reads them; and
// with random bytes changed, inserted or removed: accepted exactly when
// nlohmann accepts.
TEST(JsonDom, AgreesWithNlohmannOnRandomDocuments) {
  JsonDom d;
  size_t mutated = 0;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    Gen g(seed);
    const json want = g.value(0);
    for (int indent : {-1, 2}) {
      const std::string text = want.dump(indent);
      ASSERT_TRUE(d.parse(text)) << text;
      EXPECT_EQ(to_json(d, d.root()), json::parse(text)) << text;
    }
    std::string text = want.dump();
    for (int k = 0; k < 20 && !text.empty(); ++k) {
      std::string m = text;
      static const char bytes[] = "{}[],:\"\\u0123456789.eE-+ntfx\x01\xff\xc3";
      const size_t at = g.below(m.size());
      switch (g.below(3)) {
        case 0:
          m[at] = bytes[g.below(sizeof(bytes) - 1)];
          break;
        case 1:
          m.erase(at, 1);
          break;
        default:
          m.insert(at, 1, bytes[g.below(sizeof(bytes) - 1)]);
      }
      // nlohmann refuses escaped surrogates without their pair, which the
      // DOM reads as U+FFFD, and numbers past the range of a double, which
      // the DOM reads as the largest one (JSON itself has no such limit):
      // such texts are left out.
      if (m.find("\\u") != std::string::npos) continue;
      bool accepted = true;
      try {
        json parsed = json::parse(m);
        (void)parsed;
      } catch (const json::parse_error&) {
        accepted = false;
      } catch (const json::out_of_range&) {
        continue;  // number overflow
      }
      EXPECT_EQ(d.parse(m), accepted) << m;
      ++mutated;
    }
  }
  EXPECT_GT(mutated, 3000u);
}

}  // namespace
}  // namespace sidetrace::upstream::detail
