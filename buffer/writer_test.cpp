#include "buffer/writer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "buffer/store.h"
#include "buffer/testing/fault_env.h"
#include "buffer/testing/held_transform.h"
#include "buffer/testing/temp_dir.h"
#include "common/wait_until.h"
#include "ipc/event.h"
#include "ipc/redact.h"
#include "ipc/test_support.h"

namespace sidetrace::buffer {
namespace {

using testing::HeldTransform;
using testing::TempDir;

ipc::MessageBatch batch(const std::string& trace_id, int n, size_t size = 100) {
  ipc::MessageBatch b;
  for (int i = 0; i < n; ++i) {
    ipc::Message m;
    m.trace_id = trace_id;
    m.raw = std::string(size, 'r');
    m.recv_ns = system_clock().now_ns();
    b.push_back(std::move(m));
  }
  return b;
}

// A store with SyncMode::kOs in `dir`; null if it does not open.
std::unique_ptr<Store> open_store(const TempDir& dir) {
  StoreOptions o;
  o.data_dir = dir.str();
  o.sync = SyncMode::kOs;
  std::unique_ptr<Store> store;
  if (!Store::open(o, &store).ok()) return nullptr;
  return store;
}

struct Sink {
  std::mutex mu;
  std::vector<Committed> all;
  void operator()(std::span<const Committed> c) {
    std::lock_guard lock(mu);
    all.insert(all.end(), c.begin(), c.end());
  }
  size_t size() {
    std::lock_guard lock(mu);
    return all.size();
  }
};

TEST(WriterTest, PersistsEverythingFromSeveralProducersAndReportsCommits) {
  TempDir dir;
  StoreOptions o;
  o.data_dir = dir.str();  // fsync mode
  std::unique_ptr<Store> store;
  ASSERT_TRUE(Store::open(o, &store).ok());
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Sink sink;
  Writer w(*store, q, [&](std::span<const Committed> c) { sink(c); });
  w.start();
  std::vector<std::thread> producers;
  for (int p = 0; p < 3; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < 50; ++i) {
        auto b = batch("trace-" + std::to_string(p), 20);
        while (!q.try_push(b, 4096))
          std::this_thread::yield();
      }
    });
  }
  for (auto& t : producers)
    t.join();
  w.stop();
  WriterStats st = w.stats();
  EXPECT_EQ(st.persisted, 3000u);
  EXPECT_LE(st.commits, 3000u);
  ASSERT_EQ(sink.size(), 3000u);
  std::set<uint64_t> seqs;
  for (const auto& c : sink.all)
    seqs.insert(c.seq);
  EXPECT_EQ(seqs.size(), 3000u);
  EXPECT_EQ(w.latency().count(), 3000u);
  EXPECT_GT(w.latency().quantile_ns(0.99), 0u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(store->read_trace("trace-1", &ev).ok());
  EXPECT_EQ(ev.size(), 1000u);
  // Each notice carries the bytes stored under its seq.
  std::map<uint64_t, std::string> stored;
  for (int p = 0; p < 3; ++p) {
    ev.clear();
    ASSERT_TRUE(store->read_trace("trace-" + std::to_string(p), &ev).ok());
    for (auto& e : ev)
      stored[e.seq] = std::move(e.raw);
  }
  for (const auto& c : sink.all) {
    ASSERT_FALSE(c.raw.empty());
    EXPECT_EQ(c.raw, stored.at(c.seq));
  }
}

// Records what the writer reports to a receipt and, for each report, how
// many messages of `trace` the store held at that moment.
class RecordingReceipt : public ipc::Receipt {
 public:
  struct Call {
    Outcome outcome;
    size_t n;
    size_t stored;
  };
  RecordingReceipt(Store* store, std::string trace) : store_(store), trace_(std::move(trace)) {}

