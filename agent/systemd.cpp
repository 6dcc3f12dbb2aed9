#include "agent/systemd.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "common/rate_limited_log.h"

namespace sidetrace::agent::systemd {

namespace {

// More than any sane .socket unit passes; guards against a runaway value.
constexpr int64_t kMaxListenFds = 4096;

RateLimitedLog& notify_log() {
  static RateLimitedLog log(3, std::chrono::minutes(1));
  return log;
}

enum class Kind { kUnixStream, kUnixDgram, kUdp, kOther };

std::string_view kind_name(Kind k) {
  switch (k) {
    case Kind::kUnixStream:
      return "unix stream";
    case Kind::kUnixDgram:
      return "unix datagram";
    case Kind::kUdp:
      return "udp";
    case Kind::kOther:
      break;
  }
  return "unusable";
}

// What kind of socket `fd` is, as far as the intake is concerned.
Kind kind_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return Kind::kOther;
  int domain = 0, type = 0, protocol = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return Kind::kOther;
  len = sizeof(int);
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return Kind::kOther;
  if (domain == AF_UNIX && type == SOCK_STREAM) {
    int listening = 0;
    len = sizeof(int);
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) {
      return Kind::kOther;
    }
    return Kind::kUnixStream;
  }
  if (domain == AF_UNIX && type == SOCK_DGRAM) return Kind::kUnixDgram;
  if ((domain == AF_INET || domain == AF_INET6) && type == SOCK_DGRAM) {
    len = sizeof(int);
    if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0) return Kind::kOther;
    return protocol == IPPROTO_UDP ? Kind::kUdp : Kind::kOther;
  }
  return Kind::kOther;
}

std::string address_of(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return fmt::format("(getsockname: {})", std::strerror(errno));
  }
  char host[INET6_ADDRSTRLEN] = {};
  switch (ss.ss_family) {
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&ss);
      size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      if (n == 0) return "(unnamed)";
      if (un->sun_path[0] == '\0') return "@" + std::string(un->sun_path + 1, n - 1);
      return std::string(un->sun_path, ::strnlen(un->sun_path, n));
    }
    case AF_INET: {
      const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
      ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
      return fmt::format("{}:{}", host, ntohs(in->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
      return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
    }
    default:
      return fmt::format("(address family {})", static_cast<int>(ss.ss_family));
  }
}

void unset_listen_env() {
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
}

}  // namespace

bool notify(std::string_view state, std::string* err) {
  if (err) err->clear();
  const char* env = std::getenv("NOTIFY_SOCKET");
  if (env == nullptr || *env == '\0') return false;
  // libsystemd sends without blocking: a full receiver queue loses this
  // message rather than stalling the event loop that sends it.
  const std::string text(state);
  const int r = ::sd_notify(0, text.c_str());
  if (r > 0) return true;
  if (err) {
    *err = r == 0 ? fmt::format("NOTIFY_SOCKET={}: not used", env)
                  : fmt::format("NOTIFY_SOCKET={}: {}", env, std::strerror(-r));
  }
  return false;
}

bool notify_ready() {
  return notify("READY=1");
}
bool notify_stopping() {
  return notify("STOPPING=1");
}
bool notify_watchdog() {
  return notify("WATCHDOG=1");
}
bool notify_reloading() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec =
      static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
  return notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}", usec));
}
bool notify_status(std::string_view status) {
  std::string line(status);
  // One assignment per line: a newline in the text would start another one.
  for (char& ch : line)
    if (ch == '\n') ch = ' ';
  return notify("STATUS=" + line);
}

std::chrono::microseconds watchdog_interval() {
  uint64_t usec = 0;
  // > 0: enabled for this process; 0: off or meant for another; < 0: malformed.
  if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(usec);
}

Watchdog::Watchdog(boost::asio::io_context& io, std::function<bool()> alive)
    : timer_(io), alive_(std::move(alive)) {}

Watchdog::~Watchdog() {
  stop();
}

std::chrono::microseconds Watchdog::start() {
  stop();
  std::chrono::microseconds interval = watchdog_interval();
  if (interval.count() <= 0) return interval;
  period_ = std::max(interval / 2, std::chrono::microseconds(1));
  state_ = std::make_shared<State>();
  state_->running = true;
  ping();
  schedule();
  return interval;
}

void Watchdog::stop() {
  if (state_) state_->running = false;
  state_.reset();
  timer_.cancel();
}

void Watchdog::schedule() {
  timer_.expires_after(period_);
  timer_.async_wait([this, state = state_](const boost::system::error_code& ec) {
    if (ec || !state->running) return;
    ping();
    schedule();
  });
}

void Watchdog::ping() {
  if (alive_ && !alive_()) {
    ++withheld_;
    notify_log().log(spdlog::level::err,
                     "systemd watchdog: not pinging: the agent is stuck (see /healthz)");
    return;
  }
  ++pings_;
  std::string err;
  if (!notify("WATCHDOG=1", &err)) {
    ++failures_;
    notify_log().log(spdlog::level::warn,
                     fmt::format("systemd watchdog: cannot ping: {}",
                                 err.empty() ? "NOTIFY_SOCKET is not set" : err));
  }
}

