#include "trace/document.h"

#include "ipc/detail/msgpack_reader.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_map>

namespace sidetrace::trace {
namespace {

// Non-string map keys are rendered by a nested writer; a key that is itself a
// map with non-string keys nests again. Past this depth the value is refused.
constexpr int kMaxKeyDepth = 8;

enum class Tok : uint8_t {
  kNil,
  kBool,
  kUint,
  kInt,
  kFloat32,
  kFloat64,
  kStr,
  kBin,
  kExt,
  kArray,
  kMap
};

struct Token {
  Tok type = Tok::kNil;
  bool b = false;
  uint64_t u = 0;
  int64_t i = 0;
  double d = 0;
  float f = 0;
  int8_t ext_type = 0;
  uint64_t count = 0;     // array elements or map pairs
  std::string_view data;  // str, bin, ext payload
};

// Reads one token (a scalar, or a container header) at `p`, advancing it,
// with the protocol's own msgpack reader (ipc/detail/msgpack_reader.h).
// Returns false on truncated or invalid input; `p` is then unspecified.
bool read_token(const char*& p, const char* end, Token* t) {
  using ipc::detail::MpItem;
  using ipc::detail::MpType;
  MpItem it;
  const int h = ipc::detail::read_header(reinterpret_cast<const uint8_t*>(p),
                                         static_cast<size_t>(end - p), &it);
  if (h <= 0) return false;
  p += h;
  switch (it.type) {
    case MpType::kNil:
      t->type = Tok::kNil;
      return true;
    case MpType::kBool:
      t->type = Tok::kBool;
      t->b = it.b;
      return true;
    case MpType::kUint:
      t->type = Tok::kUint;
      t->u = it.u;
      return true;
    case MpType::kInt:
      t->type = Tok::kInt;
      t->i = it.i;
      return true;
    case MpType::kFloat:
      if (it.f32) {
        t->type = Tok::kFloat32;
        t->f = static_cast<float>(it.f);
      } else {
        t->type = Tok::kFloat64;
        t->d = it.f;
      }
      return true;
    case MpType::kStr:
    case MpType::kBin:
    case MpType::kExt:
      if (static_cast<size_t>(end - p) < it.len) return false;
      t->type = it.type == MpType::kStr   ? Tok::kStr
                : it.type == MpType::kBin ? Tok::kBin
                                          : Tok::kExt;
      t->ext_type = it.ext_type;
      t->data = std::string_view(p, it.len);
      p += it.len;
      return true;
    case MpType::kArray:
    case MpType::kMap: {
      t->type = it.type == MpType::kMap ? Tok::kMap : Tok::kArray;
      t->count = it.len;
      // Every element takes at least one byte, so a count beyond the
      // remaining bytes is malformed; refusing it early bounds the work.
      const uint64_t elements = t->type == Tok::kMap ? t->count * 2 : t->count;
      return elements <= static_cast<uint64_t>(end - p);
    }
  }
  return false;
}

// Decodes the msgpack timestamp ext payload to ns since the epoch.
bool timestamp_ns(std::string_view d, int64_t* ns) {
  int64_t sec = 0;
  uint64_t nsec = 0;
  const auto* b = reinterpret_cast<const uint8_t*>(d.data());
  if (d.size() == 4) {
    sec = ipc::detail::load_be32(b);
  } else if (d.size() == 8) {
    uint64_t v = ipc::detail::load_be64(b);
    nsec = v >> 34;
    sec = static_cast<int64_t>(v & 0x3ffffffffull);
  } else if (d.size() == 12) {
    nsec = ipc::detail::load_be32(b);
    sec = static_cast<int64_t>(ipc::detail::load_be64(b + 4));
  } else {
    return false;
  }
  if (nsec >= 1'000'000'000ull) return false;
  int64_t whole = 0;
  if (__builtin_mul_overflow(sec, int64_t{1'000'000'000}, &whole)) return false;
  return !__builtin_add_overflow(whole, static_cast<int64_t>(nsec), ns);
}

// Length of the valid UTF-8 sequence at s[0] (2..4), or 0 when invalid.
size_t utf8_sequence(const unsigned char* s, size_t avail) {
  const unsigned char c = s[0];
  const auto cont = [&](size_t k) { return k < avail && (s[k] & 0xc0) == 0x80; };
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xe0 && s[1] < 0xa0) return 0;   // overlong
    if (c == 0xed && s[1] >= 0xa0) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xf0 && s[1] < 0x90) return 0;   // overlong
    if (c == 0xf4 && s[1] >= 0x90) return 0;  // beyond U+10FFFF
    return 4;
  }
  return 0;
}

// Which bytes below 0x80 need escaping: control characters, '"' and '\'.
constexpr bool needs_escape(unsigned char c) {
  return c < 0x20 || c == '"' || c == '\\';
}

}  // namespace

void JsonWriter::raw_string(std::string_view s) {
  std::string& o = *out_;
  o.push_back('"');
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t run = 0;  // start of the pending run of bytes copied verbatim
  size_t k = 0;
  while (k < n) {
    // Skip eight plain bytes at a time: none >= 0x80, < 0x20, '"' or '\\'.
    while (k + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, b + k, 8);
      constexpr uint64_t kOnes = 0x0101010101010101ull, kHigh = 0x8080808080808080ull;
      const auto has_zero = [](uint64_t v) { return (v - kOnes) & ~v & kHigh; };
      const uint64_t special = (w & kHigh) | ((w - kOnes * 0x20) & ~w & kHigh) |
                               has_zero(w ^ (kOnes * '"')) | has_zero(w ^ (kOnes * '\\'));
      if (special != 0) break;
      k += 8;
    }
    if (k >= n) break;
    const unsigned char c = b[k];
    if (c < 0x80) {
      if (!needs_escape(c)) {
        ++k;
        continue;
      }
      o.append(s.data() + run, k - run);
      switch (c) {
        case '"':
          o.append("\\\"");
          break;
        case '\\':
          o.append("\\\\");
          break;
        case '\n':
          o.append("\\n");
          break;
        case '\r':
          o.append("\\r");
          break;
        case '\t':
          o.append("\\t");
          break;
        case '\b':
          o.append("\\b");
          break;
        case '\f':
          o.append("\\f");
          break;
        default: {
          static constexpr char kHex[] = "0123456789abcdef";
          const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
          o.append(esc, 6);
        }
      }
      run = ++k;
      continue;
    }
    const size_t len = utf8_sequence(b + k, n - k);
    if (len != 0) {
      k += len;
      continue;
    }
    o.append(s.data() + run, k - run);
    o.append("\xef\xbf\xbd");  // U+FFFD REPLACEMENT CHARACTER
    run = ++k;
  }
  o.append(s.data() + run, n - run);
  o.push_back('"');
}

void JsonWriter::key(std::string_view k) {
  separate();
  raw_string(k);
  out_->push_back(':');
}

void JsonWriter::null() {
  separate();
  out_->append("null");
}

void JsonWriter::boolean(bool b) {
  separate();
  out_->append(b ? "true" : "false");
}

void JsonWriter::int64(int64_t v) {
  separate();
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out_->append(buf, r.ptr);
}

void JsonWriter::uint64(uint64_t v) {
  separate();
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out_->append(buf, r.ptr);
}

void JsonWriter::number(double v) {
  if (!std::isfinite(v)) return null();
  separate();
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out_->append(buf, r.ptr);
}

void JsonWriter::string(std::string_view s) {
  separate();
  raw_string(s);
}

bool JsonWriter::append_msgpack(std::string_view bytes) {
  return convert(bytes, 0);
}

bool JsonWriter::convert(std::string_view bytes, int key_depth) {
  const size_t mark = out_->size();
  const char* p = bytes.data();
  const char* const end = p + bytes.size();
  stack_.clear();
  const auto fail = [&] {
    out_->resize(mark);
    stack_.clear();
    null();
    return false;
  };
  Token t;
  bool started = false;
  for (;;) {
    while (!stack_.empty() && stack_.back().remaining == 0) {
      out_->push_back(stack_.back().map ? '}' : ']');
      stack_.pop_back();
    }
    if (stack_.empty() && started) return true;
    started = true;
    bool as_key = false;
    if (!stack_.empty()) {
      Frame& f = stack_.back();
      --f.remaining;
      if (f.map) {
        as_key = f.want_key;
        f.want_key = !f.want_key;
      }
    }
    const char* const at = p;
    if (!read_token(p, end, &t)) return fail();
    if (as_key) {
      if (t.type == Tok::kStr) {
        key(t.data);
        continue;
      }
      const size_t n = msgpack_value_size(std::string_view(at, static_cast<size_t>(end - at)));
      if (n == 0 || !stringify_key(std::string_view(at, n), key_depth + 1, &key_scratch_)) {
        return fail();
      }
      key(key_scratch_);
      p = at + n;
      continue;
    }
    switch (t.type) {
      case Tok::kNil:
        null();
        break;
      case Tok::kBool:
        boolean(t.b);
        break;
      case Tok::kUint:
        uint64(t.u);
        break;
      case Tok::kInt:
        int64(t.i);
        break;
      case Tok::kFloat32: {
        if (!std::isfinite(t.f)) {
          null();
          break;
        }
        separate();
        char buf[32];
        auto r = std::to_chars(buf, buf + sizeof(buf), t.f);
        out_->append(buf, r.ptr);
        break;
      }
      case Tok::kFloat64:
        number(t.d);
        break;
      case Tok::kStr:
        string(t.data);
        break;
      case Tok::kBin:
        begin_object();
        key("$binary");
        separate();
        out_->push_back('"');
        append_base64(t.data, out_);
        out_->push_back('"');
        end_object();
        break;
      case Tok::kExt: {
        int64_t ns = 0;
        if (t.ext_type == -1 && timestamp_ns(t.data, &ns)) {
          int64(ns);
          break;
        }
        begin_object();
        key("$ext");
        int64(t.ext_type);
        key("$data");
        separate();
        out_->push_back('"');
        append_base64(t.data, out_);
        out_->push_back('"');
        end_object();
        break;
      }
      case Tok::kArray:
        begin_array();
        stack_.push_back(Frame{t.count, false, false});
        break;
      case Tok::kMap:
        begin_object();
        stack_.push_back(Frame{t.count * 2, true, true});
        break;
    }
  }
}

bool JsonWriter::stringify_key(std::string_view value, int key_depth, std::string* text) {
  if (key_depth > kMaxKeyDepth) return false;
  text->clear();
  JsonWriter w(text);
  return w.convert(value, key_depth);
}

void append_base64(std::string_view bytes, std::string* out) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  const size_t start = out->size();
  out->resize(start + (n + 2) / 3 * 4);
  char* o = out->data() + start;
  size_t k = 0;
  for (; k + 3 <= n; k += 3) {
    const uint32_t v = (uint32_t{b[k]} << 16) | (uint32_t{b[k + 1]} << 8) | b[k + 2];
    *o++ = kAlphabet[(v >> 18) & 63];
    *o++ = kAlphabet[(v >> 12) & 63];
    *o++ = kAlphabet[(v >> 6) & 63];
    *o++ = kAlphabet[v & 63];
  }
  if (k < n) {
    uint32_t v = uint32_t{b[k]} << 16;
    if (k + 1 < n) v |= uint32_t{b[k + 1]} << 8;
    *o++ = kAlphabet[(v >> 18) & 63];
    *o++ = kAlphabet[(v >> 12) & 63];
    *o++ = k + 1 < n ? kAlphabet[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
}

size_t msgpack_value_size(std::string_view bytes) {
  const char* p = bytes.data();
  const char* const end = p + bytes.size();
  uint64_t pending = 1;  // values still to skip
  Token t;
  while (pending > 0) {
    if (!read_token(p, end, &t)) return 0;
    --pending;
    if (t.type == Tok::kArray) pending += t.count;
    if (t.type == Tok::kMap) pending += t.count * 2;
  }
  return static_cast<size_t>(p - bytes.data());
}

bool merge_msgpack_map(std::string_view bytes, std::vector<MapEntry>* out) {
  if (msgpack_value_size(bytes) == 0) return false;
  const char* p = bytes.data();
  const char* const end = p + bytes.size();
  Token t;
  if (!read_token(p, end, &t) || t.type != Tok::kMap) return false;
  // Stringify every key first so that a bad key leaves `out` untouched.
  struct Parsed {
    std::string key;
    std::string_view value;
  };
  std::vector<Parsed> parsed;
  parsed.reserve(t.count);
  for (uint64_t k = 0; k < t.count; ++k) {
    const char* at = p;
    Token kt;
    if (!read_token(p, end, &kt)) return false;
    Parsed e;
    if (kt.type == Tok::kStr) {
      e.key.assign(kt.data);
    } else {
      const size_t n = msgpack_value_size(std::string_view(at, static_cast<size_t>(end - at)));
      JsonWriter w(&e.key);
      if (n == 0 || !w.append_msgpack(std::string_view(at, n))) return false;
      p = at + n;
    }
    const size_t vn = msgpack_value_size(std::string_view(p, static_cast<size_t>(end - p)));
    if (vn == 0) return false;
    e.value = std::string_view(p, vn);
    p += vn;
    parsed.push_back(std::move(e));
  }
  // Small maps (the common case) merge by linear search; larger ones through a
  // hash index over the keys already present.
  constexpr size_t kLinearLimit = 16;
  out->reserve(out->size() + parsed.size());
  if (out->size() + parsed.size() <= kLinearLimit) {
    for (auto& e : parsed) {
      bool replaced = false;
      for (auto& have : *out) {
        if (have.key == e.key) {
          have.value = e.value;
          replaced = true;
          break;
        }
      }
      if (!replaced) out->push_back(MapEntry{std::move(e.key), e.value});
    }
    return true;
  }
  std::unordered_map<std::string, size_t> index;
  index.reserve(out->size() + parsed.size());
  for (size_t k = 0; k < out->size(); ++k)
    index.emplace((*out)[k].key, k);
  for (auto& e : parsed) {
    auto [it, inserted] = index.emplace(e.key, out->size());
    if (inserted) {
      out->push_back(MapEntry{std::move(e.key), e.value});
    } else {
      (*out)[it->second].value = e.value;
    }
  }
  return true;
}

void write_entries(JsonWriter& w, const std::vector<MapEntry>& entries) {
  w.begin_object();
  for (const auto& e : entries) {
    w.key(e.key);
    w.append_msgpack(e.value);
  }
  w.end_object();
}

}  // namespace sidetrace::trace
