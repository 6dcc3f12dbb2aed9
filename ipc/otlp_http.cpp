#include "ipc/otlp_http.h"

#include <google/protobuf/arena.h>
#include <google/protobuf/util/json_util.h>
#include <zlib.h>

#include <algorithm>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <functional>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "common/host_allowed.h"
#include "common/host_port.h"
#include "common/rate_limited_log.h"
#include "common/text.h"
#include "ipc/otlp_map.h"
#include "ipc/splitter.h"
#include "otlp/proto/status.pb.h"
#include "otlp/proto/trace_service.pb.h"

namespace sidetrace::ipc {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::string_view otlp_outcome_name(OtlpOutcome o) {
  switch (o) {
    case OtlpOutcome::kOk:
      return "ok";
    case OtlpOutcome::kPartial:
      return "partial";
    case OtlpOutcome::kBadRequest:
      return "bad_request";
    case OtlpOutcome::kNotFound:
      return "not_found";
    case OtlpOutcome::kBadMethod:
      return "method_not_allowed";
    case OtlpOutcome::kTooLarge:
      return "too_large";
    case OtlpOutcome::kUnsupported:
      return "unsupported_media_type";
    case OtlpOutcome::kBusy:
      return "busy";
    case OtlpOutcome::kUnavailable:
      return "unavailable";
    case OtlpOutcome::kMisdirected:
      return "misdirected";
    case OtlpOutcome::kForbidden:
      return "forbidden";
    case OtlpOutcome::kCount_:
      break;
  }
  return "unknown";
}

namespace {

constexpr size_t kHeaderLimit = 16 * 1024;
// What a connection reads at once while it reads a body. Beast reads only
// into the room its buffer has, and a buffer sized for the headers makes
// a body take a few hundred reads (and as many timer updates).
constexpr size_t kBodyReadBytes = 64 * 1024;
constexpr std::string_view kPath = "/v1/traces";
// A listener whose accept fails (out of descriptors) tries again after this.
constexpr std::chrono::milliseconds kAcceptRetry{100};

enum class Encoding : uint8_t { kProtobuf, kJson };

std::error_code to_std(const error_code& ec) {
  return std::error_code(ec.value(), ec.category());
}

std::string_view sv(beast::string_view s) {
  return std::string_view(s.data(), s.size());
}

// ---------------------------------------------------------------------------
// Bodies

enum class Inflated : uint8_t { kOk, kTooLarge, kCorrupt };

// Inflates a gzip body (one or more members) into `out`, refusing to grow it
// beyond `limit` bytes.
Inflated gunzip(std::string_view in, size_t limit, std::string* out) {
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return Inflated::kCorrupt;
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  out->resize(std::min(limit + 1, std::max<size_t>(in.size() * 4, 64 << 10)));
  size_t have = 0;
  Inflated result = Inflated::kOk;
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(out->data() + have);
    zs.avail_out = static_cast<uInt>(out->size() - have);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    have = out->size() - zs.avail_out;
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      if (inflateReset(&zs) != Z_OK) {  // another member follows
        result = Inflated::kCorrupt;
        break;
      }
      continue;
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      result = Inflated::kCorrupt;
      break;
    }
    if (zs.avail_out == 0) {
      if (out->size() > limit) {
        result = Inflated::kTooLarge;
        break;
      }
      out->resize(std::min(limit + 1, out->size() * 2));
    } else if (zs.avail_in == 0) {
      result = Inflated::kCorrupt;  // cut short
      break;
    }
  }
  inflateEnd(&zs);
  out->resize(have);
  if (result == Inflated::kOk && have > limit) result = Inflated::kTooLarge;
  return result;
}

// ---------------------------------------------------------------------------
// Who may send

// ---------------------------------------------------------------------------
// Shared state

class Session;

// State shared by the receiver and every handler it starts; handlers keep it
// alive, so counters stay valid whatever the destruction order.
struct Shared {
  Shared(OtlpHttpOptions o, BoundedQueue<MessageBatch>& q, const Clock& c)
      : opt(std::move(o)),
        out(q),
        clock(c),
        log(10, std::chrono::seconds(10), c),
        budget(opt.max_pending_bytes) {
    for (const auto& h : opt.allowed_hosts) {
      if (std::string k = host_key(h); !k.empty()) host_names.push_back(std::move(k));
    }
    if (const auto hp = parse_host_port(opt.listen); hp && !hp->host.empty()) {
      host_names.push_back(host_key(hp->host));
    }
  }