  void settle(Outcome outcome, size_t n) noexcept override {
    std::vector<StoredEvent> ev;
    if (store_) (void)store_->read_trace(trace_, &ev);
    std::lock_guard lock(mu_);
    calls_.push_back({outcome, n, ev.size()});
  }
  std::vector<Call> calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  size_t settled(Outcome o) {
    size_t n = 0;
    for (const auto& c : calls())
      n += c.outcome == o ? c.n : 0;
    return n;
  }

 private:
  Store* store_;
  std::string trace_;
  std::mutex mu_;
  std::vector<Call> calls_;
};

ipc::MessageBatch with_receipt(ipc::MessageBatch b, const std::shared_ptr<ipc::Receipt>& r) {
  for (auto& m : b)
    m.receipt = r;
  return b;
}

TEST(WriterTest, SettlesReceiptsOnlyOnceTheirMessagesAreCommitted) {
  TempDir dir;
  StoreOptions o;
  o.data_dir = dir.str();  // fsync mode
  std::unique_ptr<Store> store;
  ASSERT_TRUE(Store::open(o, &store).ok());
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr);
  auto a = std::make_shared<RecordingReceipt>(store.get(), "a");
  auto b = std::make_shared<RecordingReceipt>(store.get(), "b");
  // Two requests' messages in one batch, and messages without a receipt
  // between them: the writer settles each run of a receipt's messages.
  ipc::MessageBatch mixed = with_receipt(batch("a", 30), a);
  for (auto& m : batch("plain", 5))
    mixed.push_back(std::move(m));
  for (auto& m : with_receipt(batch("b", 20), b))
    mixed.push_back(std::move(m));
  ASSERT_TRUE(q.try_push(mixed, 1));
  w.start();
  ASSERT_TRUE(wait_until([&] { return a->settled(ipc::Receipt::Outcome::kStored) == 30; }));
  ASSERT_TRUE(wait_until([&] { return b->settled(ipc::Receipt::Outcome::kStored) == 20; }));
  w.stop();
  // One group: one call each, made when every message was in the store.
  ASSERT_EQ(a->calls().size(), 1u);
  EXPECT_EQ(a->calls()[0].stored, 30u);
  ASSERT_EQ(b->calls().size(), 1u);
  EXPECT_EQ(b->calls()[0].stored, 20u);
  EXPECT_EQ(w.stats().persisted, 55u);
  // The writer let go of the receipts: only the test holds them now.
  EXPECT_EQ(a.use_count(), 1);
  EXPECT_EQ(b.use_count(), 1);
}

TEST(WriterTest, CallsAfterRoundOnceItIsDoneWithWhatItTook) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Sink sink;
  std::atomic<size_t> rounds{0}, persisted_at_round{0};
  WriterOptions wo;
  Writer* wp = nullptr;
  wo.after_round = [&](size_t) {
    // Called on the writer's thread, after the round's commits.
    persisted_at_round.store(wp->stats().persisted);
    rounds.fetch_add(1);
  };
  Writer w(
      *store, q, [&](std::span<const Committed> c) { sink(c); }, system_clock(), wo);
  wp = &w;
  w.start();
  auto b = batch("t", 5);
  ASSERT_TRUE(q.try_push(b, 1));
  ASSERT_TRUE(wait_until([&] { return rounds.load() >= 1; }));
  EXPECT_EQ(persisted_at_round.load(), 5u);
  // Idle, the writer has no round to report.
  const size_t idle_rounds = rounds.load();
  auto b2 = batch("t", 3);
  ASSERT_TRUE(q.try_push(b2, 1));
  ASSERT_TRUE(wait_until([&] { return persisted_at_round.load() == 8; }));
  w.stop();
  EXPECT_LE(rounds.load(), idle_rounds + 2);
}

