// The systemd service protocols, spoken through libsystemd (sd-daemon):
//  - readiness and state notification (sd_notify): datagrams to $NOTIFY_SOCKET;
//  - the service watchdog: $WATCHDOG_USEC / $WATCHDOG_PID, pinged from the
//    agent's event loop so that a hung loop stops pinging and systemd restarts it;
//  - socket activation: the listening sockets systemd passes as fds 3.. with
//    $LISTEN_FDS / $LISTEN_PID / $LISTEN_FDNAMES.
// Outside systemd every function is a cheap no-op. See docs/deploy.md.
//
// Thread safety: notify() and the parsers may be called from any thread; they
// read the environment, so they must not race with setenv()/unsetenv().
// listen_fds() changes the environment and must be called once, at start-up,
// before other threads exist. Watchdog: see the class comment.
#pragma once

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

namespace sidetrace::agent::systemd {

// Sends `state` (newline-separated "KEY=value" assignments, e.g. "READY=1")
// to $NOTIFY_SOCKET (sd_notify()). Never blocks (a full receive queue drops
// the message). Returns true when the
// datagram was sent; false when NOTIFY_SOCKET is unset (not under systemd, or
// NotifyAccess does not include us) or the send failed (`err`, if given, says
// why; it is left empty when NOTIFY_SOCKET is simply unset).
bool notify(std::string_view state, std::string* err = nullptr);

// The common states.
bool notify_ready();                          // READY=1: sockets bound, serving
bool notify_stopping();                       // STOPPING=1: shutdown has begun
bool notify_watchdog();                       // WATCHDOG=1: the event loop is alive
bool notify_reloading();                      // RELOADING=1 (with MONOTONIC_USEC)
bool notify_status(std::string_view status);  // STATUS=<one line for systemctl status>

// The watchdog interval systemd expects pings within: $WATCHDOG_USEC, when set
// to a positive integer and $WATCHDOG_PID is unset or equals getpid().
// Zero when the watchdog is off or the variables are malformed.
std::chrono::microseconds watchdog_interval();

// Pings the service watchdog at half its interval from a steady_timer on the
// given io_context, so the pings stop when the loop stops turning.
// start() and stop() must be called from a thread running the io_context or
// while no thread runs it; the io_context must outlive the Watchdog, and it
// must not be run by another thread while the Watchdog is destroyed.
// pings() and failures() may be read from any thread.
//
// A turning loop is not enough to be alive: `alive`, when given, is asked
// before each ping, and while it says no (a stage of the agent is stuck) no
// ping goes out, so systemd restarts the service. Skipped pings are counted
// and logged.
class Watchdog {
 public:
  explicit Watchdog(boost::asio::io_context& io, std::function<bool()> alive = nullptr);
  ~Watchdog();

  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Reads watchdog_interval(); when it is positive, sends a first ping now and
  // then one every interval/2. Returns the interval (zero: the watchdog is off
  // and nothing was scheduled). Calling start() again restarts the schedule.
  std::chrono::microseconds start();

  // Cancels the timer. Idempotent; also done by the destructor.
  void stop();

  // Pings sent since construction, and pings that could not be sent (each
  // failure is also logged, at a limited rate).
  uint64_t pings() const { return pings_; }
  uint64_t failures() const { return failures_; }
  uint64_t withheld() const { return withheld_; }  // pings skipped: not alive

 private:
  struct State {
    std::atomic<bool> running{false};
  };
  void schedule();
  void ping();

  boost::asio::steady_timer timer_;
  std::chrono::microseconds period_{0};
  // Shared with the pending timer handler, which checks it before touching
  // the Watchdog; every start() begins a new one.
  std::shared_ptr<State> state_;
  std::atomic<uint64_t> pings_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> withheld_{0};
  std::function<bool()> alive_;
};

// The sockets systemd passed by socket activation; -1 where absent.
// Ownership passes to the caller (e.g. ipc::IntakeOptions::stream_fd).
struct ListenFds {
  int stream_fd = -1;  // AF_UNIX SOCK_STREAM, listening
  int dgram_fd = -1;   // AF_UNIX SOCK_DGRAM, bound
  int udp_fd = -1;     // AF_INET/AF_INET6 SOCK_DGRAM, bound
  int passed = 0;      // how many fds systemd passed (0: not socket-activated)

  bool any() const { return stream_fd >= 0 || dgram_fd >= 0 || udp_fd >= 0; }
};

// Takes the sockets passed by socket activation. Does nothing (returns success
// with `passed` = 0) when $LISTEN_FDS is unset or $LISTEN_PID is not this
// process. Otherwise classifies each fd 3..3+LISTEN_FDS-1: by its name in
// $LISTEN_FDNAMES when that is "stream", "dgram" or "udp" (set with
// FileDescriptorName= in the .socket unit; the socket's kind must then match
// the name), else by its kind (getsockopt SO_DOMAIN/SO_TYPE, and getsockname).
// Every passed fd gets FD_CLOEXEC, and LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES are unset so that child processes do not see them.
//
// Errors (malformed variables, an fd that is not a socket, a socket of another
// kind such as TCP, a name that does not match its socket, two sockets for one
// transport): returns an error code, `err` (if given) names the fd and the
// cause, every passed fd is closed and `out` is left with no fds.
std::error_code listen_fds(ListenFds* out, std::string* err = nullptr);

// A short description of an fd's socket ("unix stream /run/x.sock",
// "udp 127.0.0.1:7717", "not a socket"), for logs and error messages.
std::string describe_socket(int fd);

}  // namespace sidetrace::agent::systemd
