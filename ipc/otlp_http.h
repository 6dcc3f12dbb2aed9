// The OTLP/HTTP trace receiver: `POST /v1/traces` as the OpenTelemetry
// Protocol specifies it, so that an application already instrumented with
// OpenTelemetry sends its spans to the agent by pointing its exporter here.
//
// A request's body is `application/x-protobuf` or `application/json`,
// gzip-encoded or not (Content-Encoding). Its spans become protocol-v1
// messages (ipc/otlp_map.h), each validated by the protocol's decoder, and
// go onto the same bounded queue as the socket transports' messages, all of
// a request in one batch. Each message carries a receipt (ipc::Receipt) that
// the writer settles once the message is committed or dropped; the answer
// waits for it:
//   200  every accepted span is durable in the store (synced in fsync mode):
//        an ExportTraceServiceResponse, in the request's content type, whose
//        partial_success counts the spans refused by validation (bad ids, a
//        span larger than limits.max_message_bytes) with the reasons;
//   400  the body does not decode (protobuf, JSON or gzip);
//   404  another path; 405 another method;
//   413  the body, as sent or inflated, is larger than max_body_bytes, or
//        its messages would weigh more than max_pending_bytes;
//   415  a content type other than the two, or an encoding other than gzip;
//   429  with Retry-After: the intake queue stayed full for queue_wait, or
//        max_pending_requests / max_pending_bytes are in use;
//   503  with Retry-After: the store dropped the spans (its quota is full
//        with when_full = drop_newest, or the disk is full or failing).
// Before any of that, a request that a web page could have sent is refused
// (closing the connection after the answer):
//   421  a Host header that names neither a loopback name or address
//        (localhost, *.localhost, 127.0.0.0/8, ::1), nor the address the
//        connection came in on, nor the host of options.listen, nor one of
//        allowed_hosts: a page reached through DNS rebinding sends its own
//        host name;
//   403  a request from a browser on another site: an Origin other than the
//        request's own http(s)://<Host>, or Sec-Fetch-Site other than
//        same-origin or none. OpenTelemetry exporters outside a browser
//        (Node, Python, Go, Java, the Collector) send neither header.
// Error bodies are a google.rpc.Status, in the request's content type (binary
// protobuf when that is neither). A refusal made before the body was read
// (404, 405, 413, 415, 429) closes the connection after the answer, reading
// and discarding what the client still sends (up to a deadline) so that it
// sees the answer rather than a reset.
//
// Bounds: connections (max_connections; more are closed at once and
// counted), header size (16 KiB), body size, a deadline for each request to
// arrive whole (read_timeout, which also closes idle keep-alive
// connections), and the requests between their body's arrival and their
// answer: at most max_pending_requests, holding at most max_pending_bytes
// (a request's body as sent, then its messages). Everything is counted in
// OtlpHttpStats.
//
// Threading: handlers run on the io_context given at creation, each
// connection on its own strand; the io_context may be run by several
// threads. Mapping and validation run on those threads; nothing here touches
// the disk. stats() may be read from any thread. start(), stop_accepting()
// and stop() must be called from a thread running the io_context or while
// none runs it. The queue and the clock must outlive the receiver's pending
// handlers.
#pragma once

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "common/bounded_queue.h"
#include "common/clock.h"
#include "config/defaults.h"
#include "ipc/event.h"
#include "ipc/message.h"

