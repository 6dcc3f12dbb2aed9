#include "ipc/intake.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common/host_port.h"
#include "common/rate_limited_log.h"
#include "ipc/detail/linger.h"
#include "ipc/splitter.h"

namespace sidetrace::ipc {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

constexpr size_t kRejectCount = static_cast<size_t>(Reject::kCount_);

// What a sender's Unix stream socket may hold unread before its writes block:
// the sender's send buffer (net.core.wmem_default unless it set SO_SNDBUF),
// in which each write takes its bytes and a few hundred bytes of bookkeeping.
size_t unix_stream_send_room() {
  std::ifstream f("/proc/sys/net/core/wmem_default");
  long v = 0;
  if (f >> v && v > 0) return static_cast<size_t>(v);
  return 212992;  // the kernel's default
}

class StreamSession;

// State shared by the intake and every handler it starts; handlers keep it
// alive, so counters stay valid whatever the destruction order.
struct Shared {
  Shared(IntakeOptions o, BoundedQueue<MessageBatch>& q, const Clock& c)
      : opt(std::move(o)),
        out(q),
        clock(c),
        log(10, std::chrono::seconds(10), c),
        partial(opt.max_partial_bytes > 0 ? opt.max_partial_bytes : SIZE_MAX),
        stream_linger_room(opt.stream_linger_room > 0 ? opt.stream_linger_room
                                                      : unix_stream_send_room() / 2) {}

  const IntakeOptions opt;
  BoundedQueue<MessageBatch>& out;
  const Clock& clock;
  IntakeStats stats;
  RateLimitedLog log;
  MemoryBudget partial;             // partly received stream messages, beyond read buffers
  const size_t stream_linger_room;  // IntakeOptions::stream_linger_room, resolved

  std::mutex mu;  // guards stopped and sessions
  bool stopped = false;
  std::unordered_map<const StreamSession*, std::weak_ptr<StreamSession>> sessions;

  void log_reject(Transport t, Reject r, std::string_view detail) {
    log.log(spdlog::level::warn, fmt::format("intake {}: rejected message ({}): {}",
                                             transport_name(t), reject_name(r), detail));
  }
};

std::error_code to_std(const error_code& ec) {
  return std::error_code(ec.value(), ec.category());
}

std::error_code errno_code(int e) {
  return std::error_code(e, std::generic_category());
}

// The clock of asio's timers: read delays are measured on it.
int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// How many datagrams the kernel queues on a Unix datagram socket before it
// makes senders wait or refuses them: net.unix.max_dgram_qlen + 1.
size_t unix_dgram_queue_limit() {
  std::ifstream f("/proc/sys/net/unix/max_dgram_qlen");
  long v = 0;
  if (f >> v && v >= 0) return static_cast<size_t>(v) + 1;
  return 11;  // the kernel's default
}

// Validates messages of one read and collects the valid ones; counters are
// added to the shared stats once per batch.
class BatchBuilder {
 public:
  BatchBuilder(Shared& sh, Transport t, size_t expected)
      : sh_(sh), t_(t), recv_ns_(sh.clock.now_ns()) {
    batch_.reserve(expected);
  }

  void add(std::string_view bytes) {
    Message& m = batch_.emplace_back();
    if (!decode_message(bytes, sh_.opt.limits, &m, &reason_, &detail_)) {
      batch_.pop_back();
      reject(reason_, detail_);
      return;
    }
    ++received_;
    m.raw.assign(bytes);
    m.recv_ns = recv_ns_;
    weight_ += m.weight();
  }

  void reject(Reject r, std::string_view detail) {
    ++received_;
    ++rejected_[static_cast<size_t>(r)];
    sh_.log_reject(t_, r, detail);
  }

  // Adds the counts of everything seen so far to the shared stats.
  void publish() {
    TransportStats& s = sh_.stats.of(t_);
    if (received_ > 0) s.received.fetch_add(received_, std::memory_order_relaxed);
    for (size_t i = 0; i < kRejectCount; ++i) {
      if (rejected_[i] > 0) s.rejected[i].fetch_add(rejected_[i], std::memory_order_relaxed);
    }
    received_ = 0;
    rejected_ = {};
  }

  MessageBatch& batch() { return batch_; }
  size_t weight() const { return weight_; }

 private:
  Shared& sh_;
  const Transport t_;
  const uint64_t recv_ns_;
  MessageBatch batch_;
  size_t weight_ = 0;
  uint64_t received_ = 0;
  std::array<uint64_t, kRejectCount> rejected_{};
  Reject reason_ = Reject::kMalformed;
  std::string detail_;
};

// ---------------------------------------------------------------------------
// Unix socket files

struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool valid = false;
};

