// Power cuts under load. With buffer.sync = "fsync", a message counts as
// persisted once its group commit is synced; a power cut (everything not
// synced is lost: testing::PowerCutFileSystem) must not lose any of them.
// Each cycle: the store opens on what the last cut left, every message
// persisted in any earlier cycle is read back, then a writer persists a load
// until the power goes off at a random point.
//
// SIDETRACE_POWER_CUTS sets the number of cycles (default 20).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "buffer/store.h"
#include "buffer/testing/fault_env.h"
#include "buffer/testing/power_cut_fs.h"
#include "buffer/testing/temp_dir.h"
#include "buffer/writer.h"
#include "common/wait_until.h"

namespace sidetrace::buffer {
namespace {

using testing::PowerCutFileSystem;
using testing::TempDir;

int cycles() {
  const char* v = std::getenv("SIDETRACE_POWER_CUTS");
  return v ? std::atoi(v) : 20;
}

// The messages the writer reported persisted.
struct Persisted {
  std::mutex mu;
  std::map<std::string, std::set<uint64_t>> seqs;  // trace id -> seqs
  size_t count = 0;
  void add(std::span<const Committed> c) {
    std::lock_guard lock(mu);
    for (const Committed& m : c) {
      if (seqs[m.trace_id].insert(m.seq).second) ++count;
    }
  }
  size_t size() {
    std::lock_guard lock(mu);
    return count;
  }
};

struct Outcome {
  size_t persisted = 0;        // messages reported persisted, in all cycles
  size_t lost = 0;             // ... of which not in the store after a cut
  uint64_t dropped_bytes = 0;  // unsynced bytes the cuts threw away
  uint64_t moved = 0;          // messages the log's front moved to its head
};

// Traces that come and go beside the load: each is stored, emitted and
// taken by retention at once, so that the log's front keeps moving over
// the load's messages (pending: they move to the head).
void churn(Store& store, int cycle, const std::atomic<bool>& stop) {
  for (uint64_t round = 0; !stop; ++round) {
    std::vector<ipc::Message> in(100);
    for (auto& m : in) {
      m.trace_id = "churn" + std::to_string(cycle) + "-" + std::to_string(round);
      m.raw = std::string(1000, 'z');
    }
    std::vector<Committed> out;
    if (!store.append(in, &out).ok()) continue;  // the power is off
    Emission e;
    e.trace_id = in[0].trace_id;
    e.state.revision = 1;
    e.state.first_emit_ns = e.state.last_emit_ns = e.emitted_ns = 1;
    for (const Committed& c : out)
      e.state.max_seq = std::max(e.state.max_seq, c.seq);
    e.pending_seqs = {out[0].seq};
    e.document = make_document("{}");
    uint64_t seq = 0;
    (void)store.emit(e, &seq);
    (void)store.ack_outbox({&seq, 1});
    (void)store.expire(2, 0, 100);
  }
}

// Emits, acknowledges and expires every trace with pending records (the load
// of the cycles before, each of its messages read back after a cut by now),
// and forgets them in `persisted`: with churn, the load of a hundred cycles
// would otherwise fill the quota with pending messages, which nothing may
// drop, and later cycles could persist nothing.
void retire_load(Store& store, Persisted& persisted) {
  std::vector<Committed> records;
  ASSERT_TRUE(store.scan_pending(0, SIZE_MAX, &records).ok());
  // Per trace: its records' seqs and the last position they stand for.
  std::map<std::string, std::pair<std::vector<uint64_t>, uint64_t>> by_trace;
  for (const Committed& r : records) {
    auto& [seqs, last] = by_trace[r.trace_id];
    seqs.push_back(r.seq);
    last = std::max(last, r.seq + std::max<uint32_t>(r.record_messages, 1) - 1);
  }
  std::lock_guard lock(persisted.mu);
  for (const auto& [trace_id, records_of] : by_trace) {
    Emission e;
    e.trace_id = trace_id;
    e.state.revision = 1;
    e.state.first_emit_ns = e.state.last_emit_ns = e.emitted_ns = 1;
    e.pending_seqs = records_of.first;
    e.state.max_seq = records_of.second;
    e.document = make_document("{}");
    uint64_t seq = 0;
    ASSERT_TRUE(store.emit(e, &seq).ok());
    ASSERT_TRUE(store.ack_outbox({&seq, 1}).ok());
    auto it = persisted.seqs.find(trace_id);
    if (it == persisted.seqs.end()) continue;
    persisted.count -= it->second.size();
    persisted.seqs.erase(it);
  }
  ASSERT_TRUE(store.expire(2, 0, by_trace.size() + 1).ok());
  std::vector<Committed> left;
  ASSERT_TRUE(store.scan_pending(0, SIZE_MAX, &left).ok());
  EXPECT_TRUE(left.empty()) << left.size() << " pending records left";
}

// `n` cycles of load and a power cut with `sync`; every store opens after a
// cut (asserted), and what is missing is counted and forgotten.
Outcome power_cuts(SyncMode sync, int n, bool with_churn = false) {
  Outcome out;
  TempDir dir;
  auto fs = std::make_shared<PowerCutFileSystem>();
  std::unique_ptr<rocksdb::Env> env = testing::make_env(fs);
  StoreOptions o;
  o.data_dir = dir.str();
  o.env = env.get();
  o.sync = sync;
  if (with_churn) o.max_bytes = 64 << 20;  // the front moves past 8 MiB of garbage
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  Persisted persisted;

  for (int cycle = 0; cycle <= n; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    std::unique_ptr<Store> store;
    Status s = Store::open(o, &store);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return out;

    // What was persisted before the earlier cuts is read back.
    {
      std::lock_guard lock(persisted.mu);
      for (auto& [trace_id, want] : persisted.seqs) {
        std::vector<StoredEvent> got;
        EXPECT_TRUE(store->read_trace(trace_id, &got).ok());
        std::set<uint64_t> have;
        for (const StoredEvent& e : got)
          have.insert(e.seq);
        for (auto it = want.begin(); it != want.end();) {
          if (have.count(*it)) {
            ++it;
          } else {
            ++out.lost;
            it = want.erase(it);
          }
        }
      }
    }
    if (cycle == n) break;
    if (with_churn) {
      retire_load(*store, persisted);
      if (::testing::Test::HasFatalFailure()) return out;
    }

    BoundedQueue<ipc::MessageBatch> q(8 << 20);
    WriterOptions wo;
    wo.commit_delay = std::chrono::milliseconds(rng() % 3);
    Writer w(
        *store, q, [&](std::span<const Committed> c) { persisted.add(c); }, system_clock(), wo);
    w.start();
    std::atomic<bool> stop{false};
    std::thread churner;
    if (with_churn) churner = std::thread([&, cycle] { churn(*store, cycle, stop); });
    // With churn, a bounded load: the store is not to fill with it.
    const uint64_t limit = with_churn ? 5000 : UINT64_MAX;
    std::thread producer([&, cycle] {
      uint64_t i = 0;
      while (!stop && i < limit) {
        ipc::MessageBatch b;
        const size_t k = 1 + i % 7;
        for (size_t j = 0; j < k; ++j, ++i) {
          ipc::Message m;
          m.trace_id = "c" + std::to_string(cycle) + "-t" + std::to_string(i / 5);
          m.raw = std::string(100 + i % 400, static_cast<char>('a' + i % 26));
          m.recv_ns = system_clock().now_ns();
          b.push_back(std::move(m));
        }
        if (!q.try_push(b, k * 300)) std::this_thread::yield();
      }
    });
    // After a while under load, the power goes off between a write and
    // its sync.
    const size_t target = persisted.size() + 50 + rng() % 1000;
    EXPECT_TRUE(wait_until([&] { return persisted.size() >= target; }));
    if (with_churn) {
      // ... and once the front has moved messages of the load.
      const uint64_t moved = store->counters().log_moved_messages;
      EXPECT_TRUE(wait_until([&] { return store->counters().log_moved_messages > moved; }));
    }
    fs->cut_after_writes(1 + static_cast<int>(rng() % 4));
    EXPECT_TRUE(wait_until([&] { return fs->is_off(); }));
    fs->cut();  // in case the writes did not come
    stop = true;
    producer.join();
    if (churner.joinable()) churner.join();
    w.stop();
    out.moved += store->counters().log_moved_messages;
    store.reset();
    out.dropped_bytes += fs->drop_unsynced();
  }
  out.persisted = persisted.size();
  return out;
}

TEST(PowerCutTest, WithFsyncEveryPersistedMessageSurvivesPowerCutsUnderLoad) {
  const Outcome o = power_cuts(SyncMode::kFsync, cycles());
  EXPECT_EQ(o.lost, 0u) << "of " << o.persisted << " persisted";
  EXPECT_GT(o.persisted, 0u);
  EXPECT_GT(o.dropped_bytes, 0u) << "no cut found anything unsynced to lose";
  RecordProperty("persisted", static_cast<int>(o.persisted));
}

// The log's front moves messages still needed to its head, then deletes the
// files it passed: a cut at any point of that loses none of them.
TEST(PowerCutTest, WithFsyncMessagesTheLogsFrontMovesSurvivePowerCuts) {
  const Outcome o = power_cuts(SyncMode::kFsync, std::max(cycles() / 2, 1), true);
  EXPECT_EQ(o.lost, 0u) << "of " << o.persisted << " persisted";
  EXPECT_GT(o.moved, 0u) << "the front never moved over the load's messages";
  RecordProperty("moved", static_cast<int>(o.moved));
}

// With "os" a message counts as persisted once the kernel has it: a power cut
// loses what was written since the store's last sync (a memtable flush or a
// new log file). The store still opens, with every message before that.
TEST(PowerCutTest, WithOsAPowerCutLosesOnlyWhatWasNotYetSynced) {
  const Outcome o = power_cuts(SyncMode::kOs, 5);
  EXPECT_GT(o.persisted, 0u);
  EXPECT_LE(o.lost, o.persisted);
  std::printf("sync=os, 5 power cuts: %zu of %zu persisted messages lost, %llu bytes unsynced\n",
              o.lost, o.persisted, static_cast<unsigned long long>(o.dropped_bytes));
  RecordProperty("persisted", static_cast<int>(o.persisted));
  RecordProperty("lost", static_cast<int>(o.lost));
}

}  // namespace
}  // namespace sidetrace::buffer
