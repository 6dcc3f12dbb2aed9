#include "agent/agent.h"

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "agent/admin.h"
#include "agent/operations.h"
#include "agent/systemd.h"
#include "agent/tools.h"
#include "agent/viewer.h"
#include "agent/wiring.h"
#include "buffer/store.h"
#include "buffer/writer.h"
#include "common/bounded_queue.h"
#include "common/clock.h"
#include "common/memory.h"
#include "common/thread.h"
#include "ipc/intake.h"
#include "ipc/otlp_http.h"
#include "trace/assembler.h"
#include "upstream/upstream.h"

namespace sidetrace::agent {

namespace net = boost::asio;

namespace {

// How long a shutdown may take before the process gives up waiting for the
// exporter (whose unacknowledged work stays in the store for the next start).
constexpr auto kShutdownDeadline = std::chrono::seconds(20);
// How long a reload operation waits for the intake's thread to run it.
constexpr auto kReloadWait = std::chrono::seconds(10);
// The kinds of background operation (agent/operations.h).
constexpr std::string_view kReplayKind = "deadletter_replay";
constexpr std::string_view kPurgeKind = "deadletter_purge";
constexpr std::string_view kReloadKind = "reload";
// How long a stopping agent keeps answering OTLP/HTTP requests whose spans
// are on their way to the store.
constexpr auto kOtlpAnswerWait = std::chrono::seconds(5);

// Runs `io` until it stops. A handler that throws is logged and counted, and
// the loop goes on with the others (what that handler served is dropped: a
// connection, a request).
void run_loop(net::io_context& io) {
  for (;;) {
    std::string what;
    try {
      io.run();
      return;
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an exception that is not a std::exception";
    }
    ThreadFailures::global().record_survived();
    spdlog::error("event loop: a handler failed and was dropped: {}", what);
  }
}

}  // namespace

struct Agent::Impl {
  Impl(config::Config c, AgentOptions o) : cfg(std::move(c)), opts(std::move(o)) {}

  config::Config cfg;
  AgentOptions opts;
  const Clock& clock = system_clock();

  net::io_context io;
  // The viewer's recent traces; declared before the assembler that feeds it.
  RecentTraces recent;
  // Redaction on the writer thread; swapped atomically by a reload.
  ipc::RedactorSlot redactor;
  ipc::RedactStats redact_stats;
  // Freed memory goes back to the kernel about 0.3 s after its last use
  // (common/allocator.cpp); beyond 16 MiB of it, at once. Looked at after
  // each 2 MiB of messages the writer stores: memory churns a few times over
  // for each of their bytes (intake, store, documents, requests), so freed
  // pages cannot grow by much more than the bound between two looks. Under a
  // flood that is every 50 ms; at 2,000 msg/s every two seconds or so.
  MemoryTrimThread memory_trim{16ull << 20, std::chrono::milliseconds(50), 2ull << 20};
  std::unique_ptr<buffer::Store> store;
  std::unique_ptr<BoundedQueue<ipc::MessageBatch>> queue;
  std::unique_ptr<trace::Assembler> assembler;
  std::unique_ptr<buffer::Writer> writer;
  std::unique_ptr<upstream::Exporter> exporter;
  std::unique_ptr<ipc::Intake> intake;
  std::unique_ptr<ipc::OtlpHttpReceiver> otlp_http;
  // The admin endpoint has a thread of its own, so that health checks answer
  // while the intake's thread is busy with a flood.
  net::io_context admin_io;
  std::thread admin_thread;
  std::unique_ptr<AdminServer> admin;
  std::atomic<bool> is_ready{false};
  std::atomic<bool> stopping{false};
  std::atomic<unsigned short> admin_port{0};
  uint64_t started_ns = 0;
  // Replays, purges and reloads asked through the admin endpoint. Last: its
  // destructor waits for their bodies, which use everything above.
  Operations operations;