// Makes `path` free for a new socket of `type`: creates the parent
// directories, removes a stale socket file, refuses a live one.
std::error_code prepare_socket_path(const std::string& path, int type, std::string* err) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    *err = "socket path too long (max " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
           " bytes): " + path;
    return errno_code(ENAMETOOLONG);
  }
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) {
      *err = "cannot create directory " + parent.string() + ": " + ec.message();
      return ec;
    }
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return {};
    const int e = errno;
    *err = "cannot stat " + path + ": " + std::strerror(e);
    return errno_code(e);
  }
  if (!S_ISSOCK(st.st_mode)) {
    *err = path + " exists and is not a socket; refusing to replace it";
    return errno_code(EEXIST);
  }
  // Probe: does anything answer on it?
  const int probe = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (probe < 0) {
    const int e = errno;
    *err = std::string("cannot create probe socket: ") + std::strerror(e);
    return errno_code(e);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int rc = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int e = rc == 0 ? 0 : errno;
  ::close(probe);
  if (rc == 0 || e == EPROTOTYPE || e == EAGAIN) {
    *err = path + " is in use by a running process (another agent?)";
    return errno_code(EADDRINUSE);
  }
  if (e != ECONNREFUSED && e != ENOENT) {
    *err = "cannot probe " + path + ": " + std::strerror(e);
    return errno_code(e);
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    const int ue = errno;
    *err = "cannot remove stale socket " + path + ": " + std::strerror(ue);
    return errno_code(ue);
  }
  spdlog::info("intake: replaced stale socket file {}", path);
  return {};
}

std::error_code finish_socket_file(const std::string& path, uint32_t mode, FileId* id,
                                   std::string* err) {
  if (::chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    const int e = errno;
    *err = "cannot chmod " + path + ": " + std::strerror(e);
    return errno_code(e);
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->valid = true;
  }
  return {};
}

void unlink_if_ours(const std::string& path, FileId& id) {
  if (!id.valid) return;
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && st.st_dev == id.dev && st.st_ino == id.ino) {
    ::unlink(path.c_str());
  }
  id.valid = false;
}

// ---------------------------------------------------------------------------
// Unix stream: one session per connection

class StreamSession : public std::enable_shared_from_this<StreamSession> {
 public:
  StreamSession(std::shared_ptr<Shared> sh, asio::local::stream_protocol::socket sock)
      : sh_(std::move(sh)),
        sock_(std::move(sock)),
        fd_(sock_.native_handle()),
        timer_(sock_.get_executor()),
        idle_timer_(sock_.get_executor()),
        splitter_(sh_->opt.limits.max_message_bytes, sh_->opt.conn_buffer_bytes, &sh_->partial) {}

  ~StreamSession() {
    if (!sock_.is_open() && fd_ >= 0) ::close(fd_);  // closed while its next read waited
    sh_->stats.of(Transport::kUnixStream).connections_open.fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(sh_->mu);
    sh_->sessions.erase(this);
  }

  void start() {
    {
      std::lock_guard lock(sh_->mu);
      if (sh_->stopped) {
        close();
        return;
      }
      sh_->sessions.emplace(this, weak_from_this());
    }
    if (sh_->opt.idle_timeout.count() > 0) {
      last_data_ = std::chrono::steady_clock::now();
      arm_idle(sh_->opt.idle_timeout);
    }
    do_read();
  }

  // Closes the connection; pending handlers finish with operation_aborted.
  // Must run on the session's strand.
  void close() {
    closed_ = true;
    error_code ignored;
    if (sock_.is_open()) {
      sock_.close(ignored);
    } else if (fd_ >= 0) {
      ::close(fd_);  // released while the next read waits: not asio's to close
    }
    fd_ = -1;
    timer_.cancel();
    idle_timer_.cancel();
  }

  asio::any_io_executor executor() { return sock_.get_executor(); }

 private:
  TransportStats& stats() { return sh_->stats.of(Transport::kUnixStream); }

  // The idle check runs once per idle_timeout (not per read): it looks at when
  // data last came and waits out the rest.
  void arm_idle(std::chrono::steady_clock::duration after) {
    idle_timer_.expires_after(after);
    idle_timer_.async_wait(std::bind_front(&StreamSession::on_idle_check, shared_from_this()));
  }

  void on_idle_check(error_code ec) {
    if (ec || closed_ || fd_ < 0) return;
    const auto quiet = std::chrono::steady_clock::now() - last_data_;
    if (quiet < sh_->opt.idle_timeout) {
      arm_idle(sh_->opt.idle_timeout - quiet);
      return;
    }
    // Shut for reading: what the sender wrote before is still read (then the
    // read ends and the connection closes), and a later write fails at once
    // with EPIPE instead of being lost in a closing socket.
    ::shutdown(fd_, SHUT_RD);
    stats().closed_idle.fetch_add(1, std::memory_order_relaxed);
    sh_->log.log(spdlog::level::info,
                 fmt::format("intake unix_stream: connection closed after {} s without data",
                             std::chrono::duration_cast<std::chrono::seconds>(quiet).count()));
  }

