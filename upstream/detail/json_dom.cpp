#include "upstream/detail/json_dom.h"

#include <charconv>

namespace sidetrace::upstream::detail {

namespace {

bool is_ws(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

void skip_ws(std::string_view s, size_t* pos) {
  while (*pos < s.size() && is_ws(s[*pos]))
    ++*pos;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The length of the well-formed UTF-8 sequence at s[pos] (a lead byte >=
// 0x80), or 0: no overlong forms, no surrogates, nothing above U+10FFFF.
size_t utf8_sequence(std::string_view s, size_t pos) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[pos + k]); };
  const auto cont = [&](size_t k) { return pos + k < s.size() && (b(k) & 0xc0) == 0x80; };
  const unsigned char c = b(0);
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xe0 && b(1) < 0xa0) return 0;   // overlong
    if (c == 0xed && b(1) >= 0xa0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xf0 && b(1) < 0x90) return 0;   // overlong
    if (c == 0xf4 && b(1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xc0 | cp >> 6));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xe0 | cp >> 12));
    out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  } else {
    out->push_back(static_cast<char>(0xf0 | cp >> 18));
    out->push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3f)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
}

uint32_t hex4(std::string_view s) {
  uint32_t v = 0;
  for (size_t k = 0; k < 4; ++k)
    v = v << 4 | static_cast<uint32_t>(hex_value(s[k]));
  return v;
}

}  // namespace

bool JsonDom::parse_string(std::string_view s, size_t* pos, std::string_view* out,
                           bool* escaped) const {
  // s[*pos] is the opening quote.
  size_t p = *pos + 1;
  const size_t begin = p;
  *escaped = false;
  while (p < s.size()) {
    const auto c = static_cast<unsigned char>(s[p]);
    if (c == '"') {
      *out = s.substr(begin, p - begin);
      *pos = p + 1;
      return true;
    }
    if (c < 0x20) return false;
    if (c == '\\') {
      *escaped = true;
      if (p + 1 >= s.size()) return false;
      const char e = s[p + 1];
      if (e == 'u') {
        if (p + 6 > s.size()) return false;
        for (size_t k = 2; k < 6; ++k) {
          if (hex_value(s[p + k]) < 0) return false;
        }
        p += 6;
      } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                 e == 'r' || e == 't') {
        p += 2;
      } else {
        return false;
      }
      continue;
    }
    if (c < 0x80) {
      ++p;
      continue;
    }
    const size_t n = utf8_sequence(s, p);
    if (n == 0) return false;
    p += n;
  }
  return false;
}

bool JsonDom::parse_number(std::string_view s, size_t* pos, bool* integer) const {
  size_t p = *pos;
  const auto digit = [&](size_t k) { return k < s.size() && s[k] >= '0' && s[k] <= '9'; };
  *integer = true;
  if (p < s.size() && s[p] == '-') ++p;
  if (!digit(p)) return false;
  if (s[p] == '0') {
    ++p;
  } else {
    while (digit(p))
      ++p;
  }
  if (p < s.size() && s[p] == '.') {
    *integer = false;
    ++p;
    if (!digit(p)) return false;
    while (digit(p))
      ++p;
  }
  if (p < s.size() && (s[p] == 'e' || s[p] == 'E')) {
    *integer = false;
    ++p;
    if (p < s.size() && (s[p] == '+' || s[p] == '-')) ++p;
    if (!digit(p)) return false;
    while (digit(p))
      ++p;
  }
  *pos = p;
  return true;
}