TEST(WriterTest, SettlesReceiptsOfMessagesTheQuotaRefused) {
  TempDir dir;
  StoreOptions o;
  o.data_dir = dir.str();
  o.sync = SyncMode::kOs;
  o.max_bytes = 20000;
  o.when_full = WhenFull::kDropNewest;
  std::unique_ptr<Store> store;
  ASSERT_TRUE(Store::open(o, &store).ok());
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr);
  w.start();
  auto r = std::make_shared<RecordingReceipt>(nullptr, "t");
  for (int i = 0; i < 40; ++i) {
    auto b = with_receipt(batch("t", 1, 1000), r);
    ASSERT_TRUE(q.try_push(b, 1));
  }
  ASSERT_TRUE(wait_until([&] {
    return r->settled(ipc::Receipt::Outcome::kStored) + r->settled(ipc::Receipt::Outcome::kFull) ==
           40;
  }));
  w.stop();
  EXPECT_EQ(r->settled(ipc::Receipt::Outcome::kStored), w.stats().persisted);
  EXPECT_EQ(r->settled(ipc::Receipt::Outcome::kFull), w.stats().dropped_full);
  EXPECT_GT(w.stats().dropped_full, 0u);
  EXPECT_EQ(r->settled(ipc::Receipt::Outcome::kFailed), 0u);
}

TEST(WriterTest, DropNewestCountsRefusals) {
  TempDir dir;
  StoreOptions o;
  o.data_dir = dir.str();
  o.sync = SyncMode::kOs;
  o.max_bytes = 20000;
  o.when_full = WhenFull::kDropNewest;
  std::unique_ptr<Store> store;
  ASSERT_TRUE(Store::open(o, &store).ok());
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr);
  w.start();
  for (int i = 0; i < 40; ++i) {
    auto b = batch("t", 1, 1000);
    ASSERT_TRUE(q.try_push(b, 1));
    // One message per group: wait until each is handled.
    ASSERT_TRUE(wait_until([&] {
      auto s = w.stats();
      return s.persisted + s.dropped_full == static_cast<uint64_t>(i + 1);
    }));
  }
  w.stop();
  WriterStats st = w.stats();
  EXPECT_GT(st.persisted, 10u);
  EXPECT_GT(st.dropped_full, 10u);
  EXPECT_LE(store->counters().live_bytes, o.max_bytes);
}

// A store on a filesystem the test can make full, and writer options that
// retry resuming it quickly.
class FullDiskWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    o.data_dir = dir.str();
    o.env = env.get();
    ASSERT_TRUE(Store::open(o, &store).ok());
    wo.resume_interval = std::chrono::milliseconds(1);
    wo.max_resume_interval = std::chrono::milliseconds(20);
  }

  TempDir dir;
  std::shared_ptr<testing::NoSpaceFileSystem> fs = std::make_shared<testing::NoSpaceFileSystem>();
  std::unique_ptr<rocksdb::Env> env = testing::make_env(fs);
  StoreOptions o;
  std::unique_ptr<Store> store;
  BoundedQueue<ipc::MessageBatch> q{64 << 20};
  WriterOptions wo;
};

TEST_F(FullDiskWriterTest, FullDiskDropsCountedAndResumesByItself) {
  Sink sink;
  Writer w(
      *store, q, [&](std::span<const Committed> c) { sink(c); }, system_clock(), wo);
  w.start();

  auto push = [&](const std::string& t) {
    auto b = batch(t, 10);
    ASSERT_TRUE(q.try_push(b, 1));
  };
  push("before");
  ASSERT_TRUE(wait_until([&] { return w.stats().persisted == 10; }));

  fs->set_full(true);
  push("during");
  ASSERT_TRUE(wait_until([&] { return w.stats().dropped_no_space >= 10; }));
  EXPECT_TRUE(w.stats().degraded);
  EXPECT_GT(fs->failures(), 0u);
  for (int i = 0; i < 5; ++i)
    push("during");
  ASSERT_TRUE(wait_until([&] { return w.stats().dropped_no_space == 60; }));

  fs->set_full(false);
  // Writing resumes by itself: keep offering until a message is persisted.
  ASSERT_TRUE(wait_until([&] {
    if (q.size() == 0) push("after");
    return w.stats().persisted > 10;
  }));
  EXPECT_FALSE(w.stats().degraded);
  w.stop();

  // Nothing stored was corrupted: the store reopens with what was persisted.
  uint64_t persisted = w.stats().persisted;
  store.reset();
  ASSERT_TRUE(Store::open(o, &store).ok());
  std::vector<Committed> pending;
  ASSERT_TRUE(store->scan_pending(0, 100000, &pending).ok());
  uint64_t recorded = 0;
  for (const auto& p : pending)
    recorded += p.record_messages;
  EXPECT_EQ(recorded, persisted);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(store->read_trace("before", &ev).ok());
  EXPECT_EQ(ev.size(), 10u);
  ev.clear();
  ASSERT_TRUE(store->read_trace("during", &ev).ok());
  EXPECT_TRUE(ev.empty());
}