  void do_read() {
    if (closed_) return;  // closed by stop() while a read completed
    if (!sock_.is_open()) {
      error_code ec;
      sock_.assign(asio::local::stream_protocol(), fd_, ec);
      if (ec) {
        stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        sh_->log.log(spdlog::level::warn,
                     fmt::format("intake unix_stream: cannot wait for data: {}", ec.message()));
        close();
        return;
      }
    }
    std::span<char> space = splitter_.prepare();
    space_ = space.size();
    sock_.async_read_some(asio::buffer(space.data(), space.size()),
                          std::bind_front(&StreamSession::on_read, shared_from_this()));
  }

  void on_read(error_code ec, size_t n) {
    if (ec) {
      // eof / reset are a normal end of a connection; aborted is stop().
      if (ec != asio::error::eof && ec != asio::error::operation_aborted &&
          ec != asio::error::connection_reset && ec != asio::error::bad_descriptor) {
        stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        sh_->log.log(spdlog::level::warn,
                     fmt::format("intake unix_stream: read failed: {}", ec.message()));
      }
      if (ec != asio::error::operation_aborted && splitter_.buffered() > 0 && !splitter_.failed()) {
        BatchBuilder b(*sh_, Transport::kUnixStream, 0);
        b.reject(Reject::kMalformed, "connection closed in the middle of a message");
        b.publish();
      }
      close();
      return;
    }
    stats().bytes.fetch_add(n, std::memory_order_relaxed);
    stats().reads.fetch_add(1, std::memory_order_relaxed);
    if (sh_->opt.idle_timeout.count() > 0) last_data_ = std::chrono::steady_clock::now();
    const bool short_read = n < space_;
    splitter_.commit(n);
    // Typical events are a few hundred bytes.
    BatchBuilder b(*sh_, Transport::kUnixStream, n / 256 + 1);
    size_t messages = 0;
    for (;; ++messages) {
      std::string_view msg;
      const auto r = splitter_.next(&msg);
      if (r == StreamSplitter::Result::kNeedMore) break;
      if (r == StreamSplitter::Result::kMessage) {
        b.add(msg);
      } else if (r == StreamSplitter::Result::kTooLarge) {
        b.reject(Reject::kTooLarge, "message exceeds the size cap; skipped");
      } else if (r == StreamSplitter::Result::kNoMemory) {
        b.reject(Reject::kNoMemory,
                 "partly received messages of all connections fill listen.max_partial_bytes; "
                 "skipped");
      } else {
        b.reject(Reject::kMalformed, "stream is not msgpack; connection closed");
        stats().closed_garbage.fetch_add(1, std::memory_order_relaxed);
        close_after_push_ = true;
        break;
      }
    }
    b.publish();
    held_ = std::move(b.batch());
    held_weight_ = b.weight();
    // What arrived since the socket was last read empty, and over how long:
    // reads that filled the buffer took what had waited before them.
    arrived_bytes_ += n;
    arrived_messages_ += messages;
    linger_ = {};
    if (short_read) {
      const int64_t now = steady_ns();
      const int64_t elapsed = drained_ns_ == 0 ? INT64_MAX : now - drained_ns_;
      const auto linger = detail::stream_linger(arrived_bytes_, arrived_messages_, elapsed,
                                                sh_->opt.stream_read_delay, sh_->stream_linger_room,
                                                &peak_rate_, fruitless_);
      // A linger skipped for bursts (see stream_linger()) leaves the ramp
      // where it was.
      if (linger.count() > 0 || !fruitless_) {
        linger_ = detail::ramp_stream_linger(linger, ramp_);
        ramp_ = linger_;
      }
      drained_ns_ = now;
      arrived_bytes_ = arrived_messages_ = 0;
    }
    push_then_continue();
  }

  void push_then_continue() {
    if (!held_.empty()) {
      const size_t n = held_.size();
      if (!sh_->out.try_push(held_, held_weight_)) {
        if (!paused_) {
          paused_ = true;
          stats().backpressure_pauses.fetch_add(1, std::memory_order_relaxed);
        }
        timer_.expires_after(sh_->opt.backpressure_retry);
        timer_.async_wait(std::bind_front(&StreamSession::on_retry, shared_from_this()));
        return;
      }
      stats().accepted.fetch_add(n, std::memory_order_relaxed);
      held_.clear();
    }
    paused_ = false;
    if (close_after_push_) {
      close();
      return;
    }
    if (linger_.count() > 0) {
      // The sender writes a little at a time: let more arrive before the
      // next read. Released from the reactor meanwhile, the socket does not
      // wake this thread for every write.
      if (sock_.is_open()) {
        error_code ignored;
        sock_.release(ignored);
      }
      timer_.expires_after(linger_);
      timer_.async_wait(std::bind_front(&StreamSession::on_read_delay, shared_from_this()));
      return;
    }
    do_read();
  }