  void start();
  void shutdown();
  // Re-reads the configuration; returns what happened, for the log and the caller.
  std::string reload();
  AdminResponse handle(const std::string& method, const std::string& target);
  // The bodies of the admin endpoint's background operations.
  OperationOutcome replay_operation(OperationProgress& progress);
  OperationOutcome purge_operation(OperationProgress& progress);
  OperationOutcome reload_operation();
  Components components() const;
};

Agent::Agent(config::Config config, AgentOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}

Agent::~Agent() = default;

bool Agent::ready() const {
  return impl_->is_ready.load();
}
unsigned short Agent::admin_port() const {
  return impl_->admin_port.load();
}

void Agent::request_stop() {
  net::post(impl_->io, [impl = impl_.get()] {
    if (!impl->stopping.exchange(true)) impl->io.stop();
  });
}

void Agent::request_reload() {
  net::post(impl_->io, [impl = impl_.get()] { impl->reload(); });
}

Components Agent::Impl::components() const {
  Components c{cfg};
  c.store = store.get();
  c.queue = queue.get();
  c.intake = intake.get();
  c.otlp_http = otlp_http.get();
  c.writer = writer.get();
  c.assembler = assembler.get();
  c.exporter = exporter.get();
  c.redact = &redact_stats;
  c.memory_trim = &memory_trim;
  c.started = is_ready.load();
  c.started_ns = started_ns;
  return c;
}

void Agent::Impl::start() {
  started_ns = clock.now_ns();
  // Sockets passed by systemd (socket activation). First, while this is the
  // only thread: it unsets the LISTEN_* variables.
  systemd::ListenFds activated;
  std::string activation_err;
  if (systemd::listen_fds(&activated, &activation_err)) throw std::runtime_error(activation_err);
  // The admin token is read before anything is opened: a token file that
  // cannot be read is a configuration error (config::ConfigError).
  AdminAccess admin_access;
  admin_access.token = config::admin_token(cfg);
  admin_access.allowed_hosts = cfg.admin.allowed_hosts;
  // The probes, and the viewer's page, which holds no data and asks for the
  // token itself.
  admin_access.open_paths = {"/healthz", "/readyz", "/ui", "/ui/"};
  std::error_code ec;
  std::filesystem::create_directories(cfg.data_dir, ec);
  if (ec) {
    throw std::runtime_error("data_dir: cannot create " + cfg.data_dir + ": " + ec.message());
  }

  // Store first: nothing is accepted that cannot be kept.
  std::string quarantined;
  buffer::Status s = buffer::open_or_quarantine(store_options(cfg), &store, &quarantined);
  if (!s.ok()) {
    throw std::runtime_error("cannot open the store in " + cfg.data_dir + ": " + s.ToString());
  }
  if (!quarantined.empty()) {
    spdlog::error(
        "the store could not be opened and was moved aside to {}; started on a fresh store "
        "(see docs/operations.md, \"A corrupt store\")",
        quarantined);
  }

  buffer::WriterOptions writer_opts;
  writer_opts.commit_delay = std::chrono::milliseconds(cfg.buffer.commit_delay_ms);
  writer_opts.commit_bytes = cfg.buffer.commit_bytes;
  writer_opts.transform = [this](ipc::Message& m) { return redactor.apply(m, &redact_stats); };
  writer_opts.after_round = [this](size_t bytes) { memory_trim.poke(bytes); };
  // The writer waiting out its commit delay is woken early by a group's worth.
  queue = std::make_unique<BoundedQueue<ipc::MessageBatch>>(cfg.intake.queue_bytes,
                                                            writer_opts.commit_bytes);
  trace::AssemblerOptions assembler_opts = assembler_options(cfg);
  assembler_opts.on_emitted = [this](const std::string& id, uint32_t revision,
                                     buffer::Document document) {
    recent.add(id, revision, std::move(document));
  };
  // The writer is created before the assembler's thread starts and stopped
  // before it; until then nothing is on its way to the store.
  assembler_opts.store_watermark = [this](uint64_t now) {
    return writer ? writer->watermark_ns(now) : now;
  };
  assembler = std::make_unique<trace::Assembler>(*store, *store, clock, assembler_opts);
  s = assembler->recover();
  if (!s.ok()) {
    throw std::runtime_error("cannot read the store's pending messages: " + s.ToString());
  }
  redactor.store(make_redactor(cfg));
  writer = std::make_unique<buffer::Writer>(
      *store, *queue, [a = assembler.get()](std::span<buffer::Committed> c) { a->on_committed(c); },
      clock, writer_opts);
  exporter = upstream::make_exporter(*store, *store, upstream_options(cfg), clock);

  assembler->start();
  writer->start();
  exporter->start();

  ipc::IntakeOptions intake_opts = intake_options(cfg);
  // An adopted socket replaces the configured path of its transport.
  if (activated.stream_fd >= 0) {
    intake_opts.stream_fd = activated.stream_fd;
    intake_opts.unix_stream.clear();
  }
  if (activated.dgram_fd >= 0) {
    intake_opts.dgram_fd = activated.dgram_fd;
    intake_opts.unix_dgram.clear();
  }
  if (activated.udp_fd >= 0) {
    intake_opts.udp_fd = activated.udp_fd;
    intake_opts.udp.clear();
  }
  if (activated.passed > 0) {
    spdlog::info("socket activation: adopted {} socket(s) from systemd", activated.passed);
  }
  intake = ipc::Intake::create(io, std::move(intake_opts), *queue, clock);
  std::string err;
  if (intake->start(&err)) throw std::runtime_error(err);
  if (!cfg.listen.otlp_http.empty()) {
    otlp_http = ipc::OtlpHttpReceiver::create(io, otlp_http_options(cfg), *queue, clock);
    if (otlp_http->start(&err)) throw std::runtime_error("listen.otlp_http: " + err);
  }

  if (!cfg.admin.listen.empty()) {
    const bool admin_token_set = !admin_access.token.empty();
    // The POSTs that start an operation answer at once, on the admin thread.
    std::vector<std::string> quick = default_quick_routes();
    quick.insert(quick.end(), {"/deadletter/replay", "/deadletter/purge", "/reload"});
    admin = std::make_unique<AdminServer>(
        admin_io, [this](const std::string& m, const std::string& t) { return handle(m, t); },
        std::move(admin_access), std::move(quick));
    if (admin->listen(cfg.admin.listen, &err)) throw std::runtime_error(err);
    admin_port = admin->port();
    admin_thread = std::thread([this] {
      run_thread("st-admin", [this] {
        auto work = net::make_work_guard(admin_io);
        run_loop(admin_io);
      });
    });
    std::string host;
    unsigned short configured = 0;
    split_host_port(cfg.admin.listen, &host, &configured);
    spdlog::info("admin: listening on {}:{}", host, admin_port.load());
    spdlog::info("admin: {}", admin_token_set
                                  ? "every request but /healthz, /readyz and /ui needs the token"
                                  : "no token; loopback only");
  }
  is_ready = true;
  spdlog::info(
      "sidetrace ready: unix_stream={} unix_dgram={} udp={} otlp_http={} admin={} "
      "upstream={}",
      cfg.listen.unix_stream.empty() ? "off" : cfg.listen.unix_stream,
      cfg.listen.unix_dgram.empty() ? "off" : cfg.listen.unix_dgram,
      cfg.listen.udp.empty() ? "off" : cfg.listen.udp,
      cfg.listen.otlp_http.empty() ? "off" : cfg.listen.otlp_http,
      cfg.admin.listen.empty() ? "off" : cfg.admin.listen,
      cfg.upstream.endpoint.empty() ? "local file" : "http");
  systemd::notify("READY=1\nSTATUS=serving");
}

void Agent::Impl::shutdown() {
  is_ready = false;
  systemd::notify("STOPPING=1\nSTATUS=stopping: committing what was accepted");
  // A watchdog: if a stage hangs, exit anyway; what is stored stays stored.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock lock(mu);
    if (!cv.wait_for(lock, kShutdownDeadline, [&] { return done; })) {
      spdlog::error("shutdown took longer than {}s; exiting with work left in the store",
                    kShutdownDeadline.count());
      spdlog::shutdown();
      std::_Exit(1);
    }
  });

  if (admin) admin->stop();
  admin_io.stop();
  if (admin_thread.joinable()) admin_thread.join();
  // A slow request (a dead-letter listing) may be running on the admin
  // worker: it ends before the store closes, and none starts after it.
  if (admin) admin->join_worker();
  // A replay or purge under way runs to its end (it has no way to stop
  // halfway); the exporter and the store it works on stay open until then.
  // A reload waiting for the intake's thread gives up (`stopping`).
  operations.close();
  if (intake) intake->stop();  // stop accepting
  if (otlp_http) otlp_http->stop_accepting();
  // The io_context was stopped to leave run(); let the closes complete.
  io.restart();
  if (otlp_http) {
    // OTLP/HTTP requests whose spans are queued are answered once the
    // writer has stored them (the client would send them again otherwise).
    const auto until = std::chrono::steady_clock::now() + kOtlpAnswerWait;
    while (otlp_http->waiting() > 0 && std::chrono::steady_clock::now() < until) {
      try {
        io.run_for(std::chrono::milliseconds(10));
      } catch (const std::exception& e) {
        ThreadFailures::global().record_survived();
        spdlog::error("event loop: a handler failed and was dropped: {}", e.what());
      }
    }
    otlp_http->stop();
  }
  io.poll();
  if (writer) writer->stop();  // commits everything already queued
  if (assembler) assembler->stop();
  if (exporter) exporter->stop();
  store.reset();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  watchdog.join();
  spdlog::info("sidetrace stopped");
}

