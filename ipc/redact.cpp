#include "ipc/redact.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/regex.hpp>
#include <exception>
#include <string_view>

#include "common/rate_limited_log.h"
#include "ipc/detail/msgpack_reader.h"

namespace sidetrace::ipc {

namespace {

using detail::MpItem;
using detail::MpType;

// Built-in detectors, in counter order.
enum Detector : uint32_t { kApiKeys = 0, kBearer, kEmails, kCards, kDetectorCount };
constexpr std::array<std::string_view, kDetectorCount> kDetectorNames = {
    "api_keys", "bearer_tokens", "emails", "card_numbers"};

constexpr std::array<std::string_view, 11> kForbiddenFields = {
    "v",  "kind",   "trace_id",   "id",     "parent_id", "target_id",
    "ts", "end_ts", "latency_ms", "status", "score"};

constexpr size_t kNpos = std::string_view::npos;
constexpr size_t kMinFieldBytes = 64;
constexpr std::string_view kEllipsis = "\xe2\x80\xa6";  // U+2026

// Byte classes used by the hand-written detectors.
enum : uint8_t {
  kAlnum = 1,       // [A-Za-z0-9]
  kToken = 2,       // [A-Za-z0-9_-]: api key bodies
  kBearerCh = 4,    // [A-Za-z0-9._~+/-]: RFC 6750 token68
  kLocal = 8,       // [A-Za-z0-9._%+-]: e-mail local part
  kDomain = 16,     // [A-Za-z0-9.-]: e-mail domain
  kValueStop = 32,  // ends a generic api_key value: whitespace, quotes, separators
};

constexpr std::array<uint8_t, 256> make_classes() {
  std::array<uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
    bool digit = c >= '0' && c <= '9';
    uint8_t v = 0;
    if (alpha || digit) v |= kAlnum | kToken | kBearerCh | kLocal | kDomain;
    if (c == '_') v |= kToken | kBearerCh | kLocal;
    if (c == '-') v |= kToken | kBearerCh | kLocal | kDomain;
    if (c == '.') v |= kBearerCh | kLocal | kDomain;
    if (c == '~' || c == '+' || c == '/') v |= kBearerCh;
    if (c == '+' || c == '%') v |= kLocal;
    if (c <= ' ' || c == '"' || c == '\'' || c == '`' || c == ',' || c == ';' || c == '&' ||
        c == '<' || c == '>' || c == '(' || c == ')' || c == '[' || c == ']' || c == '{' ||
        c == '}' || c == 0x7f)
      v |= kValueStop;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}
constexpr std::array<uint8_t, 256> kClass = make_classes();

inline uint8_t cls(std::string_view s, size_t i) {
  return kClass[static_cast<uint8_t>(s[i])];
}
inline bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
inline bool is_upper_or_digit(char c) {
  return (c >= 'A' && c <= 'Z') || is_digit(c);
}
inline char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}
// Case-insensitive: does `s` hold the lowercase `word` at `i`?
inline bool has_ci(std::string_view s, size_t i, std::string_view word) {
  if (s.size() - i < word.size()) return false;
  for (size_t k = 0; k < word.size(); ++k)
    if (lower(s[i + k]) != word[k]) return false;
  return true;
}
inline bool has(std::string_view s, size_t i, std::string_view word) {
  return s.size() - i >= word.size() && s.compare(i, word.size(), word) == 0;
}
// A token may start at `i` only if the byte before is not alphanumeric.
inline bool starts_word(std::string_view s, size_t i) {
  return i == 0 || !(cls(s, i - 1) & kAlnum);
}
inline size_t run_of(std::string_view s, size_t i, uint8_t mask) {
  size_t j = i;
  while (j < s.size() && (cls(s, j) & mask))
    ++j;
  return j;
}

struct Span {
  size_t begin;
  size_t end;
  uint32_t rule;  // detector index, or kDetectorCount + user rule index
};

// ---- built-in detectors: each tries a match anchored at `i` ----

// sk-..., sk-ant-..., AKIA..., gh[pousr]_..., github_pat_..., xox[baprs]-...
// Returns the end of the token, or kNpos.
size_t match_key_token(std::string_view s, size_t i) {
  if (!starts_word(s, i)) return kNpos;
  size_t body = kNpos, min_len = 0;
  uint8_t mask = kToken;
  if (has(s, i, "sk-")) {
    body = i + 3;
    min_len = 20;
  } else if (has(s, i, "AKIA")) {
    size_t j = i + 4;
    while (j < s.size() && j - i < 20 && is_upper_or_digit(s[j]))
      ++j;
    if (j - i == 20 && (j == s.size() || !(cls(s, j) & kAlnum))) return j;
    return kNpos;
  } else if (has(s, i, "github_pat_")) {
    body = i + 11;
    min_len = 20;
  } else if (has(s, i, "gh") && s.size() - i > 3 && s[i + 3] == '_' &&
             std::string_view("pousr").find(s[i + 2]) != kNpos) {
    body = i + 4;
    min_len = 20;
    mask = kAlnum;
  } else if (has(s, i, "xox") && s.size() - i > 4 && s[i + 4] == '-' &&
             std::string_view("baprs").find(s[i + 3]) != kNpos) {
    body = i + 5;
    min_len = 10;
  }
  if (body == kNpos) return kNpos;
  size_t end = run_of(s, body, mask);
  if (end - body < min_len || (end < s.size() && (cls(s, end) & kAlnum))) return kNpos;
  return end;
}

// api[_-]?key["']?\s*[:=]\s*["']?VALUE, anchored at the ':' or '=': the
// span is VALUE only.
bool match_generic_key(std::string_view s, size_t sep, Span* out) {
  size_t k = sep;
  while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == '\t'))
    --k;
  if (k > 0 && (s[k - 1] == '"' || s[k - 1] == '\'')) --k;
  if (k < 3 || !has_ci(s, k - 3, "key")) return false;
  k -= 3;
  if (k > 0 && (s[k - 1] == '_' || s[k - 1] == '-')) --k;
  if (k < 3 || !has_ci(s, k - 3, "api")) return false;
  size_t j = sep + 1;
  while (j < s.size() && (s[j] == ' ' || s[j] == '\t'))
    ++j;
  if (j < s.size() && (s[j] == '"' || s[j] == '\'')) ++j;
  size_t end = j;
  while (end < s.size() && !(cls(s, end) & kValueStop))
    ++end;
  if (end == j) return false;
  *out = {j, end, kApiKeys};
  return true;
}

