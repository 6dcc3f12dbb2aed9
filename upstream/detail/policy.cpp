#include "upstream/detail/policy.h"

#include <algorithm>
#include <charconv>
#include <ctime>
#include <stdexcept>

#include "common/text.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {

std::string_view stage_name(Stage s) {
  switch (s) {
    case Stage::kDispatch:
      return "upstream_dispatch";
    case Stage::kEncode:
      return "upstream_encode";
    case Stage::kSend:
      return "upstream_send";
    case Stage::kFile:
      return "file_exporter";
    case Stage::kCount_:
      break;
  }
  return "unknown";
}

}  // namespace sidetrace::upstream

namespace sidetrace::upstream::detail {

std::string current_exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown exception";
  }
}

std::string exception_text(std::exception_ptr e) {
  if (!e) return {};
  try {
    std::rethrow_exception(e);
  } catch (...) {
    return current_exception_text();
  }
}

const char* to_string(OutcomeKind k) {
  switch (k) {
    case OutcomeKind::kSuccess:
      return "success";
    case OutcomeKind::kRetryable:
      return "retryable";
    case OutcomeKind::kTooLarge:
      return "too_large";
    case OutcomeKind::kAuth:
      return "auth";
    case OutcomeKind::kPermanent:
      return "permanent";
  }
  return "unknown";
}

Outcome classify(int status, std::string_view retry_after, uint64_t now_ns, Format format) {
  Outcome o;
  o.http_status = status;
  if (status >= 200 && status < 300) {
    o.kind = OutcomeKind::kSuccess;
  } else if (status == 413) {
    o.kind = OutcomeKind::kTooLarge;
  } else if (status == 401 || status == 403) {
    o.kind = OutcomeKind::kAuth;
  } else if (format == Format::kOtlp) {
    // OTLP/HTTP: "throttled" and "unavailable" are the only retryable answers.
    const bool retry = status == 429 || status == 502 || status == 503 || status == 504;
    o.kind = retry ? OutcomeKind::kRetryable : OutcomeKind::kPermanent;
  } else if (status == 408 || status == 429 || (status >= 500 && status != 501 && status != 505) ||
             (status >= 300 && status < 400) || status < 200) {
    o.kind = OutcomeKind::kRetryable;
  } else {
    o.kind = OutcomeKind::kPermanent;
  }
  if (!retry_after.empty()) o.retry_after_ms = parse_retry_after(retry_after, now_ns);
  return o;
}

namespace {

int month_index(std::string_view m) {
  static constexpr std::string_view kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  for (int i = 0; i < 12; ++i) {
    if (m == kMonths[i]) return i;
  }
  return -1;
}

}  // namespace

std::optional<uint64_t> parse_retry_after(std::string_view value, uint64_t now_ns) {
  value = trim(value);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    uint64_t secs = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), secs);
    if (ec != std::errc()) return UINT64_MAX / 2;  // absurdly large: capped by the caller
    (void)p;
    return std::min<uint64_t>(secs, UINT64_MAX / 2000) * 1000;
  }
  // HTTP-date. IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850
  // "Sunday, 06-Nov-94 08:49:37 GMT", asctime "Sun Nov  6 08:49:37 1994".
  std::string s(value);
  int day = 0, year = 0, hh = 0, mm = 0, ss = 0;
  char mon[4] = {};
  char wday[16] = {};
  bool ok = false;
  if (std::sscanf(s.c_str(), "%15[A-Za-z], %d %3s %d %d:%d:%d GMT", wday, &day, mon, &year, &hh,
                  &mm, &ss) == 7) {
    ok = true;
  } else if (std::sscanf(s.c_str(), "%15[A-Za-z], %d-%3s-%d %d:%d:%d GMT", wday, &day, mon, &year,
                         &hh, &mm, &ss) == 7) {
    ok = true;
    if (year < 100) year += year < 70 ? 2000 : 1900;
  } else if (std::sscanf(s.c_str(), "%15s %3s %d %d:%d:%d %d", wday, mon, &day, &hh, &mm, &ss,
                         &year) == 7) {
    ok = true;
  }
  int m = month_index(mon);
  if (!ok || m < 0 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60) return std::nullopt;
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = m;
  tm.tm_mday = day;
  tm.tm_hour = hh;
  tm.tm_min = mm;
  tm.tm_sec = ss;
  time_t t = timegm(&tm);
  if (t < 0) return std::nullopt;
  uint64_t at_ms = static_cast<uint64_t>(t) * 1000;
  uint64_t now_ms = now_ns / 1'000'000;
  return at_ms > now_ms ? at_ms - now_ms : 0;
}

uint64_t backoff_ms(uint32_t attempt, uint64_t initial_ms, uint64_t max_ms, std::mt19937_64& rng) {
  uint64_t cap = std::max<uint64_t>(initial_ms, 1);
  for (uint32_t i = 0; i < attempt && cap < max_ms; ++i)
    cap *= 2;
  cap = std::min(cap, std::max<uint64_t>(max_ms, 1));
  std::uniform_int_distribution<uint64_t> dist(0, cap);
  return std::max<uint64_t>(dist(rng), 1);
}

}  // namespace sidetrace::upstream::detail