  const OtlpHttpOptions opt;
  std::vector<std::string> host_names;  // accepted in Host: allowed_hosts, listen's host
  BoundedQueue<MessageBatch>& out;
  const Clock& clock;
  OtlpHttpStats stats;
  RateLimitedLog log;
  MemoryBudget budget;  // bytes held by pending requests
  std::atomic<bool> accepting{true};

  std::mutex mu;  // guards stopped and sessions
  bool stopped = false;
  std::unordered_map<const Session*, std::weak_ptr<Session>> sessions;

  void count(OtlpOutcome o) {
    stats.requests[static_cast<size_t>(o)].fetch_add(1, std::memory_order_relaxed);
  }
};

// A request's claim on the pending bounds: one request, and the bytes it
// holds. Given back when released or destroyed.
class PendingClaim {
 public:
  explicit PendingClaim(Shared& sh) : sh_(sh) {}
  ~PendingClaim() { release(); }
  PendingClaim(const PendingClaim&) = delete;
  PendingClaim& operator=(const PendingClaim&) = delete;

  bool claim_request() {
    if (request_) return true;
    auto& n = sh_.stats.pending_requests;
    uint64_t cur = n.load(std::memory_order_relaxed);
    do {
      if (cur >= sh_.opt.max_pending_requests) return false;
    } while (!n.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
    request_ = true;
    return true;
  }

  // Holds exactly `bytes` from now on; false (holding what it held) when the
  // budget cannot give the difference.
  bool hold(size_t bytes) {
    if (bytes > bytes_) {
      if (!sh_.budget.take(bytes - bytes_)) return false;
      sh_.stats.pending_bytes.fetch_add(bytes - bytes_, std::memory_order_relaxed);
    } else if (bytes < bytes_) {
      sh_.budget.give(bytes_ - bytes);
      sh_.stats.pending_bytes.fetch_sub(bytes_ - bytes, std::memory_order_relaxed);
    }
    bytes_ = bytes;
    return true;
  }

  void release() {
    hold(0);
    if (request_) {
      sh_.stats.pending_requests.fetch_sub(1, std::memory_order_relaxed);
      request_ = false;
    }
  }

 private:
  Shared& sh_;
  bool request_ = false;
  size_t bytes_ = 0;
};

// The receipt of one request's messages: counts what the writer reports
// and, once every message is settled, hands the tally to `done`, once. If
// the last message holding it goes away unsettled (the agent stopped before
// the writer took it), the rest is reported lost.
class RequestReceipt final : public Receipt {
 public:
  struct Tally {
    size_t stored = 0, full = 0, failed = 0, lost = 0;
  };
  using Done = std::function<void(const Tally&)>;

  RequestReceipt(size_t expected, Done done) : remaining_(expected), done_(std::move(done)) {}

  ~RequestReceipt() override {
    const size_t left = remaining_.load(std::memory_order_acquire);
    if (left > 0 && armed_.load(std::memory_order_relaxed)) {
      Tally t = tally();
      t.lost = left;
      report(t);
    }
  }

  void settle(Outcome outcome, size_t n) noexcept override {
    counts_[static_cast<size_t>(outcome)].fetch_add(n, std::memory_order_relaxed);
    if (remaining_.fetch_sub(n, std::memory_order_acq_rel) == n &&
        armed_.load(std::memory_order_relaxed)) {
      report(tally());
    }
  }

  // The messages never reached the queue: nothing is to be reported.
  void disarm() { armed_.store(false, std::memory_order_relaxed); }

 private:
  Tally tally() const {
    Tally t;
    t.stored = counts_[static_cast<size_t>(Outcome::kStored)].load(std::memory_order_relaxed);
    t.full = counts_[static_cast<size_t>(Outcome::kFull)].load(std::memory_order_relaxed);
    t.failed = counts_[static_cast<size_t>(Outcome::kFailed)].load(std::memory_order_relaxed);
    return t;
  }

