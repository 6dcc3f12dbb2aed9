// The admin endpoint: a small HTTP/1.1 server on a loopback address for
// health checks, Prometheus metrics, status and the local trace viewer.
//
// Routes are plain functions supplied by the agent. The quick ones (the
// probes, /metrics, /operations and the POSTs that start a background
// operation, see agent/operations.h) run on the server's io_context thread,
// so they must not block; the others run one at a time on a worker thread of
// the server, so that a slow one never holds up /healthz or a quick one. Requests have a
// read deadline and a body limit; connections are kept alive.
//
// Before a request reaches the handler, the server refuses (AdminAccess):
//   421  a Host header that names neither a loopback name or address
//        (localhost, *.localhost, 127.0.0.0/8, ::1), nor the address the
//        connection came in on, nor one of `allowed_hosts` (a page reached
//        through DNS rebinding sends its own host name);
//   401  when a token is set, a request without "Authorization: Bearer
//        <token>", unless it is a GET or HEAD of one of `open_paths`;
//   403  a POST that comes from another site (an Origin other than the
//        request's own http(s)://<Host>, or Sec-Fetch-Site other than
//        same-origin or none), or that lacks the header kRequestHeader,
//        which a form cannot send and a cross-site script cannot send
//        without a CORS preflight that this server never grants.
//
// Thread safety: construct, listen() and stop() from one thread; handlers are
// called on the io_context's thread.
#pragma once

#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace sidetrace::agent {

struct AdminResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // more headers (Location)
};

// Handles one request: `method` is "GET", "HEAD" or "POST"; `target` is the
// path with its query string. Unknown routes answer 404.
using AdminHandler =
    std::function<AdminResponse(const std::string& method, const std::string& target)>;

// The header that the viewer and the command-line tools send with every
// request, and that every POST must carry.
inline constexpr std::string_view kRequestHeader = "X-Sidetrace-Request";

// Who may use the endpoint (see above). The default refuses only foreign
// Host names and cross-site POSTs.
struct AdminAccess {
  std::string token;                       // "" = no token needed
  std::vector<std::string> allowed_hosts;  // ".example.com" also matches subdomains
  std::vector<std::string> open_paths = {"/healthz", "/readyz"};  // served without the token
};

// The routes answered on the server's own thread: the probes, /metrics and
// the operations' states. An entry ending in '/' matches every path under it.
std::vector<std::string> default_quick_routes();

class AdminServer {
 public:
  // `quick_routes`: the routes answered on the server's own thread (the
  // agent adds the POSTs that start a background operation); every other
  // route goes to the worker.
  AdminServer(boost::asio::io_context& io, AdminHandler handler, AdminAccess access = {},
              std::vector<std::string> quick_routes = default_quick_routes());
  ~AdminServer();

  // Binds "host:port" (port 0 picks a free one) and starts accepting.
  std::error_code listen(const std::string& host_port, std::string* error);
  // The bound port, after listen().
  unsigned short port() const;
  // Stops accepting and closes the listener; open sessions end after their
  // current request.
  void stop();
  // Once the io_context no longer runs (stopped, its thread joined): waits
  // for the request the worker is running, drops those queued (never
  // answered), and joins the worker. The handler is not called afterwards, so
  // what it reaches (the store) may then be closed.
  void join_worker();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Splits "host:port" ("[::1]:80" for IPv6). Returns false if malformed.
bool split_host_port(const std::string& host_port, std::string* host, unsigned short* port);

// Whether `a` equals `b`, in a time that depends on the length of `b` (the
// secret) only.
bool equal_constant_time(std::string_view a, std::string_view b);

// A blocking request against an admin endpoint for the command-line tools
// (`sidetrace status`): sends kRequestHeader, and `token` as a bearer token
// when it is not empty. An unspecified address (0.0.0.0, ::) stands for the
// local agent and is reached through loopback. Returns false with `error` set
// when unreachable.
bool admin_request(const std::string& host_port, const std::string& method,
                   const std::string& target, unsigned* status, std::string* body,
                   std::string* error, const std::string& token = {});
inline bool admin_get(const std::string& host_port, const std::string& target, unsigned* status,
                      std::string* body, std::string* error, const std::string& token = {}) {
  return admin_request(host_port, "GET", target, status, body, error, token);
}

}  // namespace sidetrace::agent
