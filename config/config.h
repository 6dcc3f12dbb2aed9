// The agent's configuration: one TOML file, environment overrides and
// command-line overrides, applied in that order over built-in defaults
// (precedence: command line > environment > file > defaults).
//
// Every key has one descriptor (name, type, range, whether it is secret); the
// file, the environment (`SIDETRACE_<SECTION>_<KEY>`, or `SIDETRACE_<KEY>` for
// top-level keys) and `--set section.key=value` all go through it, so a key
// is checked the same way wherever it comes from.
//
// Errors are reported as ConfigError exceptions (configuration is read only
// at start-up and on reload); the message names the source, the line when the
// source is a file, and the key.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/defaults.h"

namespace sidetrace::config {

struct Config {
  std::string data_dir = "/var/lib/sidetrace";

  struct Listen {
    std::string unix_stream = "/run/sidetrace/agent.sock";  // "" disables
    std::string unix_dgram = "/run/sidetrace/agent.dgram.sock";
    std::string udp = "127.0.0.1:7717";
    uint32_t socket_mode = 0660;
    uint64_t rcvbuf_bytes = 8ull << 20;
    uint64_t max_message_bytes = 1ull << 20;
    int64_t max_connections = 1024;
    // After a read that found only a few messages, the next read of that
    // datagram socket waits up to this long (shorter when messages come
    // fast enough to fill a read sooner), so that one wake-up of the receive
    // thread takes several messages at an everyday load. 0 = read as soon as
    // anything arrives.
    int64_t read_delay_ms = 2;
    // The same for a stream connection, after a read that did not fill its
    // buffer; shorter when its sender would fill half of its socket buffer
    // sooner (it waits, or drops what it writes, once the buffer is full).
    // At 2,000 msg/s a wake-up reads about 40 messages, not 4. A sender that
    // speeds up at once may still fill its buffer within this delay: 20 ms
    // leaves room up to 8,000 writes a second of 450 bytes.
    int64_t stream_read_delay_ms = 20;
    // What partly received stream messages may hold in all, beyond each
    // connection's 64 KiB read buffer; a message that does not fit is dropped
    // (counted, reason no_memory). At least max_message_bytes.
    uint64_t max_partial_bytes = 16ull << 20;
    // A stream connection that sends nothing for this long is closed; 0 = never.
    int64_t idle_timeout_s = 3600;
    // OTLP/HTTP: POST /v1/traces on "HOST:PORT"; "" disables it.
    std::string otlp_http = defaults::kListenOtlpHttp;
    // Larger request bodies (as sent, or once inflated) are answered 413.
    uint64_t otlp_max_body_bytes = defaults::kOtlpMaxBodyBytes;
    // Requests whose bodies were read and that wait for their answer (for
    // the store), and the bytes they hold; beyond either, requests are
    // answered 429. At least otlp_max_body_bytes.
    int64_t otlp_max_pending_requests = defaults::kOtlpMaxPendingRequests;
    uint64_t otlp_max_pending_bytes = defaults::kOtlpMaxPendingBytes;
    // Host names accepted in an OTLP/HTTP request's Host header besides
    // loopback names and addresses, the address the request came in on and
    // otlp_http's own host; ".example.com" also accepts its subdomains.
    std::vector<std::string> otlp_allowed_hosts;
  } listen;

  struct Intake {
    uint64_t queue_bytes = 8ull << 20;  // decoded messages waiting for the store
  } intake;

  struct Admin {
    std::string listen = "127.0.0.1:7718";  // "" disables
    // Required as "Authorization: Bearer <token>" by every admin request but
    // /healthz, /readyz and the viewer's page; "" = none, which only a
    // loopback `listen` allows. Or read from `token_file` (one of the two).
    std::string token;
    std::string token_file;
    // Host names accepted in the Host header besides loopback names and
    // addresses; ".example.com" also accepts its subdomains.
    std::vector<std::string> allowed_hosts;
  } admin;

  struct Upstream {
    // "" = no upstream: the local file exporter; with format "neuraltrust",
    // the NeuralTrust SDK's default (see upstream_endpoint()).
    std::string endpoint;
    std::string format = "native";                                // native, otlp or neuraltrust
    std::string otlp_encoding = defaults::kUpstreamOtlpEncoding;  // with format "otlp"
    std::string compression = "gzip";
    std::string api_key_env;
    std::string api_key_file;
    std::string api_key_header;  // "" = Authorization: Bearer <key> (neuraltrust: token: <key>)
    std::map<std::string, std::string> headers;
    std::string ca_file;
    std::string client_cert;
    std::string client_key;
    bool tls_verify = true;
    // Defaults in config/defaults.h, shared with upstream::Options.
    int64_t batch_max_events = defaults::kUpstreamBatchMaxEvents;
    uint64_t batch_max_bytes = defaults::kUpstreamBatchMaxBytes;
    int64_t flush_interval_ms = defaults::kUpstreamFlushIntervalMs;
    int64_t max_in_flight = defaults::kUpstreamMaxInFlight;
    int64_t connect_timeout_ms = defaults::kUpstreamConnectTimeoutMs;
    int64_t request_timeout_ms = defaults::kUpstreamRequestTimeoutMs;
    int64_t retry_initial_ms = defaults::kUpstreamRetryInitialMs;
    int64_t retry_max_ms = defaults::kUpstreamRetryMaxMs;
    // 0 = retry for as long as the quota allows
    int64_t retry_deadline_s = defaults::kUpstreamRetryDeadlineS;
    int64_t retry_after_max_ms = defaults::kUpstreamRetryAfterMaxMs;
    int64_t auth_probe_interval_ms = defaults::kUpstreamAuthProbeIntervalMs;
    int64_t compression_level = defaults::kUpstreamCompressionLevel;
    uint64_t deadletter_max_bytes = defaults::kUpstreamDeadletterMaxBytes;
  } upstream;