// A write of another part of the agent (here a metadata write, as delivery
// makes) fails on a full disk while no messages arrive: the writer still
// resumes the store once space returns, so that those writes succeed again.
TEST_F(FullDiskWriterTest, SettlesReceiptsOfMessagesAFullDiskLost) {
  Writer w(*store, q, nullptr, system_clock(), wo);
  w.start();
  fs->set_full(true);
  auto r = std::make_shared<RecordingReceipt>(nullptr, "t");
  auto b = with_receipt(batch("t", 10), r);
  ASSERT_TRUE(q.try_push(b, 1));
  ASSERT_TRUE(wait_until([&] { return r->settled(ipc::Receipt::Outcome::kFailed) == 10; }));
  fs->set_full(false);
  // Once the store resumes, later messages are stored and settled as such.
  ASSERT_TRUE(wait_until([&] {
    if (q.size() == 0 && r->settled(ipc::Receipt::Outcome::kStored) == 0) {
      auto again = with_receipt(batch("t", 1), r);
      (void)q.try_push(again, 1);
    }
    return r->settled(ipc::Receipt::Outcome::kStored) > 0;
  }));
  w.stop();
  EXPECT_EQ(r->settled(ipc::Receipt::Outcome::kStored), w.stats().persisted);
}

TEST_F(FullDiskWriterTest, ResumesAStoreThatFailedElsewhereWhileIdle) {
  Writer w(*store, q, nullptr, system_clock(), wo);
  w.start();

  fs->set_full(true);
  EXPECT_FALSE(store->meta_put("k", "v").ok());
  EXPECT_TRUE(store->needs_resume());
  ASSERT_TRUE(wait_until([&] { return w.stats().degraded; }));
  fs->set_full(false);
  ASSERT_TRUE(wait_until([&] { return !store->needs_resume() && !w.stats().degraded; }));
  EXPECT_TRUE(store->meta_put("k", "v").ok());
  EXPECT_EQ(w.stats().persisted, 0u);
  w.stop();
}

// A reopen that fails (the disk is still full) leaves the store closed; it
// answers errors, and goes away cleanly.
TEST_F(FullDiskWriterTest, AStoreWhoseReopenFailedAnswersErrorsAndClosesCleanly) {
  fs->set_full(true);
  EXPECT_FALSE(store->meta_put("k", "v").ok());
  EXPECT_FALSE(store->resume().ok());
  EXPECT_TRUE(store->needs_resume());
  std::string v;
  EXPECT_FALSE(store->meta_get("k", &v).ok());
  std::vector<StoredEvent> ev;
  EXPECT_FALSE(store->read_trace("t", &ev).ok());
  store.reset();
  fs->set_full(false);
  ASSERT_TRUE(Store::open(o, &store).ok());
}