  void report(const Tally& t) noexcept {
    try {
      done_(t);
    } catch (const std::exception& e) {
      // Only an exhausted allocator gets here; the request then waits for
      // its connection to close.
      spdlog::error("otlp_http: could not hand over a request's outcome: {}", e.what());
    }
  }

  std::atomic<size_t> remaining_;
  std::array<std::atomic<size_t>, 3> counts_{};
  Done done_;
  std::atomic<bool> armed_{true};
};

// ---------------------------------------------------------------------------
// One connection

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<Shared> sh, tcp::socket socket)
      : sh_(std::move(sh)),
        stream_(std::move(socket)),
        timer_(stream_.get_executor()),
        claim_(*sh_) {
    error_code ec;
    const auto local = stream_.socket().local_endpoint(ec);
    if (!ec) local_address_ = unmapped(local.address()).to_string();
  }

  ~Session() {
    sh_->stats.connections_open.fetch_sub(1, std::memory_order_relaxed);
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
    do_read_header();
  }

  // Closes the connection; pending handlers end with operation_aborted. A
  // request whose messages are queued is still settled (and then finds the
  // connection closed). Must run on the session's strand.
  void close() {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    give_up_held();
    if (state_ != State::kWaiting) claim_.release();
  }

  // Closes the connection if it waits for a request (see stop_accepting()).
  void close_if_idle() {
    if (state_ == State::kIdle) close();
  }

  asio::any_io_executor executor() { return stream_.get_executor(); }

 private:
  enum class State : uint8_t {
    kIdle,     // waiting for the next request's header
    kReading,  // reading a body, or answering before the queue
    kWaiting,  // messages queued, waiting for the store's outcome
    kLinger,   // answered a refusal; discarding what the client still sends
  };

  OtlpHttpStats& stats() { return sh_->stats; }

  void do_read_header() {
    if (closed_) return;
    if (!sh_->accepting.load(std::memory_order_relaxed)) return close();
    state_ = State::kIdle;
    // Waiting for a request, a connection keeps no more than what it holds.
    buffer_.shrink_to_fit();
    header_parser_.emplace();
    header_parser_->header_limit(kHeaderLimit);
    header_parser_->body_limit(sh_->opt.max_body_bytes);
    stream_.expires_after(sh_->opt.read_timeout);
    http::async_read_header(stream_, buffer_, *header_parser_,
                            beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  void on_header(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit) {
      // A Content-Length beyond the limit.
      state_ = State::kReading;
      keep_alive_ = false;
      return refuse_early(http::status::payload_too_large, OtlpOutcome::kTooLarge,
                          fmt::format("the body is larger than {} bytes "
                                      "(listen.otlp_max_body_bytes)",
                                      sh_->opt.max_body_bytes));
    }
    if (ec) return close();  // end of stream, timeout, reset, or not HTTP
    state_ = State::kReading;
    const auto& req = header_parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    const std::string_view ctype = sv(req[http::field::content_type]);
    const std::string media = lower(trim(ctype.substr(0, ctype.find(';'))));
    encoding_ = media == "application/json" ? Encoding::kJson : Encoding::kProtobuf;
    if (auto why = foreign(req)) return refuse_early(why->status, why->outcome, why->message);
    const std::string_view target = sv(req.target());
    if (target.substr(0, target.find('?')) != kPath) {
      return refuse_early(http::status::not_found, OtlpOutcome::kNotFound,
                          "not found: the traces endpoint is POST /v1/traces");
    }
    if (req.method() != http::verb::post) {
      return refuse_early(http::status::method_not_allowed, OtlpOutcome::kBadMethod,
                          "/v1/traces takes POST only");
    }
    if (media != "application/x-protobuf" && media != "application/json") {
      return refuse_early(http::status::unsupported_media_type, OtlpOutcome::kUnsupported,
                          fmt::format("unsupported content type \"{}\": send "
                                      "application/x-protobuf or application/json",
                                      ctype));
    }
    const std::string coding = lower(trim(sv(req[http::field::content_encoding])));
    if (coding == "gzip" || coding == "x-gzip") {
      gzip_ = true;
    } else if (coding.empty() || coding == "identity") {
      gzip_ = false;
    } else {
      return refuse_early(
          http::status::unsupported_media_type, OtlpOutcome::kUnsupported,
          fmt::format("unsupported content encoding \"{}\": send gzip or none", coding));
    }
    const auto length = header_parser_->content_length();
    if (!claim_.claim_request()) {
      return refuse_early(http::status::too_many_requests, OtlpOutcome::kBusy,
                          fmt::format("{} requests are waiting for the store "
                                      "(listen.otlp_max_pending_requests); retry later",
                                      sh_->opt.max_pending_requests));
    }
    if (!claim_.hold(length ? static_cast<size_t>(*length) : sh_->opt.max_body_bytes)) {
      return refuse_early(http::status::too_many_requests, OtlpOutcome::kBusy,
                          fmt::format("requests waiting for the store hold "
                                      "listen.otlp_max_pending_bytes ({} bytes); retry later",
                                      sh_->opt.max_pending_bytes));
    }
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      // The client waits for this before it sends the body.
      continue_ =
          std::make_shared<http::response<http::empty_body>>(http::status::continue_, version_);
      http::async_write(stream_, *continue_,
                        [self = shared_from_this()](beast::error_code wec, size_t) {
                          self->continue_.reset();
                          if (wec) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  struct Refusal {
    http::status status;
    OtlpOutcome outcome;
    std::string message;
  };

  // Why a request that a web page could have sent is refused (otlp_http.h),
  // if it is.
  std::optional<Refusal> foreign(const http::request<http::empty_body>& req) const {
    if (req.count(http::field::host) > 1) {
      return Refusal{http::status::bad_request, OtlpOutcome::kBadRequest,
                     "more than one Host header"};
    }
    const std::string_view host = sv(req[http::field::host]);
    if (!host.empty() && !host_allowed(host, sh_->host_names, local_address_)) {
      return Refusal{http::status::misdirected_request, OtlpOutcome::kMisdirected,
                     fmt::format("the host name \"{}\" is not accepted here; send to 127.0.0.1 "
                                 "or localhost, or add it to listen.otlp_allowed_hosts",
                                 host)};
    }
    const std::string site = lower(trim(sv(req["Sec-Fetch-Site"])));
    if (!site.empty() && site != "same-origin" && site != "none") {
      return Refusal{http::status::forbidden, OtlpOutcome::kForbidden,
                     fmt::format("a request from a web page on another site (Sec-Fetch-Site: "
                                 "{}) is refused",
                                 site)};
    }
    const std::string origin = lower(trim(sv(req[http::field::origin])));
    if (!origin.empty()) {
      const std::string self = lower(host);
      const bool same =
          !self.empty() && (origin == "http://" + self || origin == "https://" + self);
      if (!same) {
        return Refusal{
            http::status::forbidden, OtlpOutcome::kForbidden,
            fmt::format("a request from a web page on another origin ({}) is refused", origin)};
      }
    }
    return std::nullopt;
  }

  void read_body() {
    if (buffer_.capacity() < kBodyReadBytes) buffer_.reserve(kBodyReadBytes);
    body_parser_.emplace(std::move(*header_parser_));
    header_parser_.reset();
    body_parser_->body_limit(sh_->opt.max_body_bytes);
    stream_.expires_after(sh_->opt.read_timeout);
    http::async_read(stream_, buffer_, *body_parser_,
                     beast::bind_front_handler(&Session::on_body, shared_from_this()));
  }

  void on_body(beast::error_code ec, size_t) {
    if (ec == http::error::body_limit) {
      keep_alive_ = false;
      return refuse_early(http::status::payload_too_large, OtlpOutcome::kTooLarge,
                          fmt::format("the body is larger than {} bytes "
                                      "(listen.otlp_max_body_bytes)",
                                      sh_->opt.max_body_bytes));
    }
    if (ec) return close();
    stream_.expires_never();
    std::string body = std::move(body_parser_->get().body());
    body_parser_.reset();
    stats().bytes.fetch_add(body.size(), std::memory_order_relaxed);
    claim_.hold(body.size());  // never more than claimed
    if (gzip_) {
      std::string inflated;
      switch (gunzip(body, sh_->opt.max_body_bytes, &inflated)) {
        case Inflated::kOk:
          break;
        case Inflated::kTooLarge:
          return respond_error(http::status::payload_too_large, OtlpOutcome::kTooLarge,
                               fmt::format("the inflated body is larger than {} bytes "
                                           "(listen.otlp_max_body_bytes)",
                                           sh_->opt.max_body_bytes));
        case Inflated::kCorrupt:
          return respond_error(http::status::bad_request, OtlpOutcome::kBadRequest,
                               "the body is not valid gzip");
      }
      body = std::move(inflated);
      if (!claim_.hold(body.size())) return refuse_bytes();
    }
    handle(body);
  }

  // Decodes and maps the request, and queues its messages.
  void handle(std::string_view body) {
    google::protobuf::ArenaOptions arena_options;
    arena_options.start_block_size = 64 << 10;
    arena_options.max_block_size = 1 << 20;
    google::protobuf::Arena arena(arena_options);
    auto* request = google::protobuf::Arena::CreateMessage<OtlpRequest>(&arena);
    std::string error;
    const bool parsed = encoding_ == Encoding::kJson ? parse_otlp_json(body, request, &error)
                                                     : parse_otlp_protobuf(body, request, &error);
    if (!parsed) return respond_error(http::status::bad_request, OtlpOutcome::kBadRequest, error);
    OtlpMapped mapped;
    map_otlp_request(*request, sh_->opt.limits, sh_->clock.now_ns(), &mapped,
                     sh_->opt.max_pending_bytes);
    if (mapped.over_weight) {
      // More than all waiting requests together may hold: never takeable.
      return respond_error(http::status::payload_too_large, OtlpOutcome::kTooLarge,
                           fmt::format("the request's spans take more than "
                                       "listen.otlp_max_pending_bytes ({} bytes) as messages; "
                                       "send smaller batches",
                                       sh_->opt.max_pending_bytes));
    }
    stats().spans_received.fetch_add(mapped.spans, std::memory_order_relaxed);
    stats().spans_rejected.fetch_add(mapped.rejected_spans, std::memory_order_relaxed);
    rejected_ = mapped.rejected_spans;
    accepted_ = mapped.spans - mapped.rejected_spans;
    message_ = std::move(mapped.error);
    if (rejected_ > 0) {
      sh_->log.log(spdlog::level::warn, fmt::format("otlp_http: rejected {} of {} spans: {}",
                                                    rejected_, mapped.spans, message_));
    }
    if (mapped.messages.empty()) return respond_ok();
    if (!claim_.hold(mapped.weight)) return refuse_bytes();
    // The receipt keeps this session alive until the store's outcome is in.
    auto receipt = std::make_shared<RequestReceipt>(
        mapped.messages.size(),
        [self = shared_from_this(), ex = stream_.get_executor()](const RequestReceipt::Tally& t) {
          asio::post(ex, [self, t] { self->on_settled(t); });
        });
    for (auto& m : mapped.messages)
      m.receipt = receipt;
    held_ = std::move(mapped.messages);
    held_weight_ = mapped.weight;
    queue_deadline_ = std::chrono::steady_clock::now() + sh_->opt.queue_wait;
    waited_ = false;
    push();
  }

  void push() {
    if (sh_->out.try_push(held_, held_weight_)) {
      held_.clear();
      state_ = State::kWaiting;
      return;
    }
    if (!waited_) {
      waited_ = true;
      stats().queue_waits.fetch_add(1, std::memory_order_relaxed);
    }
    if (std::chrono::steady_clock::now() >= queue_deadline_) {
      give_up_held();
      return respond_error(http::status::too_many_requests, OtlpOutcome::kBusy,
                           "the agent's intake queue is full (the store is behind); retry later");
    }
    timer_.expires_after(sh_->opt.backpressure_retry);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->closed_) return;  // close() gave the messages up
      self->push();
    });
  }

  // Drops messages that were never queued (their receipt reports nothing).
  void give_up_held() {
    if (held_.empty()) return;
    stats().spans_refused.fetch_add(accepted_, std::memory_order_relaxed);
    static_cast<RequestReceipt*>(held_.front().receipt.get())->disarm();
    held_.clear();
  }

  void refuse_bytes() {
    stats().spans_refused.fetch_add(accepted_, std::memory_order_relaxed);
    respond_error(http::status::too_many_requests, OtlpOutcome::kBusy,
                  fmt::format("requests waiting for the store hold listen.otlp_max_pending_bytes "
                              "({} bytes); retry later",
                              sh_->opt.max_pending_bytes));
  }

  void on_settled(const RequestReceipt::Tally& t) {
    claim_.release();
    state_ = State::kReading;
    if (t.full == 0 && t.failed == 0 && t.lost == 0) {
      stats().spans_stored.fetch_add(accepted_, std::memory_order_relaxed);
      return respond_ok();
    }
    stats().spans_refused.fetch_add(accepted_, std::memory_order_relaxed);
    std::string why =
        t.full > 0
            ? "the agent's store is full (buffer.max_bytes with buffer.when_full = drop_newest)"
        : t.failed > 0 ? "the agent's store cannot write (the disk is full or failing)"
                       : "the agent stopped before it stored the spans";
    respond_error(http::status::service_unavailable, OtlpOutcome::kUnavailable,
                  why + "; retry later");
  }

  void respond_ok() {
    opentelemetry::proto::collector::trace::v1::ExportTraceServiceResponse r;
    if (rejected_ > 0) {
      auto* ps = r.mutable_partial_success();
      ps->set_rejected_spans(static_cast<int64_t>(rejected_));
      ps->set_error_message(message_);
    }
    sh_->count(rejected_ > 0 ? OtlpOutcome::kPartial : OtlpOutcome::kOk);
    write(http::status::ok, r, false);
  }

  // An answer to a request whose body was read: the connection stays open.
  void respond_error(http::status status, OtlpOutcome outcome, std::string_view message) {
    answer_error(status, outcome, message);
  }

  // An answer given before the body was read: the connection is closed
  // after it (see linger()).
  void refuse_early(http::status status, OtlpOutcome outcome, std::string_view message) {
    keep_alive_ = false;
    linger_after_write_ = true;
    answer_error(status, outcome, message);
  }

  void answer_error(http::status status, OtlpOutcome outcome, std::string_view message) {
    sh_->count(outcome);
    const bool retry =
        status == http::status::too_many_requests || status == http::status::service_unavailable;
    sh_->log.log(retry ? spdlog::level::info : spdlog::level::warn,
                 fmt::format("otlp_http: answered {}: {}", static_cast<unsigned>(status), message));
    google::rpc::Status st;
    st.set_code(grpc_code(status));
    st.set_message(std::string(message));
    write(status, st, retry);
  }

  // The gRPC code a google.rpc.Status carries for each answer.
  static int grpc_code(http::status s) {
    switch (s) {
      case http::status::not_found:
        return 5;  // NOT_FOUND
      case http::status::method_not_allowed:
        return 12;  // UNIMPLEMENTED
      case http::status::payload_too_large:
      case http::status::too_many_requests:
        return 8;  // RESOURCE_EXHAUSTED
      case http::status::service_unavailable:
        return 14;  // UNAVAILABLE
      case http::status::forbidden:
      case http::status::misdirected_request:
        return 7;  // PERMISSION_DENIED
      default:
        return 3;  // INVALID_ARGUMENT
    }
  }

  void write(http::status status, const google::protobuf::Message& body, bool retry_after) {
    res_ = {};
    res_.version(version_);
    if (retry_after) res_.set(http::field::retry_after, std::to_string(sh_->opt.retry_after_s));
    res_.result(status);
    res_.set(http::field::server, "sidetrace");
    // A stopping receiver takes no further request on this connection.
    res_.keep_alive(keep_alive_ && sh_->accepting.load(std::memory_order_relaxed));
    if (encoding_ == Encoding::kJson) {
      res_.set(http::field::content_type, "application/json");
      google::protobuf::util::JsonPrintOptions options;
      std::string json;
      if (!google::protobuf::util::MessageToJsonString(body, &json, options).ok()) json = "{}";
      res_.body() = std::move(json);
    } else {
      res_.set(http::field::content_type, "application/x-protobuf");
      res_.body() = body.SerializeAsString();
    }
    res_.prepare_payload();
    stream_.expires_after(sh_->opt.read_timeout);
    http::async_write(stream_, res_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this()));
  }

  void on_write(beast::error_code ec, size_t) {
    claim_.release();
    if (ec) return close();
    if (linger_after_write_) return linger();
    if (!res_.keep_alive()) return close();
    do_read_header();
  }

  // After a refusal made before the body was read: shut the sending side,
  // then read and discard what the client still sends until it closes (or
  // the linger time or a body's worth of bytes has passed), so that the
  // client reads the answer instead of meeting a reset.
  void linger() {
    state_ = State::kLinger;
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(sh_->opt.linger);
    scratch_.resize(16 << 10);
    lingered_ = 0;
    do_linger();
  }

  void do_linger() {
    stream_.async_read_some(asio::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->lingered_ += n;
                              if (ec || self->lingered_ > self->sh_->opt.max_body_bytes) {
                                return self->close();
                              }
                              self->do_linger();
                            });
  }

  std::shared_ptr<Shared> sh_;
  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> header_parser_;
  std::optional<http::request_parser<http::string_body>> body_parser_;
  std::shared_ptr<http::response<http::empty_body>> continue_;
  http::response<http::string_body> res_;
  PendingClaim claim_;
  State state_ = State::kIdle;
  bool closed_ = false;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool linger_after_write_ = false;
  Encoding encoding_ = Encoding::kProtobuf;
  bool gzip_ = false;
  uint64_t accepted_ = 0;  // spans of the current request that passed validation
  uint64_t rejected_ = 0;
  std::string message_;  // partial_success.error_message
  MessageBatch held_;    // messages the full queue did not take yet
  size_t held_weight_ = 0;
  std::chrono::steady_clock::time_point queue_deadline_;
  bool waited_ = false;
  std::vector<char> scratch_;
  size_t lingered_ = 0;
  std::string local_address_;  // the address the connection came in on
};