  struct Trace {
    int64_t quiet_period_ms = defaults::kTraceQuietPeriodMs;
    int64_t max_open_s = defaults::kTraceMaxOpenS;
    int64_t retain_s = defaults::kTraceRetainS;
    int64_t max_open_traces = defaults::kTraceMaxOpenTraces;
    // A trace whose unsent messages pass either bound goes out in numbered
    // parts, each holding only its own messages (docs/trace-document.md).
    int64_t max_events = defaults::kTraceMaxEvents;
    uint64_t max_bytes = defaults::kTraceMaxBytes;
  } trace;

  struct Buffer {
    uint64_t max_bytes = 2ull << 30;
    std::string sync = "fsync";
    // How long the first message of a group commit may wait for others to
    // join it, unless `commit_bytes` of messages are in hand first: each
    // commit (one write and one sync) costs the same few hundred us of CPU
    // whatever it carries, so at an everyday load one commit should carry
    // many messages. 0 = commit at once.
    int64_t commit_delay_ms = defaults::kBufferCommitDelayMs;
    uint64_t commit_bytes = defaults::kBufferCommitBytes;
    std::string when_full = "drop_oldest";
  } buffer;

  struct Exporter {
    std::string file;  // "" = data_dir/traces.jsonl
    uint64_t rotate_bytes = defaults::kExporterRotateBytes;
    int64_t keep_files = defaults::kExporterKeepFiles;
    bool print = false;  // also print each finished trace to stdout
  } exporter;

  struct Log {
    std::string level = "info";
  } log;

  // Redaction, applied before anything is stored (docs/redaction.md).
  struct RedactRule {
    std::string name;
    std::string pattern;      // a regular expression
    std::string replacement;  // "" = "[REDACTED:<name>]"
    bool operator==(const RedactRule&) const = default;
  };
  struct Redact {
    std::vector<std::string> detectors;  // api_keys, bearer_tokens, emails, card_numbers
    std::vector<std::string> fields = {"input", "output", "attrs", "metadata", "error", "text"};
    uint64_t max_field_bytes = 0;  // 0 = no limit
    std::vector<RedactRule> rules;
  } redact;
};

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Reads `path` over `config`. Throws ConfigError on a missing or unparsable
// file, an unknown key, a wrong type or an out-of-range value.
void apply_file(Config& config, const std::string& path);

// Reads TOML `text` over `config`, exactly as apply_file() reads a file;
// `source_name` stands for the file name in error messages. Throws ConfigError.
void apply_toml_string(Config& config, std::string_view text, std::string_view source_name);

// Applies every `SIDETRACE_<SECTION>_<KEY>` variable of `environ`-style
// "NAME=value" entries that names a key. Variables that name no key are
// ignored (they belong to emitters or tools). Throws ConfigError on a bad value.
void apply_env(Config& config, const std::vector<std::string>& environment);

// The process environment, as apply_env() takes it.
std::vector<std::string> process_environment();

// Applies one "section.key=value" override (from `--set`). Throws ConfigError.
void apply_override(Config& config, std::string_view assignment);

// Sets one key from its text form (as the environment and `--set` give it).
// `source` names where the value came from, for the error message.
void set_value(Config& config, std::string_view key, std::string_view value,
               std::string_view source);

// Checks relations between keys that no single key can (e.g. retry_initial_ms
// <= retry_max_ms; an admin.listen beyond loopback needs admin.token). Throws
// ConfigError.
void validate(const Config& config);

// The endpoint delivery sends to: upstream.endpoint, or for format
// "neuraltrust" without one, defaults::kNeuralTrustEndpoint (as the SDK,
// whose traces it forwards). "" = none: the local file exporter.
std::string upstream_endpoint(const Config& config);

// The admin token: admin.token, or the contents of admin.token_file
// (surrounding whitespace trimmed); "" when neither is set. Reads the file
// on every call. Throws ConfigError naming admin.token_file when it cannot
// be read or does not hold a valid token.
std::string admin_token(const Config& config);

// Whether the host of "host:port" (admin.listen) is a loopback name or
// address: localhost, 127.0.0.0/8, ::1.
bool is_loopback_listen(std::string_view host_port);

// The effective configuration as TOML, with secrets masked.
std::string to_toml(const Config& config, bool mask_secrets = true);

// Every key name, "section.key" (or "key" at the top level), in file order.
std::vector<std::string> key_names();

// Keys whose new value only takes effect after a restart.
bool needs_restart(std::string_view key);

// The keys whose values differ between `a` and `b`.
std::vector<std::string> changed_keys(const Config& a, const Config& b);

// Parses "2GiB", "512MiB", "64k", "1000" (bytes). Returns nullopt if invalid.
std::optional<uint64_t> parse_size(std::string_view text);

// Loads defaults, then `file` (if not empty), then the environment, then the
// overrides, and validates the result.
Config load(const std::string& file, const std::vector<std::string>& environment,
            const std::vector<std::string>& overrides);

}  // namespace sidetrace::config
