// One keep-alive HTTP/1.1 connection (plain or TLS) to the upstream, used by
// one batch at a time. Delivery keeps a pool of these (one per in-flight
// batch).
//
// Thread safety: none; a connection is used from the io_context thread only.
// Errors: post() never throws; every failure becomes an Outcome. The
// configuration functions throw at start-up (std::invalid_argument,
// std::runtime_error).
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "upstream/detail/policy.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream::detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

struct Endpoint {
  bool tls = false;
  std::string host;    // without brackets for IPv6
  std::string port;    // numeric or service name
  std::string target;  // path of the resource, e.g. "/v1/traces"
  std::string host_header;
};

// Parses "http(s)://host[:port][/base]"; the target is `{base}{resource}`.
// Throws std::invalid_argument.
Endpoint parse_endpoint(std::string_view url, std::string_view resource = "/v1/traces");

// The client TLS context for `options` (verification, CA file, client
// certificate). Throws std::runtime_error naming the file that failed.
std::shared_ptr<net::ssl::context> make_tls_context(const Options& options);

using ResolveDone = std::function<void(beast::error_code, net::ip::tcp::resolver::results_type)>;

struct ConnectionConfig {
  Endpoint endpoint;
  std::shared_ptr<net::ssl::context> tls;  // null for http
  bool tls_verify = true;
  // The whole of a connection's set-up: the DNS lookup, the TCP connect and
  // the TLS handshake together.
  uint32_t connect_timeout_ms = 5000;
  uint32_t request_timeout_ms = 30000;
  // Fault injection, for tests only: stands for the DNS lookup of the
  // endpoint's host, on the connection's executor. It may call `done` late
  // or never (a lookup that hangs).
  std::function<void(ResolveDone done)> resolve_hook;
  // Whose rules classify a response (classify()); with kOtlp, a refusal's
  // google.rpc.Status body is decoded into the outcome's detail.
  Format format = Format::kNative;
};

class HttpConnection {
 public:
  HttpConnection(net::any_io_executor ex, std::shared_ptr<const ConnectionConfig> config);
  ~HttpConnection();

  // Sends `req` (connecting first if needed) and classifies the response.
  // A reused connection that fails before any response byte is retried once
  // on a fresh connection. `now_ns` interprets Retry-After dates.
  net::awaitable<Outcome> post(const http::request<http::string_body>& req, uint64_t now_ns);

  // Closes the socket; the next post() reconnects. Cancels pending I/O.
  void close();
  bool connected() const { return tcp_.has_value() || tls_.has_value(); }
  const ConnectionConfig& config() const { return *config_; }

 private:
  // Sets *phase to the step that failed ("resolve", "connect", "handshake").
  net::awaitable<beast::error_code> connect(const char** phase);
  // The DNS lookup, given up at `deadline`: a lookup runs on a thread of its
  // own and cannot be interrupted, so a hanging one is abandoned (its late
  // answer is dropped), never waited for.
  net::awaitable<beast::error_code> resolve(std::chrono::steady_clock::time_point deadline,
                                            net::ip::tcp::resolver::results_type* out);
  template <typename Stream>
  net::awaitable<beast::error_code> exchange(Stream& s, const http::request<http::string_body>& req,
                                             http::response<http::string_body>* res,
                                             bool* got_bytes);

  net::any_io_executor ex_;
  std::shared_ptr<const ConnectionConfig> config_;
  std::optional<beast::tcp_stream> tcp_;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
  beast::flat_buffer buffer_;
};

}  // namespace sidetrace::upstream::detail
