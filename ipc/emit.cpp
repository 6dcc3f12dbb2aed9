#include "ipc/emit.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "ipc/event.h"

namespace sidetrace::ipc {

bool parse_endpoint(std::string_view url, Endpoint* out, std::string* err) {
  Endpoint ep;
  std::string_view rest;
  if (url.starts_with("unix://")) {
    ep.type = Endpoint::Type::kUnixStream;
    rest = url.substr(7);
  } else if (url.starts_with("unixgram://")) {
    ep.type = Endpoint::Type::kUnixDgram;
    rest = url.substr(11);
  } else if (url.starts_with("udp://")) {
    ep.type = Endpoint::Type::kUdp;
    rest = url.substr(6);
  } else {
    *err = "endpoint '" + std::string(url) +
           "' is not unix://PATH, unixgram://PATH or udp://HOST:PORT";
    return false;
  }
  if (ep.type != Endpoint::Type::kUdp) {
    if (rest.empty() || rest.size() >= sizeof(sockaddr_un::sun_path)) {
      *err = "endpoint '" + std::string(url) + "': socket path empty or too long";
      return false;
    }
    ep.path = std::string(rest);
    *out = std::move(ep);
    return true;
  }
  std::string_view host, port;
  if (rest.starts_with("[")) {
    const size_t close = rest.find(']');
    if (close == std::string_view::npos || rest.substr(close + 1, 1) != ":") {
      *err = "endpoint '" + std::string(url) + "': want udp://[V6]:PORT";
      return false;
    }
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    const size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      *err = "endpoint '" + std::string(url) + "': want udp://HOST:PORT";
      return false;
    }
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  uint32_t p = 0;
  for (char c : port) {
    if (c < '0' || c > '9' || p > 65535) break;
    p = p * 10 + static_cast<uint32_t>(c - '0');
  }
  if (host.empty() || port.empty() || p == 0 || p > 65535 ||
      port.find_first_not_of("0123456789") != std::string_view::npos) {
    *err = "endpoint '" + std::string(url) + "': bad host or port";
    return false;
  }
  ep.host = std::string(host);
  ep.port = static_cast<uint16_t>(p);
  *out = std::move(ep);
  return true;
}

std::string endpoint_url(std::string_view explicit_url) {
  if (!explicit_url.empty()) return std::string(explicit_url);
  if (const char* env = std::getenv(kEndpointEnv); env != nullptr && *env != '\0') return env;
  return std::string(kDefaultEndpoint);
}

namespace {

class SocketSender final : public Sender {
 public:
  SocketSender(Endpoint ep, std::chrono::milliseconds timeout)
      : ep_(std::move(ep)), timeout_(timeout) {}
  ~SocketSender() override { close_fd(); }

  bool send(std::string_view msg) override {
    if (fd_ < 0 && !open()) return drop();
    const bool stream = ep_.type == Endpoint::Type::kUnixStream;
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    size_t done = 0;
    while (done < msg.size()) {
      const ssize_t n =
          ::send(fd_, msg.data() + done, msg.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        done += static_cast<size_t>(n);
        if (!stream) break;  // a datagram goes whole or not at all
        continue;
      }
      const int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd p{fd_, POLLOUT, 0};
        if (left.count() > 0 && ::poll(&p, 1, static_cast<int>(left.count())) > 0) continue;
        error_ = "agent socket full for longer than the send timeout";
      } else {
        error_ = std::string("send failed: ") + std::strerror(e);
      }
      // A stream with half a message in it is unusable; close it. A refused
      // datagram means no agent is bound now; reconnect next time.
      if (done > 0 || e == EPIPE || e == ECONNRESET || e == ECONNREFUSED || e == ENOTCONN) {
        close_fd();
      }
      return drop();
    }
    ++sent_;
    return true;
  }

  uint64_t sent() const override { return sent_; }
  uint64_t dropped() const override { return dropped_; }
  const std::string& last_error() const override { return error_; }

 private:
  bool drop() {
    ++dropped_;
    return false;
  }

  void close_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool open() {
    if (ep_.type == Endpoint::Type::kUdp) {
      addrinfo hints{};
      hints.ai_socktype = SOCK_DGRAM;
      addrinfo* res = nullptr;
      const std::string port = std::to_string(ep_.port);
      const int rc = ::getaddrinfo(ep_.host.c_str(), port.c_str(), &hints, &res);
      if (rc != 0 || res == nullptr) {
        error_ = "cannot resolve " + ep_.host + ": " + ::gai_strerror(rc);
        return false;
      }
      fd_ = ::socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      const bool ok = fd_ >= 0 && ::connect(fd_, res->ai_addr, res->ai_addrlen) == 0;
      if (!ok) error_ = std::string("cannot open udp socket: ") + std::strerror(errno);
      ::freeaddrinfo(res);
      if (!ok) close_fd();
      return ok;
    }
    const int type = ep_.type == Endpoint::Type::kUnixStream ? SOCK_STREAM : SOCK_DGRAM;
    fd_ = ::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) {
      error_ = std::string("socket: ") + std::strerror(errno);
      return false;
    }
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, ep_.path.data(), ep_.path.size());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      error_ = "no agent at " + ep_.path + ": " + std::strerror(errno);
      close_fd();
      return false;
    }
    return true;
  }

  const Endpoint ep_;
  const std::chrono::milliseconds timeout_;
  int fd_ = -1;
  uint64_t sent_ = 0;
  uint64_t dropped_ = 0;
  std::string error_;
};

