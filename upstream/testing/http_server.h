// A scripted HTTP/1.1 (optionally TLS) server on 127.0.0.1 for tests and the
// delivery benchmark. It records every request (decompressing gzip/zstd
// bodies) and answers as the handler says: a status with headers and body,
// after an optional delay, or by closing the connection before or in the
// middle of the response.
//
// Thread safety: every method may be called from any thread. The handler runs
// on the server thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/wait_until.h"

namespace sidetrace::upstream::testing {

struct RecordedRequest {
  std::string method;
  std::string target;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;                            // as received
  std::string decoded;                         // after Content-Encoding
  bool decode_ok = true;
  std::chrono::steady_clock::time_point at;  // when it was read
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct Reply {
  enum class Action { kReply, kCloseBeforeReply, kResetMidBody };
  int status = 200;
  // Content-Type is application/json unless given here.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;       // empty: "{}" (except for 204)
  uint32_t delay_ms = 0;  // wait this long before answering
  Action action = Action::kReply;
};

struct ServerTls {
  std::string cert_file;
  std::string key_file;
  std::string client_ca_file;  // non-empty: require a client certificate (mTLS)
};

class HttpServer {
 public:
  // Listens on 127.0.0.1:`port` (0: any free port). Throws when it cannot bind.
  explicit HttpServer(uint16_t port = 0, std::optional<ServerTls> tls = std::nullopt);
  ~HttpServer();  // stops
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  uint16_t port() const { return port_; }
  std::string url() const;  // "http(s)://127.0.0.1:<port>"

  // Default handler: 200 with an empty JSON object.
  void set_handler(std::function<Reply(const RecordedRequest&)> handler);
  // Recording keeps every request in memory; the benchmark turns it off.
  void set_recording(bool on);

  std::vector<RecordedRequest> requests() const;
  size_t request_count() const { return request_count_.load(); }
  size_t connections() const { return connections_.load(); }
  size_t tls_failures() const { return tls_failures_.load(); }

  // Closes the listener and every connection; idempotent.
  void stop();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
  uint16_t port_ = 0;
  std::atomic<size_t> request_count_{0};
  std::atomic<size_t> connections_{0};
  std::atomic<size_t> tls_failures_{0};
  friend struct Impl;
};

// Tests of upstream/ wait with the common helper.
using sidetrace::wait_until;

}  // namespace sidetrace::upstream::testing
