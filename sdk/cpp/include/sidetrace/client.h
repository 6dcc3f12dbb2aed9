// sidetrace C++ emitter: traces and events sent to the local sidetrace agent
// over the wire protocol v1 (unix://, unixgram:// or udp://).
//
//   sidetrace::client::Client client;  // $SIDETRACE_ENDPOINT or the default socket
//   auto trace = client.trace({.conversation_id = "conv_123"});
//   auto message = trace.message("User: Tell me about neural networks");
//   {
//     auto retrieval = message.retrieval("Searching documentation");
//     retrieval.end("Found 2 relevant articles");
//   }
//   message.end("Bot: Neural networks are...");
//
// Contract:
// - Nothing here blocks on the network or throws: each event is encoded on
//   the caller's thread and queued (bounded, drop-newest, counted); one
//   background thread per Client writes to a non-blocking socket and
//   reconnects with backoff. What cannot be delivered is dropped and counted
//   in Client::stats(). Every call is noexcept except Client's constructor,
//   which throws std::bad_alloc only when the client's own state cannot be
//   allocated. An allocation that fails while a message is built (or any other
//   unexpected error) drops that message and counts it in
//   Stats::internal_errors. Copying the arguments themselves (Value, the
//   option structs) happens in the caller and may throw std::bad_alloc there.
// - Arguments the protocol cannot carry are left out and counted in
//   Stats::args_dropped, the rest of the message being sent: an id (trace,
//   parent, target) or an event type longer than 128 bytes, an empty type, a
//   score that is NaN or infinite, a negative latency_ms, a Value that holds
//   no valid msgpack (Value::rejected()). A trace id left out is replaced by a
//   new one, a type by "CUSTOM". A call on a Trace or Event that has no trace
//   id (moved from, or returned by a call that failed) sends nothing and is
//   counted there too.
// - Client is thread-safe. A Trace may be shared between threads; an Event is
//   used by one thread at a time. Traces and Events refer to their Client,
//   which must outlive them.
// - An Event that goes out of scope without end() is ended then: with status
//   "error" when it is destroyed by an exception unwinding the stack, else "ok".
// - fork(): a Client created before fork() must not be used in the child;
//   create a new one there.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <msgpack.hpp>

namespace sidetrace::client {

inline constexpr int kProtocolVersion = 1;
inline constexpr std::string_view kDefaultEndpoint = "unix:///run/sidetrace/agent.sock";

// One msgpack value (an event's input or output, an attribute), encoded when
// it is made. A default-constructed Value is "absent": the key is not sent.
// A Value that could not be made (rejected(): its encoding threw, e.g. a
// user-supplied msgpack adaptor or an allocation, or raw() was given bytes
// that are not exactly one msgpack value) is absent too, and counted in
// Stats::args_dropped where it is used.
class Value {
 public:
  Value() = default;
  Value(std::string_view text) noexcept;
  Value(const char* text) noexcept : Value(std::string_view(text)) {}
  Value(const std::string& text) noexcept : Value(std::string_view(text)) {}
  Value(bool b) noexcept;
  Value(double d) noexcept;
  // Any type msgpack-cxx can pack (integers, containers, maps, user adaptors).
  template <class T, class = std::enable_if_t<!std::is_convertible_v<const T&, std::string_view> &&
                                              !std::is_same_v<std::decay_t<T>, Value>>>
  Value(const T& v) noexcept {
    try {
      Sink sink{&bytes_};
      msgpack::pack(sink, v);
    } catch (...) {  // the adaptor threw, or out of memory: rejected, counted where used
      bytes_.clear();
      rejected_ = true;
    }
  }
  // Already-encoded msgpack bytes: exactly one well-formed value, else rejected.
  static Value raw(std::string msgpack_bytes) noexcept;

  bool empty() const { return bytes_.empty(); }
  bool rejected() const { return rejected_; }
  const std::string& bytes() const { return bytes_; }

