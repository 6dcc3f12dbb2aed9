#include "agent/admin.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/version.hpp>
#include <charconv>
#include <chrono>
#include <optional>
#include <thread>

#include "common/host_allowed.h"
#include "common/host_port.h"
#include "common/text.h"
#include "common/thread.h"

namespace sidetrace::agent {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

constexpr auto kReadDeadline = std::chrono::seconds(30);
constexpr size_t kBodyLimit = 16 * 1024;

using Request = http::request<http::string_body>;

// The thread that runs every request but the quick ones (the server's
// quick routes), so that a slow one (a dead-letter listing, a viewer search)
// never holds up /healthz. One thread: such requests run one at a time, in
// arrival order.
class Worker {
 public:
  Worker()
      : guard_(net::make_work_guard(io_)),
        thread_([this] { run_thread("st-admin-work", [this] { io_.run(); }); }) {}
  ~Worker() { close(); }
  // Lets the request under way finish, drops the queued ones, and joins.
  void close() {
    guard_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  template <typename F>
  void post(F&& f) {
    net::post(io_, std::forward<F>(f));
  }

 private:
  net::io_context io_;
  net::executor_work_guard<net::io_context::executor_type> guard_;
  std::thread thread_;
};

// Whether `target` is one of `routes` (default_quick_routes()).
bool quick(const std::vector<std::string>& routes, std::string_view target) {
  const std::string_view path = target.substr(0, target.find('?'));
  return std::any_of(routes.begin(), routes.end(), [path](const std::string& r) {
    return r.ends_with('/') ? path.starts_with(r) : path == r;
  });
}

// What every session shares: the routes, the access rules and the worker.
struct Shared {
  AdminHandler handler;
  AdminAccess access;
  std::vector<std::string> quick_routes;
  std::unique_ptr<Worker> worker = std::make_unique<Worker>();
};

struct Refusal {
  unsigned status = 403;
  std::string reason;
};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && lower(a) == lower(b);
}

std::string_view header(const Request& req, std::string_view name) {
  auto it = req.find(beast::string_view(name.data(), name.size()));
  if (it == req.end()) return {};
  return std::string_view(it->value().data(), it->value().size());
}

bool is_open_path(const AdminAccess& access, const Request& req) {
  if (req.method() != http::verb::get && req.method() != http::verb::head) return false;
  std::string_view target(req.target().data(), req.target().size());
  std::string_view path = target.substr(0, target.find('?'));
  return std::find(access.open_paths.begin(), access.open_paths.end(), path) !=
         access.open_paths.end();
}

// Whether the Authorization header carries `token` as a bearer token.
bool has_token(const Request& req, const std::string& token) {
  std::string_view value = trim(header(req, "Authorization"));
  size_t space = value.find(' ');
  if (space == std::string_view::npos || !iequals(value.substr(0, space), "Bearer")) {
    return false;
  }
  return equal_constant_time(trim(value.substr(space + 1)), token);
}

// Why the request may not reach the handler, if it may not (the order of
// the checks is the order of the statuses in admin.h).
std::optional<Refusal> refusal(const Request& req, const AdminAccess& access,
                               const std::string& local_address) {
  if (req.count(http::field::host) > 1) return Refusal{400, "more than one Host header"};
  std::string_view host = header(req, "Host");
  if (!host.empty() && !host_allowed(host, access.allowed_hosts, local_address)) {
    return Refusal{421, "the host name \"" + std::string(host) +
                            "\" is not accepted here; use 127.0.0.1 or localhost, or add it "
                            "to admin.allowed_hosts"};
  }
  if (!access.token.empty() && !is_open_path(access, req) && !has_token(req, access.token)) {
    return Refusal{401,
                   "this endpoint needs the admin token (admin.token) as "
                   "\"Authorization: Bearer <token>\""};
  }
  if (req.method() != http::verb::post) return std::nullopt;
  std::string_view site = trim(header(req, "Sec-Fetch-Site"));
  if (!site.empty() && !iequals(site, "same-origin") && !iequals(site, "none")) {
    return Refusal{
        403, "a POST from another site (Sec-Fetch-Site: " + std::string(site) + ") is refused"};
  }
  std::string_view origin = trim(header(req, "Origin"));
  if (!origin.empty()) {
    const std::string self(host);
    bool same =
        !self.empty() && (iequals(origin, "http://" + self) || iequals(origin, "https://" + self));
    if (!same) {
      return Refusal{403, "a POST from another origin (" + std::string(origin) + ") is refused"};
    }
  }
  if (trim(header(req, kRequestHeader)).empty()) {
    return Refusal{403, "a POST needs the header \"" + std::string(kRequestHeader) +
                            ": 1\" (sidetrace and the viewer send it; a form cannot)"};
  }
  return std::nullopt;
}

// The handler's answer; 500 with the reason when it throws.
AdminResponse call(const Shared& shared, const std::string& method, const std::string& target) {
  try {
    return shared.handler(method, target);
  } catch (const std::exception& e) {
    return AdminResponse{500, "text/plain; charset=utf-8", std::string(e.what()) + "\n", {}};
  }
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<const Shared> shared)
      : stream_(std::move(socket)), shared_(std::move(shared)) {
    beast::error_code ec;
    auto local = stream_.socket().local_endpoint(ec);
    if (!ec) local_address_ = unmapped(local.address()).to_string();
  }

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
    res_.set("X-Content-Type-Options", "nosniff");
    res_.set("X-Frame-Options", "DENY");
    if (auto r = refusal(req, shared_->access, local_address_)) {
      spdlog::debug("admin: refused {} {} with {}: {}", std::string(req.method_string()),
                    std::string(req.target()), r->status, r->reason);
      res_.result(r->status);
      res_.set(http::field::content_type, "text/plain; charset=utf-8");
      res_.set(http::field::cache_control, "no-store");
      if (r->status == 401) res_.set(http::field::www_authenticate, "Bearer realm=\"sidetrace\"");
      if (req.method() != http::verb::head) res_.body() = r->reason + "\n";
    } else if (req.method() != http::verb::get && req.method() != http::verb::head &&
               req.method() != http::verb::post) {
      res_.result(http::status::method_not_allowed);
      res_.set(http::field::content_type, "text/plain");
      res_.body() = "only GET, HEAD and POST are supported\n";
    } else {
      std::string method = req.method() == http::verb::post ? "POST" : "GET";
      std::string target(req.target());
      head_ = req.method() == http::verb::head;
      if (quick(shared_->quick_routes, target)) return respond(call(*shared_, method, target));
      // The worker answers; the reply is written back on this session's strand.
      shared_->worker->post([self = shared_from_this(), method = std::move(method),
                             target = std::move(target)]() mutable {
        AdminResponse r = call(*self->shared_, method, target);
        auto* s = self.get();
        net::post(s->stream_.get_executor(), [self = std::move(self), r = std::move(r)]() mutable {
          self->respond(std::move(r));
        });
      });
      return;
    }
    write();
  }

  void respond(AdminResponse r) {
    res_.result(r.status);
    res_.set(http::field::content_type, r.content_type);
    res_.set(http::field::cache_control, "no-store");
    for (const auto& [name, value] : r.headers)
      res_.set(name, value);
    if (!head_) res_.body() = std::move(r.body);
    write();
  }

  void write() {
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
  bool head_ = false;  // the request is a HEAD: no body
  std::shared_ptr<const Shared> shared_;
  std::string local_address_;  // the address the connection came in on
};

}  // namespace

