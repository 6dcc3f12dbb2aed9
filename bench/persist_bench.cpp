// Persistence benchmark: events/s through buffer::Writer (sync = os and
// fsync), receive->durable latency at a steady offered load (each sync mode), and peak RSS
// while a large backlog is persisted and nothing is consumed.
//
// Environment: PERSIST_BENCH_DIR (default: the system temp dir),
// PERSIST_BENCH_EVENTS (throughput runs, default 400000),
// PERSIST_BENCH_BACKLOG (backlog run, default 10000000), PERSIST_BENCH_LATENCY_S
// (each latency run, default 10: long enough to include the periodic flush of
// every column family that frees old WAL files), PERSIST_BENCH_ONLY (a
// comma-separated subset of backlog,os,fsync,latency; default all),
// PERSIST_BENCH_COMMIT_DELAY_MS (the writer's commit delay; default the
// agent's buffer.commit_delay_ms).
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <msgpack.hpp>

#include "buffer/store.h"
#include "buffer/writer.h"
#include "config/config.h"

using namespace sidetrace;
namespace fs = std::filesystem;

namespace {

bool selected(const char* part) {
  const char* only = std::getenv("PERSIST_BENCH_ONLY");
  if (!only || !*only) return true;
  std::string list = std::string(",") + only + ",";
  return list.find(std::string(",") + part + ",") != std::string::npos;
}

uint64_t env_u64(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : def;
}

// A ~500-byte protocol-v1 `event` message with unique ids.
std::string event_bytes(uint64_t n, const std::string& trace_id) {
  std::string id = std::to_string(n);
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(11);
  pk.pack("v");
  pk.pack(1);
  pk.pack("kind");
  pk.pack("event");
  pk.pack("trace_id");
  pk.pack(trace_id);
  pk.pack("id");
  pk.pack(id);
  pk.pack("type");
  pk.pack("GENERATION");
  pk.pack("name");
  pk.pack("llm.call");
  pk.pack("input");
  pk.pack(
      "{\"role\":\"user\",\"content\":\"Summarise the following support ticket and propose a "
      "reply; customer " +
      id + " reports that the export job fails after the upgrade with error E1234.\"}");
  pk.pack("output");
  pk.pack(
      "The export fails because the new schema renames a column; re-run the migration "
      "and retry. Ticket " +
      id + " can be closed once confirmed.");
  pk.pack("attrs");
  pk.pack_map(3);
  pk.pack("model");
  pk.pack("gpt-4o-mini");
  pk.pack("input_tokens");
  pk.pack(300);
  pk.pack("output_tokens");
  pk.pack(90);
  pk.pack("status");
  pk.pack("ok");
  pk.pack("latency_ms");
  pk.pack(1000);
  return std::string(buf.data(), buf.size());
}

// The writer as the agent runs it: with its default commit delay.
int64_t commit_delay_ms() {
  const char* v = std::getenv("PERSIST_BENCH_COMMIT_DELAY_MS");
  return v ? std::atoll(v) : config::Config{}.buffer.commit_delay_ms;
}
buffer::WriterOptions agent_writer_options() {
  buffer::WriterOptions o;
  o.commit_delay = std::chrono::milliseconds(commit_delay_ms());
  return o;
}

struct Env {
  fs::path dir;
  std::unique_ptr<buffer::Store> store;
  buffer::WriterOptions writer_options = agent_writer_options();
  BoundedQueue<ipc::MessageBatch> queue{16 << 20, writer_options.commit_bytes};
  std::atomic<uint64_t> committed{0};
  std::unique_ptr<buffer::Writer> writer;