// ---------------------------------------------------------------------------
// The listener

class Listener : public std::enable_shared_from_this<Listener> {
 public:
  Listener(asio::io_context& ioc, std::shared_ptr<Shared> sh)
      : ioc_(ioc),
        sh_(std::move(sh)),
        acceptor_(asio::make_strand(ioc)),
        timer_(acceptor_.get_executor()) {}

  std::error_code open(std::string* err, uint16_t* port) {
    const std::string& listen = sh_->opt.listen;
    const auto hp = parse_host_port(listen);
    if (!hp || !hp->port) {
      *err = "\"" + listen + "\" is not HOST:PORT or [V6]:PORT";
      return std::make_error_code(std::errc::invalid_argument);
    }
    error_code ec;
    tcp::endpoint ep;
    const auto addr = asio::ip::make_address(hp->host, ec);
    if (!ec) {
      ep = tcp::endpoint(addr, *hp->port);
    } else {
      tcp::resolver resolver(ioc_);
      const auto results = resolver.resolve(hp->host, std::to_string(*hp->port), ec);
      if (ec || results.empty()) {
        *err = "cannot resolve \"" + hp->host + "\": " + (ec ? ec.message() : "no address");
        return ec ? to_std(ec) : std::make_error_code(std::errc::invalid_argument);
      }
      ep = results.begin()->endpoint();
    }
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      *err = "cannot listen on " + listen + ": " + ec.message();
      error_code ignored;
      acceptor_.close(ignored);
      return to_std(ec);
    }
    const auto local = acceptor_.local_endpoint(ec);
    *port = ec ? 0 : local.port();
    spdlog::info("intake: listening on http://{}:{}{} (OTLP/HTTP)",
                 local.address().is_v6() ? "[" + local.address().to_string() + "]"
                                         : local.address().to_string(),
                 *port, kPath);
    return {};
  }

  void start() {
    asio::dispatch(acceptor_.get_executor(), [self = shared_from_this()] { self->do_accept(); });
  }

  void stop() {
    asio::dispatch(acceptor_.get_executor(), [self = shared_from_this()] {
      error_code ignored;
      self->acceptor_.close(ignored);
      self->timer_.cancel();
    });
  }

 private:
  void do_accept() {
    if (!acceptor_.is_open()) return;
    acceptor_.async_accept(asio::make_strand(ioc_),
                           beast::bind_front_handler(&Listener::on_accept, shared_from_this()));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      sh_->log.log(spdlog::level::warn, fmt::format("otlp_http: accept failed: {}", ec.message()));
      timer_.expires_after(kAcceptRetry);
      timer_.async_wait([self = shared_from_this()](error_code tec) {
        if (!tec) self->do_accept();
      });
      return;
    }
    auto& st = sh_->stats;
    if (st.connections_open.load(std::memory_order_relaxed) >= sh_->opt.max_connections) {
      st.connections_refused.fetch_add(1, std::memory_order_relaxed);
      sh_->log.log(spdlog::level::warn, fmt::format("otlp_http: refused a connection: {} are open "
                                                    "(listen.max_connections)",
                                                    sh_->opt.max_connections));
      error_code ignored;
      socket.close(ignored);
    } else {
      st.connections_open.fetch_add(1, std::memory_order_relaxed);
      st.connections_total.fetch_add(1, std::memory_order_relaxed);
      error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      auto session = std::make_shared<Session>(sh_, std::move(socket));
      asio::dispatch(session->executor(), [session] { session->start(); });
    }
    do_accept();
  }

  asio::io_context& ioc_;
  std::shared_ptr<Shared> sh_;
  tcp::acceptor acceptor_;
  asio::steady_timer timer_;
};

