// How fast the assembler builds a backlog of traces back from the store: the
// work that bounds the drain after an outage (bench/compare), where the
// traces stored while the upstream was down no longer fit the assembler's
// memory and are found again by rescans of the pending records.
//
// ASSEMBLE_BENCH_TRACES traces (default 100,000) of 5 ~500-byte events, with
// random trace ids, are stored as the writer stores them (group commits of
// 50 traces), none notified; then an assembler recovers them and emits every
// one, while a delivery thread reads and acknowledges the outbox as it grows.
// The assembler runs on a manual clock, so that no round waits out a quiet
// period; cpu_us_per_trace is its thread's CPU time. record_reads: the
// traces read where their pending records say (all those a rescan that read
// pending to its end brought in; the rest through their runs).
// One JSON object:
// {"bench":"assemble","traces":...,"traces_per_s":...,"cpu_us_per_trace":...}
// ASSEMBLE_BENCH_DIR: where the store goes (default: the temp directory).
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/messages.h"
#include "bench/thread_cpu.h"
#include "buffer/store.h"
#include "common/clock.h"
#include "trace/assembler.h"

using namespace sidetrace;
using bench::thread_cpu_s;
namespace fs = std::filesystem;

namespace {

constexpr int kEventsPerTrace = 5;
constexpr int kTracesPerCommit = 50;

[[noreturn]] void fail(const char* what, const buffer::Status& s) {
  std::fprintf(stderr, "assemble_bench: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

}  // namespace

int main() {
  const char* n_traces = std::getenv("ASSEMBLE_BENCH_TRACES");
  const uint64_t traces = n_traces ? std::strtoull(n_traces, nullptr, 10) : 100000;
  const char* base = std::getenv("ASSEMBLE_BENCH_DIR");
  const fs::path dir = fs::path(base ? base : fs::temp_directory_path().string()) /
                       ("sidetrace-assemble-" + std::to_string(::getpid()));
  fs::remove_all(dir);

  ManualClock clock;
  buffer::StoreOptions so;
  so.data_dir = dir.string();
  so.sync = buffer::SyncMode::kOs;
  so.max_bytes = 64ull << 30;
  so.clock = &clock;
  std::unique_ptr<buffer::Store> store;
  buffer::Status s = buffer::Store::open(so, &store);
  if (!s.ok()) fail("open", s);

  // The backlog: each commit holds 50 whole traces, as a steady load's do.
  std::mt19937_64 rng(42);
  char id[33];
  uint64_t n = 0;
  std::vector<ipc::Message> msgs;
  std::vector<buffer::Committed> committed;
  for (uint64_t t = 0; t < traces;) {
    msgs.clear();
    for (int k = 0; k < kTracesPerCommit && t < traces; ++k, ++t) {
      std::snprintf(id, sizeof(id), "%016llx%016llx", static_cast<unsigned long long>(rng()),
                    static_cast<unsigned long long>(rng()));
      for (int e = 0; e < kEventsPerTrace; ++e) {
        ipc::Message m;
        m.trace_id = id;
        m.id = std::to_string(++n);
        m.recv_ns = clock.now_ns();
        m.raw = bench::event_bytes(n, m.trace_id);
        msgs.push_back(std::move(m));
      }
    }
    committed.clear();
    s = store->append(msgs, &committed);
    if (!s.ok()) fail("append", s);
  }
  clock.advance(std::chrono::seconds(10));

  // Delivery, as the agent's takes the outbox: read and acknowledged as it
  // grows, so that documents wait in memory, not in the store.
  std::mutex mu;
  std::condition_variable cv;
  bool grew = false, done = false;
  store->set_outbox_listener([&] {
    {
      std::lock_guard lock(mu);
      grew = true;
    }
    cv.notify_one();
  });
  std::thread delivery([&] {
    uint64_t from = 0;
    std::vector<buffer::OutboxEntry> entries;
    std::vector<uint64_t> seqs;
    for (;;) {
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return grew || done; });
        if (done) return;
        grew = false;
      }
      for (;;) {
        entries.clear();
        if (!store->read_outbox(from, 1024, 16 << 20, &entries).ok() || entries.empty()) break;
        seqs.clear();
        for (const auto& e : entries)
          seqs.push_back(e.seq);
        from = seqs.back() + 1;
        if (!store->ack_outbox(seqs).ok()) break;
      }
    }
  });

  // Rebuilt and emitted: rounds until every trace went out, the clock
  // stepping past each wait (quiet period, rescan interval).
  trace::Assembler assembler(*store, *store, clock);
  const auto t0 = std::chrono::steady_clock::now();
  const double cpu0 = thread_cpu_s();
  s = assembler.recover();
  if (!s.ok()) fail("recover", s);
  while (assembler.stats().emitted < traces) {
    assembler.poll();
    clock.advance(std::chrono::seconds(2));
    const trace::AssemblerStats st = assembler.stats();
    if (st.store_errors > 0 || st.quarantined > 0) {
      std::fprintf(stderr, "assemble_bench: %llu store errors, %llu traces set aside\n",
                   static_cast<unsigned long long>(st.store_errors),
                   static_cast<unsigned long long>(st.quarantined));
      return 1;
    }
  }
  const double cpu = thread_cpu_s() - cpu0;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_one();
  delivery.join();
  const trace::AssemblerStats st = assembler.stats();
  std::printf(
      "{\"bench\":\"assemble\",\"traces\":%llu,\"messages\":%llu,\"seconds\":%.2f,"
      "\"traces_per_s\":%.0f,\"events_per_s\":%.0f,\"cpu_us_per_trace\":%.2f,"
      "\"rescans\":%llu,\"cache_misses\":%llu,\"record_reads\":%llu}\n",
      static_cast<unsigned long long>(traces), static_cast<unsigned long long>(n), wall,
      static_cast<double>(traces) / wall, static_cast<double>(n) / wall,
      cpu * 1e6 / static_cast<double>(traces), static_cast<unsigned long long>(st.rescans),
      static_cast<unsigned long long>(st.cache_misses),
      static_cast<unsigned long long>(st.record_reads));
  store.reset();
  fs::remove_all(dir);
  return 0;
}