  Env(const std::string& name, buffer::SyncMode sync) {
    const char* base = std::getenv("PERSIST_BENCH_DIR");
    dir = fs::path(base ? base : fs::temp_directory_path().string()) /
          ("sidetrace-persist-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    buffer::StoreOptions o;
    o.data_dir = dir.string();
    o.sync = sync;
    o.max_bytes = 64ull << 30;
    buffer::Status s = buffer::Store::open(o, &store);
    if (!s.ok()) {
      std::fprintf(stderr, "open: %s\n", s.ToString().c_str());
      std::exit(1);
    }
    writer = std::make_unique<buffer::Writer>(
        *store, queue, [this](std::span<const buffer::Committed> c) { committed += c.size(); },
        system_clock(), writer_options);
    writer->start();
  }
  ~Env() {
    writer->stop();
    writer.reset();
    store.reset();
    fs::remove_all(dir);
    // The space of what was just removed is freed (and, on a filesystem
    // mounted with discard, discarded) in the next journal commits: done
    // now, not in the middle of the next run's measurement.
    ::sync();
  }

  // `threads` producers push `total` events in batches of `batch`, building
  // each message as they go (as intake would).
  void produce(uint64_t total, int threads, size_t batch) {
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        uint64_t per = total / static_cast<uint64_t>(threads);
        for (uint64_t i = 0; i < per;) {
          auto [b, w] = make_batch(t, per, i, batch);
          push(b, w);
        }
      });
    }
    for (auto& th : ts)
      th.join();
  }

  // Builds every batch first, then pushes them from `threads` threads: the
  // timed part is the store's work, not message building. Returns the time
  // the first batch was pushed.
  std::chrono::steady_clock::time_point produce_prebuilt(uint64_t total, int threads,
                                                         size_t batch) {
    std::vector<std::vector<std::pair<ipc::MessageBatch, size_t>>> work(threads);
    uint64_t per = total / static_cast<uint64_t>(threads);
    for (int t = 0; t < threads; ++t) {
      for (uint64_t i = 0; i < per;)
        work[t].push_back(make_batch(t, per, i, batch));
    }
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        for (auto& [b, w] : work[t]) {
          for (auto& m : b)
            m.recv_ns = system_clock().now_ns();
          push(b, w);
        }
      });
    }
    for (auto& th : ts)
      th.join();
    return t0;
  }

  // Waits as the stream intake does when the queue is full: a short timer,
  // not a spin that would take the writer's CPU.
  void push(ipc::MessageBatch& b, size_t w) {
    while (!queue.try_push(b, w))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

  static std::pair<ipc::MessageBatch, size_t> make_batch(int t, uint64_t per, uint64_t& i,
                                                         size_t batch) {
    ipc::MessageBatch b;
    size_t w = 0;
    for (size_t k = 0; k < batch && i < per; ++k, ++i) {
      ipc::Message m;
      uint64_t n = static_cast<uint64_t>(t) * per + i;
      m.trace_id = "trace-" + std::to_string(t) + "-" + std::to_string(n / 20);
      m.raw = event_bytes(n, m.trace_id);
      m.recv_ns = system_clock().now_ns();
      w += m.weight();
      b.push_back(std::move(m));
    }
    return {std::move(b), w};
  }

  void wait_for(uint64_t n) {
    while (committed.load() < n)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
};

void throughput(buffer::SyncMode sync, const char* name, uint64_t events) {
  Env env(std::string("tp-") + name, sync);
  auto t0 = env.produce_prebuilt(events, 2, 256);
  env.wait_for(events / 2 * 2);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"bench\":\"persist\",\"sync\":\"%s\",\"events\":%llu,\"events_per_s\":%.0f}\n",
              name, static_cast<unsigned long long>(events / 2 * 2),
              static_cast<double>(events / 2 * 2) / s);
  std::fflush(stdout);
}

void latency(buffer::SyncMode sync, const char* name, uint64_t offered_per_s, double seconds) {
  Env env(std::string("lat-") + name, sync);
  // Warm up, then measure a steady load: one batch of 50 every 1 ms.
  env.produce(20000, 1, 50);
  env.wait_for(20000);
  const_cast<buffer::LatencyHistogram&>(env.writer->latency()).reset();
  const uint64_t per_tick = offered_per_s / 1000;
  const uint64_t ticks = static_cast<uint64_t>(seconds * 1000);
  auto start = std::chrono::steady_clock::now();
  uint64_t n = 1'000'000;
  for (uint64_t tick = 0; tick < ticks; ++tick) {
    std::this_thread::sleep_until(start + std::chrono::milliseconds(tick));
    ipc::MessageBatch b;
    size_t w = 0;
    for (uint64_t k = 0; k < per_tick; ++k, ++n) {
      ipc::Message m;
      m.trace_id = "lat-" + std::to_string(n / 20);
      m.raw = event_bytes(n, m.trace_id);
      m.recv_ns = system_clock().now_ns();
      w += m.weight();
      b.push_back(std::move(m));
    }
    env.push(b, w);
  }
  env.wait_for(20000 + per_tick * ticks);
  const auto& h = env.writer->latency();
  std::printf(
      "{\"bench\":\"persist_latency\",\"sync\":\"%s\",\"offered_per_s\":%llu,"
      "\"commit_delay_ms\":%lld,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
      name, static_cast<unsigned long long>(offered_per_s), static_cast<long long>(commit_delay_ms()),
      static_cast<double>(h.quantile_ns(0.5)) / 1e6,
      static_cast<double>(h.quantile_ns(0.99)) / 1e6);
  std::fflush(stdout);
}

uint64_t peak_rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

void backlog(uint64_t events) {
  { std::ofstream("/proc/self/clear_refs") << "5"; }  // reset the peak RSS
  uint64_t before = peak_rss_kib();
  auto t0 = std::chrono::steady_clock::now();
  {
    Env env("backlog", buffer::SyncMode::kOs);
    env.produce(events, 2, 256);
    env.wait_for(events / 2 * 2);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"bench\":\"backlog_rss\",\"events\":%llu,\"peak_rss_mib\":%.1f,\"rss_before_mib\":%.1f,"
      "\"seconds\":%.1f}\n",
      static_cast<unsigned long long>(events / 2 * 2), static_cast<double>(peak_rss_kib()) / 1024,
      static_cast<double>(before) / 1024, s);
  std::fflush(stdout);
}

}  // namespace

int main() {
  mallopt(M_ARENA_MAX, 2);  // as the agent does
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  uint64_t events = env_u64("PERSIST_BENCH_EVENTS", 400000);
  // The backlog first, so that its peak RSS is not inflated by memory the
  // allocator keeps from the other runs.
  if (selected("backlog")) backlog(env_u64("PERSIST_BENCH_BACKLOG", 10'000'000));
  if (selected("os")) throughput(buffer::SyncMode::kOs, "os", events);
  if (selected("fsync")) throughput(buffer::SyncMode::kFsync, "fsync", events);
  if (selected("latency")) {
    double seconds = static_cast<double>(env_u64("PERSIST_BENCH_LATENCY_S", 10));
    latency(buffer::SyncMode::kFsync, "fsync", 50000, seconds);
    latency(buffer::SyncMode::kOs, "os", 50000, seconds);
  }
  return 0;
}
