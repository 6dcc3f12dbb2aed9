// Upstream delivery: consumes finished trace revisions from the durable
// store's outbox and forwards them, never losing one.
//
//   * Delivery sends batches over HTTP(S) to `Options::endpoint`, retrying
//     transient failures forever by default (data waits on disk), pausing on
//     authentication failures and dead-lettering batches the upstream rejects
//     permanently. An outbox entry is acked only after a 2xx (or after it was
//     written to the dead-letter store). The neuraltrust format sends one
//     request per event and feedback item instead of one per batch.
//   * FileExporter writes each revision as one JSON line to
//     `data_dir/traces.jsonl` (rotated by size), for when no endpoint is set.
//   * deadletter_list/replay/purge operate on the dead-letter store (meta keys
//     under `upstream/deadletter/`), for the CLI.
//
// The policy (retry, ordering, formats, OTLP mapping) is documented in
// docs/upstream.md.
//
// Thread safety: every public method of Delivery and FileExporter may be called
// from any thread. Each exporter runs on its own threads between start() and
// stop(). Delivery: the network thread (st-delivery, an io_context: the
// dispatcher and one worker coroutine per batch in flight) never calls the
// store; every store call it needs runs on the store thread (st-delivery-io),
// one at a time in the order made, while the calling coroutine is suspended;
// bodies are encoded on st-encoder. stop() joins the network thread, then the
// store thread (its calls in progress and queued finish), then the encoder.
// FileExporter: one thread (st-exporter). replay_deadletters() blocks the
// caller until the replay is done. The store must outlive the exporter. Only
// one exporter may consume a store's outbox at a time.
//
// Errors: start() throws std::invalid_argument / std::runtime_error for a bad
// configuration (unparsable endpoint, unreadable CA or key file, missing API
// key); nothing else throws. Run-time failures are counted in Stats and logged
// with a rate limit. An exception inside a running exporter (a bug, an
// exhausted resource) is caught where its coroutine or thread starts, logged
// and counted in Stats::internal_errors; the work it interrupted is retried,
// and a batch that throws every time is set aside (see kExceptionTries). The
// API key is never logged.
//
// Defaults: the values the agent's configuration also has come from
// config/defaults.h, the one source of both.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "buffer/meta_store.h"
#include "buffer/outbox.h"
#include "buffer/status.h"
#include "common/clock.h"
#include "config/defaults.h"

namespace sidetrace::upstream {

enum class Format {
  kNative,       // {"traces":[documents]}
  kOtlp,         // OTLP/HTTP, in the OtlpEncoding
  kNeuralTrust,  // one request per event and feedback item, as the NeuralTrust SDK sends them
};
// The encoding of an OTLP request body: application/x-protobuf or
// application/json.
enum class OtlpEncoding { kProtobuf, kJson };
enum class Compression { kGzip, kZstd, kNone };

// Parse "native"/"otlp"/"neuraltrust", "protobuf"/"json" and
// "gzip"/"zstd"/"none"; throw std::invalid_argument.
Format parse_format(const std::string& s);
OtlpEncoding parse_otlp_encoding(const std::string& s);
Compression parse_compression(const std::string& s);

struct Options {
  // "http://host[:port][/base]" or "https://...". Requests go to
  // `{endpoint}/v1/traces` (neuraltrust: `{endpoint}/v1/trace`). Empty: use
  // the FileExporter instead.
  std::string endpoint;
  Format format = Format::kNative;
  // kOtlp only; config::defaults::kUpstreamOtlpEncoding.
  OtlpEncoding otlp_encoding = OtlpEncoding::kProtobuf;
  // Request bodies; neuraltrust bodies are never compressed (as the SDK's).
  Compression compression = Compression::kGzip;
  // gzip 1..9, zstd 1..19; low levels favour throughput
  int compression_level = config::defaults::kUpstreamCompressionLevel;

  // A batch closes at whichever comes first: this many trace documents, this
  // many document bytes, or its oldest document being this old. neuraltrust
  // makes every document a batch of its own.
  size_t batch_max_events = config::defaults::kUpstreamBatchMaxEvents;
  size_t batch_max_bytes = config::defaults::kUpstreamBatchMaxBytes;
  uint32_t flush_interval_ms = config::defaults::kUpstreamFlushIntervalMs;

  // Concurrent batches = pooled keep-alive connections.
  uint32_t max_in_flight = config::defaults::kUpstreamMaxInFlight;
  // Resolve + connect + TLS handshake.
  uint32_t connect_timeout_ms = config::defaults::kUpstreamConnectTimeoutMs;
  // Write request + read response.
  uint32_t request_timeout_ms = config::defaults::kUpstreamRequestTimeoutMs;