// ---------------------------------------------------------------------------

class ReceiverImpl final : public OtlpHttpReceiver {
 public:
  ReceiverImpl(asio::io_context& ioc, OtlpHttpOptions options, BoundedQueue<MessageBatch>& out,
               const Clock& clock)
      : ioc_(ioc), sh_(std::make_shared<Shared>(std::move(options), out, clock)) {}

  ~ReceiverImpl() override { stop(); }

  std::error_code start(std::string* err) override {
    std::string local;
    if (err == nullptr) err = &local;
    if (listener_) {
      *err = "the OTLP/HTTP receiver is already started";
      return std::make_error_code(std::errc::operation_in_progress);
    }
    listener_ = std::make_shared<Listener>(ioc_, sh_);
    uint16_t port = 0;
    if (auto ec = listener_->open(err, &port)) {
      listener_.reset();
      return ec;
    }
    port_.store(port);
    listener_->start();
    return {};
  }

  void stop_accepting() override {
    if (!sh_->accepting.exchange(false) || !listener_) return;
    listener_->stop();
    for (auto& s : sessions()) {
      asio::dispatch(s->executor(), [s] { s->close_if_idle(); });
    }
  }

  size_t waiting() const override {
    return sh_->stats.pending_requests.load(std::memory_order_relaxed);
  }