  // Reads what arrived during the linger straight from the socket, which
  // stays released from the reactor while its sender keeps writing: a steady
  // sender costs one timer and one read per linger. The socket is watched
  // again (do_read()) only once a linger found nothing.
  void on_read_delay(error_code ec) {
    if (ec || closed_) return;  // aborted by close()
    std::span<char> space = splitter_.prepare();
    space_ = space.size();
    ssize_t n;
    do {
      n = ::recv(fd_, space.data(), space.size(), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    const int e = n < 0 ? errno : 0;
    // Whether the linger let anything arrive (see detail::stream_linger()).
    fruitless_ = e == EAGAIN || e == EWOULDBLOCK;
    if (fruitless_) {
      do_read();
      return;
    }
    if (n > 0) stats().linger_reads.fetch_add(1, std::memory_order_relaxed);
    on_read(e != 0   ? error_code(e, boost::system::system_category())
            : n == 0 ? error_code(asio::error::eof)
                     : error_code(),
            n > 0 ? static_cast<size_t>(n) : 0);
  }

  void on_retry(error_code ec) {
    if (ec || closed_) {
      // Stopping: one last attempt, then the held messages are counted lost.
      if (!held_.empty()) {
        const size_t n = held_.size();
        if (sh_->out.try_push(held_, held_weight_)) {
          stats().accepted.fetch_add(n, std::memory_order_relaxed);
        } else {
          stats().queue_full_drops.fetch_add(n, std::memory_order_relaxed);
        }
        held_.clear();
      }
      return;
    }
    push_then_continue();
  }

  std::shared_ptr<Shared> sh_;
  asio::local::stream_protocol::socket sock_;
  int fd_;  // the connection; registered with the reactor only while sock_ is open
  asio::steady_timer timer_;
  asio::steady_timer idle_timer_;
  std::chrono::steady_clock::time_point last_data_;  // when a read last returned data
  StreamSplitter splitter_;
  MessageBatch held_;
  size_t held_weight_ = 0;
  size_t space_ = 0;  // size of the last read's buffer
  // When a read last found the socket drained (0: none yet, and the
  // connection's first read does not linger: how fast its sender writes is
  // not known), and what reads took since; the linger after the last read.
  int64_t drained_ns_ = 0;
  size_t arrived_bytes_ = 0, arrived_messages_ = 0;
  std::chrono::nanoseconds linger_{0};
  double peak_rate_ = 0;              // see detail::stream_linger()
  std::chrono::nanoseconds ramp_{0};  // the last linger after a drained read
  bool fruitless_ = false;            // the last linger found nothing waiting
  bool paused_ = false;
  bool close_after_push_ = false;
  bool closed_ = false;
};

class StreamListener : public std::enable_shared_from_this<StreamListener> {
 public:
  StreamListener(asio::io_context& ioc, std::shared_ptr<Shared> sh)
      : ioc_(ioc),
        sh_(std::move(sh)),
        strand_(asio::make_strand(ioc)),
        acceptor_(strand_),
        retry_(strand_) {}

  std::error_code open(std::string* err) {
    error_code ec;
    const auto& opt = sh_->opt;
    if (opt.stream_fd >= 0) {
      acceptor_.assign(asio::local::stream_protocol(), opt.stream_fd, ec);
      if (ec)
        *err = "cannot adopt unix stream fd " + std::to_string(opt.stream_fd) + ": " + ec.message();
      return to_std(ec);
    }
    path_ = opt.unix_stream;
    if (auto e = prepare_socket_path(path_, SOCK_STREAM, err)) return e;
    acceptor_.open(asio::local::stream_protocol(), ec);
    if (!ec) acceptor_.bind(asio::local::stream_protocol::endpoint(path_), ec);
    if (ec) {
      *err = "cannot bind unix stream socket " + path_ + ": " + ec.message();
      return to_std(ec);
    }
    if (auto e = finish_socket_file(path_, opt.socket_mode, &file_, err)) return e;
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) *err = "cannot listen on " + path_ + ": " + ec.message();
    return to_std(ec);
  }

  void start() {
    asio::dispatch(strand_, std::bind_front(&StreamListener::do_accept, shared_from_this()));
  }

  // Any thread: closes on the strand; unlinks synchronously.
  void stop() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      error_code ignored;
      self->acceptor_.close(ignored);
      self->retry_.cancel();
    });
    unlink_if_ours(path_, file_);
  }

  const std::string& path() const { return path_; }

 private:
  TransportStats& stats() { return sh_->stats.of(Transport::kUnixStream); }

  void do_accept() {
    if (!acceptor_.is_open()) return;
    acceptor_.async_accept(asio::make_strand(ioc_),
                           std::bind_front(&StreamListener::on_accept, shared_from_this()));
  }

  void on_accept(error_code ec, asio::local::stream_protocol::socket sock) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // e.g. EMFILE: back off briefly instead of spinning.
      stats().read_errors.fetch_add(1, std::memory_order_relaxed);
      sh_->log.log(spdlog::level::warn,
                   fmt::format("intake unix_stream: accept failed: {}", ec.message()));
      retry_.expires_after(std::chrono::milliseconds(50));
      retry_.async_wait([self = shared_from_this()](error_code wec) {
        if (!wec) self->do_accept();
      });
      return;
    }
    if (stats().connections_open.load(std::memory_order_relaxed) >= sh_->opt.max_connections) {
      stats().connections_refused.fetch_add(1, std::memory_order_relaxed);
      sh_->log.log(spdlog::level::warn,
                   fmt::format("intake unix_stream: connection refused: {} connections open",
                               sh_->opt.max_connections));
      error_code ignored;
      sock.close(ignored);
    } else {
      stats().connections_open.fetch_add(1, std::memory_order_relaxed);
      stats().connections_total.fetch_add(1, std::memory_order_relaxed);
      auto session = std::make_shared<StreamSession>(sh_, std::move(sock));
      asio::dispatch(session->executor(), std::bind_front(&StreamSession::start, session));
    }
    do_accept();
  }

  asio::io_context& ioc_;
  std::shared_ptr<Shared> sh_;
  asio::strand<asio::io_context::executor_type> strand_;
  asio::local::stream_protocol::acceptor acceptor_;
  asio::steady_timer retry_;
  std::string path_;
  FileId file_;
};