// Bearer <token>: the span is the token only. The token must look like one:
// at least 8 characters with a digit or symbol, or at least 20.
bool match_bearer(std::string_view s, size_t i, Span* out) {
  if (!starts_word(s, i) || !has_ci(s, i, "bearer")) return false;
  size_t j = i + 6;
  size_t t = j;
  while (t < s.size() && (s[t] == ' ' || s[t] == '\t'))
    ++t;
  if (t == j) return false;
  size_t end = run_of(s, t, kBearerCh);
  while (end < s.size() && s[end] == '=')
    ++end;
  size_t len = end - t;
  bool mixed = false;
  for (size_t k = t; k < end && !mixed; ++k) {
    char c = s[k];
    mixed = !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
  }
  if (len < 8 || (!mixed && len < 20)) return false;
  *out = {t, end, kBearer};
  return true;
}

// local@domain.tld, anchored at the '@'.
bool match_email(std::string_view s, size_t at, Span* out) {
  size_t b = at;
  while (b > 0 && (cls(s, b - 1) & kLocal))
    --b;
  while (b < at && s[b] == '.')
    ++b;
  if (b == at) return false;
  size_t e = run_of(s, at + 1, kDomain);
  while (e > at + 1 && (s[e - 1] == '.' || s[e - 1] == '-'))
    --e;
  std::string_view domain = s.substr(at + 1, e - at - 1);
  size_t dot = domain.rfind('.');
  if (dot == kNpos || dot == 0 || domain.size() - dot - 1 < 2) return false;
  for (size_t k = dot + 1; k < domain.size(); ++k) {
    char c = domain[k];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) return false;
  }
  *out = {b, e, kEmails};
  return true;
}