std::string Agent::Impl::reload() {
  if (!opts.reload) {
    spdlog::warn("reload requested but the agent runs on embedded defaults; nothing to re-read");
    return "refused: the agent was started without --config or --set";
  }
  config::Config next;
  try {
    next = opts.reload();
  } catch (const std::exception& e) {
    spdlog::error("reload refused, keeping the running configuration: {}", e.what());
    return std::string("refused: ") + e.what();
  }
  auto changed = config::changed_keys(cfg, next);
  if (changed.empty()) {
    // The API key may live outside the configuration (api_key_file): read it
    // again, and let a sending paused by a 401/403 try at once.
    try {
      exporter->update_options(upstream_options(cfg));
    } catch (const std::exception& e) {
      spdlog::error("reload refused, keeping the running configuration: {}", e.what());
      return std::string("refused: ") + e.what();
    }
    spdlog::info("reload: no change in the configuration; credentials read again");
    return "no change";
  }
  for (const auto& key : changed) {
    if (config::needs_restart(key)) {
      spdlog::warn("reload: {} changed but takes effect only after a restart", key);
    }
  }
  std::shared_ptr<const ipc::Redactor> next_redactor;
  try {
    next_redactor = make_redactor(next);
    exporter->update_options(upstream_options(next));
  } catch (const std::exception& e) {
    spdlog::error("reload refused, keeping the running configuration: {}", e.what());
    return std::string("refused: ") + e.what();
  }
  redactor.store(std::move(next_redactor));
  spdlog::set_level(spdlog::level::from_str(next.log.level));
  // Keys that need a restart keep their running values.
  for (const auto& key : changed) {
    if (!config::needs_restart(key)) {
      spdlog::info("reload: {} applied", key);
    }
  }
  config::Config applied = next;
  applied.data_dir = cfg.data_dir;
  applied.listen = cfg.listen;
  applied.intake = cfg.intake;
  applied.admin = cfg.admin;
  applied.exporter = cfg.exporter;
  applied.buffer.sync = cfg.buffer.sync;
  applied.trace.max_open_traces = cfg.trace.max_open_traces;
  cfg = std::move(applied);
  return fmt::format("reloaded: {} key(s) changed", changed.size());
}