TEST(WriterTest, TransformRedactsBeforeAnythingReachesTheStore) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  ipc::RedactOptions ro;
  ro.detectors = {"api_keys", "emails"};
  std::string error;
  ipc::RedactorSlot slot(ipc::Redactor::create(ro, &error));
  ASSERT_TRUE(slot.load()) << error;
  ipc::RedactStats rstats;
  WriterOptions wo;
  wo.transform = [&](ipc::Message& m) { return slot.apply(m, &rstats); };
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr, system_clock(), wo);
  w.start();

  const std::string secret = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyz0";
  auto event = [](const std::string& id, const std::string& input) {
    ipc::Message m;
    m.trace_id = "redacted-trace";
    m.id = id;
    m.recv_ns = system_clock().now_ns();
    m.raw = ipc::testing::MapBuilder()
                .uint("v", 1)
                .str("kind", "event")
                .str("trace_id", "redacted-trace")
                .str("id", id)
                .str("type", "TOOL")
                .str("input", input)
                .build();
    return m;
  };
  ipc::MessageBatch b;
  b.push_back(event("e1", "key " + secret + " for jane@example.com"));
  b.push_back(event("e2", "nothing secret"));
  const std::string clean_raw = b[1].raw;
  ASSERT_TRUE(q.try_push(b, 2));
  w.stop();

  WriterStats st = w.stats();
  EXPECT_EQ(st.persisted, 2u);
  EXPECT_EQ(st.transformed, 1u);
  EXPECT_EQ(st.transform_errors, 0u);
  ipc::RedactCounters rc = rstats.snapshot();
  EXPECT_EQ(rc.messages_checked, 2u);
  EXPECT_EQ(rc.matches["api_keys"], 1u);
  EXPECT_EQ(rc.matches["emails"], 1u);

  std::vector<StoredEvent> ev;
  ASSERT_TRUE(store->read_trace("redacted-trace", &ev).ok());
  ASSERT_EQ(ev.size(), 2u);
  bool saw_redacted = false;
  for (const StoredEvent& e : ev) {
    EXPECT_EQ(e.raw.find(secret), std::string::npos);
    EXPECT_EQ(e.raw.find("jane@example.com"), std::string::npos);
    ipc::Event decoded;
    ASSERT_TRUE(ipc::decode_event(e.raw, ipc::DecodeLimits{}, &decoded, nullptr, nullptr));
    if (decoded.id == "e1") {
      saw_redacted = true;
      EXPECT_EQ(decoded.input,
                ipc::testing::pack(std::string("key [REDACTED:api_keys] for [REDACTED:emails]")));
    } else {
      EXPECT_EQ(e.raw, clean_raw);
    }
  }
  EXPECT_TRUE(saw_redacted);
}

TEST(WriterTest, ThrowingTransformIsCountedAndTheMessageStillStored) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  WriterOptions wo;
  wo.transform = [](ipc::Message& m) -> bool {
    if (m.raw.size() > 100) throw std::runtime_error("too big to transform");
    m.raw = "small";
    return true;
  };
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr, system_clock(), wo);
  w.start();
  auto b = batch("t", 1, 10);
  auto big = batch("t", 1, 500);
  b.push_back(std::move(big[0]));
  ASSERT_TRUE(q.try_push(b, 2));
  w.stop();
  WriterStats st = w.stats();
  EXPECT_EQ(st.persisted, 2u);
  EXPECT_EQ(st.transformed, 1u);
  EXPECT_EQ(st.transform_errors, 1u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(store->read_trace("t", &ev).ok());
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].raw, "small");
  EXPECT_EQ(ev[1].raw, std::string(500, 'r'));
}

TEST(WriterTest, ReportsHowLongItHasBeenBusyWithAGroup) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  ManualClock clock(1'000'000'000);
  HeldTransform held;
  WriterOptions wo;
  wo.transform = held.transform();
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr, clock, wo);
  w.start();
  EXPECT_EQ(w.stats().busy_ns, 0u) << "busy while waiting for messages";
  ASSERT_TRUE(q.try_push(batch("t", 1), 1));
  ASSERT_TRUE(held.wait_entered());
  clock.advance(std::chrono::seconds(90));
  EXPECT_EQ(w.stats().busy_ns, 90'000'000'000u);
  held.release();
  ASSERT_TRUE(wait_until([&] { return w.stats().persisted == 1; }));
  EXPECT_TRUE(wait_until([&] { return w.stats().busy_ns == 0; }));
  w.stop();
}