namespace sidetrace::ipc {

struct OtlpHttpOptions {
  std::string listen = config::defaults::kListenOtlpHttp;  // "HOST:PORT", "[V6]:PORT"; port 0
                                                           // picks a free port
  // Host names accepted in the Host header besides the ones above;
  // ".example.com" also accepts its subdomains.
  std::vector<std::string> allowed_hosts;
  size_t max_body_bytes = config::defaults::kOtlpMaxBodyBytes;
  size_t max_pending_requests = config::defaults::kOtlpMaxPendingRequests;
  size_t max_pending_bytes = config::defaults::kOtlpMaxPendingBytes;
  size_t max_connections = 1024;
  DecodeLimits limits;
  std::chrono::milliseconds read_timeout{30000};
  // How long a request waits for room in a full intake queue (retrying every
  // backpressure_retry) before it is answered 429.
  std::chrono::milliseconds queue_wait{1000};
  std::chrono::milliseconds backpressure_retry{2};
  // Retry-After of 429 and 503 answers, in seconds.
  uint32_t retry_after_s = 1;
  // How long a refused connection is read (and the bytes discarded) after
  // its answer before it is closed.
  std::chrono::milliseconds linger{2000};
};

// What a request was answered.
enum class OtlpOutcome : uint8_t {
  kOk = 0,       // 200, every span accepted and durable
  kPartial,      // 200 with partial_success: some spans refused by validation
  kBadRequest,   // 400
  kNotFound,     // 404
  kBadMethod,    // 405
  kTooLarge,     // 413
  kUnsupported,  // 415
  kBusy,         // 429
  kUnavailable,  // 503
  kMisdirected,  // 421: a Host that is not this agent's
  kForbidden,    // 403: a request from a browser on another site
  kCount_,
};

std::string_view otlp_outcome_name(OtlpOutcome o);

// Counters; monotonic unless noted, relaxed atomics.
struct OtlpHttpStats {
  std::array<std::atomic<uint64_t>, static_cast<size_t>(OtlpOutcome::kCount_)> requests{};
  std::atomic<uint64_t> spans_received{0};    // spans in requests that decoded
  std::atomic<uint64_t> spans_stored{0};      // durable and acknowledged with 200
  std::atomic<uint64_t> spans_rejected{0};    // refused by validation (partial_success)
  std::atomic<uint64_t> spans_refused{0};     // in requests answered 429 or 503
  std::atomic<uint64_t> bytes{0};             // request bodies, as sent
  std::atomic<uint64_t> pending_requests{0};  // gauge: between body and answer
  std::atomic<uint64_t> pending_bytes{0};     // gauge: what those hold
  std::atomic<uint64_t> connections_open{0};  // gauge
  std::atomic<uint64_t> connections_total{0};
  std::atomic<uint64_t> connections_refused{0};  // over max_connections
  std::atomic<uint64_t> queue_waits{0};          // requests that waited for queue room

  uint64_t requests_of(OtlpOutcome o) const {
    return requests[static_cast<size_t>(o)].load(std::memory_order_relaxed);
  }
};

class OtlpHttpReceiver {
 public:
  virtual ~OtlpHttpReceiver() = default;

  // Never throws; nothing is opened before start(). `out` and `clock` are
  // borrowed (see the threading note above).
  static std::unique_ptr<OtlpHttpReceiver> create(boost::asio::io_context& ioc,
                                                  OtlpHttpOptions options,
                                                  BoundedQueue<MessageBatch>& out,
                                                  const Clock& clock);

  // Binds options.listen (a host name is resolved) and starts accepting. On
  // failure nothing is left open and `err` (if given) says why, e.g. "cannot
  // listen on 127.0.0.1:4318: Address already in use".
  virtual std::error_code start(std::string* err) = 0;

  // Stops accepting connections and closes those that wait for a request;
  // requests already read are still answered. Idempotent.
  virtual void stop_accepting() = 0;

  // Requests between their body's arrival and their answer (waiting for the
  // queue or for the store). After stop_accepting(), zero means done.
  virtual size_t waiting() const = 0;

  // Closes every connection, answered or not. Idempotent; also done by the
  // destructor.
  virtual void stop() = 0;

  virtual const OtlpHttpStats& stats() const = 0;

  // The bound port (useful with port 0); 0 before start().
  virtual uint16_t port() const = 0;
};

}  // namespace sidetrace::ipc