namespace {
// POST /quarantine/release/<percent-encoded trace id>
constexpr std::string_view kReleasePath = "/quarantine/release/";
}  // namespace

AdminResponse Agent::Impl::handle(const std::string& method, const std::string& target) {
  AdminResponse r;
  if (handle_viewer(recent, method, target, &r)) return r;
  std::string path = target.substr(0, target.find('?'));
  if (path == "/healthz") {
    std::string stuck = stuck_reason(components());
    r.status = stuck.empty() ? 200 : 503;
    r.body = (stuck.empty() ? "ok" : stuck) + "\n";
  } else if (path == "/readyz") {
    std::string why = not_ready_reason(components());
    if (why.empty()) {
      r.body = "ready\n";
    } else {
      r.status = 503;
      r.body = why + "\n";
    }
  } else if (path == "/metrics") {
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = render_metrics(components(), clock);
  } else if (path == "/status") {
    r.body = render_status(components(), clock);
  } else if (path == "/deadletter" && method == "GET") {
    if (!deadletter_action(*store, "list", &r.body)) r.status = 500;
  } else if (path == "/deadletter/replay" && method == "POST") {
    return operation_started(operations.start(
        kReplayKind, [this](OperationProgress& p) { return replay_operation(p); }));
  } else if (path == "/deadletter/purge" && method == "POST") {
    return operation_started(
        operations.start(kPurgeKind, [this](OperationProgress& p) { return purge_operation(p); }));
  } else if (handle_operations(operations, method, target, &r)) {
    return r;
  } else if (path == "/quarantine" && method == "GET") {
    if (!quarantine_action(*store, "list", {}, &r.body)) r.status = 500;
  } else if (path.starts_with(kReleasePath) && method == "POST") {
    std::string id;
    std::string reason;
    if (!url_decode(path.substr(kReleasePath.size()), &id) || id.empty()) {
      r.status = 400;
      r.body = "malformed trace id\n";
    } else if (buffer::Status s =
                   store->meta_get(std::string(trace::kQuarantinePrefix) + id, &reason);
               !s.ok()) {
      r.status = s.IsNotFound() ? 404 : 500;
      r.body =
          s.IsNotFound() ? fmt::format("trace {} is not set aside\n", id) : s.ToString() + "\n";
    } else if (assembler) {
      assembler->release(id);
      r.body = fmt::format("released trace {}: it is being built again\n", id);
    } else {
      r.status = 503;
      r.body = "the assembler is not running\n";
    }
  } else if (path == "/reload" && method == "POST") {
    return operation_started(
        operations.start(kReloadKind, [this](OperationProgress&) { return reload_operation(); }));
  } else {
    r.status = 404;
    r.body = "not found\n";
  }
  return r;
}

