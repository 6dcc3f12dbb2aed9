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
// - Nothing here blocks on the network or throws on the emitting path: each
//   event is encoded on the caller's thread and queued (bounded, drop-newest,
//   counted); one background thread per Client writes to a non-blocking socket
//   and reconnects with backoff. What cannot be delivered is dropped and
//   counted in Client::stats(). Only Value's generic constructor can throw, if
//   a user-supplied msgpack adaptor throws.
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
class Value {
 public:
  Value() = default;
  Value(std::string_view text);
  Value(const char* text) : Value(std::string_view(text)) {}
  Value(const std::string& text) : Value(std::string_view(text)) {}
  Value(bool b);
  Value(double d);
  // Any type msgpack-cxx can pack (integers, containers, maps, user adaptors).
  template <class T, class = std::enable_if_t<!std::is_convertible_v<const T&, std::string_view> &&
                                              !std::is_same_v<std::decay_t<T>, Value>>>
  Value(const T& v) {
    Sink sink{&bytes_};
    msgpack::pack(sink, v);
  }
  // Already-encoded msgpack bytes (exactly one value).
  static Value raw(std::string msgpack_bytes);

  bool empty() const { return bytes_.empty(); }
  const std::string& bytes() const { return bytes_; }

 private:
  struct Sink {
    std::string* out;
    void write(const char* p, size_t n) { out->append(p, n); }
  };
  std::string bytes_;
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
  std::string trace_id;  // empty: a new random id (32 lowercase hex)
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
  std::optional<double> score;
  std::string target_id;  // an event id; empty: the whole trace
  uint64_t ts_ns = 0;
};

// A whole, already finished event in one message (kind "event").
struct Finished {
  std::string type = "CUSTOM";  // MESSAGE, TOOL, GENERATION, ... or a custom name
  Value input;
  Value output;
  int64_t latency_ms = 0;
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

  // Child events.
  Event message(Value input = {}, StartOptions opts = {});
  Event tool(Value input = {}, StartOptions opts = {});
  Event generation(Value input = {}, StartOptions opts = {});
  Event agent(Value input = {}, StartOptions opts = {});
  Event retrieval(Value input = {}, StartOptions opts = {});
  Event router(Value input = {}, StartOptions opts = {});
  Event system(Value input = {}, StartOptions opts = {});
  Event custom(std::string_view name, Value input = {}, StartOptions opts = {});
  // A finished child event in one message; returns its id.
  std::string send(Finished event);

  // Ends the event; only the first end() or fail() is sent.
  void end(Value output = {}, EndOptions opts = {});
  // end() with status "error".
  void fail(std::string_view error, Value output = {});
  void feedback(Feedback fb);  // target_id is this event

  const std::string& id() const { return id_; }
  const std::string& trace_id() const { return trace_id_; }
  bool ended() const { return ended_; }

 private:
  friend class Trace;
  Event(Client* client, std::string trace_id, std::string_view type, std::string_view parent_id,
        const Value& input, const StartOptions& opts);
  Event child(std::string_view type, const Value& input, const StartOptions& opts);

  Client* client_ = nullptr;
  std::string trace_id_;
  std::string id_;
  bool ended_ = true;
  int uncaught_ = 0;  // std::uncaught_exceptions() when the event started
};

class Trace {
 public:
  // Sends (more) trace context; later values merge over earlier ones.
  void update(const TraceContext& ctx);

  // Root-level events.
  Event message(Value input = {}, StartOptions opts = {});
  Event tool(Value input = {}, StartOptions opts = {});
  Event generation(Value input = {}, StartOptions opts = {});
  Event agent(Value input = {}, StartOptions opts = {});
  Event retrieval(Value input = {}, StartOptions opts = {});
  Event router(Value input = {}, StartOptions opts = {});
  Event system(Value input = {}, StartOptions opts = {});
  Event custom(std::string_view name, Value input = {}, StartOptions opts = {});
  std::string send(Finished event);  // returns the event id
  void feedback(Feedback fb);

  const std::string& trace_id() const { return trace_id_; }

 private:
  friend class Client;
  friend class Event;
  Trace(Client* client, std::string trace_id) : client_(client), trace_id_(std::move(trace_id)) {}
  Event start(std::string_view type, const Value& input, const StartOptions& opts);

  Client* client_;
  std::string trace_id_;
};

class Client {
 public:
  // Never throws for a bad endpoint (see Options::endpoint); throws
  // std::system_error only if the sender thread cannot be started.
  explicit Client(Options options = {});
  ~Client();  // close(options.close_timeout)
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Starts a trace (sends a "trace" message with the context).
  Trace trace(const TraceContext& ctx = {});

  // Waits up to `timeout` until every message emitted so far has been handed
  // to the agent's socket. False on timeout, or when some were dropped
  // meanwhile (an unreachable agent makes it return at once).
  bool flush(std::chrono::milliseconds timeout);
  // flush(timeout), then stops the sender; the rest is dropped (counted) and
  // later emits are dropped. Idempotent.
  bool close(std::chrono::milliseconds timeout);

  Stats stats() const;
  const std::string& endpoint() const;
  bool endpoint_ok() const;

  // Queues one already-encoded protocol message (a msgpack map). Never blocks
  // on I/O, never throws; returns false if it was dropped (counted).
  bool emit(std::string message) noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// 32 / 16 lowercase hex characters from a per-thread generator.
std::string new_trace_id();
std::string new_event_id();
// Wall-clock time, ns since the Unix epoch.
uint64_t now_ns();

}  // namespace sidetrace::client
