// Small text helpers shared by the parsers of headers and settings.
#pragma once

#include <string>
#include <string_view>

namespace sidetrace {

// `s` without the spaces and tabs around it (HTTP's optional whitespace).
inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// `s` with its ASCII capitals in lower case (names, hosts, header values).
inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace sidetrace