// 13-19 digits, single spaces or dashes allowed between them, passing the
// Luhn check. Anchored at a digit; `*resume` is set past the digit run so
// that no shorter run inside it is tried again.
bool match_card(std::string_view s, size_t i, Span* out, size_t* resume) {
  size_t j = i, digits = 0, last = i;
  std::array<uint8_t, 20> d{};
  while (j < s.size()) {
    if (is_digit(s[j])) {
      if (digits < d.size()) d[digits] = static_cast<uint8_t>(s[j] - '0');
      ++digits;
      last = ++j;
    } else if ((s[j] == ' ' || s[j] == '-') && j + 1 < s.size() && is_digit(s[j + 1])) {
      ++j;
    } else {
      break;
    }
  }
  *resume = last;
  if (digits < 13 || digits > 19) return false;
  if (last < s.size() && (cls(s, last) & kAlnum)) return false;
  uint32_t sum = 0;
  for (size_t k = 0; k < digits; ++k) {
    uint32_t v = d[digits - 1 - k];
    if (k % 2 == 1) {
      v *= 2;
      if (v > 9) v -= 9;
    }
    sum += v;
  }
  if (sum % 10 != 0) return false;
  *out = {i, last, kCards};
  return true;
}

struct Edit {
  size_t off;  // the whole msgpack str item (header + body) in raw
  size_t len;
  std::string body;
};

void put_str_header(std::string* out, size_t n) {
  if (n < 32) {
    out->push_back(static_cast<char>(0xa0 | n));
  } else if (n <= 0xff) {
    out->push_back(static_cast<char>(0xd9));
    out->push_back(static_cast<char>(n));
  } else if (n <= 0xffff) {
    out->push_back(static_cast<char>(0xda));
    out->push_back(static_cast<char>(n >> 8));
    out->push_back(static_cast<char>(n));
  } else {
    out->push_back(static_cast<char>(0xdb));
    for (int shift = 24; shift >= 0; shift -= 8)
      out->push_back(static_cast<char>(n >> shift));
  }
}

size_t decimal_digits(size_t n) {
  size_t d = 1;
  while (n >= 10) {
    n /= 10;
    ++d;
  }
  return d;
}

// Moves `n` back so that it does not split a UTF-8 sequence of `s`.
size_t utf8_floor(std::string_view s, size_t n) {
  if (n >= s.size()) return s.size();
  size_t k = n;
  while (k > 0 && n - k < 3 && (static_cast<uint8_t>(s[k]) & 0xc0) == 0x80)
    --k;
  return (static_cast<uint8_t>(s[k]) & 0xc0) == 0x80 ? n : k;
}

}  // namespace

struct Redactor::Impl {
  struct UserRule {
    std::string name;
    boost::regex re;
    std::string replacement;
  };

  std::array<bool, kDetectorCount> detector{};
  std::array<std::string, kDetectorCount> detector_replacement;
  std::array<bool, 256> trigger{};
  bool any_detector = false;
  std::vector<UserRule> rules;
  std::vector<std::string> fields;
  size_t max_field_bytes = 0;
  mutable RateLimitedLog log{10, std::chrono::seconds(10)};

  // Per-call scratch and counts.
  struct Work {
    std::vector<Span> spans;
    std::vector<uint64_t> matches;  // sized lazily: kDetectorCount + rules
    uint64_t truncated = 0;
    uint64_t bytes_removed = 0;
    void count(uint32_t rule, size_t nrules) {
      if (matches.empty()) matches.resize(kDetectorCount + nrules);
      ++matches[rule];
    }
  };

  std::string_view rule_name(uint32_t rule) const {
    return rule < kDetectorCount ? kDetectorNames[rule] : rules[rule - kDetectorCount].name;
  }

  bool selected(std::string_view key) const {
    for (const auto& f : fields)
      if (f == key) return true;
    return false;
  }