 private:
  struct Sink {
    std::string* out;
    void write(const char* p, size_t n) { out->append(p, n); }
  };
  std::string bytes_;
  bool rejected_ = false;
};

// Free attributes; well-known keys: model, input_tokens, output_tokens,
// cost_usd, temperature.
using Attrs = std::vector<std::pair<std::string, Value>>;

struct Options {
  // unix://PATH, unixgram://PATH or udp://HOST:PORT. Empty: $SIDETRACE_ENDPOINT,
  // else kDefaultEndpoint. An endpoint that cannot be parsed makes the client
  // drop (and count) everything; see Client::endpoint_ok().
  std::string endpoint;
  size_t max_queue = 10000;                       // messages waiting; then drop-newest
  size_t max_queue_bytes = 16u << 20;             // bytes waiting; then drop-newest
  size_t max_message_bytes = 1u << 20;            // larger messages are dropped
  std::chrono::milliseconds close_timeout{2000};  // flush bound in ~Client()
};

struct Stats {
  uint64_t enqueued = 0;              // accepted into the queue
  uint64_t sent = 0;                  // handed to the kernel
  uint64_t dropped_queue_full = 0;    // the queue was at its bound
  uint64_t dropped_no_agent = 0;      // the agent was unreachable when a flush needed it
  uint64_t dropped_send_error = 0;    // the connection broke with the message unsent
  uint64_t dropped_too_large = 0;     // over max_message_bytes or the datagram limit
  uint64_t dropped_closed = 0;        // emitted after close(), or left when it gave up
  uint64_t dropped_bad_endpoint = 0;  // the endpoint could not be parsed
  uint64_t args_dropped = 0;          // arguments left out (see the contract above)
  uint64_t internal_errors = 0;       // unexpected errors (out of memory...); each drops a message
  uint64_t connects = 0;
  uint64_t connect_failures = 0;
  size_t queued = 0;
  uint64_t dropped() const {
    return dropped_queue_full + dropped_no_agent + dropped_send_error + dropped_too_large +
           dropped_closed + dropped_bad_endpoint;
  }
};

// Empty strings and empty Attrs are not sent.
struct TraceContext {
  std::string trace_id;  // empty or over 128 bytes: a new random id (32 lowercase hex)
  std::string conversation_id;
  std::string session_id;
  std::string interaction_id;
  std::string channel_id;
  Attrs metadata;  // e.g. {{"environment", "production"}}
  Attrs user;      // e.g. {{"id", "user_123"}}
};

struct StartOptions {
  std::string name;  // optional short label
  Attrs attrs;
  uint64_t ts_ns = 0;  // 0: now
};

struct EndOptions {
  bool error = false;  // status "error"; implied by a non-empty error_text
  std::string error_text;
  Attrs attrs;         // merged into the event's attributes
  uint64_t ts_ns = 0;  // 0: now
};

struct Feedback {
  std::string tag;
  std::string text;
  std::optional<double> score;  // NaN or infinite: left out
  std::string target_id;        // an event id; empty: the whole trace
  uint64_t ts_ns = 0;
};

// A whole, already finished event in one message (kind "event").
struct Finished {
  std::string type = "CUSTOM";  // MESSAGE, TOOL, GENERATION, ... or a custom name (1..128 bytes)
  Value input;
  Value output;
  int64_t latency_ms = 0;  // negative: left out (0)
  std::string name;
  std::string parent_id;
  bool error = false;
  std::string error_text;
  Attrs attrs;
  uint64_t ts_ns = 0;  // when it started; 0: now minus latency_ms
};

class Client;
class Trace;

class Event {
 public:
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event();  // ends the event if it has not ended

  // Child events. When the start cannot be built (out of memory), the Event
  // returned has already ended and sends nothing.
  Event message(Value input = {}, StartOptions opts = {}) noexcept;
  Event tool(Value input = {}, StartOptions opts = {}) noexcept;
  Event generation(Value input = {}, StartOptions opts = {}) noexcept;
  Event agent(Value input = {}, StartOptions opts = {}) noexcept;
  Event retrieval(Value input = {}, StartOptions opts = {}) noexcept;
  Event router(Value input = {}, StartOptions opts = {}) noexcept;
  Event system(Value input = {}, StartOptions opts = {}) noexcept;
  Event custom(std::string_view name, Value input = {}, StartOptions opts = {}) noexcept;
  // A finished child event in one message; returns its id (empty when it
  // could not be built).
  std::string send(Finished event) noexcept;

