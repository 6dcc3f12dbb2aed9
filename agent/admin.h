// The admin endpoint: a small HTTP/1.1 server on a loopback address for
// health checks, Prometheus metrics, status and the local trace viewer.
//
// Routes are plain functions supplied by the agent; they run on the server's
// io_context thread, so they must be quick and must not block (they read
// counters and snapshots). Requests have a read deadline and a body limit;
// connections are kept alive.
//
// Thread safety: construct, listen() and stop() from one thread; handlers are
// called on the io_context's thread.
#pragma once

#include <boost/asio/io_context.hpp>

#include <functional>
#include <memory>
#include <string>
#include <system_error>

namespace sidetrace::agent {

struct AdminResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// Handles one request: `method` is "GET", "HEAD" or "POST"; `target` is the
// path with its query string. Unknown routes answer 404.
using AdminHandler =
    std::function<AdminResponse(const std::string& method, const std::string& target)>;

class AdminServer {
 public:
  AdminServer(boost::asio::io_context& io, AdminHandler handler);
  ~AdminServer();

  // Binds "host:port" (port 0 picks a free one) and starts accepting.
  std::error_code listen(const std::string& host_port, std::string* error);
  // The bound port, after listen().
  unsigned short port() const;
  // Stops accepting and closes the listener; open sessions end after their
  // current request.
  void stop();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Splits "host:port" ("[::1]:80" for IPv6). Returns false if malformed.
bool split_host_port(const std::string& host_port, std::string* host, unsigned short* port);

// A blocking request against an admin endpoint for the command-line tools
// (`sidetrace status`). Returns false with `error` set when unreachable.
bool admin_request(const std::string& host_port, const std::string& method,
                   const std::string& target, unsigned* status, std::string* body,
                   std::string* error);
inline bool admin_get(const std::string& host_port, const std::string& target, unsigned* status,
                      std::string* body, std::string* error) {
  return admin_request(host_port, "GET", target, status, body, error);
}

}  // namespace sidetrace::agent