  void stop() override {
    stop_accepting();
    {
      std::lock_guard lock(sh_->mu);
      if (sh_->stopped) return;
      sh_->stopped = true;
    }
    for (auto& s : sessions()) {
      asio::dispatch(s->executor(), [s] { s->close(); });
    }
  }

  const OtlpHttpStats& stats() const override { return sh_->stats; }

  uint16_t port() const override { return port_.load(); }

 private:
  std::vector<std::shared_ptr<Session>> sessions() {
    std::vector<std::shared_ptr<Session>> out;
    std::lock_guard lock(sh_->mu);
    for (auto& [ptr, weak] : sh_->sessions) {
      if (auto s = weak.lock()) out.push_back(std::move(s));
    }
    return out;
  }

  asio::io_context& ioc_;
  std::shared_ptr<Shared> sh_;
  std::shared_ptr<Listener> listener_;
  std::atomic<uint16_t> port_{0};
};

}  // namespace

std::unique_ptr<OtlpHttpReceiver> OtlpHttpReceiver::create(asio::io_context& ioc,
                                                           OtlpHttpOptions options,
                                                           BoundedQueue<MessageBatch>& out,
                                                           const Clock& clock) {
  return std::make_unique<ReceiverImpl>(ioc, std::move(options), out, clock);
}

}  // namespace sidetrace::ipc