  // Ends the event; only the first end() or fail() is sent.
  void end(Value output = {}, EndOptions opts = {}) noexcept;
  // end() with status "error".
  void fail(std::string_view error, Value output = {}) noexcept;
  void feedback(Feedback fb) noexcept;  // target_id is this event

  const std::string& id() const { return id_; }
  const std::string& trace_id() const { return trace_id_; }
  bool ended() const { return ended_; }

 private:
  friend class Trace;
  explicit Event(Client* client) noexcept : client_(client) {}  // ended, sends nothing
  Event(Client* client, const std::string& trace_id, std::string_view type,
        std::string_view parent_id, const Value& input, const StartOptions& opts) noexcept;
  Event child(std::string_view type, const Value& input, const StartOptions& opts) noexcept;

  Client* client_ = nullptr;
  std::string trace_id_;
  std::string id_;
  bool ended_ = true;
  int uncaught_ = 0;  // std::uncaught_exceptions() when the event started
};

class Trace {
 public:
  // Sends (more) trace context; later values merge over earlier ones.
  // ctx.trace_id is not used here.
  void update(const TraceContext& ctx) noexcept;

  // Root-level events (see Event's for a start that cannot be built).
  Event message(Value input = {}, StartOptions opts = {}) noexcept;
  Event tool(Value input = {}, StartOptions opts = {}) noexcept;
  Event generation(Value input = {}, StartOptions opts = {}) noexcept;
  Event agent(Value input = {}, StartOptions opts = {}) noexcept;
  Event retrieval(Value input = {}, StartOptions opts = {}) noexcept;
  Event router(Value input = {}, StartOptions opts = {}) noexcept;
  Event system(Value input = {}, StartOptions opts = {}) noexcept;
  Event custom(std::string_view name, Value input = {}, StartOptions opts = {}) noexcept;
  std::string send(Finished event) noexcept;  // returns the event id (empty: not built)
  void feedback(Feedback fb) noexcept;

  const std::string& trace_id() const { return trace_id_; }

 private:
  friend class Client;
  friend class Event;
  Trace(Client* client, std::string trace_id) noexcept
      : client_(client), trace_id_(std::move(trace_id)) {}
  Event start(std::string_view type, const Value& input, const StartOptions& opts) noexcept;

  Client* client_;
  std::string trace_id_;
};

class Client {
 public:
  // Never throws for a bad endpoint (see Options::endpoint). If the sender
  // thread cannot be started, every message is dropped and counted in
  // internal_errors. Throws std::bad_alloc only when the client's own state
  // cannot be allocated.
  explicit Client(Options options = {});
  ~Client();  // close(options.close_timeout)
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts a trace (sends a "trace" message with the context). When even the
  // trace id cannot be allocated, the Trace returned sends nothing.
  Trace trace(const TraceContext& ctx = {}) noexcept;

  // Waits up to `timeout` until every message emitted so far has been handed
  // to the agent's socket. False on timeout, or when some were dropped
  // meanwhile (an unreachable agent makes it return at once).
  bool flush(std::chrono::milliseconds timeout) noexcept;
  // flush(timeout), then stops the sender; the rest is dropped (counted) and
  // later emits are dropped. Idempotent.
  bool close(std::chrono::milliseconds timeout) noexcept;

  Stats stats() const noexcept;
  const std::string& endpoint() const noexcept;
  bool endpoint_ok() const noexcept;

  // Queues one already-encoded protocol message (a msgpack map). Never blocks
  // on I/O, never throws; returns false if it was dropped (counted).
  bool emit(std::string message) noexcept;

  struct Impl;

 private:
  friend class Trace;
  friend class Event;
  void count_args_dropped(uint64_t n = 1) noexcept;
  void count_internal_error() noexcept;

  std::unique_ptr<Impl> impl_;
};

// 32 / 16 lowercase hex characters from a per-thread generator; empty when
// the string cannot be allocated.
std::string new_trace_id() noexcept;
std::string new_event_id() noexcept;
// Wall-clock time, ns since the Unix epoch.
uint64_t now_ns() noexcept;

}  // namespace sidetrace::client
