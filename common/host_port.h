// Parsing "HOST:PORT" addresses, the one way every part of the agent reads
// them: admin.listen, listen.udp, the upstream endpoint's authority and the
// admin endpoint's Host header.
//
//   host           name or IPv4 address, no port
//   host:port
//   [v6]           an IPv6 address in brackets
//   [v6]:port
//
// An IPv6 address needs its brackets (in "::1:7718" the port cannot be told
// apart), a port is 0..65535 in decimal digits, and the host is not empty.
#pragma once

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sidetrace {

struct HostPort {
  std::string host;              // without brackets
  std::optional<uint16_t> port;  // absent when the text has none
};

// nullopt when `text` is none of the forms above.
inline std::optional<HostPort> parse_host_port(std::string_view text) {
  HostPort out;
  std::string_view host, rest;
  if (text.starts_with('[')) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    rest = text.substr(close + 1);
    if (host.find(':') == std::string_view::npos) return std::nullopt;  // not IPv6
  } else {
    const size_t colon = text.find(':');
    host = text.substr(0, colon);
    if (colon != std::string_view::npos) rest = text.substr(colon);
    if (rest.find(':', 1) != std::string_view::npos) return std::nullopt;  // unbracketed IPv6
  }
  if (host.empty()) return std::nullopt;
  if (!rest.empty()) {
    if (rest.front() != ':') return std::nullopt;
    const std::string_view digits = rest.substr(1);
    uint16_t port = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() ||
        digits.front() == '+' || digits.front() == '-') {
      return std::nullopt;
    }
    out.port = port;
  }
  out.host = std::string(host);
  return out;
}

}  // namespace sidetrace