struct AdminServer::Impl : std::enable_shared_from_this<AdminServer::Impl> {
  Impl(net::io_context& io, AdminHandler h, AdminAccess access, std::vector<std::string> quick)
      : io(io),
        acceptor(net::make_strand(io)),
        shared(
            std::make_shared<Shared>(Shared{std::move(h), std::move(access), std::move(quick)})) {}

  void do_accept() {
    acceptor.async_accept(net::make_strand(io),
                          beast::bind_front_handler(&Impl::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) {
      std::make_shared<Session>(std::move(socket), shared)->run();
    } else {
      spdlog::warn("admin: accept failed: {}", ec.message());
    }
    do_accept();
  }

  net::io_context& io;
  tcp::acceptor acceptor;
  std::shared_ptr<const Shared> shared;
};

std::vector<std::string> default_quick_routes() {
  return {"/healthz", "/readyz", "/metrics", "/operations", "/operations/"};
}

AdminServer::AdminServer(net::io_context& io, AdminHandler handler, AdminAccess access,
                         std::vector<std::string> quick_routes)
    : impl_(std::make_shared<Impl>(io, std::move(handler), std::move(access),
                                   std::move(quick_routes))) {}

AdminServer::~AdminServer() {
  stop();
}

bool split_host_port(const std::string& host_port, std::string* host, unsigned short* port) {
  auto hp = parse_host_port(host_port);
  if (!hp || !hp->port) return false;
  *host = std::move(hp->host);
  *port = *hp->port;
  return true;
}

bool equal_constant_time(std::string_view a, std::string_view b) {
  // Every byte of `b` is compared, against `a` cycled when it is shorter.
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < b.size(); ++i) {
    unsigned char x = a.empty() ? 0 : static_cast<unsigned char>(a[i % a.size()]);
    diff |= static_cast<unsigned>(x ^ static_cast<unsigned char>(b[i]));
  }
  // Read through a volatile, so that the loop is not cut short.
  volatile unsigned result = diff;
  return result == 0;
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

void AdminServer::join_worker() {
  if (impl_) impl_->shared->worker->close();
}

bool admin_request(const std::string& host_port, const std::string& method,
                   const std::string& target, unsigned* status, std::string* body,
                   std::string* error, const std::string& token) {
  std::string host;
  unsigned short port = 0;
  if (!split_host_port(host_port, &host, &port)) {
    *error = "\"" + host_port + "\" is not host:port";
    return false;
  }
  // An agent listening on every address (admin.listen = 0.0.0.0:7718) is
  // reached through loopback.
  if (host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  try {
    net::io_context io;
    tcp::resolver resolver(io);
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(5));
    stream.connect(resolver.resolve(host, std::to_string(port)));
    http::request<http::string_body> req{method == "POST" ? http::verb::post : http::verb::get,
                                         target, 11};
    req.prepare_payload();
    std::string host_header = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    req.set(http::field::host, host_header + ":" + std::to_string(port));
    req.set(http::field::connection, "close");
    req.set(beast::string_view(kRequestHeader.data(), kRequestHeader.size()), "1");
    if (!token.empty()) req.set(http::field::authorization, "Bearer " + token);
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
