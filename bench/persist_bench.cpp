// Persistence benchmark: events/s through buffer::Writer (sync = os and
// fsync), receive->durable latency at a steady offered load (each sync mode), and peak RSS
// while a large backlog is persisted and nothing is consumed.
//
// After the fsync latency run, the disk's floor for the same load is measured
// on the same filesystem (bench/disk_floor.h, as disk_sync_bench does) beside
// a background writer at the rate the store itself wrote in the background
// during the run; the fsync line gives the floor and the ratio of the store's
// p99 to the floor's.
//
// Environment: PERSIST_BENCH_DIR (default: the system temp dir),
// PERSIST_BENCH_EVENTS (throughput runs, default 400000),
// PERSIST_BENCH_BACKLOG (backlog run, default 10000000), PERSIST_BENCH_LATENCY_S
// (each latency run, default 10: long enough to include the periodic flush of
// every column family that frees old WAL files), PERSIST_BENCH_ONLY (a
// comma-separated subset of backlog,os,fsync,latency; default all),
// PERSIST_BENCH_COMMIT_DELAY_MS and PERSIST_BENCH_COMMIT_BYTES (the writer's
// commit delay and bytes; default the agent's buffer.commit_delay_ms and
// buffer.commit_bytes).
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/disk_floor.h"
#include "bench/messages.h"
#include "buffer/store.h"
#include "buffer/writer.h"
#include "config/config.h"

using namespace sidetrace;
using bench::event_bytes;
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

// The writer as the agent runs it: with its default commit delay.
int64_t commit_delay_ms() {
  const char* v = std::getenv("PERSIST_BENCH_COMMIT_DELAY_MS");
  return v ? std::atoll(v) : config::Config{}.buffer.commit_delay_ms;
}
uint64_t commit_bytes() {
  const char* v = std::getenv("PERSIST_BENCH_COMMIT_BYTES");
  return v ? std::strtoull(v, nullptr, 10) : config::Config{}.buffer.commit_bytes;
}
buffer::WriterOptions agent_writer_options() {
  buffer::WriterOptions o;
  o.commit_delay = std::chrono::milliseconds(commit_delay_ms());
  o.commit_bytes = commit_bytes();
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

// Bytes written to storage by the process, or by one of its threads, as the
// kernel's I/O accounting counts them (write_bytes of /proc/self/io or of
// /proc/self/task/<tid>/io).
uint64_t io_write_bytes(const fs::path& io_file) {
  std::ifstream f(io_file);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("write_bytes:", 0) == 0) return std::strtoull(line.c_str() + 12, nullptr, 10);
  }
  return 0;
}

// The /proc/self/task/<tid> directory of the thread named `name`.
fs::path thread_dir(const std::string& name) {
  for (const auto& e : fs::directory_iterator("/proc/self/task")) {
    std::ifstream f(e.path() / "comm");
    std::string comm;
    std::getline(f, comm);
    if (comm == name) return e.path();
  }
  std::fprintf(stderr, "no thread named %s\n", name.c_str());
  std::exit(1);
}

// What the store writes during a run, split into the group commits' WAL
// appends and everything else: the background (flushes and compactions
// writing table files, the MANIFEST, RocksDB's log) beside which each group
// commit's sync waits.
//
// Counted by the kernel's I/O accounting: write_bytes charges each page a
// write dirties in the page cache (what is then written out to the disk) to
// the thread that wrote it, whether the thread still runs or not. The WAL is
// appended by the writer thread alone (the bench runs no other part of the
// agent); the table files are written by RocksDB's background threads. So the
// background is the process's write_bytes over the run minus the writer
// thread's. It counts pages (folios), not bytes: a write into a page already
// written out counts the whole page (or large folio) again, though the disk
// may write only the changed blocks. For files written front to back once, as
// the WAL and table files are, that is close to the bytes written (the WAL's
// count matches the bytes of the events). Not counted: preallocation
// (fallocate) and the filesystem's own metadata and journal. RocksDB's
// statistics would give flush and compaction bytes too, but the store does
// not enable them.
struct IoSplit {
  fs::path writer_io;
  uint64_t process = 0, writer = 0;

  static IoSplit now(const fs::path& writer_io) {
    return {writer_io, io_write_bytes("/proc/self/io"), io_write_bytes(writer_io)};
  }
};

void latency(buffer::SyncMode sync, const char* name, uint64_t offered_per_s, double seconds) {
  const uint64_t per_tick = offered_per_s / 1000;
  const uint64_t ticks = static_cast<uint64_t>(seconds * 1000);
  uint64_t p50_ns = 0, p99_ns = 0, raw_bytes = 0;
  double background_mib_s = 0, wal_mib_s = 0;
  fs::path root;
  {
    Env env(std::string("lat-") + name, sync);
    root = env.dir.parent_path();
    // Warm up, then measure a steady load: one batch of per_tick events every 1 ms.
    env.produce(20000, 1, 50);
    env.wait_for(20000);
    const_cast<buffer::LatencyHistogram&>(env.writer->latency()).reset();
    const IoSplit io0 = IoSplit::now(thread_dir("st-writer") / "io");
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
        raw_bytes += m.raw.size();
        w += m.weight();
        b.push_back(std::move(m));
      }
      env.push(b, w);
    }
    env.wait_for(20000 + per_tick * ticks);
    const IoSplit io1 = IoSplit::now(io0.writer_io);
    const double run_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const uint64_t writer = io1.writer - io0.writer;
    const uint64_t all = io1.process - io0.process;
    wal_mib_s = static_cast<double>(writer) / run_s / (1 << 20);
    background_mib_s = static_cast<double>(all > writer ? all - writer : 0) / run_s / (1 << 20);
    const auto& h = env.writer->latency();
    p50_ns = h.quantile_ns(0.5);
    p99_ns = h.quantile_ns(0.99);
  }  // The store is removed and its space freed before the floor is measured.
  std::printf(
      "{\"bench\":\"persist_latency\",\"sync\":\"%s\",\"offered_per_s\":%llu,"
      "\"commit_delay_ms\":%lld,\"commit_bytes\":%llu,\"p50_ms\":%.3f,\"p99_ms\":%.3f",
      name, static_cast<unsigned long long>(offered_per_s),
      static_cast<long long>(commit_delay_ms()), static_cast<unsigned long long>(commit_bytes()),
      static_cast<double>(p50_ns) / 1e6, static_cast<double>(p99_ns) / 1e6);
  if (sync == buffer::SyncMode::kFsync) {
    // The same load on the same filesystem, without the store, beside the
    // store's own background write rate.
    bench::DiskFloorOptions o;
    o.dir = root;
    o.events_per_ms = per_tick;
    o.event_bytes = static_cast<size_t>(raw_bytes / std::max<uint64_t>(per_tick * ticks, 1));
    o.background_mib_s = background_mib_s;
    o.seconds = seconds;
    bench::DiskFloor f = bench::measure_disk_floor(o);
    std::printf(
        ",\"wal_mib_s\":%.1f,\"floor_background_mib_s\":%.1f,\"floor_p50_ms\":%.3f,"
        "\"floor_p99_ms\":%.3f,\"p99_ratio_to_floor\":%.2f",
        wal_mib_s, background_mib_s, static_cast<double>(f.p50_ns) / 1e6,
        static_cast<double>(f.p99_ns) / 1e6,
        f.p99_ns ? static_cast<double>(p99_ns) / static_cast<double>(f.p99_ns) : 0.0);
  }
  std::printf("}\n");
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