TEST(WriterTest, WatermarkIsNowWhenIdleAndTheLastGroupDoneWithWhenBusy) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  ManualClock clock(1'000'000'000);
  HeldTransform held;
  WriterOptions wo;
  std::atomic<bool> hold{false};
  auto hold_fn = held.transform();
  wo.transform = [&](ipc::Message& m) { return hold.load() ? hold_fn(m) : false; };
  BoundedQueue<ipc::MessageBatch> q(64 << 20);
  Writer w(*store, q, nullptr, clock, wo);
  w.start();
  EXPECT_EQ(w.watermark_ns(5'000), 5'000u) << "idle: nothing on its way";

  auto first = batch("t", 2);
  first[0].recv_ns = 100;
  first[1].recv_ns = 200;
  ASSERT_TRUE(q.try_push(first, 2));
  ASSERT_TRUE(wait_until([&] { return w.stats().persisted == 2; }));
  ASSERT_TRUE(wait_until([&] { return w.watermark_ns(5'000) == 5'000u; }));

  hold.store(true);
  auto second = batch("t", 1);
  second[0].recv_ns = 300;
  ASSERT_TRUE(q.try_push(second, 1));
  ASSERT_TRUE(held.wait_entered());
  EXPECT_EQ(w.watermark_ns(5'000), 200u) << "busy: what was received after 200 may be on its way";
  EXPECT_EQ(w.watermark_ns(150), 150u) << "never past now";
  held.release();
  ASSERT_TRUE(wait_until([&] { return w.stats().persisted == 3; }));
  EXPECT_TRUE(wait_until([&] { return w.watermark_ns(5'000) == 5'000u; }));
  w.stop();
}

TEST(WriterTest, CommitDelayLetsMessagesArrivingOneByOneShareACommit) {
  TempDir dir;
  std::unique_ptr<Store> store = open_store(dir);
  ASSERT_TRUE(store);
  ManualClock clock(1'000'000'000);
  WriterOptions wo;
  wo.commit_delay = std::chrono::milliseconds(200);
  wo.commit_bytes = 2048;
  BoundedQueue<ipc::MessageBatch> q(64 << 20, wo.commit_bytes);
  Sink sink;
  Writer w(
      *store, q, [&](std::span<const Committed> c) { sink(c); }, clock, wo);
  w.start();
  // Three single messages received within the delay of the first (the
  // clock stands still): one commit for all three.
  for (int i = 0; i < 3; ++i) {
    auto b = batch("t", 1);
    b[0].recv_ns = clock.now_ns();
    ASSERT_TRUE(q.try_push(b, 100));
  }
  ASSERT_TRUE(wait_until([&] { return w.stats().persisted == 3; }));
  EXPECT_EQ(w.stats().commits, 1u);
  // A message already older than the delay is committed without waiting
  // for company, and commit_bytes in the queue end a wait early: both
  // commit well before a delay that long could pass.
  WriterOptions slow = wo;
  slow.commit_delay = std::chrono::hours(1);
  BoundedQueue<ipc::MessageBatch> q2(64 << 20, slow.commit_bytes);
  Writer w2(*store, q2, nullptr, clock, slow);
  w2.start();
  auto old = batch("u", 1);
  old[0].recv_ns = clock.now_ns() - 2 * 3'600'000'000'000ull;
  ASSERT_TRUE(q2.try_push(old, 100));
  ASSERT_TRUE(wait_until([&] { return w2.stats().persisted == 1; }));
  auto first = batch("v", 1);
  first[0].recv_ns = clock.now_ns();
  ASSERT_TRUE(q2.try_push(first, 100));
  ASSERT_TRUE(q2.try_push(batch("v", 3, 1000), 3000));
  ASSERT_TRUE(wait_until([&] { return w2.stats().persisted == 5; }));
  w2.stop();
  w.stop();
}

}  // namespace
}  // namespace sidetrace::buffer
