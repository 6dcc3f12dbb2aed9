// Whether an HTTP request's Host header names this server: the one check of
// the admin endpoint and the OTLP/HTTP listener against DNS rebinding (a web
// page whose name is made to resolve to 127.0.0.1 sends its own name as Host).
//
// Accepted: a loopback name ("localhost", "*.localhost") or address, the
// address the connection came in on (`local_address`, as text), or a match in
// `allowed_hosts` (".example.com" also matches its subdomains). Names compare
// case-insensitively, without a trailing dot; a port is ignored. An empty or
// malformed value (an unbracketed IPv6 address) is refused.
#pragma once

#include <boost/asio/ip/address.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/host_port.h"
#include "common/text.h"

namespace sidetrace {

// An IPv4 address carried in IPv6 (::ffff:a.b.c.d, as a dual-stack listener
// sees IPv4 peers) as the IPv4 address itself.
inline boost::asio::ip::address unmapped(const boost::asio::ip::address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
  }
  return a;
}

// A host name as compared: lower case, without a trailing dot.
inline std::string host_key(std::string_view host) {
  std::string h = lower(host);
  if (h.ends_with('.')) h.pop_back();
  return h;
}

inline bool host_allowed(std::string_view host_header,
                         const std::vector<std::string>& allowed_hosts,
                         std::string_view local_address) {
  const auto hp = parse_host_port(trim(host_header));
  if (!hp) return false;
  const std::string host = host_key(hp->host);
  if (host.empty()) return false;
  if (host == "localhost" || host.ends_with(".localhost")) return true;
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  if (!ec) {
    if (unmapped(address).is_loopback()) return true;
    const auto local = boost::asio::ip::make_address(std::string(local_address), ec);
    if (!ec && unmapped(local) == unmapped(address)) return true;
  }
  for (const auto& entry : allowed_hosts) {
    const std::string e = host_key(entry);
    if (e.empty()) continue;
    if (host == e) return true;
    if (e.front() == '.' && (host == e.substr(1) || host.ends_with(e))) return true;
  }
  return false;
}

}  // namespace sidetrace