OperationOutcome Agent::Impl::replay_operation(OperationProgress& progress) {
  uint64_t count = 0, bytes = 0;
  if (buffer::Status s = upstream::deadletter_stats(*store, &count, &bytes); !s.ok()) {
    return {false, "cannot read the dead-letter store: " + s.ToString()};
  }
  progress.set_total(count);
  auto on_page = [&progress](size_t done) { progress.set_done(done); };
  size_t n = 0;
  std::string error;
  // A running delivery takes the records as batches at once; the file
  // exporter finds them at the next start.
  if (auto* delivery = dynamic_cast<upstream::Delivery*>(exporter.get())) {
    n = delivery->replay_deadletters(on_page, &error);
  } else if (buffer::Status s = upstream::deadletter_replay(*store, &n, on_page); !s.ok()) {
    error = s.ToString();
  }
  progress.set_done(n);
  if (!error.empty()) {
    return {false, fmt::format("cannot replay dead letters: {} ({} replayed before)", error, n)};
  }
  return {true, fmt::format("replayed {} dead-lettered batch(es)", n)};
}

OperationOutcome Agent::Impl::purge_operation(OperationProgress& progress) {
  uint64_t count = 0, bytes = 0;
  if (buffer::Status s = upstream::deadletter_stats(*store, &count, &bytes); !s.ok()) {
    return {false, "cannot read the dead-letter store: " + s.ToString()};
  }
  progress.set_total(count);
  size_t n = 0;
  buffer::Status s =
      upstream::deadletter_purge(*store, &n, [&progress](size_t done) { progress.set_done(done); });
  progress.set_done(n);
  if (!s.ok()) {
    return {false,
            fmt::format("cannot purge dead letters: {} ({} purged before)", s.ToString(), n)};
  }
  return {true, fmt::format("purged {} dead-lettered batch(es)", n)};
}

