// A read-only JSON tree over text that stays where it is: the encoder's
// view of a trace document. Parsing records one node per value in a vector
// that is reused from document to document; strings, numbers and the text of
// nested values are views into the source, unescaped only when asked for. It
// is several times faster than building an nlohmann::json, whose lexer and
// allocations were most of an OTLP body's cost (bench/encode_bench.cpp).
//
// The parser accepts exactly RFC 8259 JSON (one value, optional white space
// around it) whose strings are valid UTF-8, and rejects everything else. It
// is not recursive: nesting of any depth costs no stack.
//
// Thread safety: none; one JsonDom per thread. Ownership: the DOM borrows
// the text given to parse(), which must outlive every view taken from it.
// Errors: parse() returns false on malformed input and never throws (other
// than std::bad_alloc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::upstream::detail {

class JsonDom {
 public:
  enum class Type : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  using Index = uint32_t;
  static constexpr Index kNone = UINT32_MAX;

  // Parses `text`, replacing the previous tree. False when it is not JSON;
  // the tree is then empty.
  bool parse(std::string_view text);
  Index root() const { return nodes_.empty() ? kNone : 0; }

  Type type(Index i) const { return nodes_[i].type; }
  bool is_null(Index i) const { return i == kNone || nodes_[i].type == Type::kNull; }
  // The member `key` of object `i` (the last one when repeated), or kNone
  // (also when `i` is kNone or not an object).
  Index find(Index i, std::string_view key) const;

  // Children of an array, or the member values of an object, in order:
  // for (Index c = first_child(i); c != kNone; c = next(i, c)).
  Index first_child(Index i) const;
  Index next(Index parent, Index child) const {
    Index n = nodes_[child].end;
    return n < nodes_[parent].end ? n : kNone;
  }
  // The key of an object member (as it is written, escapes resolved into
  // *scratch when it has any).
  std::string_view key(Index member, std::string* scratch) const;

  bool boolean(Index i) const { return nodes_[i].flag; }
  // A string's value; escapes are resolved into *scratch when it has any.
  std::string_view string(Index i, std::string* scratch) const;
  // A string's value, or "" for kNone and other types.
  std::string_view string_or_empty(Index i, std::string* scratch) const;
  // A number that is an integer in range, as int64 or uint64.
  bool is_integer(Index i) const { return nodes_[i].type == Type::kNumber && nodes_[i].flag; }
  std::optional<int64_t> int64(Index i) const;
  std::optional<uint64_t> uint64(Index i) const;
  double number(Index i) const;
  // The JSON text of any value, as written in the source.
  std::string_view text(Index i) const { return nodes_[i].text; }

 private:
  struct Node {
    Type type = Type::kNull;
    // kBool: its value; kString: holds escapes; kNumber: an integer.
    bool flag = false;
    bool key_escaped = false;
    Index end = 0;          // one past the last node of this value's subtree
    std::string_view text;  // kString: between the quotes; else the value's whole text
    std::string_view key;   // as a member of an object: the key between its quotes
  };
  bool parse_string(std::string_view s, size_t* pos, std::string_view* out, bool* escaped) const;
  bool parse_number(std::string_view s, size_t* pos, bool* integer) const;
  static void unescape(std::string_view raw, std::string* out);

  std::vector<Node> nodes_;
  std::vector<Index> open_;  // containers being parsed
};

}  // namespace sidetrace::upstream::detail
