// Fuzzes the configuration loader. The input is read three ways:
//  - as a TOML document (apply_toml_string, then validate). A configuration
//    that loads must survive a round trip through to_toml() unchanged;
//  - line by line as `--set section.key=value` overrides, each line also
//    split at its first '=' into set_value(key, value) on a fresh config;
//  - each line's value through parse_size(), whose result must match the
//    digits and unit it was given.
// ConfigError is the expected refusal; any other exception is a bug.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

#include "config/config.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using sidetrace::config::Config;
using sidetrace::config::ConfigError;

template <typename F>
bool refused_cleanly(F&& f) {
  try {
    f();
    return false;
  } catch (const ConfigError& e) {
    FUZZ_CHECK(e.what()[0] != '\0');
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "unexpected exception of unknown type\n");
    std::abort();
  }
}

void check_document(std::string_view text) {
  Config c;
  if (refused_cleanly([&] { sidetrace::config::apply_toml_string(c, text, "fuzz.toml"); })) {
    return;
  }
  refused_cleanly([&] { sidetrace::config::validate(c); });
  // What was loaded prints as TOML that loads back to the same values.
  const std::string printed = sidetrace::config::to_toml(c, false);
  Config back;
  if (refused_cleanly([&] { sidetrace::config::apply_toml_string(back, printed, "printed"); })) {
    std::fprintf(stderr, "to_toml output does not load back:\n%s\n", printed.c_str());
    std::abort();
  }
  FUZZ_CHECK(sidetrace::config::changed_keys(c, back).empty());
}

void check_size(std::string_view text) {
  const auto v = sidetrace::config::parse_size(text);
  if (!v) return;
  // Accepted: optional blanks, digits, optional blanks and a known unit.
  size_t i = 0;
  while (i < text.size() && (text[i] == ' ' || (text[i] >= '\t' && text[i] <= '\r')))
    ++i;
  FUZZ_CHECK(i < text.size() && text[i] >= '0' && text[i] <= '9');
  uint64_t digits = 0;
  bool small = true;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    if (digits > (UINT64_MAX - 9) / 10) small = false;
    digits = digits * 10 + static_cast<uint64_t>(text[i] - '0');
  }
  if (small) {
    FUZZ_CHECK(*v >= digits);
    FUZZ_CHECK(digits == 0 ? *v == 0 : *v % digits == 0);
  }
}

void check_line(std::string_view line) {
  Config c;
  refused_cleanly([&] { sidetrace::config::apply_override(c, line); });
  const size_t eq = line.find('=');
  const std::string_view key = line.substr(0, eq);
  const std::string_view value = eq == std::string_view::npos ? "" : line.substr(eq + 1);
  Config d;
  refused_cleanly([&] { sidetrace::config::set_value(d, key, value, "fuzz"); });
  check_size(value);
  check_size(line);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;  // configuration files are small
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_document(text);
  std::string_view rest = text;
  for (int lines = 0; lines < 64 && !rest.empty(); ++lines) {
    const size_t nl = rest.find('\n');
    check_line(rest.substr(0, nl));
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  }
  return 0;
}
