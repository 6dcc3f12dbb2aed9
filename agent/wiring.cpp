#include "agent/wiring.h"

#include <fmt/format.h>

#include "agent/metrics.h"
#include "buffer/store.h"
#include "buffer/writer.h"
#include "common/thread.h"

namespace sidetrace::agent {

buffer::StoreOptions store_options(const config::Config& c) {
  buffer::StoreOptions o;
  o.data_dir = c.data_dir;
  o.max_bytes = c.buffer.max_bytes;
  o.sync = c.buffer.sync == "os" ? buffer::SyncMode::kOs : buffer::SyncMode::kFsync;
  o.when_full = c.buffer.when_full == "drop_newest" ? buffer::WhenFull::kDropNewest
                                                    : buffer::WhenFull::kDropOldest;
  return o;
}

trace::AssemblerOptions assembler_options(const config::Config& c) {
  trace::AssemblerOptions o;
  o.quiet_period = std::chrono::milliseconds(c.trace.quiet_period_ms);
  o.max_open = std::chrono::seconds(c.trace.max_open_s);
  o.retain = std::chrono::seconds(c.trace.retain_s);
  o.max_open_traces = static_cast<size_t>(c.trace.max_open_traces);
  o.max_trace_events = static_cast<size_t>(c.trace.max_events);
  o.max_trace_bytes = static_cast<size_t>(c.trace.max_bytes);
  // Wake often enough that a short quiet period is honoured promptly.
  o.tick = std::chrono::milliseconds(std::clamp<int64_t>(c.trace.quiet_period_ms / 4, 5, 100));
  return o;
}

upstream::Options upstream_options(const config::Config& c) {
  upstream::Options o;
  const auto& u = c.upstream;
  o.endpoint = config::upstream_endpoint(c);
  o.format = upstream::parse_format(u.format);
  o.otlp_encoding = upstream::parse_otlp_encoding(u.otlp_encoding);
  o.compression = upstream::parse_compression(u.compression);
  o.batch_max_events = static_cast<size_t>(u.batch_max_events);
  o.batch_max_bytes = static_cast<size_t>(u.batch_max_bytes);
  o.flush_interval_ms = static_cast<uint32_t>(u.flush_interval_ms);
  o.max_in_flight = static_cast<uint32_t>(u.max_in_flight);
  o.connect_timeout_ms = static_cast<uint32_t>(u.connect_timeout_ms);
  o.request_timeout_ms = static_cast<uint32_t>(u.request_timeout_ms);
  o.retry_initial_ms = static_cast<uint32_t>(u.retry_initial_ms);
  o.retry_max_ms = static_cast<uint32_t>(u.retry_max_ms);
  o.retry_deadline_s = static_cast<uint32_t>(u.retry_deadline_s);
  o.retry_after_max_ms = static_cast<uint32_t>(u.retry_after_max_ms);
  o.auth_probe_interval_ms = static_cast<uint32_t>(u.auth_probe_interval_ms);
  o.compression_level = static_cast<int>(u.compression_level);
  o.ca_file = u.ca_file;
  o.client_cert = u.client_cert;
  o.client_key = u.client_key;
  o.tls_verify = u.tls_verify;
  o.api_key_env = u.api_key_env;
  o.api_key_file = u.api_key_file;
  o.api_key_header = u.api_key_header;
  o.headers.assign(u.headers.begin(), u.headers.end());
  o.deadletter_max_bytes = u.deadletter_max_bytes;
  o.data_dir = c.data_dir;
  o.file_path = c.exporter.file;
  o.file_max_bytes = c.exporter.rotate_bytes;
  o.file_keep = static_cast<uint32_t>(c.exporter.keep_files);
  o.print = c.exporter.print;
  return o;
}

ipc::IntakeOptions intake_options(const config::Config& c) {
  ipc::IntakeOptions o;
  o.unix_stream = c.listen.unix_stream;
  o.unix_dgram = c.listen.unix_dgram;
  o.udp = c.listen.udp;
  o.socket_mode = c.listen.socket_mode;
  o.rcvbuf_bytes = static_cast<int>(c.listen.rcvbuf_bytes);
  o.limits.max_message_bytes = c.listen.max_message_bytes;
  o.max_connections = static_cast<size_t>(c.listen.max_connections);
  o.read_delay = std::chrono::milliseconds(c.listen.read_delay_ms);
  o.stream_read_delay = std::chrono::milliseconds(c.listen.stream_read_delay_ms);
  o.max_partial_bytes = c.listen.max_partial_bytes;
  o.idle_timeout = std::chrono::seconds(c.listen.idle_timeout_s);
  return o;
}

ipc::OtlpHttpOptions otlp_http_options(const config::Config& c) {
  ipc::OtlpHttpOptions o;
  o.listen = c.listen.otlp_http;
  o.allowed_hosts = c.listen.otlp_allowed_hosts;
  o.max_body_bytes = c.listen.otlp_max_body_bytes;
  o.max_pending_requests = static_cast<size_t>(c.listen.otlp_max_pending_requests);
  o.max_pending_bytes = c.listen.otlp_max_pending_bytes;
  o.max_connections = static_cast<size_t>(c.listen.max_connections);
  o.limits.max_message_bytes = c.listen.max_message_bytes;
  return o;
}

std::shared_ptr<const ipc::Redactor> make_redactor(const config::Config& c) {
  const auto& r = c.redact;
  if (r.detectors.empty() && r.rules.empty() && r.max_field_bytes == 0) return nullptr;
  ipc::RedactOptions o;
  o.detectors = r.detectors;
  o.fields = r.fields;
  o.max_field_bytes = r.max_field_bytes;
  for (const auto& rule : r.rules)
    o.rules.push_back({rule.name, rule.pattern, rule.replacement});
  std::string error;
  auto redactor = ipc::Redactor::create(o, &error);
  if (!redactor) throw config::ConfigError("redact: " + error);
  return redactor;
}

namespace {

constexpr std::array<ipc::Transport, 3> kTransports = {
    ipc::Transport::kUnixStream, ipc::Transport::kUnixDgram, ipc::Transport::kUdp};

void intake_metrics(MetricsWriter& w, const ipc::Intake& intake) {
  const ipc::IntakeStats& st = intake.stats();
  auto per_transport = [&](std::string_view name, std::string_view type, std::string_view help,
                           auto field) {
    w.family(name, type, help);
    for (auto t : kTransports) {
      w.sample(name, static_cast<uint64_t>(field(st.of(t))),
               {{"transport", ipc::transport_name(t)}});
    }
  };
  using TS = ipc::TransportStats;
  per_transport("sidetrace_received_messages_total", "counter", "Messages received.",
                [](const TS& s) { return s.received.load(); });
  per_transport("sidetrace_accepted_messages_total", "counter",
                "Messages validated and queued for the store.",
                [](const TS& s) { return s.accepted.load(); });
  w.family("sidetrace_rejected_messages_total", "counter",
           "Messages refused by validation, by reason.");
  for (auto t : kTransports) {
    for (size_t r = 0; r < static_cast<size_t>(ipc::Reject::kCount_); ++r) {
      w.sample("sidetrace_rejected_messages_total", st.of(t).rejected[r].load(),
               {{"transport", ipc::transport_name(t)},
                {"reason", ipc::reject_name(static_cast<ipc::Reject>(r))}});
    }
  }
  per_transport("sidetrace_received_bytes_total", "counter", "Bytes read from the sockets.",
                [](const TS& s) { return s.bytes.load(); });
  per_transport("sidetrace_intake_queue_full_drops_total", "counter",
                "Valid messages dropped because the store's queue was full.",
                [](const TS& s) { return s.queue_full_drops.load(); });
  per_transport("sidetrace_intake_backpressure_pauses_total", "counter",
                "Stream reads paused because the store's queue was full.",
                [](const TS& s) { return s.backpressure_pauses.load(); });
  per_transport("sidetrace_kernel_drops_total", "counter",
                "Datagrams the kernel dropped before the agent read them.",
                [](const TS& s) { return s.kernel_drops.load(); });
  per_transport("sidetrace_connections_open", "gauge", "Open stream connections.",
                [](const TS& s) { return s.connections_open.load(); });
  per_transport("sidetrace_connections_closed_garbage_total", "counter",
                "Stream connections closed for bytes that are not msgpack.",
                [](const TS& s) { return s.closed_garbage.load(); });
  per_transport("sidetrace_connections_total", "counter", "Stream connections accepted.",
                [](const TS& s) { return s.connections_total.load(); });
  per_transport("sidetrace_connections_closed_idle_total", "counter",
                "Stream connections closed after listen.idle_timeout_s without data.",
                [](const TS& s) { return s.closed_idle.load(); });
  per_transport("sidetrace_connections_refused_total", "counter",
                "Stream connections closed at once because listen.max_connections were open.",
                [](const TS& s) { return s.connections_refused.load(); });
  per_transport("sidetrace_received_datagrams_total", "counter",
                "Datagrams read (datagram transports).",
                [](const TS& s) { return s.datagrams.load(); });
  per_transport(
      "sidetrace_intake_reads_total", "counter",
      "Socket reads that returned data: a recvmmsg() batch of datagrams, or a stream read.",
      [](const TS& s) { return s.reads.load(); });
  per_transport("sidetrace_intake_linger_reads_total", "counter",
                "Of those, reads made when a linger ended: the senders' writes meanwhile woke "
                "nothing.",
                [](const TS& s) { return s.linger_reads.load(); });
  per_transport("sidetrace_read_errors_total", "counter",
                "Socket read errors other than a normal close.",
                [](const TS& s) { return s.read_errors.load(); });
}

void otlp_http_metrics(MetricsWriter& w, const ipc::OtlpHttpStats& st) {
  w.family("sidetrace_otlp_requests_total", "counter",
           "OTLP/HTTP export requests, by how they were answered.");
  for (size_t o = 0; o < static_cast<size_t>(ipc::OtlpOutcome::kCount_); ++o) {
    w.sample("sidetrace_otlp_requests_total", st.requests[o].load(),
             {{"outcome", ipc::otlp_outcome_name(static_cast<ipc::OtlpOutcome>(o))}});
  }
  w.family("sidetrace_otlp_received_spans_total", "counter",
           "Spans in OTLP/HTTP requests that decoded.");
  w.sample("sidetrace_otlp_received_spans_total", st.spans_received.load());
  w.family("sidetrace_otlp_spans_total", "counter",
           "OTLP spans by outcome: stored (durable, acknowledged), rejected (failed validation, "
           "reported as partial success), refused (in requests answered 429 or 503).");
  w.sample("sidetrace_otlp_spans_total", st.spans_stored.load(), {{"outcome", "stored"}});
  w.sample("sidetrace_otlp_spans_total", st.spans_rejected.load(), {{"outcome", "rejected"}});
  w.sample("sidetrace_otlp_spans_total", st.spans_refused.load(), {{"outcome", "refused"}});
  w.family("sidetrace_otlp_received_bytes_total", "counter",
           "OTLP/HTTP request bodies, as sent (compressed or not).");
  w.sample("sidetrace_otlp_received_bytes_total", st.bytes.load());
  w.family("sidetrace_otlp_pending_requests", "gauge",
           "OTLP/HTTP requests read and not yet answered (waiting for the store).");
  w.sample("sidetrace_otlp_pending_requests", st.pending_requests.load());
  w.family("sidetrace_otlp_pending_bytes", "gauge", "Bytes those requests hold.");
  w.sample("sidetrace_otlp_pending_bytes", st.pending_bytes.load());
  w.family("sidetrace_otlp_queue_waits_total", "counter",
           "OTLP/HTTP requests that waited for room in the intake queue.");
  w.sample("sidetrace_otlp_queue_waits_total", st.queue_waits.load());
  w.family("sidetrace_otlp_connections_open", "gauge", "Open OTLP/HTTP connections.");
  w.sample("sidetrace_otlp_connections_open", st.connections_open.load());
  w.family("sidetrace_otlp_connections_total", "counter", "OTLP/HTTP connections accepted.");
  w.sample("sidetrace_otlp_connections_total", st.connections_total.load());
  w.family("sidetrace_otlp_connections_refused_total", "counter",
           "OTLP/HTTP connections closed at once because listen.max_connections were open.");
  w.sample("sidetrace_otlp_connections_refused_total", st.connections_refused.load());
}

void exporter_metrics(MetricsWriter& w, const upstream::Stats& u) {
  w.family("sidetrace_batches_total", "counter", "Delivery attempts by outcome.");
  w.sample("sidetrace_batches_total", u.batches_sent, {{"outcome", "sent"}});
  w.sample("sidetrace_batches_total", u.failed_retryable, {{"outcome", "retryable"}});
  w.sample("sidetrace_batches_total", u.failed_too_large, {{"outcome", "too_large"}});
  w.sample("sidetrace_batches_total", u.failed_auth, {{"outcome", "auth"}});
  w.sample("sidetrace_batches_total", u.failed_permanent, {{"outcome", "permanent"}});
  w.family("sidetrace_upstream_requests_total", "counter",
           "Requests answered 2xx: one per batch, or one per event and feedback item "
           "(neuraltrust).");
  w.sample("sidetrace_upstream_requests_total", u.requests_sent);
  w.family("sidetrace_batches_retried_total", "counter", "Retries of batches.");
  w.sample("sidetrace_batches_retried_total", u.batches_retried);
  w.family("sidetrace_batches_split_total", "counter", "Batches split after a 413.");
  w.sample("sidetrace_batches_split_total", u.batches_split);
  w.family("sidetrace_traces_delivered_total", "counter", "Trace revisions delivered.");
  w.sample("sidetrace_traces_delivered_total", u.traces_delivered);
  w.family("sidetrace_events_delivered_total", "counter", "Events inside delivered revisions.");
  w.sample("sidetrace_events_delivered_total", u.events_delivered);
  w.family("sidetrace_upstream_bytes_total", "counter", "Request body bytes sent (compressed).");
  w.sample("sidetrace_upstream_bytes_total", u.bytes_sent);
  w.family("sidetrace_spans_rejected_total", "counter",
           "Spans an OTLP upstream accepted the request of but rejected (partial_success); "
           "not sent again.");
  w.sample("sidetrace_spans_rejected_total", u.spans_rejected);
  w.family("sidetrace_deadlettered_total", "counter", "Trace revisions moved to dead letters.");
  w.sample("sidetrace_deadlettered_total", u.deadlettered);
  w.family("sidetrace_deadletter_evicted_total", "counter",
           "Dead-letter records evicted by their bounds (data lost).");
  w.sample("sidetrace_deadletter_evicted_total", u.deadletter_evicted);
  w.family("sidetrace_batches_in_flight", "gauge", "Batches being sent or waiting to retry.");
  w.sample("sidetrace_batches_in_flight", u.in_flight);
  w.family("sidetrace_internal_errors_total", "counter",
           "Exceptions caught inside the exporter (a bug or an exhausted resource), by stage; "
           "the work is retried, split or dead-lettered.");
  for (size_t i = 0; i < upstream::kStageCount; ++i) {
    w.sample("sidetrace_internal_errors_total", u.internal_errors[i],
             {{"stage", upstream::stage_name(static_cast<upstream::Stage>(i))}});
  }
  w.family("sidetrace_upstream_auth_failed", "gauge",
           "1 while the upstream refuses the credentials (sending paused).");
  w.sample("sidetrace_upstream_auth_failed", uint64_t{u.auth_failed ? 1u : 0u});
  w.family("sidetrace_seconds_since_last_delivery", "gauge",
           "Seconds since the last successful delivery; -1 before the first.");
  w.sample("sidetrace_seconds_since_last_delivery", u.seconds_since_success);
  std::vector<double> bounds;
  for (size_t i = 0; i + 1 < upstream::kLatencyBoundsMs.size(); ++i) {
    bounds.push_back(static_cast<double>(upstream::kLatencyBoundsMs[i]) / 1000.0);
  }
  w.family("sidetrace_delivery_latency_seconds", "histogram",
           "From a revision's emission to its acknowledgement.");
  w.histogram("sidetrace_delivery_latency_seconds", bounds, u.latency_buckets,
              static_cast<double>(u.latency_sum_ms) / 1000.0);
}

}  // namespace

std::string render_metrics(const Components& c, const Clock& clock) {
  MetricsWriter w;
  w.family("sidetrace_up", "gauge", "1 while the agent is running and ready.");
  w.sample("sidetrace_up", uint64_t{c.started ? 1u : 0u});
  w.family("sidetrace_uptime_seconds", "gauge", "Seconds since start.");
  w.sample("sidetrace_uptime_seconds",
           c.started_ns ? static_cast<double>(clock.now_ns() - c.started_ns) / 1e9 : 0.0);
  w.family("sidetrace_thread_failures_total", "counter",
           "Agent threads that ended by throwing (the agent then reports itself unhealthy).");
  w.sample("sidetrace_thread_failures_total", ThreadFailures::global().count());
  w.family("sidetrace_handler_failures_total", "counter",
           "Event-loop handlers that threw; the loop went on without them.");
  w.sample("sidetrace_handler_failures_total", ThreadFailures::global().survived());
  if (c.intake) intake_metrics(w, *c.intake);
  if (c.otlp_http) otlp_http_metrics(w, c.otlp_http->stats());
  if (c.queue) {
    w.family("sidetrace_intake_queue_bytes", "gauge", "Decoded messages waiting for the store.");
    w.sample("sidetrace_intake_queue_bytes", static_cast<uint64_t>(c.queue->weight()));
    w.family("sidetrace_intake_queue_capacity_bytes", "gauge", "Bound of that queue.");
    w.sample("sidetrace_intake_queue_capacity_bytes", static_cast<uint64_t>(c.queue->max_weight()));
  }
  if (c.writer) {
    buffer::WriterStats ws = c.writer->stats();
    w.family("sidetrace_persisted_messages_total", "counter", "Messages durably stored.");
    w.sample("sidetrace_persisted_messages_total", ws.persisted);
    w.family("sidetrace_store_commits_total", "counter", "Group commits.");
    w.sample("sidetrace_store_commits_total", ws.commits);
    w.family("sidetrace_dropped_messages_total", "counter",
             "Messages not stored, by cause (quota policy, full disk, I/O error, invalid).");
    w.sample("sidetrace_dropped_messages_total", ws.dropped_full, {{"cause", "quota"}});
    w.sample("sidetrace_dropped_messages_total", ws.dropped_no_space, {{"cause", "no_space"}});
    w.sample("sidetrace_dropped_messages_total", ws.dropped_io_error, {{"cause", "io_error"}});
    w.sample("sidetrace_dropped_messages_total", ws.dropped_invalid, {{"cause", "invalid"}});
    w.family("sidetrace_store_degraded", "gauge", "1 while writes fail and the store is resuming.");
    w.sample("sidetrace_store_degraded", uint64_t{ws.degraded ? 1u : 0u});
    w.family("sidetrace_writer_busy_seconds", "gauge",
             "How long the writer has been on its current group; 0 while it waits for messages.");
    w.sample("sidetrace_writer_busy_seconds", static_cast<double>(ws.busy_ns) / 1e9);
    const auto& h = c.writer->latency();
    w.family("sidetrace_receive_to_durable_seconds", "summary",
             "From receipt to a durable commit.");
    for (double q : {0.5, 0.9, 0.99, 0.999}) {
      w.sample("sidetrace_receive_to_durable_seconds", static_cast<double>(h.quantile_ns(q)) / 1e9,
               {{"quantile", fmt::format("{}", q)}});
    }
    w.sample("sidetrace_receive_to_durable_seconds_count", h.count());
  }
  if (c.store) {
    buffer::StoreCounters sc = c.store->counters();
    w.family("sidetrace_buffer_bytes", "gauge", "Logical bytes held by the store (quota measure).");
    w.sample("sidetrace_buffer_bytes", sc.live_bytes);
    w.family("sidetrace_buffer_max_bytes", "gauge", "The store's quota.");
    w.sample("sidetrace_buffer_max_bytes", c.cfg.buffer.max_bytes);
    w.family("sidetrace_outbox_entries", "gauge", "Trace revisions waiting for delivery.");
    w.sample("sidetrace_outbox_entries", c.store->outbox_entries());
    w.family("sidetrace_outbox_bytes", "gauge", "Bytes of revisions waiting for delivery.");
    w.sample("sidetrace_outbox_bytes", c.store->outbox_bytes());
    w.family("sidetrace_outbox_memory_bytes", "gauge",
             "Documents of revisions waiting in memory for delivery to read them.");
    w.sample("sidetrace_outbox_memory_bytes", sc.document_cache_bytes);
    w.family("sidetrace_outbox_documents_rebuilt_total", "counter",
             "Revision documents built again from the stored messages (a retry, a restart, "
             "a backlog past the memory bound).");
    w.sample("sidetrace_outbox_documents_rebuilt_total", sc.documents_rebuilt);
    w.family("sidetrace_dropped_by_policy_total", "counter",
             "Data removed to make room under the quota (drop_oldest).");
    w.sample("sidetrace_dropped_by_policy_total", sc.dropped_retained_events,
             {{"what", "retained_events"}});
    w.sample("sidetrace_dropped_by_policy_total", sc.dropped_outbox_entries,
             {{"what", "outbox_entries"}});
    w.family("sidetrace_expired_traces_total", "counter",
             "Traces whose retained events passed trace.retain_s.");
    w.sample("sidetrace_expired_traces_total", sc.expired_traces);
    w.family("sidetrace_buffer_reclaimed_bytes_total", "counter",
             "Disk space of deleted store files given back, a step at a time.");
    w.sample("sidetrace_buffer_reclaimed_bytes_total", sc.reclaimed_bytes);
    w.family("sidetrace_buffer_reclaim_pending_bytes", "gauge",
             "Disk space of deleted store files still to give back.");
    w.sample("sidetrace_buffer_reclaim_pending_bytes", sc.reclaim_pending_bytes);
    w.family("sidetrace_buffer_log_garbage_bytes", "gauge",
             "Bytes of dropped messages still in the store's log, until its front passes them.");
    w.sample("sidetrace_buffer_log_garbage_bytes", sc.log_garbage_bytes);
    w.family("sidetrace_buffer_log_moved_total", "counter",
             "Messages still needed at the log's front, moved to its head.");
    w.sample("sidetrace_buffer_log_moved_total", sc.log_moved_messages);
  }
  if (c.assembler) {
    trace::AssemblerStats as = c.assembler->stats();
    w.family("sidetrace_open_traces", "gauge", "Traces being assembled (in memory).");
    w.sample("sidetrace_open_traces", as.open_traces);
    w.family("sidetrace_traces_emitted_total", "counter", "Trace revisions emitted, by kind.");
    w.sample("sidetrace_traces_emitted_total", as.emitted, {{"kind", "all"}});
    w.sample("sidetrace_traces_emitted_total", as.emitted_unfinished, {{"kind", "unfinished"}});
    w.sample("sidetrace_traces_emitted_total", as.emitted_partial, {{"kind", "partial"}});
    w.sample("sidetrace_traces_emitted_total", as.emitted_parts, {{"kind", "part"}});
    w.sample("sidetrace_traces_emitted_total", as.late_revisions, {{"kind", "late_revision"}});
    w.family("sidetrace_assembler_parts_waited_total", "counter",
             "Times the next part of a split trace waited for the outbox to drain below a few "
             "parts' worth, so that other traces do not queue behind it.");
    w.sample("sidetrace_assembler_parts_waited_total", as.parts_waited);
    w.family("sidetrace_assembler_spilled_total", "counter",
             "Open traces dropped from memory (re-read from the store later).");
    w.sample("sidetrace_assembler_spilled_total", as.spilled);
    w.family("sidetrace_assembler_rescans_total", "counter", "Rescans of pending messages.");
    w.sample("sidetrace_assembler_rescans_total", as.rescans);
    w.family("sidetrace_assembler_rescans_full_total", "counter",
             "Rescans that stopped with trace.max_open_traces traces open (the rest of "
             "pending waits for the next).");
    w.sample("sidetrace_assembler_rescans_full_total", as.rescans_full);
    w.family("sidetrace_assembler_rescanned_records_total", "counter",
             "Pending records read by rescans.");
    w.sample("sidetrace_assembler_rescanned_records_total", as.rescanned_records);
    w.family("sidetrace_assembler_store_errors_total", "counter", "Store errors while assembling.");
    w.sample("sidetrace_assembler_store_errors_total", as.store_errors);
    w.family("sidetrace_assembler_build_failures_total", "counter",
             "Trace builds that threw (the trace is tried again, then set aside).");
    w.sample("sidetrace_assembler_build_failures_total", as.build_failures);
    w.family("sidetrace_traces_quarantined_total", "counter",
             "Traces set aside after their build failed assembler.max_build_failures times in a "
             "row; their messages stay in the store.");
    w.sample("sidetrace_traces_quarantined_total", as.quarantined);
    w.family("sidetrace_assembler_builds_total", "counter",
             "Trace builds, by where their messages came from: the event cache, the store "
             "where their pending records say, or the store through the trace's runs.");
    w.sample("sidetrace_assembler_builds_total", as.cache_hits, {{"source", "cache"}});
    w.sample("sidetrace_assembler_builds_total", as.record_reads, {{"source", "records"}});
    w.sample("sidetrace_assembler_builds_total",
             as.cache_misses - std::min(as.cache_misses, as.record_reads), {{"source", "store"}});
    w.family(
        "sidetrace_assembler_cache_refused_total", "counter",
        "Messages whose bytes did not fit the event cache (their traces are read from the store).");
    w.sample("sidetrace_assembler_cache_refused_total", as.cache_refused);
    w.family("sidetrace_assembler_cache_bytes", "gauge", "Message bytes held by the event cache.");
    w.sample("sidetrace_assembler_cache_bytes", as.cache_bytes);
  }
  if (c.redact) {
    ipc::RedactCounters rc = c.redact->snapshot();
    w.family("sidetrace_redacted_messages_total", "counter",
             "Messages in which redaction changed something.");
    w.sample("sidetrace_redacted_messages_total", rc.messages_redacted);
    w.family("sidetrace_redaction_matches_total", "counter", "Redaction matches, by rule.");
    for (const auto& [rule, n] : rc.matches) {
      w.sample("sidetrace_redaction_matches_total", n, {{"rule", rule}});
    }
    w.family("sidetrace_truncated_fields_total", "counter",
             "Fields cut at redact.max_field_bytes.");
    w.sample("sidetrace_truncated_fields_total", rc.fields_truncated);
    w.family("sidetrace_redaction_failures_total", "counter",
             "Messages stored unredacted because redaction failed on them.");
    w.sample("sidetrace_redaction_failures_total", rc.failures);
  }
  if (c.memory_trim) {
    w.family("sidetrace_allocator_resident_bytes", "gauge",
             "Memory the allocator holds resident (in use, and freed but not yet returned).");
    w.sample("sidetrace_allocator_resident_bytes", MemoryTrim::resident_bytes());
    w.family("sidetrace_allocator_freed_bytes", "gauge",
             "Freed memory the allocator holds for reuse, not yet returned to the kernel.");
    w.sample("sidetrace_allocator_freed_bytes", MemoryTrim::freed_bytes());
    w.family("sidetrace_allocator_trims_total", "counter",
             "Times the allocator held more freed memory than its bound and returned it at once.");
    w.sample("sidetrace_allocator_trims_total", c.memory_trim->trims());
  }
  if (c.exporter) exporter_metrics(w, c.exporter->stats());
  return w.take();
}

std::string render_status(const Components& c, const Clock& clock) {
  std::string out;
  auto line = [&out](std::string_view k, const std::string& v) {
    out += fmt::format("{:<22} {}\n", k, v);
  };
  std::string why = not_ready_reason(c);
  line("state", why.empty() ? "ready" : "not ready: " + why);
  line("uptime",
       c.started_ns
           ? fmt::format("{:.0f}s", static_cast<double>(clock.now_ns() - c.started_ns) / 1e9)
           : "-");
  line("data_dir", c.cfg.data_dir);
  line("upstream", config::upstream_endpoint(c.cfg).empty() ? "none (local file exporter)"
                                                            : c.cfg.upstream.format + " over HTTP");
  if (c.intake) {
    uint64_t received = 0, accepted = 0, rejected = 0, dropped = 0;
    for (auto t : kTransports) {
      const auto& s = c.intake->stats().of(t);
      received += s.received.load();
      accepted += s.accepted.load();
      rejected += s.rejected_total();
      dropped += s.queue_full_drops.load() + s.kernel_drops.load();
    }
    line("received", fmt::format("{} ({} accepted, {} rejected, {} dropped at intake)", received,
                                 accepted, rejected, dropped));
  }
  if (c.otlp_http) {
    const auto& st = c.otlp_http->stats();
    uint64_t requests = 0;
    for (const auto& r : st.requests)
      requests += r.load();
    line("otlp spans", fmt::format("{} in {} requests ({} stored, {} rejected, {} refused)",
                                   st.spans_received.load(), requests, st.spans_stored.load(),
                                   st.spans_rejected.load(), st.spans_refused.load()));
  }
  if (c.writer) {
    auto ws = c.writer->stats();
    line("persisted",
         fmt::format("{} ({} dropped by quota, {} by a full disk){}", ws.persisted, ws.dropped_full,
                     ws.dropped_no_space, ws.degraded ? " [store degraded]" : ""));
    line(
        "receive->durable p99",
        fmt::format("{:.2f} ms", static_cast<double>(c.writer->latency().quantile_ns(0.99)) / 1e6));
  }
  if (c.assembler) {
    auto as = c.assembler->stats();
    line("traces",
         fmt::format("{} open, {} revisions emitted ({} late, {} unfinished)", as.open_traces,
                     as.emitted, as.late_revisions, as.emitted_unfinished));
  }
  if (c.store) {
    line("buffer", fmt::format("{:.1f} MiB of {:.1f} MiB",
                               static_cast<double>(c.store->counters().live_bytes) / (1 << 20),
                               static_cast<double>(c.cfg.buffer.max_bytes) / (1 << 20)));
    line("outbox", fmt::format("{} revisions waiting", c.store->outbox_entries()));
  }
  if (c.exporter) {
    auto u = c.exporter->stats();
    line("delivered", fmt::format("{} revisions, {} events, {} dead-lettered", u.traces_delivered,
                                  u.events_delivered, u.deadlettered));
    line("last delivery", u.seconds_since_success < 0
                              ? std::string("never")
                              : fmt::format("{:.1f}s ago", u.seconds_since_success));
    if (u.auth_failed) line("upstream auth", "FAILING (401/403): sending paused, data kept");
  }
  return out;
}

std::string stuck_reason(const Components& c) {
  if (std::string failed = ThreadFailures::global().first(); !failed.empty()) {
    return "failed: thread " + failed + "; restart the agent";
  }
  if (!c.writer) return {};
  uint64_t busy = c.writer->stats().busy_ns;
  if (busy < static_cast<uint64_t>(std::chrono::nanoseconds(kStuckAfter).count())) return {};
  return fmt::format("stuck: a store write has not returned for {}s; nothing is being persisted",
                     busy / 1'000'000'000);
}

std::string not_ready_reason(const Components& c) {
  if (!c.started) return "starting or stopping";
  if (!c.store) return "store not open";
  if (!c.intake) return "sockets not bound";
  if (std::string stuck = stuck_reason(c); !stuck.empty()) return stuck;
  if (c.exporter && c.exporter->stats().auth_failed) {
    return "upstream rejects the credentials (401/403); sending paused, data kept";
  }
  return {};
}

}  // namespace sidetrace::agent
