#include "agent/wiring.h"

#include "buffer/store.h"
#include "common/thread.h"

#include <gtest/gtest.h>

#include "buffer/testing/held_transform.h"
#include "buffer/testing/temp_dir.h"
#include "buffer/writer.h"

namespace sidetrace::agent {
namespace {

// Every upstream key reaches the delivery options, not only its default.
TEST(WiringTest, UpstreamKeysReachTheDeliveryOptions) {
  config::Config c;
  config::apply_toml_string(c,
                            "[upstream]\n"
                            "endpoint = \"http://127.0.0.1:9\"\n"
                            "format = \"otlp\"\n"
                            "otlp_encoding = \"json\"\n"
                            "compression = \"zstd\"\n"
                            "compression_level = 7\n"
                            "batch_max_events = 17\n"
                            "flush_interval_ms = 33\n"
                            "max_in_flight = 3\n"
                            "retry_initial_ms = 11\n"
                            "retry_max_ms = 222\n"
                            "retry_after_max_ms = 4444\n"
                            "retry_deadline_s = 55\n"
                            "auth_probe_interval_ms = 666\n",
                            "inline.toml");
  upstream::Options o = upstream_options(c);
  EXPECT_EQ(o.endpoint, "http://127.0.0.1:9");
  EXPECT_EQ(o.format, upstream::Format::kOtlp);
  EXPECT_EQ(o.otlp_encoding, upstream::OtlpEncoding::kJson);
  EXPECT_EQ(o.compression, upstream::Compression::kZstd);
  EXPECT_EQ(o.compression_level, 7);
  EXPECT_EQ(o.batch_max_events, 17u);
  EXPECT_EQ(o.flush_interval_ms, 33u);
  EXPECT_EQ(o.max_in_flight, 3u);
  EXPECT_EQ(o.retry_initial_ms, 11u);
  EXPECT_EQ(o.retry_max_ms, 222u);
  EXPECT_EQ(o.retry_after_max_ms, 4444u);
  EXPECT_EQ(o.retry_deadline_s, 55u);
  EXPECT_EQ(o.auth_probe_interval_ms, 666u);
}

// format "neuraltrust" reaches the options, and without an endpoint the
// delivery goes to NeuralTrust's default base (not to the file exporter).
TEST(WiringTest, OtlpListenKeysReachTheReceiverOptions) {
  config::Config c;
  c.listen.otlp_http = "0.0.0.0:4318";
  c.listen.otlp_allowed_hosts = {"sidetrace", ".svc.example"};
  const ipc::OtlpHttpOptions o = otlp_http_options(c);
  EXPECT_EQ(o.listen, "0.0.0.0:4318");
  EXPECT_EQ(o.allowed_hosts, c.listen.otlp_allowed_hosts);
  EXPECT_TRUE(otlp_http_options(config::Config{}).allowed_hosts.empty());
}

TEST(WiringTest, NeuralTrustWithoutAnEndpointSendsToItsDefaultBase) {
  config::Config c;
  config::apply_toml_string(c, "[upstream]\nformat = \"neuraltrust\"\n", "inline.toml");
  upstream::Options o = upstream_options(c);
  EXPECT_EQ(o.format, upstream::Format::kNeuralTrust);
  EXPECT_EQ(o.endpoint, "https://api-prod.neuraltrust.ai");
  buffer::testing::TempDir dir;
  buffer::StoreOptions so;
  so.data_dir = dir.str();
  std::unique_ptr<buffer::Store> store;
  ASSERT_TRUE(buffer::Store::open(so, &store).ok());
  auto exporter = upstream::make_exporter(*store, *store, o);
  EXPECT_NE(dynamic_cast<upstream::Delivery*>(exporter.get()), nullptr);
}

// trace::AssemblerOptions and the configuration's [trace] section agree.
TEST(WiringTest, TheAssemblerOptionsDefaultsAreTheConfigurations) {
  const trace::AssemblerOptions from_config = assembler_options(config::Config{});
  const trace::AssemblerOptions own;
  EXPECT_EQ(from_config.quiet_period, own.quiet_period);
  EXPECT_EQ(from_config.max_open, own.max_open);
  EXPECT_EQ(from_config.retain, own.retain);
  EXPECT_EQ(from_config.max_open_traces, own.max_open_traces);
  EXPECT_EQ(from_config.max_trace_events, own.max_trace_events);
  EXPECT_EQ(from_config.max_trace_bytes, own.max_trace_bytes);
}

// upstream::Options and the agent's configuration take their defaults from
// one place (config/defaults.h): the options the agent derives from a default
// configuration are the options' own defaults, key by key.
TEST(WiringTest, UpstreamDefaultsAreTheConfigurationDefaults) {
  const upstream::Options want;
  const upstream::Options got = upstream_options(config::Config{});
  EXPECT_EQ(got.endpoint, want.endpoint);
  EXPECT_EQ(got.format, want.format);
  EXPECT_EQ(got.otlp_encoding, want.otlp_encoding);
  EXPECT_EQ(got.compression, want.compression);
  EXPECT_EQ(got.compression_level, want.compression_level);
  EXPECT_EQ(got.batch_max_events, want.batch_max_events);
  EXPECT_EQ(got.batch_max_bytes, want.batch_max_bytes);
  EXPECT_EQ(got.flush_interval_ms, want.flush_interval_ms);
  EXPECT_EQ(got.max_in_flight, want.max_in_flight);
  EXPECT_EQ(got.connect_timeout_ms, want.connect_timeout_ms);
  EXPECT_EQ(got.request_timeout_ms, want.request_timeout_ms);
  EXPECT_EQ(got.retry_initial_ms, want.retry_initial_ms);
  EXPECT_EQ(got.retry_max_ms, want.retry_max_ms);
  EXPECT_EQ(got.retry_after_max_ms, want.retry_after_max_ms);
  EXPECT_EQ(got.retry_deadline_s, want.retry_deadline_s);
  EXPECT_EQ(got.auth_probe_interval_ms, want.auth_probe_interval_ms);
  EXPECT_EQ(got.ca_file, want.ca_file);
  EXPECT_EQ(got.client_cert, want.client_cert);
  EXPECT_EQ(got.client_key, want.client_key);
  EXPECT_EQ(got.tls_verify, want.tls_verify);
  EXPECT_EQ(got.api_key_env, want.api_key_env);
  EXPECT_EQ(got.api_key_file, want.api_key_file);
  EXPECT_EQ(got.api_key_header, want.api_key_header);
  EXPECT_EQ(got.headers, want.headers);
  EXPECT_EQ(got.deadletter_max_bytes, want.deadletter_max_bytes);
  EXPECT_EQ(got.deadletter_max_count, want.deadletter_max_count);
  EXPECT_EQ(got.file_path, want.file_path);
  EXPECT_EQ(got.file_max_bytes, want.file_max_bytes);
  EXPECT_EQ(got.file_keep, want.file_keep);
  EXPECT_EQ(got.print, want.print);
  // data_dir has no default in the options: the agent always passes its own.
  EXPECT_EQ(got.data_dir, config::Config{}.data_dir);
}

// The exporter's caught exceptions are published by stage, and its request count.
TEST(WiringTest, InternalErrorsArePublishedByStage) {
  struct FakeExporter : upstream::Exporter {
    void start() override {}
    void stop() override {}
    upstream::Stats stats() const override {
      upstream::Stats s;
      s.internal_errors[static_cast<size_t>(upstream::Stage::kEncode)] = 3;
      s.requests_sent = 7;
      return s;
    }
    void reset_auth() override {}
    void update_options(const upstream::Options&) override {}
  } exporter;
  config::Config cfg;
  Components c{cfg};
  c.exporter = &exporter;
  ManualClock clock;
  std::string text = render_metrics(c, clock);
  EXPECT_NE(text.find("sidetrace_internal_errors_total{stage=\"upstream_encode\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sidetrace_internal_errors_total{stage=\"upstream_dispatch\"} 0\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sidetrace_internal_errors_total{stage=\"file_exporter\"} 0\n"),
            std::string::npos)
      << text;
  // And so are the requests (one per event and feedback item with neuraltrust).
  EXPECT_NE(text.find("sidetrace_upstream_requests_total 7\n"), std::string::npos) << text;
}

// A writer held on one group past kStuckAfter makes the agent not alive
// (/healthz, the watchdog) and shows in the metrics; once it moves, it is
// alive again.
TEST(WiringTest, AWriterHeldOnAGroupIsReportedStuck) {
  buffer::testing::TempDir dir;
  buffer::StoreOptions so;
  so.data_dir = dir.str();
  so.sync = buffer::SyncMode::kOs;
  std::unique_ptr<buffer::Store> store;
  ASSERT_TRUE(buffer::Store::open(so, &store).ok());
  ManualClock clock;
  buffer::testing::HeldTransform held;
  buffer::WriterOptions wo;
  wo.transform = held.transform();
  BoundedQueue<ipc::MessageBatch> q(1 << 20);
  buffer::Writer w(*store, q, nullptr, clock, wo);
  w.start();
  config::Config cfg;
  Components c{cfg};
  c.store = store.get();
  c.writer = &w;
  c.started = true;

  ipc::MessageBatch b(1);
  b[0].trace_id = "t";
  b[0].raw = "x";
  ASSERT_TRUE(q.try_push(b, 1));
  ASSERT_TRUE(held.wait_entered());
  EXPECT_EQ(stuck_reason(c), "");
  clock.advance(kStuckAfter - std::chrono::seconds(1));
  EXPECT_EQ(stuck_reason(c), "");
  clock.advance(std::chrono::seconds(2));
  EXPECT_NE(stuck_reason(c).find("a store write has not returned for 61s"), std::string::npos)
      << stuck_reason(c);
  EXPECT_NE(render_metrics(c, clock).find("sidetrace_writer_busy_seconds 61"), std::string::npos);

  held.release();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!stuck_reason(c).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_EQ(stuck_reason(c), "");
  w.stop();
}

// A thread that ended by throwing (common/thread.h run_thread) makes the agent
// unhealthy: /healthz and readiness say so, the watchdog stops, and the
// metrics count it.
TEST(WiringTest, AThreadThatFailedIsReportedUntilRestart) {
  config::Config cfg;
  Components c{cfg};
  c.started = true;
  ManualClock clock;
  ThreadFailures::global().clear();
  EXPECT_EQ(stuck_reason(c), "");
  std::thread([] {
    run_thread("st-exporter", [] { throw std::runtime_error("disk on fire"); });
  }).join();
  EXPECT_EQ(stuck_reason(c), "failed: thread st-exporter: disk on fire; restart the agent");
  EXPECT_NE(not_ready_reason(c), "");
  EXPECT_NE(render_metrics(c, clock).find("sidetrace_thread_failures_total 1"), std::string::npos);
  ThreadFailures::global().clear();
}

}  // namespace
}  // namespace sidetrace::agent
