// Wiring helpers: the mapping from the configuration to each component's
// options, and the views over all components that the admin endpoint serves
// (Prometheus metrics, a human status summary, readiness).
//
// Thread safety: the option mappers are pure. The renderers read counters
// and may run on any thread while the components run.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "buffer/store.h"
#include "common/bounded_queue.h"
#include "common/clock.h"
#include "common/memory.h"
#include "config/config.h"
#include "ipc/intake.h"
#include "ipc/message.h"
#include "ipc/otlp_http.h"
#include "ipc/redact.h"
#include "trace/assembler.h"
#include "upstream/upstream.h"

namespace sidetrace::buffer {
class Writer;
}

namespace sidetrace::agent {

buffer::StoreOptions store_options(const config::Config& c);
trace::AssemblerOptions assembler_options(const config::Config& c);
upstream::Options upstream_options(const config::Config& c);
ipc::IntakeOptions intake_options(const config::Config& c);
ipc::OtlpHttpOptions otlp_http_options(const config::Config& c);
// The redactor for c.redact (nullptr when nothing is configured). Throws
// config::ConfigError naming the key when a rule or detector is invalid.
std::shared_ptr<const ipc::Redactor> make_redactor(const config::Config& c);

// Borrowed views of the running components; any pointer may be null.
struct Components {
  const config::Config& cfg;
  buffer::Store* store = nullptr;
  const BoundedQueue<ipc::MessageBatch>* queue = nullptr;
  const ipc::Intake* intake = nullptr;
  const ipc::OtlpHttpReceiver* otlp_http = nullptr;
  const buffer::Writer* writer = nullptr;
  const trace::Assembler* assembler = nullptr;
  const upstream::Exporter* exporter = nullptr;
  const ipc::RedactStats* redact = nullptr;
  const MemoryTrimThread* memory_trim = nullptr;
  bool started = false;
  uint64_t started_ns = 0;
};

// The Prometheus text exposition of every counter, gauge and histogram.
std::string render_metrics(const Components& c, const Clock& clock);

// A short human summary (what `sidetrace status` prints).
std::string render_status(const Components& c, const Clock& clock);

// A writer on one group for this long is stuck (a store write that does not
// return): the agent is not alive, though its sockets and admin still answer.
inline constexpr std::chrono::seconds kStuckAfter{60};

// Empty while every stage makes progress; otherwise what is stuck. Drives
// /healthz and the systemd watchdog's pings.
std::string stuck_reason(const Components& c);

// Empty when ready; otherwise why not (store closed, sockets not bound, the
// upstream refusing our credentials).
std::string not_ready_reason(const Components& c);

}  // namespace sidetrace::agent