std::string describe_socket(int fd) {
  if (::fcntl(fd, F_GETFD) < 0) return "not an open fd";
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return "not a socket";
  int domain = 0, type = 0, protocol = 0;
  socklen_t len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
  len = sizeof(int);
  ::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len);
  std::string what;
  if (domain == AF_UNIX) {
    what = type == SOCK_STREAM      ? "unix stream"
           : type == SOCK_DGRAM     ? "unix datagram"
           : type == SOCK_SEQPACKET ? "unix seqpacket"
                                    : fmt::format("unix type {}", type);
    if (type == SOCK_STREAM && kind_of(fd) != Kind::kUnixStream) what += " (not listening)";
  } else if (domain == AF_INET || domain == AF_INET6) {
    what = protocol == IPPROTO_UDP   ? "udp"
           : protocol == IPPROTO_TCP ? "tcp"
                                     : fmt::format("inet protocol {}", protocol);
  } else {
    what = fmt::format("address family {} type {}", domain, type);
  }
  return what + " " + address_of(fd);
}

std::error_code listen_fds(ListenFds* out, std::string* err) {
  *out = ListenFds{};
  if (err) err->clear();
  // Whether names were given: without LISTEN_FDNAMES libsystemd names every
  // fd "unknown", which classifies it by its kind as well.
  const bool has_names = std::getenv("LISTEN_FDNAMES") != nullptr;
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "(unset)");
  };
  const std::string vars = fmt::format("LISTEN_PID={}, LISTEN_FDS={}, LISTEN_FDNAMES={}",
                                       env("LISTEN_PID"), env("LISTEN_FDS"), env("LISTEN_FDNAMES"));
  // The fds announced for this process, to close when they cannot be used.
  int announced = 0;
  {
    const std::string pid = env("LISTEN_PID"), count = env("LISTEN_FDS");
    int p = 0, c = 0;
    if (std::from_chars(pid.data(), pid.data() + pid.size(), p).ec == std::errc() &&
        p == ::getpid() &&
        std::from_chars(count.data(), count.data() + count.size(), c).ec == std::errc() && c > 0 &&
        c <= kMaxListenFds) {
      announced = c;
    }
  }
  char** raw_names = nullptr;
  // Checks LISTEN_PID, sets FD_CLOEXEC on every passed fd and unsets the
  // variables, so that child processes do not see them.
  const int n = ::sd_listen_fds_with_names(1, &raw_names);
  std::vector<std::string> names;
  if (raw_names != nullptr) {
    for (char** p = raw_names; *p != nullptr; ++p) {
      names.emplace_back(*p);
      std::free(*p);
    }
    std::free(raw_names);
  }
  unset_listen_env();  // also when libsystemd refused them

  auto fail = [&](std::errc code, std::string why) {
    if (err) *err = "socket activation: " + why;
    return std::make_error_code(code);
  };
  if (n < 0) {
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + announced; ++fd)
      ::close(fd);
    return fail(std::errc::invalid_argument,
                fmt::format("{}: {} (malformed variables, names that do not match the count, or "
                            "an announced fd that is not open)",
                            vars, std::strerror(-n)));
  }
  if (n == 0) return {};
  if (n > kMaxListenFds) {
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd)
      ::close(fd);
    return fail(std::errc::invalid_argument, fmt::format("LISTEN_FDS is too large: {}", n));
  }
  auto close_passed = [&] {
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd)
      ::close(fd);
  };

  ListenFds got;
  got.passed = n;
  for (int i = 0; i < n; ++i) {
    const int fd = SD_LISTEN_FDS_START + i;
    const std::string name =
        has_names && static_cast<size_t>(i) < names.size() ? names[static_cast<size_t>(i)] : "";
    const std::string label =
        name.empty() ? fmt::format("fd {}", fd) : fmt::format("fd {} (\"{}\")", fd, name);
    const Kind kind = kind_of(fd);
    std::optional<Kind> wanted;
    if (name == "stream") wanted = Kind::kUnixStream;
    if (name == "dgram") wanted = Kind::kUnixDgram;
    if (name == "udp") wanted = Kind::kUdp;
    if (wanted && kind != *wanted) {
      std::string desc = describe_socket(fd);
      close_passed();
      return fail(std::errc::invalid_argument,
                  fmt::format("{} should be a {} socket{} but is: {}", label, kind_name(*wanted),
                              *wanted == Kind::kUnixStream ? " (listening)" : "", desc));
    }
    int* slot = kind == Kind::kUnixStream  ? &got.stream_fd
                : kind == Kind::kUnixDgram ? &got.dgram_fd
                : kind == Kind::kUdp       ? &got.udp_fd
                                           : nullptr;
    if (slot == nullptr) {
      std::string desc = describe_socket(fd);
      close_passed();
      return fail(std::errc::invalid_argument,
                  fmt::format("{} is {}; expected a listening unix stream, a unix datagram or a "
                              "UDP socket (FileDescriptorName= stream, dgram or udp)",
                              label, desc));
    }
    if (*slot >= 0) {
      close_passed();
      return fail(std::errc::invalid_argument,
                  fmt::format("two {} sockets were passed (fd {} and fd {}); the agent listens "
                              "on one of each kind",
                              kind_name(kind), *slot, fd));
    }
    *slot = fd;
  }
  *out = got;
  return {};
}

}  // namespace sidetrace::agent::systemd
