// Built-in defaults of the keys whose values a component's own options also
// carry. Config takes its defaults from here, and so do the component's
// option structs (upstream::Options, trace::AssemblerOptions), so that a component built from its
// options alone (tests, benchmarks) behaves as the agent does by default.
// The agent itself always passes every value from Config (agent/wiring.cpp).
//
// Dependency-free: components include it through the config_defaults target
// without linking the config library.
#pragma once

#include <cstdint>
#include <string_view>

namespace sidetrace::config::defaults {

// [listen] OTLP/HTTP intake
inline constexpr const char* kListenOtlpHttp = "127.0.0.1:4318";
inline constexpr uint64_t kOtlpMaxBodyBytes = 16ull << 20;
inline constexpr int64_t kOtlpMaxPendingRequests = 64;
inline constexpr uint64_t kOtlpMaxPendingBytes = 64ull << 20;

// [buffer] group commits: a commit (one write and one sync) costs the same
// few hundred us of CPU whatever it carries, so a group waits up to the delay
// for others to join it unless this many bytes of messages are in hand.
inline constexpr int64_t kBufferCommitDelayMs = 100;
inline constexpr uint64_t kBufferCommitBytes = 128ull << 10;

// [upstream]
// upstream.otlp_encoding (upstream::Options::otlp_encoding, an enum that
// agent/wiring_test.cpp checks against this).
inline constexpr const char* kUpstreamOtlpEncoding = "protobuf";
inline constexpr int kUpstreamCompressionLevel = 1;
inline constexpr uint32_t kUpstreamBatchMaxEvents = 2000;
inline constexpr uint64_t kUpstreamBatchMaxBytes = 4ull << 20;
// A partial batch waits this long for more: each request costs its batch
// record, acknowledgement and wake-ups of three threads whatever it carries
// (at 2,000 msg/s, 1000 ms against 200 took delivery's threads from 5.0-8.8
// to 2.5-5.0 us per message, bench/footprint.py).
inline constexpr uint32_t kUpstreamFlushIntervalMs = 1000;
inline constexpr uint32_t kUpstreamMaxInFlight = 4;
inline constexpr uint32_t kUpstreamConnectTimeoutMs = 5000;
inline constexpr uint32_t kUpstreamRequestTimeoutMs = 30000;
inline constexpr uint32_t kUpstreamRetryInitialMs = 500;
inline constexpr uint32_t kUpstreamRetryMaxMs = 60000;
inline constexpr uint32_t kUpstreamRetryDeadlineS = 0;
inline constexpr uint32_t kUpstreamRetryAfterMaxMs = 300000;
inline constexpr uint32_t kUpstreamAuthProbeIntervalMs = 30000;
inline constexpr uint64_t kUpstreamDeadletterMaxBytes = 256ull << 20;
// The NeuralTrust SDK's own default base URL: the endpoint of
// `format = "neuraltrust"` when upstream.endpoint is empty.
inline constexpr std::string_view kNeuralTrustEndpoint = "https://api-prod.neuraltrust.ai";

// [trace]
inline constexpr int64_t kTraceQuietPeriodMs = 1000;
inline constexpr int64_t kTraceMaxOpenS = 600;
inline constexpr int64_t kTraceRetainS = 86400;
inline constexpr int64_t kTraceMaxOpenTraces = 50000;
inline constexpr int64_t kTraceMaxEvents = 10000;
inline constexpr uint64_t kTraceMaxBytes = 4ull << 20;

// [exporter]
inline constexpr uint64_t kExporterRotateBytes = 64ull << 20;
inline constexpr uint32_t kExporterKeepFiles = 5;

}  // namespace sidetrace::config::defaults