  // Finds every built-in match in `s`, sorted and without overlaps.
  void scan_builtins(std::string_view s, std::vector<Span>* spans) const {
    spans->clear();
    if (!any_detector) return;
    const size_t n = s.size();
    for (size_t i = 0; i < n; ++i) {
      const uint8_t c = static_cast<uint8_t>(s[i]);
      if (!trigger[c]) continue;
      Span sp;
      if (c == '@') {
        if (match_email(s, i, &sp)) spans->push_back(sp);
      } else if (is_digit(static_cast<char>(c))) {
        if (!starts_word(s, i)) continue;
        size_t resume = i + 1;
        if (match_card(s, i, &sp, &resume)) spans->push_back(sp);
        i = resume - 1;
      } else if (c == 'b' || c == 'B') {
        if (match_bearer(s, i, &sp)) spans->push_back(sp);
      } else if (c == ':' || c == '=') {
        if (match_generic_key(s, i, &sp)) spans->push_back(sp);
      } else {
        // Key tokens, found through their rarer bytes: "AKIA...", the '-'
        // of "sk-" and "xox?-", the '_' of "gh?_" and "github_pat_".
        size_t start = kNpos;
        if (c == 'A') {
          start = i;
        } else if (c == '-') {
          if (i >= 2 && has(s, i - 2, "sk"))
            start = i - 2;
          else if (i >= 4 && has(s, i - 4, "xox"))
            start = i - 4;
        } else if (c == '_') {
          if (i >= 3 && has(s, i - 3, "gh"))
            start = i - 3;
          else if (i >= 6 && has(s, i - 6, "github_pat_"))
            start = i - 6;
        }
        if (start == kNpos) continue;
        size_t end = match_key_token(s, start);
        if (end == kNpos) continue;
        spans->push_back({start, end, kApiKeys});
        i = end - 1;
      }
    }
    if (spans->size() < 2) return;
    std::sort(spans->begin(), spans->end(), [](const Span& a, const Span& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end > b.end;
    });
    size_t kept = 0;
    for (const Span& sp : *spans) {
      if (kept > 0 && sp.begin < (*spans)[kept - 1].end) continue;
      (*spans)[kept++] = sp;
    }
    spans->resize(kept);
  }

  // Applies the detectors then the user rules to `in`. Returns whether the
  // text changed; the new text is in `out`. Throws on a regex failure.
  bool redact(std::string_view in, std::string* out, Work* w) const {
    bool changed = false;
    scan_builtins(in, &w->spans);
    if (!w->spans.empty()) {
      std::string next;
      next.reserve(in.size() + 32);
      size_t cur = 0;
      for (const Span& sp : w->spans) {
        next.append(in.substr(cur, sp.begin - cur));
        next.append(detector_replacement[sp.rule]);
        cur = sp.end;
        w->count(sp.rule, rules.size());
      }
      next.append(in.substr(cur));
      *out = std::move(next);
      changed = true;
    }
    for (size_t r = 0; r < rules.size(); ++r) {
      std::string_view text = changed ? std::string_view(*out) : in;
      std::string next;
      bool rule_changed = false;
      const char* cur = text.data();
      const char* end = text.data() + text.size();
      boost::cmatch m;
      const char* pos = cur;
      while (pos < end && boost::regex_search(pos, end, m, rules[r].re,
                                              boost::match_not_null |
                                                  (pos == text.data() ? boost::match_default
                                                                      : boost::match_prev_avail))) {
        std::string repl = m.format(rules[r].replacement);
        pos = m[0].second;
        if (std::string_view(m[0].first, static_cast<size_t>(m[0].length())) == repl) continue;
        next.append(cur, m[0].first);
        next.append(repl);
        cur = m[0].second;
        rule_changed = true;
        w->count(static_cast<uint32_t>(kDetectorCount + r), rules.size());
      }
      if (rule_changed) {
        next.append(cur, end);
        *out = std::move(next);
        changed = true;
      }
    }
    return changed;
  }

