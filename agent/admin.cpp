#include "agent/admin.h"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/version.hpp>
#include <charconv>
#include <chrono>
#include <optional>

namespace sidetrace::agent {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

constexpr auto kReadDeadline = std::chrono::seconds(30);
constexpr size_t kBodyLimit = 16 * 1024;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<const AdminHandler> handler)
      : stream_(std::move(socket)), handler_(std::move(handler)) {}

  void run() {
    net::dispatch(stream_.get_executor(),
                  beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(kBodyLimit);
    stream_.expires_after(kReadDeadline);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec == http::error::end_of_stream) return close();
    if (ec) return;  // timeout, reset or a malformed request: drop the connection
    const auto& req = parser_->get();
    res_ = {};
    res_.version(req.version());
    res_.keep_alive(req.keep_alive());
    res_.set(http::field::server, "sidetrace");
    if (req.method() != http::verb::get && req.method() != http::verb::head &&
        req.method() != http::verb::post) {
      res_.result(http::status::method_not_allowed);
      res_.set(http::field::content_type, "text/plain");
      res_.body() = "only GET, HEAD and POST are supported\n";
    } else {
      std::string method = req.method() == http::verb::post ? "POST" : "GET";
      AdminResponse r = (*handler_)(method, std::string(req.target()));
      res_.result(r.status);
      res_.set(http::field::content_type, r.content_type);
      res_.set(http::field::cache_control, "no-store");
      if (req.method() != http::verb::head) res_.body() = std::move(r.body);
    }
    res_.prepare_payload();
    http::async_write(stream_, res_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    if (ec) return;
    if (!res_.keep_alive()) return close();
    do_read();
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  std::shared_ptr<const AdminHandler> handler_;
};

}  // namespace

struct AdminServer::Impl : std::enable_shared_from_this<AdminServer::Impl> {
  Impl(net::io_context& io, AdminHandler h)
      : io(io),
        acceptor(net::make_strand(io)),
        handler(std::make_shared<AdminHandler>(std::move(h))) {}

  void do_accept() {
    acceptor.async_accept(net::make_strand(io),
                          beast::bind_front_handler(&Impl::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) {
      std::make_shared<Session>(std::move(socket), handler)->run();
    } else {
      spdlog::warn("admin: accept failed: {}", ec.message());
    }
    do_accept();
  }

  net::io_context& io;
  tcp::acceptor acceptor;
  std::shared_ptr<const AdminHandler> handler;
};

AdminServer::AdminServer(net::io_context& io, AdminHandler handler)
    : impl_(std::make_shared<Impl>(io, std::move(handler))) {}

AdminServer::~AdminServer() {
  stop();
}

bool split_host_port(const std::string& host_port, std::string* host, unsigned short* port) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 >= host_port.size()) return false;
  std::string h = host_port.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h.empty()) return false;
  const char* b = host_port.data() + colon + 1;
  const char* e = host_port.data() + host_port.size();
  unsigned v = 0;
  auto [p, ec] = std::from_chars(b, e, v);
  if (ec != std::errc() || p != e || v > 65535) return false;
  *host = h;
  *port = static_cast<unsigned short>(v);
  return true;
}

std::error_code AdminServer::listen(const std::string& host_port, std::string* error) {
  std::string host;
  unsigned short port = 0;
  if (!split_host_port(host_port, &host, &port)) {
    *error = "admin.listen: \"" + host_port + "\" is not host:port";
    return std::make_error_code(std::errc::invalid_argument);
  }
  if (host == "localhost") host = "127.0.0.1";
  beast::error_code ec;
  auto address = net::ip::make_address(host, ec);
  if (ec) {
    *error = "admin.listen: \"" + host + "\" is not an IP address";
    return ec;
  }
  tcp::endpoint ep(address, port);
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    *error = "admin.listen: cannot listen on " + host_port + ": " + ec.message();
    beast::error_code ignored;
    a.close(ignored);
    return ec;
  }
  net::dispatch(a.get_executor(), [impl = impl_] { impl->do_accept(); });
  return {};
}

unsigned short AdminServer::port() const {
  beast::error_code ec;
  auto ep = impl_->acceptor.local_endpoint(ec);
  return ec ? 0 : ep.port();
}

void AdminServer::stop() {
  if (!impl_) return;
  net::post(impl_->acceptor.get_executor(), [impl = impl_] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
}

bool admin_request(const std::string& host_port, const std::string& method,
                   const std::string& target, unsigned* status, std::string* body,
                   std::string* error) {
  std::string host;
  unsigned short port = 0;
  if (!split_host_port(host_port, &host, &port)) {
    *error = "\"" + host_port + "\" is not host:port";
    return false;
  }
  try {
    net::io_context io;
    tcp::resolver resolver(io);
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(5));
    stream.connect(resolver.resolve(host, std::to_string(port)));
    http::request<http::string_body> req{method == "POST" ? http::verb::post : http::verb::get,
                                         target, 11};
    req.prepare_payload();
    req.set(http::field::host, host);
    req.set(http::field::connection, "close");
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    *status = res.result_int();
    *body = std::move(res.body());
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    return true;
  } catch (const std::exception& e) {
    *error =
        std::string("cannot reach the agent's admin endpoint at ") + host_port + ": " + e.what();
    return false;
  }
}

}  // namespace sidetrace::agent