// ---------------------------------------------------------------------------
// Unix datagram and UDP

template <typename Protocol>
class DgramReceiver : public std::enable_shared_from_this<DgramReceiver<Protocol>> {
 public:
  using Socket = typename Protocol::socket;

  DgramReceiver(asio::io_context& ioc, std::shared_ptr<Shared> sh, Transport t)
      : sh_(std::move(sh)), t_(t), sock_(asio::make_strand(ioc)), timer_(sock_.get_executor()) {}

  ~DgramReceiver() {
    if (!sock_.is_open() && fd_ >= 0) ::close(fd_);  // stopped while it lingered
  }

  Socket& socket() { return sock_; }

  // Applies socket options and sizes the receive slots. Call after the socket
  // is open.
  std::error_code configure(std::string* err) {
    const int fd = sock_.native_handle();
    error_code ec;
    sock_.non_blocking(true, ec);
    if (ec) {
      *err = std::string(transport_name(t_)) + ": cannot make socket non-blocking: " + ec.message();
      return to_std(ec);
    }
    protocol_ = sock_.local_endpoint(ec).protocol();
    if (ec) {
      *err =
          std::string(transport_name(t_)) + ": cannot read the socket's address: " + ec.message();
      return to_std(ec);
    }
    if (sh_->opt.rcvbuf_bytes > 0) {
      const int v = sh_->opt.rcvbuf_bytes;
      // SO_RCVBUFFORCE passes rmem_max when privileged; otherwise the plain
      // option, which the kernel caps.
      if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof v) != 0 &&
          ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v) != 0) {
        const int e = errno;
        *err = std::string(transport_name(t_)) + ": cannot set SO_RCVBUF: " + std::strerror(e);
        return errno_code(e);
      }
    }
#ifdef SO_RXQ_OVFL
    const int one = 1;
    ovfl_ = ::setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one) == 0;