  // Where the first match of any detector or rule starts in `s`, or kNpos.
  size_t first_match(std::string_view s, std::vector<Span>* spans) const {
    scan_builtins(s, spans);
    size_t first = spans->empty() ? kNpos : spans->front().begin;
    for (const auto& r : rules) {
      boost::cmatch m;
      if (boost::regex_search(s.data(), s.data() + s.size(), m, r.re, boost::match_not_null)) {
        std::string repl = m.format(r.replacement);
        if (std::string_view(m[0].first, static_cast<size_t>(m[0].length())) != repl)
          first = std::min(first, static_cast<size_t>(m[0].first - s.data()));
      }
    }
    return first;
  }

  static std::string marker(size_t removed) {
    return fmt::format("{}[truncated {} bytes]", kEllipsis, removed);
  }

  // Cuts `s` (longer than max_field_bytes) so that the kept prefix plus the
  // marker fit, at a UTF-8 boundary, and so that the result holds no match
  // of its own (a cut can shorten a digit or token run into a new match).
  std::string truncate(std::string_view s, Work* w) const {
    const size_t fixed = marker(0).size() - 1;
    size_t keep = 0;
    for (size_t d = 1; d <= 20; ++d) {
      size_t room = max_field_bytes > fixed + d ? max_field_bytes - fixed - d : 0;
      keep = utf8_floor(s, room);
      if (decimal_digits(s.size() - keep) <= d) break;
    }
    std::vector<Span> spans;
    for (int attempt = 0;; ++attempt) {
      std::string out(s.substr(0, keep));
      out += marker(s.size() - keep);
      size_t at = first_match(out, &spans);
      if (at == kNpos || keep == 0) {
        ++w->truncated;
        w->bytes_removed += s.size() - keep;
        return out;
      }
      keep = attempt < 8 && at < keep ? utf8_floor(s, at) : 0;
    }
  }

  // Rewrites one string value. Returns whether it changed.
  bool rewrite(std::string_view in, std::string* out, Work* w) const {
    bool changed = redact(in, out, w);
    std::string_view cur = changed ? std::string_view(*out) : in;
    if (max_field_bytes > 0 && cur.size() > max_field_bytes) {
      *out = truncate(cur, w);
      changed = true;
    }
    return changed;
  }

  // Walks one selected value starting at `pos`; appends an edit for each
  // string that changes. Returns the end of the value, or kNpos with the
  // reason in `why` when the bytes are not valid msgpack.
  size_t walk(std::string_view raw, size_t pos, std::vector<Edit>* edits, Work* w,
              const char** why) const {
    // Open containers: how many values each still holds. Shallow values
    // (the common case) use the inline frames; deeper ones spill to the heap.
    struct Frame {
      uint64_t remaining;
      bool map;
    };
    std::array<Frame, 16> inline_frames;
    std::vector<Frame> spilled;
    size_t depth = 0;
    auto top = [&]() -> Frame& {
      return depth <= inline_frames.size() ? inline_frames[depth - 1]
                                           : spilled[depth - 1 - inline_frames.size()];
    };
    auto push = [&](Frame f) {
      if (depth < inline_frames.size()) {
        inline_frames[depth] = f;
      } else {
        spilled.resize(depth + 1 - inline_frames.size());
        spilled.back() = f;
      }
      ++depth;
    };
    push({1, false});
    const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
    std::string scratch;
    while (depth > 0) {
      Frame& f = top();
      if (f.remaining == 0) {
        --depth;
        continue;
      }
      const bool is_key = f.map && f.remaining % 2 == 0;
      --f.remaining;
      MpItem it;
      int h = detail::read_header(p + pos, raw.size() - pos, &it);
      if (h <= 0) {
        *why = "the message is not valid msgpack";
        return kNpos;
      }
      const size_t body = pos + static_cast<size_t>(h);
      const uint64_t pay = detail::payload_bytes(it);
      if (pay > raw.size() - body) {
        *why = "a value is cut short";
        return kNpos;
      }
      if (it.type == MpType::kStr && !is_key) {
        std::string_view s = raw.substr(body, it.len);
        if (rewrite(s, &scratch, w)) {
          edits->push_back({pos, static_cast<size_t>(h) + it.len, std::move(scratch)});
          scratch.clear();
        }
      }
      pos = body + static_cast<size_t>(pay);
      const uint64_t children = detail::child_values(it);
      if (children > raw.size() - pos) {
        *why = "a container is cut short";
        return kNpos;
      }
      if (children > 0) push({children, it.type == MpType::kMap});
    }
    return pos;
  }