bool JsonDom::parse(std::string_view s) {
  nodes_.clear();
  open_.clear();
  size_t pos = 0;
  std::string_view key;
  bool key_escaped = false;
  const auto fail = [&] {
    nodes_.clear();
    open_.clear();
    return false;
  };
  for (;;) {
    // A value.
    skip_ws(s, &pos);
    if (pos >= s.size() || nodes_.size() >= kNone - 1) return fail();
    const Index index = static_cast<Index>(nodes_.size());
    Node& n = nodes_.emplace_back();
    n.key = key;
    n.key_escaped = key_escaped;
    key = {};
    key_escaped = false;
    const size_t start = pos;
    const char c = s[pos];
    bool opened = false;
    if (c == '{' || c == '[') {
      n.type = c == '{' ? Type::kObject : Type::kArray;
      n.text = s.substr(start, 0);  // completed when the container closes
      open_.push_back(index);
      ++pos;
      skip_ws(s, &pos);
      if (pos < s.size() && s[pos] == (c == '{' ? '}' : ']')) {
        // Empty: closed below like any other value.
        open_.pop_back();
        ++pos;
        n.text = s.substr(start, pos - start);
      } else {
        opened = true;
      }
    } else if (c == '"') {
      n.type = Type::kString;
      if (!parse_string(s, &pos, &n.text, &n.flag)) return fail();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      n.type = Type::kNumber;
      if (!parse_number(s, &pos, &n.flag)) return fail();
      n.text = s.substr(start, pos - start);
    } else if (s.substr(pos, 4) == "true" || s.substr(pos, 4) == "null") {
      n.type = c == 'n' ? Type::kNull : Type::kBool;
      n.flag = c == 't';
      pos += 4;
      n.text = s.substr(start, 4);
    } else if (s.substr(pos, 5) == "false") {
      n.type = Type::kBool;
      pos += 5;
      n.text = s.substr(start, 5);
    } else {
      return fail();
    }
    if (!opened) nodes_[index].end = index + 1;
    // What follows: the first key of an opened object, or the separators
    // and closings after a complete value.
    bool need_key = opened && c == '{';
    if (!opened) {
      for (;;) {
        if (open_.empty()) {
          skip_ws(s, &pos);
          if (pos != s.size()) return fail();
          return true;
        }
        Node& parent = nodes_[open_.back()];
        skip_ws(s, &pos);
        if (pos >= s.size()) return fail();
        const char d = s[pos];
        if (d == ',') {
          ++pos;
          need_key = parent.type == Type::kObject;
          break;
        }
        if (d != (parent.type == Type::kObject ? '}' : ']')) return fail();
        ++pos;
        const size_t from = static_cast<size_t>(parent.text.data() - s.data());
        parent.text = s.substr(from, pos - from);
        parent.end = static_cast<Index>(nodes_.size());
        open_.pop_back();
      }
    }
    if (need_key) {
      skip_ws(s, &pos);
      if (pos >= s.size() || s[pos] != '"') return fail();
      if (!parse_string(s, &pos, &key, &key_escaped)) return fail();
      skip_ws(s, &pos);
      if (pos >= s.size() || s[pos] != ':') return fail();
      ++pos;
    }
  }
}

JsonDom::Index JsonDom::first_child(Index i) const {
  if (i == kNone) return kNone;
  const Node& n = nodes_[i];
  if (n.type != Type::kObject && n.type != Type::kArray) return kNone;
  return i + 1 < n.end ? i + 1 : kNone;
}

JsonDom::Index JsonDom::find(Index i, std::string_view key) const {
  if (i == kNone || nodes_[i].type != Type::kObject) return kNone;
  Index found = kNone;
  std::string scratch;
  for (Index c = first_child(i); c != kNone; c = next(i, c)) {
    const Node& m = nodes_[c];
    if (m.key_escaped ? this->key(c, &scratch) == key : m.key == key) found = c;
  }
  return found;
}

std::string_view JsonDom::key(Index member, std::string* scratch) const {
  const Node& m = nodes_[member];
  if (!m.key_escaped) return m.key;
  scratch->clear();
  unescape(m.key, scratch);
  return *scratch;
}

std::string_view JsonDom::string(Index i, std::string* scratch) const {
  const Node& n = nodes_[i];
  if (!n.flag) return n.text;
  scratch->clear();
  unescape(n.text, scratch);
  return *scratch;
}

std::string_view JsonDom::string_or_empty(Index i, std::string* scratch) const {
  if (i == kNone || nodes_[i].type != Type::kString) return {};
  return string(i, scratch);
}

std::optional<int64_t> JsonDom::int64(Index i) const {
  if (!is_integer(i)) return std::nullopt;
  std::string_view t = nodes_[i].text;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec != std::errc() || p != t.data() + t.size()) return std::nullopt;
  return v;
}

std::optional<uint64_t> JsonDom::uint64(Index i) const {
  if (!is_integer(i) || nodes_[i].text.front() == '-') return std::nullopt;
  std::string_view t = nodes_[i].text;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec != std::errc() || p != t.data() + t.size()) return std::nullopt;
  return v;
}

double JsonDom::number(Index i) const {
  std::string_view t = nodes_[i].text;
  double v = 0;
  // Out of range: from_chars leaves v alone; JSON's grammar has no infinity.
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (ec == std::errc::result_out_of_range) {
    v = t.front() == '-' ? -1.7976931348623157e308 : 1.7976931348623157e308;
  }
  (void)p;
  return v;
}

void JsonDom::unescape(std::string_view raw, std::string* out) {
  out->reserve(out->size() + raw.size());
  for (size_t p = 0; p < raw.size();) {
    const char c = raw[p];
    if (c != '\\') {
      const size_t q = raw.find('\\', p);
      const size_t end = q == std::string_view::npos ? raw.size() : q;
      out->append(raw.data() + p, end - p);
      p = end;
      continue;
    }
    const char e = raw[p + 1];
    p += 2;
    switch (e) {
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'u': {
        uint32_t cp = hex4(raw.substr(p));
        p += 4;
        if (cp >= 0xd800 && cp <= 0xdbff && p + 6 <= raw.size() && raw[p] == '\\' &&
            raw[p + 1] == 'u') {
          const uint32_t lo = hex4(raw.substr(p + 2));
          if (lo >= 0xdc00 && lo <= 0xdfff) {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
          }
        }
        // A surrogate without its other half stands for nothing.
        if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
        append_utf8(cp, out);
        break;
      }
      default:  // '"', '\\', '/'
        out->push_back(e);
    }
  }
}

}  // namespace sidetrace::upstream::detail
