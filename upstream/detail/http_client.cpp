#include "upstream/detail/http_client.h"

#include <openssl/ssl.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <stdexcept>

#include "common/host_port.h"
#include "upstream/detail/otlp.h"

namespace sidetrace::upstream::detail {

namespace ssl = net::ssl;
using tcp = net::ip::tcp;

Endpoint parse_endpoint(std::string_view url, std::string_view resource) {
  Endpoint ep;
  std::string_view rest;
  if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else if (url.starts_with("https://")) {
    ep.tls = true;
    rest = url.substr(8);
  } else {
    throw std::invalid_argument("upstream.endpoint must start with http:// or https://");
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.empty()) throw std::invalid_argument("upstream.endpoint has no host");
  if (authority.find('@') != std::string_view::npos) {
    throw std::invalid_argument("upstream.endpoint must not contain credentials");
  }
  auto hp = parse_host_port(authority);
  if (!hp) {
    throw std::invalid_argument(
        "upstream.endpoint: the host and port are not HOST, HOST:PORT or [IPv6]:PORT");
  }
  ep.host = std::move(hp->host);
  ep.port = hp->port ? std::to_string(*hp->port) : std::string(ep.tls ? "443" : "80");
  while (!path.empty() && path.back() == '/')
    path.remove_suffix(1);
  ep.target = std::string(path) + std::string(resource);
  ep.host_header = std::string(authority);
  return ep;
}

std::shared_ptr<ssl::context> make_tls_context(const Options& o) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  boost::system::error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  if (o.tls_verify) {
    ctx->set_verify_mode(ssl::verify_peer);
    ctx->set_default_verify_paths(ec);  // no system CAs is not fatal when ca_file is given
    if (!o.ca_file.empty()) {
      ctx->load_verify_file(o.ca_file, ec);
      if (ec) throw std::runtime_error("upstream.ca_file " + o.ca_file + ": " + ec.message());
    }
  } else {
    ctx->set_verify_mode(ssl::verify_none);
  }
  if (!o.client_cert.empty() || !o.client_key.empty()) {
    if (o.client_cert.empty() || o.client_key.empty()) {
      throw std::runtime_error("upstream.client_cert and upstream.client_key go together");
    }
    ctx->use_certificate_chain_file(o.client_cert, ec);
    if (ec) throw std::runtime_error("upstream.client_cert " + o.client_cert + ": " + ec.message());
    ctx->use_private_key_file(o.client_key, ssl::context::pem, ec);
    if (ec) throw std::runtime_error("upstream.client_key " + o.client_key + ": " + ec.message());
  }
  return ctx;
}

HttpConnection::HttpConnection(net::any_io_executor ex,
                               std::shared_ptr<const ConnectionConfig> config)
    : ex_(std::move(ex)), config_(std::move(config)) {}

HttpConnection::~HttpConnection() {
  close();
}

void HttpConnection::close() {
  beast::error_code ec;
  if (tcp_) {
    tcp_->socket().shutdown(tcp::socket::shutdown_both, ec);
    tcp_->close();
    tcp_.reset();
  }
  if (tls_) {
    // No TLS close_notify: the peer treats the closed socket as the end.
    beast::get_lowest_layer(*tls_).close();
    tls_.reset();
  }
  buffer_.clear();
}

net::awaitable<beast::error_code> HttpConnection::resolve(
    std::chrono::steady_clock::time_point deadline, tcp::resolver::results_type* out) {
  // Shared with the lookup's completion, which may come after this
  // coroutine gave up on it.
  struct Lookup {
    explicit Lookup(const net::any_io_executor& ex) : timer(ex), resolver(ex) {}
    net::steady_timer timer;
    tcp::resolver resolver;
    bool done = false;
    beast::error_code ec;
    tcp::resolver::results_type results;
  };
  auto lookup = std::make_shared<Lookup>(ex_);
  ResolveDone finish = [lookup](beast::error_code ec, tcp::resolver::results_type results) {
    if (lookup->done) return;
    lookup->done = true;
    lookup->ec = ec;
    lookup->results = std::move(results);
    lookup->timer.cancel();
  };
  const auto& ep = config_->endpoint;
  if (config_->resolve_hook) {
    config_->resolve_hook(std::move(finish));
  } else {
    lookup->resolver.async_resolve(ep.host, ep.port, std::move(finish));
  }
  // The completion runs on this connection's executor, never between the
  // test and the wait below.
  if (!lookup->done) {
    lookup->timer.expires_at(deadline);
    beast::error_code wait_ec;
    co_await lookup->timer.async_wait(net::redirect_error(net::use_awaitable, wait_ec));
  }
  if (!lookup->done) {
    lookup->done = true;
    lookup->resolver.cancel();
    co_return beast::error::timeout;
  }
  *out = std::move(lookup->results);
  co_return lookup->ec;
}