OperationOutcome Agent::Impl::reload_operation() {
  // Reloads run on the intake's thread, as a SIGHUP does.
  auto done = std::make_shared<std::promise<std::string>>();
  std::future<std::string> result_of = done->get_future();
  net::post(io, [this, done] { done->set_value(reload()); });
  const auto until = std::chrono::steady_clock::now() + kReloadWait;
  // Looks at `stopping` now and then: a stopping agent runs no more reloads.
  while (result_of.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
    if (stopping || std::chrono::steady_clock::now() >= until) {
      return {false, "the agent did not take the reload in time (stopping or overloaded)"};
    }
  }
  std::string result = result_of.get();
  const bool ok = result.starts_with("reloaded") || result.starts_with("no change");
  return {ok, std::move(result)};
}

int Agent::run() {
  Impl& d = *impl_;
  // The handlers are in place before start-up begins: a stop signal that
  // comes while the store opens or the sockets bind (systemd may send one as
  // soon as it has started the unit) waits in the loop and stops the agent in
  // order once it runs, instead of killing it half started.
  net::signal_set signals(d.io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal =
      [&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        spdlog::info("received signal {}; stopping", sig);
        d.stopping = true;
        d.io.stop();
      };
  signals.async_wait(on_signal);
  net::signal_set hup(d.io, SIGHUP);
  std::function<void(const boost::system::error_code&, int)> on_hup =
      [&](const boost::system::error_code& ec, int) {
        if (ec) return;
        spdlog::info("received SIGHUP; reloading the configuration");
        systemd::notify_reloading();
        std::string result = d.reload();
        systemd::notify("READY=1\nSTATUS=serving; last reload: " + result);
        hup.async_wait(on_hup);
      };
  hup.async_wait(on_hup);
  d.start();
  // Pings systemd's watchdog from the loop (when WatchdogSec= is set).
  systemd::Watchdog watchdog(d.io, [&d] { return stuck_reason(d.components()).empty(); });
  watchdog.start();

  // One more thread for intake decoding when the machine has the cores.
  std::thread second;
  if (std::thread::hardware_concurrency() > 2) {
    second = std::thread([&] {
      set_thread_name("st-intake");
      run_loop(d.io);
    });
  }
  run_loop(d.io);
  if (second.joinable()) {
    d.io.stop();
    second.join();
  }
  watchdog.stop();
  signals.cancel();
  hup.cancel();
  d.shutdown();
  return 0;
}

void setup_logging(const std::string& level) {
  auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("sidetrace", sink);
  // Under systemd the journal stamps each line; elsewhere include the time.
  if (std::getenv("JOURNAL_STREAM") != nullptr || std::getenv("INVOCATION_ID") != nullptr) {
    logger->set_pattern("%l %v");
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(level));
  spdlog::flush_on(spdlog::level::warn);
  spdlog::flush_every(std::chrono::seconds(1));
}

}  // namespace sidetrace::agent