#endif
    const size_t slots = std::max<size_t>(1, sh_->opt.recv_batch);
    slot_bytes_ = std::max<size_t>(64, sh_->opt.max_datagram_bytes);
    // Not zeroed: the kernel writes a datagram into the pages it needs, so a
    // slot holds in memory only what its largest datagram took (all 4 MiB of
    // the default slots were resident from start-up when zeroed).
    data_ = std::make_unique_for_overwrite<char[]>(slots * slot_bytes_);
    iov_.resize(slots);
    hdr_.resize(slots);
    ctrl_.assign(slots * kCtrlBytes, 0);
    // A Unix datagram socket's senders wait (or are refused) once the kernel
    // queues net.unix.max_dgram_qlen + 1 datagrams; the buffer bounds UDP.
    size_t room = slots;
    if (t_ == Transport::kUnixDgram) room = std::min(room, unix_dgram_queue_limit());
    linger_target_ = std::max<size_t>(1, room / 2);
    fd_ = fd;
    return {};
  }

  void start() {
    asio::dispatch(sock_.get_executor(),
                   std::bind_front(&DgramReceiver::do_wait, this->shared_from_this()));
  }

  void stop() {
    asio::dispatch(sock_.get_executor(), [self = this->shared_from_this()] {
      self->stopped_ = true;
      error_code ignored;
      if (self->sock_.is_open()) {
        self->sock_.close(ignored);
      } else if (self->fd_ >= 0) {
        ::close(self->fd_);  // released while it lingered: not asio's to close
      }
      self->fd_ = -1;
      self->timer_.cancel();
      if (!self->held_.empty()) {
        self->stats().queue_full_drops.fetch_add(self->held_.size(), std::memory_order_relaxed);
        self->held_.clear();
      }
    });
  }

  std::string path;  // socket file (Unix datagram), for unlinking
  FileId file;

 private:
  static constexpr size_t kCtrlBytes = CMSG_SPACE(sizeof(uint32_t));
  static constexpr int kRoundsPerWake = 16;
  static constexpr std::chrono::nanoseconds kBurstMemory = std::chrono::seconds(1);

  TransportStats& stats() {
    return sh_->stats.of(t_);
  }

  // Waits for the socket to become readable (registering it with the reactor
  // again after a linger).
  void do_wait() {
    if (stopped_) return;
    if (!sock_.is_open()) {
      error_code ec;
      sock_.assign(protocol_, fd_, ec);
      if (ec) {
        // Not expected (the descriptor is the one released): without the
        // reactor, keep reading on the timer.
        stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        sh_->log.log(spdlog::level::warn, fmt::format("intake {}: cannot wait for datagrams: {}",
                                                      transport_name(t_), ec.message()));
        linger(std::max<std::chrono::nanoseconds>(sh_->opt.backpressure_retry, detail::kMinLinger));
        return;
      }
    }
    sock_.async_wait(asio::socket_base::wait_read,
                     std::bind_front(&DgramReceiver::on_readable, this->shared_from_this()));
  }

  void on_readable(error_code ec) {
    if (ec || stopped_) return;  // aborted by stop()
    read_all(/*woken=*/true);
  }

  // Reads what the socket holds, then waits: for readiness when it was empty,
  // or for a linger after a read of only a few datagrams, so that those
  // arriving meanwhile are read together by one wake-up. `woken`: by the
  // socket's readiness, so that the first read takes datagrams that came
  // together (a burst).
  void read_all(bool woken = false) {
    const size_t slots = hdr_.size();
    const bool lingered = std::exchange(lingered_, false);
    for (int round = 0; round < kRoundsPerWake; ++round) {
      const int got = receive(/*after_linger=*/lingered && round == 0);
      const int64_t now = steady_ns();
      const int64_t elapsed = now - last_read_ns_;
      last_read_ns_ = now;
      if (!held_.empty()) {
        pause();
        return;
      }
      if (woken && round == 0 && got > 0) note_burst(static_cast<size_t>(got), now);
      if (static_cast<size_t>(got) == slots) continue;  // more may be waiting
      if (got > 0) {
        const auto delay = detail::datagram_linger(static_cast<size_t>(got), elapsed,
                                                   sh_->opt.read_delay, linger_target_, burst_);
        if (delay.count() > 0) {
          linger(delay);
          return;
        }
      }
      break;
    }
    do_wait();
  }

  // The largest burst lately seen: the most datagrams a read found on
  // waking, over the last kBurstMemory.
  void note_burst(size_t got, int64_t now) {
    if (got >= burst_ || now - burst_ns_ > kBurstMemory.count()) {
      burst_ = got;
      burst_ns_ = now;
    }
  }

  // Reads again after `delay`. Meanwhile the socket is released from the
  // reactor: arriving datagrams wait in the kernel's buffer without waking
  // this thread.
  void linger(std::chrono::nanoseconds delay) {
    if (sock_.is_open()) {
      error_code ignored;
      sock_.release(ignored);
    }
    timer_.expires_after(delay);
    timer_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (ec || self->stopped_) return;
      self->lingered_ = true;
      self->read_all();
    });
  }

  // The queue is full: keep the batch and stop reading until the queue takes
  // it. Meanwhile the socket's buffer fills, and the kernel refuses further
  // Unix datagrams (the sender sees EAGAIN, or waits if its socket blocks) or
  // drops further UDP datagrams (counted in kernel_drops): no work is spent
  // reading what could not be kept.
  void pause() {
    timer_.expires_after(sh_->opt.backpressure_retry);
    timer_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (ec || self->stopped_) return;
      if (!self->sh_->out.try_push(self->held_, self->held_weight_)) {
        self->pause();
        return;
      }
      self->stats().accepted.fetch_add(self->held_count_, std::memory_order_relaxed);
      self->held_.clear();
      self->read_all();
    });
  }

  // One recvmmsg() call; returns the number of datagrams (0 when none).
  // `after_linger`: the call ends a linger (counted as such when it finds
  // datagrams).
  int receive(bool after_linger) {
    const size_t slots = hdr_.size();
    for (size_t i = 0; i < slots; ++i) {
      iov_[i].iov_base = data_.get() + i * slot_bytes_;
      iov_[i].iov_len = slot_bytes_;
      msghdr& h = hdr_[i].msg_hdr;
      h = msghdr{};
      h.msg_iov = &iov_[i];
      h.msg_iovlen = 1;
      if (ovfl_) {
        h.msg_control = ctrl_.data() + i * kCtrlBytes;
        h.msg_controllen = kCtrlBytes;
      }
      hdr_[i].msg_len = 0;
    }
    int n;
    do {
      n = ::recvmmsg(fd_, hdr_.data(), static_cast<unsigned>(slots), MSG_DONTWAIT, nullptr);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      const int e = errno;
      if (e != EAGAIN && e != EWOULDBLOCK) {
        stats().read_errors.fetch_add(1, std::memory_order_relaxed);
        sh_->log.log(spdlog::level::warn, fmt::format("intake {}: recvmmsg failed: {}",
                                                      transport_name(t_), std::strerror(e)));
      }
      return 0;
    }
    BatchBuilder b(*sh_, t_, static_cast<size_t>(n));
    uint64_t bytes = 0;
    for (int i = 0; i < n; ++i) {
      const msghdr& h = hdr_[static_cast<size_t>(i)].msg_hdr;
      const size_t len = hdr_[static_cast<size_t>(i)].msg_len;
      bytes += len;
      if (ovfl_) read_overflow(h);
      if (h.msg_flags & MSG_TRUNC) {
        b.reject(Reject::kTooLarge, "datagram larger than max_datagram_bytes");
        continue;
      }
      if (len == 0) {
        b.reject(Reject::kMalformed, "empty datagram");
        continue;
      }
      const std::string_view dgram(data_.get() + static_cast<size_t>(i) * slot_bytes_, len);
      const size_t rest = for_each_value(dgram, [&](std::string_view msg) { b.add(msg); });
      if (rest > 0) b.reject(Reject::kMalformed, "datagram holds bytes that are not msgpack");
    }
    if (n > 0) stats().reads.fetch_add(1, std::memory_order_relaxed);
    if (n > 0 && after_linger) stats().linger_reads.fetch_add(1, std::memory_order_relaxed);
    stats().datagrams.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    stats().bytes.fetch_add(bytes, std::memory_order_relaxed);
    b.publish();
    MessageBatch& batch = b.batch();
    if (!batch.empty()) {
      const size_t count = batch.size();
      if (sh_->out.try_push(batch, b.weight())) {
        stats().accepted.fetch_add(count, std::memory_order_relaxed);
      } else {
        held_ = std::move(batch);
        held_weight_ = b.weight();
        held_count_ = count;
        stats().backpressure_pauses.fetch_add(1, std::memory_order_relaxed);
      }
    }
    return n;
  }

  void read_overflow(const msghdr& h) {
#ifdef SO_RXQ_OVFL
    for (cmsghdr* c = CMSG_FIRSTHDR(const_cast<msghdr*>(&h)); c != nullptr;
         c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
        uint32_t drops;
        std::memcpy(&drops, CMSG_DATA(c), sizeof drops);
        // The kernel reports the socket's cumulative count.
        stats().kernel_drops.store(drops, std::memory_order_relaxed);
      }
    }