  // Returns whether `m` changed; on malformed bytes returns false with the
  // reason in `why` and `m` untouched. Regex failures throw (Boost.Regex).
  bool apply(Message& m, RedactStats* stats, const char** why) const {
    Work w;
    std::vector<Edit> edits;
    const std::string_view raw = m.raw;
    const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
    MpItem top;
    int h = detail::read_header(p, raw.size(), &top);
    if (h <= 0 || top.type != MpType::kMap) {
      *why = "the message is not a msgpack map";
      return false;
    }
    size_t pos = static_cast<size_t>(h);
    for (uint32_t k = 0; k < top.len; ++k) {
      MpItem key;
      int kh = detail::read_header(p + pos, raw.size() - pos, &key);
      if (kh <= 0) {
        *why = "the message is not valid msgpack";
        return false;
      }
      bool sel = false;
      if (key.type == MpType::kStr) {
        const size_t kb = pos + static_cast<size_t>(kh);
        if (key.len > raw.size() - kb) {
          *why = "a key is cut short";
          return false;
        }
        sel = selected(raw.substr(kb, key.len));
        pos = kb + key.len;
      } else {
        int64_t n = detail::skip_values(p + pos, raw.size() - pos, 1);
        if (n < 0) {
          *why = "the message is not valid msgpack";
          return false;
        }
        pos += static_cast<size_t>(n);
      }
      if (sel) {
        pos = walk(raw, pos, &edits, &w, why);
        if (pos == kNpos) return false;
      } else {
        int64_t n = detail::skip_values(p + pos, raw.size() - pos, 1);
        if (n < 0) {
          *why = "the message is not valid msgpack";
          return false;
        }
        pos += static_cast<size_t>(n);
      }
    }
    if (pos != raw.size()) {
      *why = "bytes follow the message map";
      return false;
    }

    if (stats) stats->checked_.fetch_add(1, std::memory_order_relaxed);
    if (edits.empty()) return false;
    size_t size = raw.size();
    for (const Edit& e : edits)
      size = size - e.len + e.body.size() + 5;
    std::string out;
    out.reserve(size);
    size_t cur = 0;
    for (const Edit& e : edits) {
      out.append(raw.substr(cur, e.off - cur));
      put_str_header(&out, e.body.size());
      out.append(e.body);
      cur = e.off + e.len;
    }
    out.append(raw.substr(cur));
    m.raw = std::move(out);
    if (stats) {
      stats->redacted_.fetch_add(1, std::memory_order_relaxed);
      stats->truncated_.fetch_add(w.truncated, std::memory_order_relaxed);
      stats->bytes_removed_.fetch_add(w.bytes_removed, std::memory_order_relaxed);
      if (!w.matches.empty()) {
        std::lock_guard lock(stats->mu_);
        for (uint32_t r = 0; r < w.matches.size(); ++r)
          if (w.matches[r] > 0) stats->matches_[std::string(rule_name(r))] += w.matches[r];
      }
    }
    return true;
  }
};

RedactCounters RedactStats::snapshot() const {
  RedactCounters c;
  c.messages_checked = checked_.load(std::memory_order_relaxed);
  c.messages_redacted = redacted_.load(std::memory_order_relaxed);
  c.fields_truncated = truncated_.load(std::memory_order_relaxed);
  c.bytes_removed = bytes_removed_.load(std::memory_order_relaxed);
  c.failures = failures_.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  c.matches = matches_;
  return c;
}

Redactor::Redactor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Redactor::~Redactor() = default;