  // Retries: exponential backoff with full jitter between retry_initial_ms
  // and retry_max_ms. A Retry-After header is honoured up to
  // retry_after_max_ms. retry_deadline_s = 0: retry forever; otherwise a batch
  // still failing after that long goes to the dead-letter store.
  uint32_t retry_initial_ms = config::defaults::kUpstreamRetryInitialMs;
  uint32_t retry_max_ms = config::defaults::kUpstreamRetryMaxMs;
  uint32_t retry_after_max_ms = config::defaults::kUpstreamRetryAfterMaxMs;
  uint32_t retry_deadline_s = config::defaults::kUpstreamRetryDeadlineS;
  // While authentication fails (401/403) sending pauses and is probed again
  // this often (and at once on reset_auth() or update_options()).
  uint32_t auth_probe_interval_ms = config::defaults::kUpstreamAuthProbeIntervalMs;

  // TLS (https endpoints). Verification (chain and host name) is on by
  // default against the system CAs, plus `ca_file` when set. SNI is always
  // sent. `client_cert` + `client_key` (PEM) enable mutual TLS.
  std::string ca_file;
  std::string client_cert;
  std::string client_key;
  bool tls_verify = true;

  // API key from an environment variable or a file (first non-empty wins);
  // sent as "Authorization: Bearer <key>" (neuraltrust: "token: <key>"), or
  // as `<api_key_header>: <key>`.
  std::string api_key_env;
  std::string api_key_file;
  std::string api_key_header;
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers

  // Dead-letter store bounds; the oldest records are evicted (and counted).
  uint64_t deadletter_max_bytes = config::defaults::kUpstreamDeadletterMaxBytes;
  uint32_t deadletter_max_count = 10000;

  // FileExporter.
  std::string data_dir;   // traces.jsonl goes here
  std::string file_path;  // overrides data_dir/traces.jsonl when set
  // Rotate when the file reaches this size.
  uint64_t file_max_bytes = config::defaults::kExporterRotateBytes;
  // Rotated files kept: traces.jsonl.1 .. .N
  uint32_t file_keep = config::defaults::kExporterKeepFiles;
  bool print = false;  // also write every line to stdout

  // Fault injection, for tests only (the agent never sets it): Delivery calls
  // it on its encoder thread with a batch's trace ids before encoding the
  // batch; an exception it throws stands for an encoder that fails.
  std::function<void(const std::vector<std::string>& trace_ids)> encode_hook;
};

// Where an exporter caught an exception (Stats::internal_errors).
enum class Stage : size_t {
  kDispatch,  // Delivery: forming batches, and the other work of its io thread
  kEncode,    // Delivery: encoding and compressing a request body
  kSend,      // Delivery: sending a batch, its outcome, acknowledging it
  kFile,      // FileExporter: writing and acknowledging lines
  kCount_
};
inline constexpr size_t kStageCount = static_cast<size_t>(Stage::kCount_);
// "upstream_dispatch", "upstream_encode", "upstream_send", "file_exporter".
std::string_view stage_name(Stage s);

// A single-document batch whose delivery throws this many times is
// dead-lettered with the exception as its reason; a batch of several
// documents is split in halves at its first exception, so that a document
// that throws ends up alone and its neighbours are delivered.
inline constexpr uint32_t kExceptionTries = 3;

// Delivery-latency histogram bucket upper bounds (emitted_ns -> ack), in ms;
// the last bucket is unbounded.
inline constexpr std::array<uint64_t, 12> kLatencyBoundsMs = {
    1, 5, 10, 50, 100, 250, 500, 1000, 5000, 10000, 60000, UINT64_MAX};

struct Stats {
  uint64_t batches_sent = 0;     // batches acknowledged with 2xx (or written by the file exporter)
  uint64_t requests_sent = 0;    // requests answered 2xx (neuraltrust: one per event and feedback)
  uint64_t batches_retried = 0;  // retry attempts (any retryable outcome)
  // attempts that failed: connection, timeout, and the retryable statuses of
  // the format (docs/upstream.md)
  uint64_t failed_retryable = 0;
  uint64_t failed_too_large = 0;  // 413 responses
  uint64_t failed_auth = 0;       // 401/403 responses
  uint64_t failed_permanent = 0;  // refusals that are not retried (dead-lettered or split)
  uint64_t batches_split = 0;     // 413 batches split in halves; neuraltrust: into single documents
  uint64_t documents_truncated = 0;  // documents (neuraltrust: requests) truncated after 413
  uint64_t traces_delivered = 0;     // trace documents acked
  uint64_t events_delivered = 0;     // events inside those documents (neuraltrust: events sent)
  uint64_t bytes_sent = 0;          // request body bytes (after compression) of successful requests
  uint64_t deadlettered = 0;        // trace documents moved to the dead-letter store
  uint64_t deadletter_evicted = 0;  // dead-letter records evicted by the bounds
  uint64_t dropped = 0;             // trace documents lost (only by dead-letter eviction)
  uint64_t spans_rejected = 0;      // OTLP partial_success rejected_spans (logged, not retried)
  uint64_t in_flight = 0;           // batches currently being sent or waiting to retry
  std::array<uint64_t, kStageCount> internal_errors{};              // exceptions caught, by Stage
  bool auth_failed = false;                                         // sending is paused on 401/403
  double seconds_since_success = -1;                                // -1: never succeeded
  std::array<uint64_t, kLatencyBoundsMs.size()> latency_buckets{};  // non-cumulative counts
  uint64_t latency_sum_ms = 0;
  uint64_t latency_count = 0;
};

// Hears how many dead-letter records a replay or purge has done so far, after
// each page of records (on the thread doing the work; keep it quick).
using DeadLetterProgress = std::function<void(size_t done)>;

// Something that consumes the outbox: Delivery or FileExporter.
class Exporter {
 public:
  virtual ~Exporter() = default;
  // Starts the exporter thread. Throws on a bad configuration.
  virtual void start() = 0;
  // Stops and joins the thread. Unacked work stays in the store and is
  // resumed by the next start (with the same idempotency keys). Idempotent.
  virtual void stop() = 0;
  virtual Stats stats() const = 0;
  // Leaves the auth_failed pause and probes the upstream at once.
  virtual void reset_auth() = 0;
  // Applies a reloaded configuration (connections are re-established).
  // Throws like start() on a bad configuration, keeping the old one.
  virtual void update_options(const Options& options) = 0;
};

class Delivery final : public Exporter {
 public:
  // Borrows `outbox` (what it delivers), `meta` (its batch records and dead
  // letters) and `clock`; they must outlive it.
  Delivery(buffer::Outbox& outbox, buffer::MetaStore& meta, Options options,
           const Clock& clock = system_clock());
  ~Delivery() override;  // stops
  Delivery(const Delivery&) = delete;
  Delivery& operator=(const Delivery&) = delete;