#else
    (void)h;
#endif
  }

  std::shared_ptr<Shared> sh_;
  const Transport t_;
  Socket sock_;
  Protocol protocol_ = typename Protocol::endpoint().protocol();
  int fd_ = -1;  // the socket; registered with the reactor only while sock_ is open
  asio::steady_timer timer_;
  bool stopped_ = false;
  bool lingered_ = false;     // the next read_all() ends a linger
  size_t linger_target_ = 1;  // datagrams a linger may let accumulate
  int64_t last_read_ns_ = 0;  // steady_ns() of the last recvmmsg() call
  size_t burst_ = 0;          // see note_burst()
  int64_t burst_ns_ = 0;
  MessageBatch held_;  // a batch the full queue did not take yet
  size_t held_weight_ = 0;
  size_t held_count_ = 0;
  bool ovfl_ = false;
  size_t slot_bytes_ = 0;
  std::unique_ptr<char[]> data_;
  std::vector<iovec> iov_;
  std::vector<mmsghdr> hdr_;
  std::vector<char> ctrl_;
};

using UnixDgramReceiver = DgramReceiver<asio::local::datagram_protocol>;
using UdpReceiver = DgramReceiver<asio::ip::udp>;

// "HOST:PORT" or "[V6]:PORT" to an endpoint; names are resolved (start-up only).
std::error_code parse_udp(asio::io_context& ioc, const std::string& s, asio::ip::udp::endpoint* ep,
                          std::string* err) {
  const auto hp = parse_host_port(s);
  if (!hp || !hp->port) {
    *err = "bad udp address '" + s + "' (want HOST:PORT or [V6]:PORT)";
    return errno_code(EINVAL);
  }
  const std::string& host = hp->host;
  error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  if (!ec) {
    *ep = asio::ip::udp::endpoint(addr, *hp->port);
    return {};
  }
  asio::ip::udp::resolver resolver(ioc);
  const auto results = resolver.resolve(host, std::to_string(*hp->port), ec);
  if (ec || results.empty()) {
    *err = "cannot resolve udp host '" + host + "': " + (ec ? ec.message() : "no address");
    return ec ? to_std(ec) : errno_code(EINVAL);
  }
  *ep = results.begin()->endpoint();
  return {};
}

// ---------------------------------------------------------------------------

class IntakeImpl final : public Intake {
 public:
  IntakeImpl(asio::io_context& ioc, IntakeOptions options, BoundedQueue<MessageBatch>& out,
             const Clock& clock)
      : ioc_(ioc), sh_(std::make_shared<Shared>(std::move(options), out, clock)) {}

  ~IntakeImpl() override { stop(); }

  std::error_code start(std::string* err) override {
    std::string local;
    if (err == nullptr) err = &local;
    if (started_) {
      *err = "intake already started";
      return errno_code(EALREADY);
    }
    started_ = true;
    const auto& opt = sh_->opt;
    std::error_code ec;
    if (!ec && (opt.stream_fd >= 0 || !opt.unix_stream.empty())) ec = open_stream(err);
    if (!ec && (opt.dgram_fd >= 0 || !opt.unix_dgram.empty())) ec = open_dgram(err);
    if (!ec && (opt.udp_fd >= 0 || !opt.udp.empty())) ec = open_udp(err);
    if (ec) {
      stop();
      return ec;
    }
    if (stream_) stream_->start();
    if (dgram_) dgram_->start();
    if (udp_) udp_->start();
    return {};
  }

