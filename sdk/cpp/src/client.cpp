// Relative, so that this file also compiles when included into a bench that
// is not linked with the library.
#include "../include/sidetrace/client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <random>
#include <thread>

namespace sidetrace::client {
namespace detail {

constexpr size_t kUdpMaxDatagramBytes = 65507;
constexpr size_t kUnixgramMaxDatagramBytes = 64 * 1024;  // the agent's datagram size

struct Endpoint {
  enum Scheme { kUnix, kUnixgram, kUdp } scheme = kUnix;
  std::string path, host, port;
  bool stream() const { return scheme == kUnix; }
  size_t max_datagram() const {
    return scheme == kUdp ? kUdpMaxDatagramBytes : kUnixgramMaxDatagramBytes;
  }
};

}  // namespace detail

namespace {

using detail::Endpoint;

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kStreamBatchBytes = 256 * 1024;
constexpr size_t kDatagramBatchBytes = 16 * 1024;
constexpr size_t kWakeBatch = 64;  // queued messages that wake a polling sender early
constexpr int kIdlePolls = 200;    // 1 ms polls before the sender sleeps until woken
constexpr milliseconds kPoll{1};
constexpr milliseconds kBackoffMin{50};
constexpr milliseconds kBackoffMax{2000};

// ---- ids -------------------------------------------------------------------

std::atomic<uint64_t> g_fork_generation{0};

void on_fork_child() {
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
}

struct Rng {
  std::mt19937_64 gen;
  uint64_t generation = ~uint64_t{0};
  uint64_t next() noexcept {
    uint64_t g = g_fork_generation.load(std::memory_order_relaxed);
    if (g != generation) {  // first use, or a forked child: never repeat the parent's ids
      seed();
      generation = g;
    }
    return gen();
  }
  void seed() noexcept {
    unsigned s[5] = {0, 0, 0, 0, static_cast<unsigned>(getpid())};
    try {
      std::random_device rd;
      for (int i = 0; i < 4; ++i)
        s[i] = rd();
    } catch (...) {  // no entropy source: the clocks and this thread's address instead
      const auto t =
          static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count() ^
                                std::chrono::system_clock::now().time_since_epoch().count());
      const auto a = reinterpret_cast<uintptr_t>(this);
      s[0] = static_cast<unsigned>(t);
      s[1] = static_cast<unsigned>(t >> 32);
      s[2] = static_cast<unsigned>(a);
      s[3] = static_cast<unsigned>(static_cast<uint64_t>(a) >> 32);
    }
    // seed_seq allocates; seed the engine from one mixed word if that fails.
    try {
      std::seed_seq seq(std::begin(s), std::end(s));
      gen.seed(seq);
    } catch (...) {
      gen.seed((uint64_t{s[0]} << 32 | s[1]) ^ (uint64_t{s[2]} << 32 | s[3]) ^ s[4]);
    }
  }
};

Rng& rng() noexcept {
  static const bool registered = pthread_atfork(nullptr, nullptr, on_fork_child) == 0;
  (void)registered;
  thread_local Rng r;
  return r;
}

void append_hex(std::string* out, uint64_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char buf[16];
  for (int i = 15; i >= 0; --i) {
    buf[i] = kDigits[v & 0xf];
    v >>= 4;
  }
  out->append(buf, 16);
}

// ---- encoding ----------------------------------------------------------------

struct Writer {
  std::string buf;
  void write(const char* p, size_t n) { buf.append(p, n); }
};

class Packer {
 public:
  Packer() : pk_(w_) { w_.buf.reserve(192); }
  void map(uint32_t n) { pk_.pack_map(n); }
  void str(std::string_view s) {
    pk_.pack_str(static_cast<uint32_t>(s.size()));
    pk_.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
  }
  void kv(std::string_view k, std::string_view v) {
    str(k);
    str(v);
  }
  void kv_u64(std::string_view k, uint64_t v) {
    str(k);
    pk_.pack_uint64(v);
  }
  void kv_i64(std::string_view k, int64_t v) {
    str(k);
    pk_.pack_int64(v);
  }
  void kv_double(std::string_view k, double v) {
    str(k);
    pk_.pack_double(v);
  }
  void kv_value(std::string_view k, const Value& v) {
    str(k);
    w_.write(v.bytes().data(), v.bytes().size());
  }
  void kv_attrs(std::string_view k, const Attrs& attrs) {
    str(k);
    map(static_cast<uint32_t>(attrs.size()));
    for (const auto& [key, value] : attrs) {
      str(key);
      if (value.empty()) {
        if (value.rejected()) ++rejected;
        pk_.pack_nil();
      } else {
        w_.write(value.bytes().data(), value.bytes().size());
      }
    }
  }
  // kv_value() when `v` is not empty; counts a rejected Value.
  uint32_t opt_value(std::string_view k, const Value& v) {
    if (v.empty()) {
      if (v.rejected()) ++rejected;
      return 0;
    }
    kv_value(k, v);
    return 1;
  }
  std::string take() { return std::move(w_.buf); }