net::awaitable<beast::error_code> HttpConnection::connect(const char** phase) {
  beast::error_code ec;
  const auto& ep = config_->endpoint;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(config_->connect_timeout_ms);
  *phase = "resolve";
  tcp::resolver::results_type results;
  ec = co_await resolve(deadline, &results);
  if (ec) co_return ec;
  *phase = "connect";
  beast::tcp_stream stream(ex_);
  stream.expires_at(deadline);
  co_await stream.async_connect(results, net::redirect_error(net::use_awaitable, ec));
  if (ec) co_return ec;
  stream.socket().set_option(tcp::no_delay(true), ec);
  if (!config_->tls) {
    tcp_.emplace(std::move(stream));
    co_return beast::error_code{};
  }
  *phase = "handshake";
  beast::ssl_stream<beast::tcp_stream> s(std::move(stream), *config_->tls);
  if (!SSL_set_tlsext_host_name(s.native_handle(), ep.host.c_str())) {
    co_return beast::error_code(static_cast<int>(::ERR_get_error()),
                                net::error::get_ssl_category());
  }
  if (config_->tls_verify) s.set_verify_callback(ssl::host_name_verification(ep.host));
  beast::get_lowest_layer(s).expires_at(deadline);
  co_await s.async_handshake(ssl::stream_base::client, net::redirect_error(net::use_awaitable, ec));
  if (ec) co_return ec;
  tls_.emplace(std::move(s));
  co_return beast::error_code{};
}

template <typename Stream>
net::awaitable<beast::error_code> HttpConnection::exchange(
    Stream& s, const http::request<http::string_body>& req, http::response<http::string_body>* res,
    bool* got_bytes) {
  beast::error_code ec;
  beast::get_lowest_layer(s).expires_after(std::chrono::milliseconds(config_->request_timeout_ms));
  co_await http::async_write(s, req, net::redirect_error(net::use_awaitable, ec));
  if (ec) co_return ec;
  http::response_parser<http::string_body> parser;
  parser.body_limit(1u << 20);
  parser.header_limit(64u << 10);
  co_await http::async_read(s, buffer_, parser, net::redirect_error(net::use_awaitable, ec));
  *got_bytes = parser.got_some() || buffer_.size() > 0;
  if (ec) co_return ec;
  *res = parser.release();
  beast::get_lowest_layer(s).expires_never();
  co_return beast::error_code{};
}

net::awaitable<Outcome> HttpConnection::post(const http::request<http::string_body>& req,
                                             uint64_t now_ns) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    bool reused = connected();
    beast::error_code ec;
    if (!reused) {
      const char* phase = "connect";
      ec = co_await connect(&phase);
      if (ec) {
        close();
        Outcome o;
        o.kind = OutcomeKind::kRetryable;
        o.detail = "connect " + config_->endpoint.host + ":" + config_->endpoint.port + ": " +
                   phase + ": " +
                   (ec == beast::error::timeout
                        ? "timed out after " + std::to_string(config_->connect_timeout_ms) + " ms"
                        : ec.message());
        co_return o;
      }
    }
    http::response<http::string_body> res;
    bool got_bytes = false;
    if (tls_) {
      ec = co_await exchange(*tls_, req, &res, &got_bytes);
    } else {
      ec = co_await exchange(*tcp_, req, &res, &got_bytes);
    }
    if (ec) {
      close();
      // The server may have closed an idle keep-alive connection: try once
      // more on a fresh one before calling it a failure.
      if (reused && !got_bytes && ec != beast::error::timeout) continue;
      Outcome o;
      o.kind = OutcomeKind::kRetryable;
      o.detail = ec == beast::error::timeout ? std::string("request timed out") : ec.message();
      co_return o;
    }
    auto retry_after = res[http::field::retry_after];
    Outcome o =
        classify(static_cast<int>(res.result_int()),
                 std::string_view(retry_after.data(), retry_after.size()), now_ns, config_->format);
    auto reason = res.reason();
    o.detail = std::to_string(res.result_int()) + " " + std::string(reason.data(), reason.size());
    auto type = res[http::field::content_type];
    o.content_type.assign(type.data(), type.size());
    o.body = std::move(res.body());
    if (config_->format == Format::kOtlp && o.kind != OutcomeKind::kSuccess) {
      // An OTLP receiver explains a refusal in a google.rpc.Status.
      std::string why = describe_error_body(o.body, o.content_type);
      if (!why.empty()) o.detail += ": " + why;
    }
    if (!res.keep_alive()) close();
    co_return o;
  }
  Outcome o;
  o.detail = "connection closed by upstream";
  co_return o;
}

}  // namespace sidetrace::upstream::detail
