#include "upstream/testing/http_server.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cctype>
#include <mutex>
#include <thread>

#include "upstream/detail/encode.h"

namespace sidetrace::upstream::testing {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

struct HttpServer::Impl {
  HttpServer* owner = nullptr;
  net::io_context io{1};
  tcp::acceptor acceptor{io};
  std::optional<ssl::context> tls;
  std::thread thread;
  mutable std::mutex mu;
  std::function<Reply(const RecordedRequest&)> handler;
  bool recording = true;
  std::vector<RecordedRequest> recorded;
  bool stopped = false;

  template <typename Stream>
  net::awaitable<void> serve(Stream& stream, tcp::socket& raw) {
    beast::flat_buffer buf;
    for (;;) {
      beast::error_code ec;
      http::request_parser<http::string_body> parser;
      parser.body_limit(256u << 20);
      co_await http::async_read(stream, buf, parser, net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
      auto req = parser.release();
      RecordedRequest r;
      r.at = std::chrono::steady_clock::now();
      r.method = std::string(req.method_string());
      r.target = std::string(req.target());
      for (auto& f : req) {
        std::string name(f.name_string());
        for (char& c : name)
          c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        r.headers[name] = std::string(f.value());
      }
      r.body = std::move(req.body());
      std::string enc = r.header("content-encoding");
      Compression c = enc == "gzip"   ? Compression::kGzip
                      : enc == "zstd" ? Compression::kZstd
                                      : Compression::kNone;
      r.decode_ok = detail::decompress(c, r.body, &r.decoded);
      std::function<Reply(const RecordedRequest&)> h;
      {
        std::lock_guard lock(mu);
        h = handler;
      }
      Reply reply = h ? h(r) : Reply{};
      ++owner->request_count_;
      {
        std::lock_guard lock(mu);
        if (recording) recorded.push_back(std::move(r));
      }
      if (reply.delay_ms > 0) {
        net::steady_timer t(io, std::chrono::milliseconds(reply.delay_ms));
        co_await t.async_wait(net::redirect_error(net::use_awaitable, ec));
      }
      if (reply.action == Reply::Action::kCloseBeforeReply) {
        raw.set_option(net::socket_base::linger(true, 0), ec);
        raw.close(ec);
        co_return;
      }
      http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
      res.keep_alive(req.keep_alive());
      for (auto& [k, v] : reply.headers)
        res.set(k, v);
      if (reply.body.empty() && reply.status != 204) reply.body = "{}";
      if (res.find(http::field::content_type) == res.end()) {
        res.set(http::field::content_type, "application/json");
      }
      res.body() = reply.body;
      res.prepare_payload();
      if (reply.action == Reply::Action::kResetMidBody) {
        // Announce the whole body, send the headers and half of it, then
        // reset the connection.
        res.set(http::field::content_length, std::to_string(reply.body.size() + 100));
        http::response_serializer<http::string_body> sr{res};
        co_await http::async_write_header(stream, sr, net::redirect_error(net::use_awaitable, ec));
        std::string half = reply.body.substr(0, reply.body.size() / 2);
        co_await net::async_write(stream, net::buffer(half),
                                  net::redirect_error(net::use_awaitable, ec));
        raw.set_option(net::socket_base::linger(true, 0), ec);
        raw.close(ec);
        co_return;
      }
      co_await http::async_write(stream, res, net::redirect_error(net::use_awaitable, ec));
      if (ec || !res.keep_alive()) co_return;
    }
  }

  net::awaitable<void> session(std::shared_ptr<tcp::socket> sock) {
    ++owner->connections_;
    if (!tls) {
      co_await serve(*sock, *sock);
      beast::error_code ec;
      sock->shutdown(tcp::socket::shutdown_both, ec);
      sock->close(ec);
      co_return;
    }
    beast::ssl_stream<tcp::socket&> stream(*sock, *tls);
    beast::error_code ec;
    co_await stream.async_handshake(ssl::stream_base::server,
                                    net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      ++owner->tls_failures_;
      co_return;
    }
    co_await serve(stream, *sock);
    sock->close(ec);
  }

  net::awaitable<void> accept_loop() {
    for (;;) {
      auto sock = std::make_shared<tcp::socket>(io);
      beast::error_code ec;
      co_await acceptor.async_accept(*sock, net::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
      net::co_spawn(io, session(sock), net::detached);
    }
  }
};

HttpServer::HttpServer(uint16_t port, std::optional<ServerTls> tls)
    : impl_(std::make_shared<Impl>()) {
  impl_->owner = this;
  if (tls) {
    impl_->tls.emplace(ssl::context::tls_server);
    impl_->tls->use_certificate_chain_file(tls->cert_file);
    impl_->tls->use_private_key_file(tls->key_file, ssl::context::pem);
    if (!tls->client_ca_file.empty()) {
      impl_->tls->load_verify_file(tls->client_ca_file);
      impl_->tls->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
  }
  tcp::endpoint ep(net::ip::make_address("127.0.0.1"), port);
  impl_->acceptor.open(ep.protocol());
  impl_->acceptor.set_option(net::socket_base::reuse_address(true));
  impl_->acceptor.bind(ep);
  impl_->acceptor.listen();
  port_ = impl_->acceptor.local_endpoint().port();
  net::co_spawn(impl_->io, impl_->accept_loop(), net::detached);
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

HttpServer::~HttpServer() {
  stop();
}

std::string HttpServer::url() const {
  return std::string(impl_->tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(port_);
}

void HttpServer::set_handler(std::function<Reply(const RecordedRequest&)> handler) {
  std::lock_guard lock(impl_->mu);
  impl_->handler = std::move(handler);
}

void HttpServer::set_recording(bool on) {
  std::lock_guard lock(impl_->mu);
  impl_->recording = on;
}

std::vector<RecordedRequest> HttpServer::requests() const {
  std::lock_guard lock(impl_->mu);
  return impl_->recorded;
}

void HttpServer::stop() {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopped) return;
    impl_->stopped = true;
  }
  net::post(impl_->io, [impl = impl_] {
    beast::error_code ec;
    impl->acceptor.close(ec);
    impl->io.stop();
  });
  impl_->thread.join();
}

}  // namespace sidetrace::upstream::testing