  uint64_t rejected = 0;  // Values left out because they were rejected

 private:
  Writer w_;
  msgpack::packer<Writer> pk_;
};

// The common head of every message: v, kind, trace_id (3 keys).
void head(Packer* p, uint32_t keys, std::string_view kind, std::string_view trace_id) {
  p->map(keys + 3);
  p->kv_u64("v", kProtocolVersion);
  p->kv("kind", kind);
  p->kv("trace_id", trace_id);
}

void put_outcome(Packer* p, bool error, std::string_view error_text, const Attrs& attrs) {
  if (error || !error_text.empty()) p->kv("status", "error");
  if (!error_text.empty()) p->kv("error", error_text);
  if (!attrs.empty()) p->kv_attrs("attrs", attrs);
}

uint32_t outcome_keys(bool error, std::string_view error_text, const Attrs& attrs) {
  return (error || !error_text.empty() ? 1 : 0) + (error_text.empty() ? 0 : 1) +
         (attrs.empty() ? 0 : 1);
}

// ---- endpoints and sockets ---------------------------------------------------

constexpr size_t kMaxIdBytes = 128;  // ids and the event type (protocol v1)

bool id_fits(std::string_view id) {
  return !id.empty() && id.size() <= kMaxIdBytes;
}

bool usable_score(const std::optional<double>& score) {
  return score && std::isfinite(*score);
}

bool parse_endpoint(std::string_view text, Endpoint* ep) {
  size_t sep = text.find("://");
  if (sep == std::string_view::npos || sep + 3 >= text.size()) return false;
  std::string_view scheme = text.substr(0, sep), rest = text.substr(sep + 3);
  if (scheme == "unix" || scheme == "unixgram") {
    ep->scheme = scheme == "unix" ? Endpoint::kUnix : Endpoint::kUnixgram;
    ep->path = std::string(rest);
    return ep->path.size() < sizeof(sockaddr_un::sun_path);
  }
  if (scheme != "udp") return false;
  std::string_view host, port;
  if (rest.front() == '[') {
    size_t close = rest.find("]:");
    if (close == std::string_view::npos) return false;
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  int n = std::atoi(std::string(port).c_str());
  if (n <= 0 || n > 65535) return false;
  ep->scheme = Endpoint::kUdp;
  ep->host = std::string(host);
  ep->port = std::string(port);
  return true;
}

// Opens a connected, non-blocking socket; -1 (errno set) when the agent is not there.
int open_socket(const Endpoint& ep) {
  if (ep.scheme == Endpoint::kUdp) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_DGRAM;
    addrinfo* res = nullptr;
    if (getaddrinfo(ep.host.c_str(), ep.port.c_str(), &hints, &res) != 0 || res == nullptr) {
      errno = EHOSTUNREACH;
      return -1;
    }
    int fd = socket(res->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
      ::close(fd);
      fd = -1;
    }
    freeaddrinfo(res);
    return fd;
  }
  int type = ep.stream() ? SOCK_STREAM : SOCK_DGRAM;
  int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, ep.path.data(), ep.path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
  if (errno == EAGAIN || errno == EINPROGRESS) {  // the listen backlog is full
    pollfd pfd{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof(err);
    if (poll(&pfd, 1, 500) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
        err == 0) {
      return fd;
    }
    errno = err != 0 ? err : ETIMEDOUT;
  }
  int saved = errno;
  ::close(fd);
  errno = saved;
  return -1;
}

}  // namespace

// ---- Value -------------------------------------------------------------------

Value::Value(std::string_view text) noexcept {
  try {
    Sink sink{&bytes_};
    msgpack::packer<Sink> pk(sink);
    pk.pack_str(static_cast<uint32_t>(text.size()));
    pk.pack_str_body(text.data(), static_cast<uint32_t>(text.size()));
  } catch (...) {  // out of memory
    bytes_.clear();
    rejected_ = true;
  }
}

Value::Value(bool b) noexcept {
  try {
    Sink sink{&bytes_};
    msgpack::pack(sink, b);
  } catch (...) {
    bytes_.clear();
    rejected_ = true;
  }
}

Value::Value(double d) noexcept {
  try {
    Sink sink{&bytes_};
    msgpack::pack(sink, d);
  } catch (...) {
    bytes_.clear();
    rejected_ = true;
  }
}

Value Value::raw(std::string msgpack_bytes) noexcept {
  Value v;
  bool whole = false;
  try {
    // No container or string can hold more elements than there are bytes:
    // the limits keep a forged length from allocating.
    const auto n = static_cast<size_t>(
        std::min<uint64_t>(msgpack_bytes.size(), std::numeric_limits<uint32_t>::max()));
    const msgpack::unpack_limit limit(n, n, n, n, n, n);
    size_t off = 0;
    msgpack::object_handle oh =
        msgpack::unpack(msgpack_bytes.data(), msgpack_bytes.size(), off, nullptr, nullptr, limit);
    whole = off == msgpack_bytes.size();
  } catch (...) {  // not msgpack, cut short, or out of memory
    whole = false;
  }
  if (whole) {
    v.bytes_ = std::move(msgpack_bytes);
  } else {
    v.rejected_ = true;
  }
  return v;
}

// ---- ids and time ------------------------------------------------------------

std::string new_trace_id() noexcept {
  std::string s;
  try {
    s.reserve(32);
    append_hex(&s, rng().next());
    append_hex(&s, rng().next());
  } catch (...) {  // out of memory
    s.clear();
  }
  return s;
}

std::string new_event_id() noexcept {
  std::string s;
  try {
    s.reserve(16);
    append_hex(&s, rng().next());
  } catch (...) {
    s.clear();
  }
  return s;
}

uint64_t now_ns() noexcept {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

// ---- the client --------------------------------------------------------------

struct Client::Impl {
  Options options;
  std::string endpoint_text;
  Endpoint ep;
  bool ep_ok = false;

  mutable std::mutex mu;
  std::condition_variable work_cv;  // the sender waits here
  std::condition_variable done_cv;  // flush() waits here
  std::deque<std::string> queue;
  size_t queue_bytes = 0;
  size_t outstanding = 0;  // queued + taken by the sender, not yet sent or dropped
  int flush_waiters = 0;
  bool sleeping = false;  // the sender waits without a timeout: wake it
  bool stop = false;
  bool closed = false;
  Stats stats;
  std::thread thread;
  bool sender_failed = false;  // the sender thread could not be started
  // Counted without the lock, from paths that must not fail.
  std::atomic<uint64_t> args_dropped{0};
  std::atomic<uint64_t> internal_errors{0};

  uint64_t drops_locked() const { return stats.dropped(); }

  // `n` messages left the pipeline; `counter` says how. Lock held.
  void resolve(size_t n, uint64_t Stats::*counter) {
    if (n == 0) return;
    stats.*counter += n;
    outstanding -= n;
    if (outstanding == 0 || counter != &Stats::sent) done_cv.notify_all();
  }

  void drop_queued(uint64_t Stats::*counter) {
    size_t n = queue.size();
    queue.clear();
    queue_bytes = 0;
    resolve(n, counter);
  }

  // Takes the next batch to write; returns its message count (0: none). Lock held.
  size_t take_batch(std::string* out) {
    out->clear();
    if (ep.stream()) {
      size_t n = 0;
      while (!queue.empty() &&
             (n == 0 || out->size() + queue.front().size() <= kStreamBatchBytes)) {
        if (n == 0) {
          *out = std::move(queue.front());
        } else {
          out->append(queue.front());
        }
        queue.pop_front();
        ++n;
      }
      queue_bytes -= out->size();
      return n;
    }
    while (!queue.empty() && queue.front().size() > ep.max_datagram()) {
      queue_bytes -= queue.front().size();
      queue.pop_front();
      resolve(1, &Stats::dropped_too_large);
    }
    size_t n = 0;
    while (!queue.empty() &&
           (n == 0 || out->size() + queue.front().size() <= kDatagramBatchBytes)) {
      out->append(queue.front());
      queue.pop_front();
      ++n;
    }
    queue_bytes -= out->size();
    return n;
  }

  // The sender thread. An unexpected error (out of memory) stops it: what it
  // held and what is queued is dropped, and later messages are dropped too,
  // each counted in internal_errors.
  void run() noexcept {
    int fd = -1;
    try {
      loop(&fd);
    } catch (...) {
      try {
        std::lock_guard lk(mu);
        internal_errors.fetch_add(1, std::memory_order_relaxed);
        sender_failed = true;
        // Everything not yet sent is lost: the queue, the batch, and what a
        // failed take_batch() had already taken.
        queue.clear();
        queue_bytes = 0;
        resolve(outstanding, &Stats::dropped_send_error);
      } catch (...) {  // the mutex failed: nothing more can be done safely
      }
    }
    if (fd >= 0) ::close(fd);
  }

  void loop(int* fd_out) {
    int& fd = *fd_out;
    milliseconds backoff = kBackoffMin;
    Clock::time_point next_attempt{};
    std::string batch;
    size_t batch_count = 0;
    size_t offset = 0;
    bool resent = false;  // the batch already went to a new connection once
    int idle_polls = 0;
    for (;;) {
      bool flushing = false;
      {
        std::unique_lock lk(mu);
        for (;;) {
          if (stop || batch_count > 0) break;
          if (!queue.empty()) {
            idle_polls = 0;
            if (fd >= 0 || flush_waiters > 0 || Clock::now() >= next_attempt) break;
            work_cv.wait_until(lk, next_attempt);
            continue;
          }
          if (idle_polls < kIdlePolls) {
            ++idle_polls;
            work_cv.wait_for(lk, kPoll);
          } else {
            sleeping = true;
            work_cv.wait(lk);
            sleeping = false;
            idle_polls = 0;
          }
        }
        if (stop) {
          resolve(batch_count, &Stats::dropped_closed);
          drop_queued(&Stats::dropped_closed);
          break;
        }
        flushing = flush_waiters > 0;
      }

      if (fd < 0) {
        fd = open_socket(ep);
        std::lock_guard lk(mu);
        if (fd < 0) {
          ++stats.connect_failures;
          next_attempt = Clock::now() + backoff;
          backoff = std::min(backoff * 2, kBackoffMax);
          if (flushing) {  // someone waits for delivery: say no now
            resolve(batch_count, &Stats::dropped_no_agent);
            batch_count = 0;
            drop_queued(&Stats::dropped_no_agent);
          }
          continue;
        }
        ++stats.connects;
        backoff = kBackoffMin;
      }

      if (batch_count == 0) {
        std::lock_guard lk(mu);
        batch_count = take_batch(&batch);
        offset = 0;
        resent = false;
        if (batch_count == 0) continue;
      }

      ssize_t n = ::send(fd, batch.data() + offset, batch.size() - offset, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR) {
          pollfd pfd{fd, POLLOUT, 0};
          poll(&pfd, 1, 50);  // the agent's socket is full
          continue;
        }
        int err = errno;
        ::close(fd);
        fd = -1;
        if (ep.stream() && offset == 0 && !resent) {
          // Nothing of it went out: the agent had closed the connection (one
          // left idle, or a restart). Send it once more on a new one.
          resent = true;
          next_attempt = Clock::now();
          continue;
        }
        std::lock_guard lk(mu);
        if (err == EMSGSIZE) {
          resolve(batch_count, &Stats::dropped_too_large);
        } else if (ep.stream()) {
          resolve(batch_count, &Stats::dropped_send_error);
          next_attempt = Clock::now();
        } else {
          resolve(batch_count, &Stats::dropped_no_agent);
          next_attempt = Clock::now() + kBackoffMin;
        }
        batch_count = 0;
        continue;
      }
      offset += static_cast<size_t>(n);
      if (offset >= batch.size()) {
        std::lock_guard lk(mu);
        resolve(batch_count, &Stats::sent);
        batch_count = 0;
      }
    }
  }
};

Client::Client(Options options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  try {
    s.options = std::move(options);
    s.endpoint_text = s.options.endpoint;
    if (s.endpoint_text.empty()) {
      const char* env = std::getenv("SIDETRACE_ENDPOINT");
      s.endpoint_text = env != nullptr && *env != '\0' ? env : std::string(kDefaultEndpoint);
    }
    s.ep_ok = parse_endpoint(s.endpoint_text, &s.ep);
  } catch (...) {  // out of memory: as a bad endpoint, everything is dropped and counted
    s.ep_ok = false;
    s.internal_errors.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (!s.ep_ok) return;
  try {
    s.thread = std::thread([&s] { s.run(); });
  } catch (...) {  // no thread: every message is dropped, counted in internal_errors
    s.sender_failed = true;
    s.internal_errors.fetch_add(1, std::memory_order_relaxed);
  }
}

Client::~Client() {
  close(impl_->options.close_timeout);
}

void Client::count_args_dropped(uint64_t n) noexcept {
  impl_->args_dropped.fetch_add(n, std::memory_order_relaxed);
}

void Client::count_internal_error() noexcept {
  impl_->internal_errors.fetch_add(1, std::memory_order_relaxed);
}

Trace Client::trace(const TraceContext& ctx) noexcept {
  std::string id;
  try {
    if (id_fits(ctx.trace_id)) {
      id = ctx.trace_id;
    } else {
      if (!ctx.trace_id.empty()) count_args_dropped();
      id = new_trace_id();
    }
  } catch (...) {  // out of memory
    id.clear();
  }
  if (id.empty()) {
    count_internal_error();
    return Trace(this, std::string());
  }
  Trace t(this, std::move(id));
  t.update(ctx);
  return t;
}

bool Client::emit(std::string message) noexcept {
  Impl& s = *impl_;
  try {
    std::lock_guard lk(s.mu);
    if (!s.ep_ok) {
      ++s.stats.dropped_bad_endpoint;
      return false;
    }
    if (s.sender_failed) {
      s.internal_errors.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    if (s.closed) {
      ++s.stats.dropped_closed;
      return false;
    }
    if (message.size() > s.options.max_message_bytes) {
      ++s.stats.dropped_too_large;
      return false;
    }
    if (s.queue.size() >= s.options.max_queue ||
        s.queue_bytes + message.size() > s.options.max_queue_bytes) {
      ++s.stats.dropped_queue_full;
      return false;
    }
    const size_t size = message.size();
    s.queue.push_back(std::move(message));  // strong guarantee: unchanged if it throws
    s.queue_bytes += size;
    ++s.outstanding;
    ++s.stats.enqueued;
    if (s.sleeping || s.queue.size() == kWakeBatch) s.work_cv.notify_one();
    return true;
  } catch (...) {  // out of memory, or the mutex failed: drop, counted
    s.internal_errors.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
}

bool Client::flush(std::chrono::milliseconds timeout) noexcept {
  Impl& s = *impl_;
  try {
    auto deadline = Clock::now() + std::max(timeout, milliseconds::zero());
    std::unique_lock lk(s.mu);
    if (s.outstanding == 0) return true;
    if (!s.thread.joinable()) return false;
    uint64_t drops_before = s.drops_locked();
    ++s.flush_waiters;
    s.work_cv.notify_one();
    try {
      s.done_cv.wait_until(lk, deadline, [&] { return s.outstanding == 0; });
    } catch (...) {
      --s.flush_waiters;
      throw;
    }
    --s.flush_waiters;
    return s.outstanding == 0 && s.drops_locked() == drops_before;
  } catch (...) {  // the mutex or the condition variable failed
    count_internal_error();
    return false;
  }
}

bool Client::close(std::chrono::milliseconds timeout) noexcept {
  Impl& s = *impl_;
  bool ok = flush(timeout);
  try {
    {
      std::lock_guard lk(s.mu);
      if (s.closed) return ok;
      s.closed = true;
      s.stop = true;
      s.work_cv.notify_one();
    }
    if (s.thread.joinable() && s.thread.get_id() != std::this_thread::get_id()) s.thread.join();
    std::lock_guard lk(s.mu);
    s.drop_queued(&Stats::dropped_closed);
    return ok;
  } catch (...) {  // the mutex or the join failed
    count_internal_error();
    return false;
  }
}

Stats Client::stats() const noexcept {
  Stats out;
  try {
    std::lock_guard lk(impl_->mu);
    out = impl_->stats;
    out.queued = impl_->queue.size();
  } catch (...) {  // the mutex failed: the lock-free counters only
  }
  out.args_dropped = impl_->args_dropped.load(std::memory_order_relaxed);
  out.internal_errors = impl_->internal_errors.load(std::memory_order_relaxed);
  return out;
}

const std::string& Client::endpoint() const noexcept {
  return impl_->endpoint_text;
}
bool Client::endpoint_ok() const noexcept {
  return impl_->ep_ok;
}

// ---- Trace -------------------------------------------------------------------

void Trace::update(const TraceContext& ctx) noexcept {
  if (trace_id_.empty()) {  // moved from, or made by a trace() that failed
    client_->count_args_dropped();
    return;
  }
  try {
    const std::pair<std::string_view, const std::string*> strs[] = {
        {"conversation_id", &ctx.conversation_id},
        {"session_id", &ctx.session_id},
        {"interaction_id", &ctx.interaction_id},
        {"channel_id", &ctx.channel_id},
    };
    uint32_t keys = 1 + (ctx.metadata.empty() ? 0 : 1) + (ctx.user.empty() ? 0 : 1);
    for (const auto& [k, v] : strs)
      keys += v->empty() ? 0 : 1;
    Packer p;
    head(&p, keys, "trace", trace_id_);
    p.kv_u64("ts", now_ns());
    for (const auto& [k, v] : strs) {
      if (!v->empty()) p.kv(k, *v);
    }
    if (!ctx.metadata.empty()) p.kv_attrs("metadata", ctx.metadata);
    if (!ctx.user.empty()) p.kv_attrs("user", ctx.user);
    if (p.rejected > 0) client_->count_args_dropped(p.rejected);
    client_->emit(p.take());
  } catch (...) {  // out of memory
    client_->count_internal_error();
  }
}

Event Trace::start(std::string_view type, const Value& input, const StartOptions& opts) noexcept {
  return Event(client_, trace_id_, type, {}, input, opts);
}

Event Trace::message(Value input, StartOptions opts) noexcept {
  return start("MESSAGE", input, opts);
}
Event Trace::tool(Value input, StartOptions opts) noexcept {
  return start("TOOL", input, opts);
}
Event Trace::generation(Value input, StartOptions opts) noexcept {
  return start("GENERATION", input, opts);
}
Event Trace::agent(Value input, StartOptions opts) noexcept {
  return start("AGENT", input, opts);
}
Event Trace::retrieval(Value input, StartOptions opts) noexcept {
  return start("RETRIEVAL", input, opts);
}
Event Trace::router(Value input, StartOptions opts) noexcept {
  return start("ROUTER", input, opts);
}
Event Trace::system(Value input, StartOptions opts) noexcept {
  return start("SYSTEM", input, opts);
}
Event Trace::custom(std::string_view name, Value input, StartOptions opts) noexcept {
  try {
    opts.name = std::string(name);
  } catch (...) {  // out of memory: no start is sent
    client_->count_internal_error();
    return Event(client_);
  }
  return start("CUSTOM", input, opts);
}

std::string Trace::send(Finished e) noexcept {
  if (trace_id_.empty()) {
    client_->count_args_dropped();
    return std::string();
  }
  std::string id;
  try {
    id = new_event_id();
    if (id.empty()) throw std::bad_alloc();
    uint64_t dropped = 0;
    std::string_view type = e.type;
    if (!id_fits(type)) {
      ++dropped;
      type = "CUSTOM";
    }
    const bool parent = !e.parent_id.empty() && id_fits(e.parent_id);
    if (!e.parent_id.empty() && !parent) ++dropped;
    int64_t latency_ms = e.latency_ms;
    if (latency_ms < 0) {
      ++dropped;
      latency_ms = 0;
    }
    uint64_t ts = e.ts_ns;
    if (ts == 0) {  // started latency_ms before now (not before the epoch)
      const uint64_t now = now_ns();
      const auto ms = static_cast<uint64_t>(latency_ms);
      ts = ms >= now / 1000000u ? 0 : now - ms * 1000000u;
    }
    uint32_t keys = 4 + (parent ? 1 : 0) + (e.name.empty() ? 0 : 1) + (e.input.empty() ? 0 : 1) +
                    (e.output.empty() ? 0 : 1) + outcome_keys(e.error, e.error_text, e.attrs);
    Packer p;
    head(&p, keys, "event", trace_id_);
    p.kv("id", id);
    p.kv("type", type);
    p.kv_u64("ts", ts);
    p.kv_i64("latency_ms", latency_ms);
    if (parent) p.kv("parent_id", e.parent_id);
    if (!e.name.empty()) p.kv("name", e.name);
    p.opt_value("input", e.input);
    p.opt_value("output", e.output);
    put_outcome(&p, e.error, e.error_text, e.attrs);
    dropped += p.rejected;
    if (dropped > 0) client_->count_args_dropped(dropped);
    client_->emit(p.take());
    return id;
  } catch (...) {  // out of memory: nothing was sent
    client_->count_internal_error();
    return std::string();
  }
}

void Trace::feedback(Feedback fb) noexcept {
  if (trace_id_.empty()) {
    client_->count_args_dropped();
    return;
  }
  try {
    uint64_t dropped = 0;
    const bool score = usable_score(fb.score);
    if (fb.score && !score) ++dropped;
    const bool target = !fb.target_id.empty() && id_fits(fb.target_id);
    if (!fb.target_id.empty() && !target) ++dropped;
    uint32_t keys = 1 + (fb.tag.empty() ? 0 : 1) + (fb.text.empty() ? 0 : 1) + (score ? 1 : 0) +
                    (target ? 1 : 0);
    Packer p;
    head(&p, keys, "feedback", trace_id_);
    p.kv_u64("ts", fb.ts_ns != 0 ? fb.ts_ns : now_ns());
    if (!fb.tag.empty()) p.kv("tag", fb.tag);
    if (!fb.text.empty()) p.kv("text", fb.text);
    if (score) p.kv_double("score", *fb.score);
    if (target) p.kv("target_id", fb.target_id);
    if (dropped > 0) client_->count_args_dropped(dropped);
    client_->emit(p.take());
  } catch (...) {  // out of memory
    client_->count_internal_error();
  }
}

// ---- Event -------------------------------------------------------------------

Event::Event(Client* client, const std::string& trace_id, std::string_view type,
             std::string_view parent_id, const Value& input, const StartOptions& opts) noexcept
    : client_(client), uncaught_(std::uncaught_exceptions()) {
  if (trace_id.empty()) {  // a child of an Event, or an event of a Trace, that has no trace id
    client_->count_args_dropped();
    return;
  }
  try {
    trace_id_ = trace_id;
    id_ = new_event_id();
    if (id_.empty()) throw std::bad_alloc();
    uint32_t keys = 3 + (parent_id.empty() ? 0 : 1) + (opts.name.empty() ? 0 : 1) +
                    (input.empty() ? 0 : 1) + (opts.attrs.empty() ? 0 : 1);
    Packer p;
    head(&p, keys, "start", trace_id_);
    p.kv("id", id_);
    p.kv("type", type);
    p.kv_u64("ts", opts.ts_ns != 0 ? opts.ts_ns : now_ns());
    if (!parent_id.empty()) p.kv("parent_id", parent_id);
    if (!opts.name.empty()) p.kv("name", opts.name);
    p.opt_value("input", input);
    if (!opts.attrs.empty()) p.kv_attrs("attrs", opts.attrs);
    std::string message = p.take();
    if (p.rejected > 0) client_->count_args_dropped(p.rejected);
    ended_ = false;  // from here on, end() is owed
    client_->emit(std::move(message));
  } catch (...) {  // out of memory: no start was sent, so no end is owed
    trace_id_.clear();
    id_.clear();
    ended_ = true;
    client_->count_internal_error();
  }
}

Event::Event(Event&& other) noexcept
    : client_(other.client_),
      trace_id_(std::move(other.trace_id_)),
      id_(std::move(other.id_)),
      ended_(other.ended_),
      uncaught_(other.uncaught_) {
  other.ended_ = true;
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (!ended_) end();
    client_ = other.client_;
    trace_id_ = std::move(other.trace_id_);
    id_ = std::move(other.id_);
    ended_ = other.ended_;
    uncaught_ = other.uncaught_;
    other.ended_ = true;
  }
  return *this;
}

Event::~Event() {
  if (ended_) return;
  if (std::uncaught_exceptions() > uncaught_) {
    fail("an exception left the event's scope");
  } else {
    end();
  }
}

Event Event::child(std::string_view type, const Value& input, const StartOptions& opts) noexcept {
  return Event(client_, trace_id_, type, id_, input, opts);
}

Event Event::message(Value input, StartOptions opts) noexcept {
  return child("MESSAGE", input, opts);
}
Event Event::tool(Value input, StartOptions opts) noexcept {
  return child("TOOL", input, opts);
}
Event Event::generation(Value input, StartOptions opts) noexcept {
  return child("GENERATION", input, opts);
}
Event Event::agent(Value input, StartOptions opts) noexcept {
  return child("AGENT", input, opts);
}
Event Event::retrieval(Value input, StartOptions opts) noexcept {
  return child("RETRIEVAL", input, opts);
}
Event Event::router(Value input, StartOptions opts) noexcept {
  return child("ROUTER", input, opts);
}
Event Event::system(Value input, StartOptions opts) noexcept {
  return child("SYSTEM", input, opts);
}
Event Event::custom(std::string_view name, Value input, StartOptions opts) noexcept {
  try {
    opts.name = std::string(name);
  } catch (...) {  // out of memory: no start is sent
    client_->count_internal_error();
    return Event(client_);
  }
  return child("CUSTOM", input, opts);
}

std::string Event::send(Finished e) noexcept {
  if (trace_id_.empty()) {
    client_->count_args_dropped();
    return std::string();
  }
  try {
    e.parent_id = id_;
    Trace t(client_, trace_id_);
    return t.send(std::move(e));
  } catch (...) {  // out of memory
    client_->count_internal_error();
    return std::string();
  }
}

void Event::end(Value output, EndOptions opts) noexcept {
  if (ended_) return;
  ended_ = true;
  try {
    uint32_t keys =
        2 + (output.empty() ? 0 : 1) + outcome_keys(opts.error, opts.error_text, opts.attrs);
    Packer p;
    head(&p, keys, "end", trace_id_);
    p.kv("id", id_);
    p.kv_u64("ts", opts.ts_ns != 0 ? opts.ts_ns : now_ns());
    p.opt_value("output", output);
    put_outcome(&p, opts.error, opts.error_text, opts.attrs);
    if (p.rejected > 0) client_->count_args_dropped(p.rejected);
    client_->emit(p.take());
  } catch (...) {  // out of memory: the end is lost, counted
    client_->count_internal_error();
  }
}

void Event::fail(std::string_view error, Value output) noexcept {
  if (ended_) return;
  EndOptions opts;
  opts.error = true;
  try {
    opts.error_text = std::string(error);
  } catch (...) {  // out of memory: ends with status "error" and no text
    opts.error_text.clear();
  }
  end(std::move(output), std::move(opts));
}

void Event::feedback(Feedback fb) noexcept {
  if (trace_id_.empty()) {
    client_->count_args_dropped();
    return;
  }
  try {
    fb.target_id = id_;
    Trace t(client_, trace_id_);
    t.feedback(std::move(fb));
  } catch (...) {  // out of memory
    client_->count_internal_error();
  }
}

}  // namespace sidetrace::client
