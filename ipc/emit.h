// Emitting protocol-v1 messages: endpoint parsing, a non-blocking sender, and
// the `sidetrace emit` command.
//
// Endpoints: `unix://PATH` (stream), `unixgram://PATH` (datagram),
// `udp://HOST:PORT`; from an explicit string or SIDETRACE_ENDPOINT, else
// kDefaultEndpoint.
//
// The sender never blocks the caller for long and never throws: when no agent
// listens, or its socket buffer stays full past `send_timeout`, the message
// is dropped and counted. A stream connection is never left with half a
// message: if the rest of a partly written message cannot be sent in time the
// connection is closed (and reopened on the next send).
//
// Thread safety: a Sender is for one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace sidetrace::ipc {

inline constexpr std::string_view kDefaultEndpoint = "unix:///run/sidetrace/agent.sock";
inline constexpr const char* kEndpointEnv = "SIDETRACE_ENDPOINT";

struct Endpoint {
  enum class Type { kUnixStream, kUnixDgram, kUdp };
  Type type = Type::kUdp;
  std::string path;  // unix / unixgram
  std::string host;  // udp
  uint16_t port = 0;
};

// Parses one of the three URL forms. Returns false with `err` set otherwise.
bool parse_endpoint(std::string_view url, Endpoint* out, std::string* err);

// `explicit_url` if not empty, else $SIDETRACE_ENDPOINT if set, else the default.
std::string endpoint_url(std::string_view explicit_url);

class Sender {
 public:
  virtual ~Sender() = default;
  // Never fails: connecting happens lazily on send().
  static std::unique_ptr<Sender> create(
      const Endpoint& ep, std::chrono::milliseconds send_timeout = std::chrono::milliseconds(1000));
  // Sends one message (or, for datagram endpoints, one datagram holding
  // several whole messages). Returns false when it was dropped.
  virtual bool send(std::string_view msgpack) = 0;
  virtual uint64_t sent() const = 0;
  virtual uint64_t dropped() const = 0;
  // The reason of the last drop, for diagnostics.
  virtual const std::string& last_error() const = 0;
};

// Options of `sidetrace emit`; every field maps to one CLI flag.
struct EmitOptions {
  std::string endpoint;     // --endpoint; empty: SIDETRACE_ENDPOINT, else the default
  bool json_lines = false;  // --stdin: read one JSON object per line from `in`
  // One message from flags (when json_lines is false):
  std::string kind = "event";                        // --kind
  std::string trace_id;                              // --trace-id (required)
  std::string id, parent_id, type, name;             // --id --parent-id --type --name
  std::optional<std::string> input, output;          // --input --output: text...
  bool json_values = false;                          // --json: ...or JSON, for input/output
  std::string status;                                // --status ok|error
  std::string error;                                 // --error
  std::optional<uint64_t> ts_ns, end_ts_ns;          // --ts --end-ts (ns since the epoch)
  std::optional<int64_t> latency_ms;                 // --latency-ms
  std::string attrs_json;                            // --attrs '{"model":"x"}'
  std::string conversation_id, session_id, user_id;  // kind trace
  std::string tag, text, target_id;                  // kind feedback
  std::optional<double> score;
  std::chrono::milliseconds send_timeout{1000};
};

// Runs `sidetrace emit`. Every message is validated (decode_event) before it
// is sent. JSON lines: a missing "v" defaults to 1; "ts"/"end_ts" are int ns.
// Exit codes: 0 all sent; 2 bad input (nothing after the bad line is sent;
// the error names the line); 3 messages dropped (agent absent or too slow).
// Diagnostics go to `err`.
int run_emit(const EmitOptions& options, std::istream& in, std::ostream& err);
int run_emit(const EmitOptions& options, std::istream& in);

}  // namespace sidetrace::ipc