std::shared_ptr<const Redactor> Redactor::create(const RedactOptions& options, std::string* error) {
  auto fail = [&](std::string msg) -> std::shared_ptr<const Redactor> {
    if (error) *error = std::move(msg);
    return nullptr;
  };
  auto impl = std::make_unique<Impl>();
  for (const std::string& name : options.detectors) {
    auto it = std::find(kDetectorNames.begin(), kDetectorNames.end(), name);
    if (it == kDetectorNames.end())
      return fail(fmt::format(
          "redact: unknown detector '{}' (known: api_keys, bearer_tokens, emails, card_numbers)",
          name));
    auto d = static_cast<size_t>(it - kDetectorNames.begin());
    impl->detector[d] = true;
    impl->any_detector = true;
  }
  for (size_t d = 0; d < kDetectorCount; ++d)
    impl->detector_replacement[d] = fmt::format("[REDACTED:{}]", kDetectorNames[d]);
  if (impl->detector[kApiKeys])
    for (char c : std::string_view("A-_:="))
      impl->trigger[static_cast<uint8_t>(c)] = true;
  if (impl->detector[kBearer])
    for (char c : std::string_view("bB"))
      impl->trigger[static_cast<uint8_t>(c)] = true;
  if (impl->detector[kEmails]) impl->trigger['@'] = true;
  if (impl->detector[kCards])
    for (char c = '0'; c <= '9'; ++c)
      impl->trigger[static_cast<uint8_t>(c)] = true;

  for (const RedactRule& r : options.rules) {
    if (r.name.empty()) return fail("redact: a rule has no name");
    if (std::find(kDetectorNames.begin(), kDetectorNames.end(), r.name) != kDetectorNames.end())
      return fail(fmt::format("redact: rule name '{}' is a detector's name", r.name));
    for (const auto& other : impl->rules)
      if (other.name == r.name) return fail(fmt::format("redact: two rules named '{}'", r.name));
    if (r.pattern.empty()) return fail(fmt::format("redact: rule '{}' has no pattern", r.name));
    Impl::UserRule u;
    u.name = r.name;
    u.replacement = r.replacement.empty() ? fmt::format("[REDACTED:{}]", r.name) : r.replacement;
    try {
      u.re.assign(r.pattern, boost::regex::perl);
    } catch (const std::exception& e) {
      return fail(fmt::format("redact: rule '{}': bad pattern: {}", r.name, e.what()));
    }
    impl->rules.push_back(std::move(u));
  }
  for (const std::string& f : options.fields) {
    if (std::find(kForbiddenFields.begin(), kForbiddenFields.end(), f) != kForbiddenFields.end())
      return fail(fmt::format("redact: field '{}' cannot be redacted", f));
    if (f.empty()) return fail("redact: an empty field name");
  }
  impl->fields = options.fields;
  if (options.max_field_bytes != 0 && options.max_field_bytes < kMinFieldBytes)
    return fail(fmt::format("redact: max_field_bytes must be 0 or at least {}", kMinFieldBytes));
  impl->max_field_bytes = options.max_field_bytes;
  return std::shared_ptr<const Redactor>(new Redactor(std::move(impl)));
}

bool Redactor::active() const {
  return !impl_->fields.empty() &&
         (impl_->any_detector || !impl_->rules.empty() || impl_->max_field_bytes > 0);
}

bool Redactor::apply(Message& m, RedactStats* stats) const {
  if (!active()) {
    if (stats) stats->checked_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const char* why = nullptr;
  std::string what;
  // Boost.Regex reports a pattern too complex for an input (and memory
  // exhaustion) by throwing; both leave the message as it was.
  try {
    bool changed = impl_->apply(m, stats, &why);
    if (why == nullptr) return changed;
    what = why;
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown error";
  }
  if (stats) {
    stats->checked_.fetch_add(1, std::memory_order_relaxed);
    stats->failures_.fetch_add(1, std::memory_order_relaxed);
  }
  try {
    impl_->log.log(spdlog::level::warn, fmt::format("redact: a message of trace {} was left "
                                                    "unredacted: {}",
                                                    m.trace_id, what));
  } catch (...) {
    // Logging is best effort: the failure is already counted.
  }
  return false;
}

}  // namespace sidetrace::ipc
