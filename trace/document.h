// The JSON writer behind the trace document (docs/trace-document.md), and the
// converter from raw msgpack bytes to JSON.
//
// JsonWriter appends compact JSON text to a caller-owned std::string. Commas
// are inserted automatically between the values of an object or array, so a
// caller only opens, writes and closes. The writer does not check that the
// calls form valid JSON (a key outside an object, an unclosed array): the
// caller is trusted, the writer stays branch-light.
//
// Conversion rules (the same everywhere in the document):
//   - strings are escaped (", \, control characters as \uXXXX or the short
//     forms); invalid UTF-8 sequences are replaced by U+FFFD, one per bad byte;
//   - msgpack nil/bool/int/float become their JSON forms; NaN and +-Inf
//     become null; float32 and float64 are written in their shortest
//     round-trip decimal form;
//   - map keys that are not strings are stringified: the key's own JSON text
//     becomes the key ({1: "a"} -> {"1":"a"}, {nil: 1} -> {"null":1});
//   - bin becomes {"$binary":"<base64>"} (standard alphabet, padded);
//   - the msgpack timestamp ext (type -1) becomes an integer number of ns since
//     the Unix epoch when it fits in int64, otherwise the generic ext marker;
//   - every other ext becomes {"$ext":<type>,"$data":"<base64>"}.
//
// Ownership: the writer borrows `out`, which must outlive it.
// Thread safety: a writer is used by one thread at a time; distinct writers
// share nothing.
// Errors: append_msgpack() never throws; on malformed or truncated bytes it
// writes null in place of the whole value and returns false.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sidetrace::trace {

class JsonWriter {
 public:
  explicit JsonWriter(std::string* out) : out_(out) {}

  void begin_object() { open('{'); }
  void end_object() { out_->push_back('}'); }
  void begin_array() { open('['); }
  void end_array() { out_->push_back(']'); }

  // An object key (escaped like any string), followed by the ':'.
  void key(std::string_view k);
  // A key known to need no escaping (plain ASCII, no '"', '\\' or control
  // characters), written without scanning it: for the document's fixed keys.
  void key_literal(std::string_view k) {
    separate();
    out_->push_back('"');
    out_->append(k);
    out_->append("\":", 2);
  }

  void null();
  void boolean(bool b);
  void int64(int64_t v);
  void uint64(uint64_t v);
  // NaN and infinities are written as null.
  void number(double v);
  void string(std::string_view s);
  // A string or null when `s` is null.
  void optional_string(const std::string* s) { s ? string(*s) : null(); }

  // Writes the JSON form of the single msgpack value in `bytes` (trailing
  // bytes are ignored). Returns false and writes null when the bytes are not
  // one well-formed msgpack value.
  bool append_msgpack(std::string_view bytes);

  std::string& out() { return *out_; }

 private:
  void open(char c) {
    separate();
    out_->push_back(c);
  }
  // Appends ',' unless the previous token opened a container or was a key.
  void separate() {
    if (!out_->empty()) {
      char last = out_->back();
      if (last != '{' && last != '[' && last != ':') out_->push_back(',');
    }
  }
  void raw_string(std::string_view s);
  // append_msgpack() for a value nested `key_depth` levels deep in map keys.
  bool convert(std::string_view bytes, int key_depth);
  // Renders a non-string map key's JSON text into `text`.
  static bool stringify_key(std::string_view value, int key_depth, std::string* text);

  std::string* out_;
  struct Frame {
    uint64_t remaining;  // values still to read in this container
    bool map;            // a map (keys and values alternate)
    bool want_key;       // for maps: the next value read is a key
  };
  std::vector<Frame> stack_;  // reused across calls; no per-value allocation
  std::string key_scratch_;   // stringified non-string map keys
};

// Standard base64 (RFC 4648, padded), appended to `out`.
void append_base64(std::string_view bytes, std::string* out);

// Returns the size in bytes of the msgpack value starting at bytes[0], or 0
// when the bytes do not begin with one complete, well-formed value. Iterative:
// arbitrarily deep nesting cannot exhaust the call stack.
size_t msgpack_value_size(std::string_view bytes);

// One entry of a msgpack map: the key's text (a string key's bytes, or the
// JSON text of any other key) and the raw msgpack bytes of the value.
struct MapEntry {
  std::string key;
  std::string_view value;
};

// Appends the entries of the msgpack map in `bytes` to `out`, each key
// replacing an entry of the same key already in `out` (in place, so the first
// appearance fixes the position). Returns false, leaving `out` as it was,
// when `bytes` is not one well-formed msgpack map. The values point into
// `bytes`, which must outlive `out`.
bool merge_msgpack_map(std::string_view bytes, std::vector<MapEntry>* out);

// Writes merged entries as one JSON object.
void write_entries(JsonWriter& w, const std::vector<MapEntry>& entries);

}  // namespace sidetrace::trace