using nlohmann::json;

// Builds the JSON form of the one message described by flags.
bool message_from_flags(const EmitOptions& o, json* out, std::string* err) {
  json m = json::object();
  m["v"] = 1;
  m["kind"] = o.kind;
  auto put = [&](const char* key, const std::string& v) {
    if (!v.empty()) m[key] = v;
  };
  put("trace_id", o.trace_id);
  put("id", o.id);
  put("parent_id", o.parent_id);
  put("type", o.type);
  put("name", o.name);
  put("status", o.status);
  put("error", o.error);
  put("conversation_id", o.conversation_id);
  put("session_id", o.session_id);
  put("tag", o.tag);
  put("text", o.text);
  put("target_id", o.target_id);
  if (!o.user_id.empty()) m["user"] = json{{"id", o.user_id}};
  if (o.ts_ns) m["ts"] = *o.ts_ns;
  if (o.end_ts_ns) m["end_ts"] = *o.end_ts_ns;
  if (o.latency_ms) m["latency_ms"] = *o.latency_ms;
  if (o.score) m["score"] = *o.score;
  for (auto [key, value] : {std::pair{"input", &o.input}, std::pair{"output", &o.output}}) {
    if (!value->has_value()) continue;
    if (o.json_values) {
      json v = json::parse(**value, nullptr, false);
      if (v.is_discarded()) {
        *err = std::string("--") + key + " is not valid JSON";
        return false;
      }
      m[key] = std::move(v);
    } else {
      m[key] = **value;
    }
  }
  if (!o.attrs_json.empty()) {
    json a = json::parse(o.attrs_json, nullptr, false);
    if (a.is_discarded() || !a.is_object()) {
      *err = "--attrs is not a JSON object";
      return false;
    }
    m["attrs"] = std::move(a);
  }
  *out = std::move(m);
  return true;
}

// JSON object -> validated msgpack bytes.
bool encode(json& m, std::string* bytes, std::string* err) {
  if (!m.is_object()) {
    *err = "not a JSON object";
    return false;
  }
  if (!m.contains("v")) m["v"] = 1;
  std::vector<uint8_t> mp = json::to_msgpack(m);
  bytes->assign(mp.begin(), mp.end());
  Event ev;
  Reject reason;
  std::string detail;
  if (!decode_event(*bytes, DecodeLimits{}, &ev, &reason, &detail)) {
    *err = std::string("invalid message (") + std::string(reject_name(reason)) + "): " + detail;
    return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<Sender> Sender::create(const Endpoint& ep, std::chrono::milliseconds send_timeout) {
  return std::make_unique<SocketSender>(ep, send_timeout);
}

int run_emit(const EmitOptions& o, std::istream& in, std::ostream& err) {
  Endpoint ep;
  std::string error;
  if (!parse_endpoint(endpoint_url(o.endpoint), &ep, &error)) {
    err << "sidetrace emit: " << error << "\n";
    return 2;
  }
  auto sender = Sender::create(ep, o.send_timeout);
  std::string bytes;
  if (!o.json_lines) {
    json m;
    if (!message_from_flags(o, &m, &error) || !encode(m, &bytes, &error)) {
      err << "sidetrace emit: " << error << "\n";
      return 2;
    }
    sender->send(bytes);
  } else {
    std::string line;
    size_t lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json m = json::parse(line, nullptr, false);
      if (m.is_discarded()) {
        err << "sidetrace emit: line " << lineno << ": not valid JSON\n";
        return 2;
      }
      if (!encode(m, &bytes, &error)) {
        err << "sidetrace emit: line " << lineno << ": " << error << "\n";
        return 2;
      }
      sender->send(bytes);
    }
  }
  if (sender->dropped() > 0) {
    err << "sidetrace emit: " << sender->dropped() << " of " << sender->dropped() + sender->sent()
        << " messages dropped: " << sender->last_error() << "\n";
    return 3;
  }
  return 0;
}

int run_emit(const EmitOptions& options, std::istream& in) {
  return run_emit(options, in, std::cerr);
}

}  // namespace sidetrace::ipc