  void start() override;
  void stop() override;
  Stats stats() const override;
  void reset_auth() override;
  void update_options(const Options& options) override;
  // Moves every dead-letter record back into delivery (as new batches).
  // Returns the number of records replayed; `progress` (if set) hears the
  // count after each page, and `error` (if given) gets why a replay stopped
  // early ("" when it did not).
  size_t replay_deadletters(const DeadLetterProgress& progress = {}, std::string* error = nullptr);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

class FileExporter final : public Exporter {
 public:
  FileExporter(buffer::Outbox& store, Options options, const Clock& clock = system_clock());
  ~FileExporter() override;
  FileExporter(const FileExporter&) = delete;
  FileExporter& operator=(const FileExporter&) = delete;

  void start() override;  // throws std::runtime_error when the file cannot be opened
  void stop() override;
  Stats stats() const override;
  void reset_auth() override {}
  void update_options(const Options& options) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Delivery when options.endpoint is set, FileExporter otherwise.
std::unique_ptr<Exporter> make_exporter(buffer::Outbox& outbox, buffer::MetaStore& meta,
                                        const Options& options,
                                        const Clock& clock = system_clock());

// ---- dead-letter store (meta keys "upstream/deadletter/<id>") -------------

struct DeadLetter {
  std::string id;       // record id (the part of the key after the prefix)
  uint64_t ts_ns = 0;   // when it was dead-lettered
  int http_status = 0;  // the response that caused it (0: retry deadline)
  std::string reason;   // short text: status line or error
  size_t traces = 0;    // trace documents in the record
  size_t bytes = 0;     // document bytes
  std::vector<std::string> trace_ids;
};

// Lists up to `limit` records, oldest first, from the one after the record
// id `after` (from the oldest when empty). The store is read a few records at
// a time: what this holds is the summaries, never the documents.
buffer::Status deadletter_list(buffer::MetaStore& store, std::vector<DeadLetter>* out,
                               size_t limit = SIZE_MAX, std::string_view after = {});
// How many records the dead-letter store holds, and their bytes (kept beside
// the records, not counted at each call).
buffer::Status deadletter_stats(buffer::MetaStore& store, uint64_t* count, uint64_t* bytes);
// Turns every record into a pending delivery batch (meta "upstream/batch/")
// with a new idempotency key and deletes it; a running Delivery picks these up
// at its next start (use Delivery::replay_deadletters() while it runs).
buffer::Status deadletter_replay(buffer::MetaStore& store, size_t* replayed,
                                 const DeadLetterProgress& progress = {});
// Deletes every record.
buffer::Status deadletter_purge(buffer::MetaStore& store, size_t* purged,
                                const DeadLetterProgress& progress = {});

}  // namespace sidetrace::upstream