  void stop() override {
    {
      std::lock_guard lock(sh_->mu);
      if (sh_->stopped) return;
      sh_->stopped = true;
    }
    if (stream_) stream_->stop();
    if (dgram_) {
      dgram_->stop();
      unlink_if_ours(dgram_->path, dgram_->file);
    }
    if (udp_) udp_->stop();
    std::vector<std::shared_ptr<StreamSession>> sessions;
    {
      std::lock_guard lock(sh_->mu);
      for (auto& [ptr, weak] : sh_->sessions) {
        if (auto s = weak.lock()) sessions.push_back(std::move(s));
      }
    }
    for (auto& s : sessions) {
      asio::dispatch(s->executor(), [s] { s->close(); });
    }
  }

  const IntakeStats& stats() const override { return sh_->stats; }

  uint16_t udp_port() const override { return udp_port_; }

 private:
  std::error_code open_stream(std::string* err) {
    stream_ = std::make_shared<StreamListener>(ioc_, sh_);
    if (auto ec = stream_->open(err)) return ec;
    spdlog::info("intake: listening on unix://{}",
                 stream_->path().empty() ? "(adopted fd)" : stream_->path());
    return {};
  }

  std::error_code open_dgram(std::string* err) {
    dgram_ = std::make_shared<UnixDgramReceiver>(ioc_, sh_, Transport::kUnixDgram);
    const auto& opt = sh_->opt;
    error_code ec;
    auto& sock = dgram_->socket();
    if (opt.dgram_fd >= 0) {
      sock.assign(asio::local::datagram_protocol(), opt.dgram_fd, ec);
      if (ec) {
        *err = "cannot adopt unix datagram fd: " + ec.message();
        return to_std(ec);
      }
    } else {
      if (auto e = prepare_socket_path(opt.unix_dgram, SOCK_DGRAM, err)) return e;
      sock.open(asio::local::datagram_protocol(), ec);
      if (!ec) sock.bind(asio::local::datagram_protocol::endpoint(opt.unix_dgram), ec);
      if (ec) {
        *err = "cannot bind unix datagram socket " + opt.unix_dgram + ": " + ec.message();
        return to_std(ec);
      }
      dgram_->path = opt.unix_dgram;
      if (auto e = finish_socket_file(opt.unix_dgram, opt.socket_mode, &dgram_->file, err)) {
        return e;
      }
    }
    if (auto e = dgram_->configure(err)) return e;
    spdlog::info("intake: listening on unixgram://{}",
                 opt.dgram_fd >= 0 ? "(adopted fd)" : opt.unix_dgram);
    return {};
  }

  std::error_code open_udp(std::string* err) {
    udp_ = std::make_shared<UdpReceiver>(ioc_, sh_, Transport::kUdp);
    const auto& opt = sh_->opt;
    error_code ec;
    auto& sock = udp_->socket();
    if (opt.udp_fd >= 0) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      if (::getsockname(opt.udp_fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
        const int e = errno;
        *err = std::string("cannot adopt udp fd: ") + std::strerror(e);
        return errno_code(e);
      }
      sock.assign(ss.ss_family == AF_INET6 ? asio::ip::udp::v6() : asio::ip::udp::v4(), opt.udp_fd,
                  ec);
      if (ec) {
        *err = "cannot adopt udp fd: " + ec.message();
        return to_std(ec);
      }
    } else {
      asio::ip::udp::endpoint ep;
      if (auto e = parse_udp(ioc_, opt.udp, &ep, err)) return e;
      sock.open(ep.protocol(), ec);
      if (!ec) sock.bind(ep, ec);
      if (ec) {
        *err = "cannot bind udp " + opt.udp + ": " + ec.message();
        return to_std(ec);
      }
    }
    const auto local = sock.local_endpoint(ec);
    if (!ec) udp_port_ = local.port();
    if (auto e = udp_->configure(err)) return e;
    spdlog::info("intake: listening on udp://{}:{}", local.address().to_string(), udp_port_);
    return {};
  }

  asio::io_context& ioc_;
  std::shared_ptr<Shared> sh_;
  bool started_ = false;
  std::shared_ptr<StreamListener> stream_;
  std::shared_ptr<UnixDgramReceiver> dgram_;
  std::shared_ptr<UdpReceiver> udp_;
  uint16_t udp_port_ = 0;
};

}  // namespace

std::unique_ptr<Intake> Intake::create(asio::io_context& ioc, IntakeOptions options,
                                       BoundedQueue<MessageBatch>& out, const Clock& clock) {
  return std::make_unique<IntakeImpl>(ioc, std::move(options), out, clock);
}

}  // namespace sidetrace::ipc
