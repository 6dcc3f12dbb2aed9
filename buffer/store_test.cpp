#include "buffer/store.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/write_batch.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "buffer/detail/codec.h"
#include "buffer/testing/fault_env.h"
#include "buffer/testing/temp_dir.h"
#include "common/wait_until.h"

namespace sidetrace::buffer {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

ipc::Message msg(std::string trace_id, std::string raw, uint64_t recv_ns = 1000) {
  ipc::Message m;
  m.trace_id = std::move(trace_id);
  m.raw = std::move(raw);
  m.recv_ns = recv_ns;
  return m;
}

// 2,000 messages of 300 bytes over 7 traces (t0 … t6; t0 has 286 of them).
std::vector<ipc::Message> spread_messages() {
  std::vector<ipc::Message> in;
  for (int i = 0; i < 2000; ++i)
    in.push_back(msg("t" + std::to_string(i % 7), std::string(300, 'q')));
  return in;
}

std::unique_ptr<Store> open_store(const StoreOptions& o) {
  std::unique_ptr<Store> s;
  Status st = Store::open(o, &s);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return s;
}

StoreOptions options(const TempDir& dir) {
  StoreOptions o;
  o.data_dir = dir.str();
  o.sync = SyncMode::kOs;
  return o;
}

// A store in `dir` whose quota is `max_bytes`, opened with `*o`.
std::unique_ptr<Store> open_with_quota(const TempDir& dir, uint64_t max_bytes, StoreOptions* o) {
  *o = options(dir);
  o->max_bytes = max_bytes;
  return open_store(*o);
}

// The seqs of the trace's pending records.
std::vector<uint64_t> records_of(Store& s, const std::string& trace_id) {
  std::vector<Committed> pending;
  EXPECT_TRUE(s.scan_pending(0, SIZE_MAX, &pending).ok());
  std::vector<uint64_t> seqs;
  for (const auto& p : pending) {
    if (p.trace_id == trace_id) seqs.push_back(p.seq);
  }
  return seqs;
}

// Emits the trace's pending messages as the next revision.
uint64_t emit_all(Store& s, const std::string& trace_id, uint64_t now_ns,
                  const std::string& doc = "{}", const std::string& recipe = "") {
  TraceState cur;
  Status st = s.get_state(trace_id, &cur);
  EXPECT_TRUE(st.ok() || st.IsNotFound());
  std::vector<StoredEvent> events;
  EXPECT_TRUE(s.read_trace(trace_id, &events).ok());
  Emission e;
  e.trace_id = trace_id;
  e.expected_generation = cur.generation;
  e.state = cur;
  e.state.revision = cur.revision + 1;
  if (cur.revision == 0) e.state.first_emit_ns = now_ns;
  e.state.last_emit_ns = now_ns;
  for (const auto& ev : events)
    e.state.max_seq = std::max(e.state.max_seq, ev.seq);
  e.pending_seqs = records_of(s, trace_id);
  e.document = make_document(doc);
  e.recipe = recipe;
  e.emitted_ns = now_ns;
  uint64_t seq = 0;
  st = s.emit(e, &seq);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return seq;
}

// Appends `in` and emits its trace `trace_id` as the next revision; the
// outbox seq of the revision.
uint64_t append_and_emit(Store& s, const std::string& trace_id, std::vector<ipc::Message> in,
                         uint64_t now_ns, const std::string& doc = "{}",
                         const std::string& recipe = "") {
  std::vector<Committed> out;
  Status st = s.append(in, &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return emit_all(s, trace_id, now_ns, doc, recipe);
}

TEST(StoreTest, AppendAssignsSeqsAndReadsBackPerTraceAcrossReopen) {
  TempDir dir;
  {
    auto s = open_store(options(dir));
    std::vector<ipc::Message> in = {msg("a", "a1", 10), msg("b", "b1", 11), msg("a", "a2", 12)};
    std::vector<Committed> out;
    ASSERT_TRUE(s->append(in, &out).ok());
    // One notice per message, in the order given; a trace's messages of a
    // commit take consecutive seqs, traces in the order of their first.
    ASSERT_EQ(out.size(), 3u);
    EXPECT_EQ(out[0].seq, 1u);
    EXPECT_EQ(out[2].seq, 2u);
    EXPECT_EQ(out[1].seq, 3u);
    EXPECT_EQ(out[1].trace_id, "b");
    // One pending record per trace of the commit, on its first message.
    EXPECT_EQ(out[0].record_messages, 2u);
    EXPECT_EQ(out[1].record_messages, 1u);
    EXPECT_EQ(out[2].record_messages, 0u);
    EXPECT_GT(s->counters().live_bytes, 0u);
  }
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> more = {msg("a", "a3", 13)};
  ASSERT_TRUE(s->append(more, &out).ok());
  EXPECT_EQ(out[0].seq, 4u);  // the sequence continues after a reopen
  std::vector<StoredEvent> a;
  ASSERT_TRUE(s->read_trace("a", &a).ok());
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a[0].raw, "a1");
  EXPECT_EQ(a[0].recv_ns, 10u);
  EXPECT_EQ(a[1].raw, "a2");
  EXPECT_EQ(a[1].seq, 2u);
  EXPECT_EQ(a[2].raw, "a3");
  EXPECT_EQ(a[2].seq, 4u);
  // A trace id that is a prefix of another does not see the other's events.
  std::vector<ipc::Message> ab = {msg("ab", "x")};
  ASSERT_TRUE(s->append(ab, &out).ok());
  a.clear();
  ASSERT_TRUE(s->read_trace("a", &a).ok());
  EXPECT_EQ(a.size(), 3u);
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  ASSERT_EQ(pending.size(), 4u);  // a (2 messages), b, then a and ab
  EXPECT_EQ(pending[0].trace_id, "a");
  EXPECT_EQ(pending[0].seq, 1u);
  EXPECT_EQ(pending[0].record_messages, 2u);
  EXPECT_EQ(pending[1].trace_id, "b");
  EXPECT_EQ(pending[1].seq, 3u);
  EXPECT_EQ(pending[1].recv_ns, 11u);
  EXPECT_EQ(pending[2].seq, 4u);
  pending.clear();
  ASSERT_TRUE(s->scan_pending(2, 1, &pending).ok());  // no record at 2: a's run took it
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].seq, 3u);
}

// A trace's messages are found through its runs, one per commit, whatever
// range is asked for.
TEST(StoreTest, ATraceIsReadFromItsRunsInAnyRange) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> c1 = {msg("a", "a1"), msg("b", "b1"), msg("a", "a2"), msg("a", "a3")};
  std::vector<ipc::Message> c2 = {msg("b", "b2"), msg("a", "a4")};
  std::vector<ipc::Message> c3 = {msg("a", "a5"), msg("a", "a6")};
  for (auto* c : {&c1, &c2, &c3})
    ASSERT_TRUE(s->append(*c, &out).ok());
  auto read = [&](std::string_view trace_id, const TraceRange& range, bool* more) {
    std::vector<StoredEvent> ev;
    EXPECT_TRUE(s->read_trace(trace_id, range, &ev, more).ok());
    std::string got;
    for (const auto& e : ev)
      got += std::to_string(e.seq) + ":" + e.raw + " ";
    return got;
  };
  bool more = false;
  EXPECT_EQ(read("a", {}, &more), "1:a1 2:a2 3:a3 6:a4 7:a5 8:a6 ");
  EXPECT_FALSE(more);
  EXPECT_EQ(read("b", {}, &more), "4:b1 5:b2 ");
  EXPECT_EQ(read("a", {.from_seq = 2, .until_seq = 8}, &more), "2:a2 3:a3 6:a4 7:a5 ");
  EXPECT_EQ(read("a", {.from_seq = 4}, &more), "6:a4 7:a5 8:a6 ");
  EXPECT_EQ(read("a", {.from_seq = 3, .max_events = 2}, &more), "3:a3 6:a4 ");
  EXPECT_TRUE(more);
  EXPECT_EQ(read("a", {.from_seq = 7, .max_bytes = 1}, &more), "7:a5 ");
  EXPECT_TRUE(more);
  EXPECT_EQ(read("a", {.from_seq = 9}, &more), "");
  EXPECT_FALSE(more);
  // The same after the log is flushed and compacted into table files.
  ASSERT_TRUE(s->compact().ok());
  EXPECT_EQ(read("a", {.from_seq = 2, .until_seq = 8}, &more), "2:a2 3:a3 6:a4 7:a5 ");
}

// A pending record names where its messages were stored: they are read
// there, in seq order, within a bound of bytes; what is not there as
// recorded is NotFound.
TEST(StoreTest, RecordsAreReadWhereTheirMessagesWereStored) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> c1 = {msg("a", "a1"), msg("b", "b1"), msg("a", "a2")};
  std::vector<ipc::Message> c2 = {msg("a", "a3")};
  for (auto* c : {&c1, &c2})
    ASSERT_TRUE(s->append(*c, &out).ok());
  std::vector<RecordRef> a, b;
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  for (const Committed& c : pending)
    (c.trace_id == "a" ? a : b).push_back(RecordRef{c.seq, c.record_messages});
  ASSERT_EQ(a.size(), 2u);
  std::reverse(a.begin(), a.end());  // any order
  auto read = [&](std::string_view trace_id, const std::vector<RecordRef>& records,
                  size_t max_bytes = SIZE_MAX) {
    std::vector<StoredEvent> ev;
    Status st = s->read_records(trace_id, records, max_bytes, &ev);
    if (st.IsNotFound() || st.IsFull()) {
      EXPECT_TRUE(ev.empty());
      return std::string(st.IsFull() ? "full" : "not found");
    }
    EXPECT_TRUE(st.ok()) << st.ToString();
    std::string got;
    for (const auto& e : ev)
      got += std::to_string(e.seq) + ":" + e.raw + " ";
    return got;
  };
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(read("a", a), "1:a1 2:a2 4:a3 ");
    EXPECT_EQ(read("b", b), "3:b1 ");
    EXPECT_EQ(read("b", a), "not found");                  // another trace's messages
    EXPECT_EQ(read("a", {RecordRef{4, 2}}), "not found");  // past the log's head
    EXPECT_EQ(read("a", {}), "");
    // Past the first message, no more than max_bytes of them.
    EXPECT_EQ(read("a", a, 6), "1:a1 2:a2 4:a3 ");
    EXPECT_EQ(read("a", a, 5), "full");
    EXPECT_EQ(read("b", b, 1), "3:b1 ");
    // The same from table files.
    ASSERT_TRUE(s->compact().ok());
  }
}

// Retention takes a trace's messages up to the last revision's max_seq, also
// when that falls within a run, and the quota measure stays exact: it ends
// where a store that emitted the whole trace at once ends.
TEST(StoreTest, RetentionSplitsARunAtTheRevisionAndCountsExactly) {
  TempDir split_dir, whole_dir;
  auto split = open_store(options(split_dir));
  auto whole = open_store(options(whole_dir));
  std::vector<ipc::Message> in = {msg("p", "one"), msg("p", "second"), msg("p", "the third"),
                                  msg("p", "and the fourth")};
  std::vector<Committed> out;
  ASSERT_TRUE(split->append(in, &out).ok());
  // A first part up to seq 2 (its pending record stays: seqs 3 and 4 are owed).
  Emission e;
  e.trace_id = "p";
  e.state.revision = 1;
  e.state.first_emit_ns = e.state.last_emit_ns = e.emitted_ns = 1000;
  e.state.max_seq = 2;
  e.state.parts = 1;
  e.document = make_document("{}");
  uint64_t seq = 0;
  ASSERT_TRUE(split->emit(e, &seq).ok());
  ASSERT_TRUE(split->expire(2000, 0, 100).ok());
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(split->read_trace("p", &ev).ok());
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].seq, 3u);
  EXPECT_EQ(ev[0].raw, "the third");
  EXPECT_EQ(ev[1].raw, "and the fourth");
  EXPECT_EQ(split->counters().dropped_retained_events, 0u);  // retention counts traces
  EXPECT_EQ(split->counters().expired_traces, 1u);
  // The second part, then retention again: nothing of the trace is left.
  emit_all(*split, "p", 3000);
  ASSERT_TRUE(split->expire(4000, 0, 100).ok());
  ev.clear();
  ASSERT_TRUE(split->read_trace("p", &ev).ok());
  EXPECT_TRUE(ev.empty());

  append_and_emit(*whole, "p", in, 3000);
  ASSERT_TRUE(whole->expire(4000, 0, 100).ok());
  uint64_t acks[] = {1, 2};
  ASSERT_TRUE(split->ack_outbox(acks).ok());
  ASSERT_TRUE(whole->ack_outbox(acks).ok());
  EXPECT_EQ(split->counters().live_bytes, whole->counters().live_bytes);
  EXPECT_EQ(whole->counters().live_bytes, 1 + 1 + detail::kStateQuotaBytes);  // the state alone
}

// The bytes of the store's table files.
uint64_t table_bytes(const TempDir& dir) {
  uint64_t n = 0;
  for (const auto& f : fs::directory_iterator(dir.path() / "store")) {
    if (f.path().extension() == ".sst") n += f.file_size();
  }
  return n;
}

// `n` bytes that do not compress.
std::string noise(size_t n, uint64_t seed) {
  std::string s;
  for (uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1; s.size() < n;) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    s.push_back(static_cast<char>(x));
  }
  return s;
}

// Dropped messages stay in the log until its front passes them. Messages
// still needed at the front (a pending trace, a retained one) move to the
// head with their seqs, and everything holds across a reopen.
TEST(StoreTest, TheLogsFrontCarriesWhatIsStillNeeded) {
  TempDir dir;
  StoreOptions o;
  auto s = open_with_quota(dir, 512 << 10, &o);
  std::vector<Committed> out;
  std::vector<ipc::Message> pending = {msg("pending", "p1"), msg("pending", "p2")};
  ASSERT_TRUE(s->append(pending, &out).ok());
  std::vector<ipc::Message> kept = {msg("kept", "k1")};
  ASSERT_TRUE(s->append(kept, &out).ok());
  for (int i = 0; i < 200; ++i) {
    std::vector<ipc::Message> in = {msg("old" + std::to_string(i), noise(1000, i))};
    ASSERT_TRUE(s->append(in, &out).ok());
  }
  emit_all(*s, "kept", 5000);
  for (int i = 0; i < 200; ++i)
    emit_all(*s, "old" + std::to_string(i), 1000);
  std::vector<uint64_t> acks;
  for (uint64_t seq = 1; seq <= 201; ++seq)
    acks.push_back(seq);
  ASSERT_TRUE(s->ack_outbox(acks).ok());
  const uint64_t live_before = s->counters().live_bytes;

  // Retention takes the 200 old traces; their messages are past the bound
  // of garbage, so the front moves over them, down to the low mark.
  ASSERT_TRUE(s->expire(2000, 0, 1000).ok());
  EXPECT_EQ(s->counters().expired_traces, 200u);
  EXPECT_LE(s->counters().log_garbage_bytes, o.max_bytes / 16);
  EXPECT_GT(s->counters().log_garbage_bytes, 0u);
  EXPECT_EQ(s->counters().log_moved_messages, 3u);
  EXPECT_LT(s->counters().live_bytes, live_before - 200u * 1000u);
  // Where "pending" was first stored, its own messages are still read, or
  // nothing once the front's files are gone: never anything else.
  std::vector<StoredEvent> at;
  const RecordRef pending_record[] = {{1, 2}};
  Status at_first = s->read_records("pending", pending_record, SIZE_MAX, &at);
  if (at_first.ok()) {
    ASSERT_EQ(at.size(), 2u);
    EXPECT_EQ(at[0].raw, "p1");
    EXPECT_EQ(at[1].raw, "p2");
    EXPECT_EQ(at[1].seq, 2u);
  } else {
    EXPECT_TRUE(at_first.IsNotFound()) << at_first.ToString();
  }

  auto check = [&](Store& st) {
    std::vector<StoredEvent> ev;
    ASSERT_TRUE(st.read_trace("pending", &ev).ok());
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[0].seq, 1u);
    EXPECT_EQ(ev[0].raw, "p1");
    EXPECT_EQ(ev[1].seq, 2u);
    EXPECT_EQ(ev[1].raw, "p2");
    ev.clear();
    ASSERT_TRUE(st.read_trace("kept", &ev).ok());
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].seq, 3u);
    EXPECT_EQ(ev[0].raw, "k1");
    std::vector<Committed> records;
    ASSERT_TRUE(st.scan_pending(0, 10, &records).ok());
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].trace_id, "pending");
  };
  check(*s);
  const uint64_t live = s->counters().live_bytes;
  s.reset();
  s = open_store(o);
  check(*s);
  EXPECT_EQ(s->counters().live_bytes, live);
  // New messages take seqs past the moved ones, and retention takes the
  // moved messages as any others.
  std::vector<ipc::Message> more = {msg("kept", "k2")};
  out.clear();
  ASSERT_TRUE(s->append(more, &out).ok());
  EXPECT_GT(out[0].seq, 203u + 3u);
  emit_all(*s, "kept", 6000);
  ASSERT_TRUE(s->expire(7000, 0, 1000).ok());
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("kept", &ev).ok());
  EXPECT_TRUE(ev.empty());
  // Below the bound of garbage they stay in the log for now.
  EXPECT_GT(s->counters().log_garbage_bytes, 0u);
}

// Under the quota the front drops the retained traces it meets, the first
// received first, and stops at the first message still needed: a trace's
// late message, not yet emitted, stays.
TEST(StoreTest, TheQuotaDropsAtTheLogsFrontUpToWhatIsStillNeeded) {
  TempDir dir;
  StoreOptions o;
  auto s = open_with_quota(dir, 1 << 20, &o);
  append_and_emit(*s, "a", {msg("a", std::string(1000, 'a'))}, 1000);
  std::vector<Committed> out;
  std::vector<ipc::Message> late = {msg("a", "late")};
  ASSERT_TRUE(s->append(late, &out).ok());
  const uint64_t late_seq = out[0].seq;
  for (int i = 0; i < 100; ++i) {
    std::string t = "t" + std::to_string(i);
    append_and_emit(*s, t, {msg(t, std::string(1000, 'x'))}, 2000 + static_cast<uint64_t>(i));
  }
  const uint64_t before = s->counters().live_bytes;
  // Room for about 20 of the traces' 1 KB.
  const uint64_t ask = o.max_bytes - before + 20 * 1000;
  ASSERT_TRUE(s->ensure_room(ask).ok());
  StoreCounters c = s->counters();
  EXPECT_LE(c.live_bytes + ask, o.max_bytes);
  EXPECT_GE(c.dropped_retained_traces, 20u);
  EXPECT_LT(c.dropped_retained_traces, 100u);
  // "a" went first (received first), all but its late message.
  TraceState st;
  ASSERT_TRUE(s->get_state("a", &st).ok());
  EXPECT_TRUE(st.events_deleted);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("a", &ev).ok());
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].seq, late_seq);
  EXPECT_EQ(ev[0].raw, "late");
  EXPECT_EQ(records_of(*s, "a"), std::vector<uint64_t>{late_seq});
  // The newest stay whole, and the measure matches a reopened store's.
  ev.clear();
  ASSERT_TRUE(s->read_trace("t99", &ev).ok());
  EXPECT_EQ(ev.size(), 1u);
  s.reset();
  s = open_store(o);
  EXPECT_EQ(s->counters().live_bytes, c.live_bytes);
}

// Moving the front writes more than the memtables may hold: the writes wait
// for flushes, which the front's own reads must not hold up. The table files
// the front passed are deleted.
TEST(StoreTest, TheLogsFrontMovesMoreThanTheMemtablesHoldAndDeletesFiles) {
  TempDir dir;
  StoreOptions o = options(dir);
  o.max_bytes = 64 << 20;  // the front moves past 8 MiB of garbage
  o.memtable_budget_bytes = 6 << 20;
  auto s = open_store(o);
  std::atomic<bool> done{false};
  uint64_t tables = 0;
  std::thread work([&] {
    std::vector<Committed> out;
    for (int i = 0; i < 800; ++i) {  // 8 MiB still needed at the front
      std::vector<ipc::Message> in;
      for (int j = 0; j < 10; ++j)
        in.push_back(msg("pending", noise(1000, 10 * i + j)));
      EXPECT_TRUE(s->append(in, &out).ok());
    }
    for (int i = 0; i < 900; ++i) {  // then 9 MiB that retention takes
      std::string id = "gone" + std::to_string(i);
      std::vector<ipc::Message> in;
      for (int j = 0; j < 10; ++j)
        in.push_back(msg(id, noise(1000, 10000 + 10 * i + j)));
      append_and_emit(*s, id, in, 1000);
    }
    tables = table_bytes(dir);
    // Each round moves the front a bounded way.
    for (int round = 0; round < 4; ++round)
      EXPECT_TRUE(s->expire(2000, 0, 1000).ok());
    done = true;
  });
  if (!wait_until([&] { return done.load(); }, std::chrono::seconds(60))) {
    ADD_FAILURE() << "the store did not finish: a write waits for memory it holds";
    std::_Exit(1);
  }
  work.join();
  EXPECT_EQ(s->counters().log_moved_messages, 8000u);
  EXPECT_LE(s->counters().log_garbage_bytes, o.max_bytes / 16);
  // 17 MiB were written, and 8 of them again at the head: the disk holds
  // less all the same, as the files below the front went (those of the
  // first level stay until they move down).
  EXPECT_GT(tables, 8u << 20);
  EXPECT_TRUE(wait_until([&] { return table_bytes(dir) < tables * 9 / 10; }))
      << table_bytes(dir) << " of " << tables;
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("pending", &ev).ok());
  ASSERT_EQ(ev.size(), 8000u);
  EXPECT_EQ(ev[7999].raw, noise(1000, 7999));
}

// A store written before the log keyed each message by its trace. Those
// messages are read with the trace's new ones, in seq order, and retention
// and the quota measure take them as before.
TEST(StoreTest, MessagesStoredBeforeTheLogAreReadAndDropped) {
  TempDir dir;
  {
    rocksdb::Options o;
    o.create_if_missing = true;
    o.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* name : {"default", "events", "pending", "traces", "outbox", "meta"})
      cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* raw = nullptr;
    fs::create_directories(fs::path(dir.str()) / "store");
    ASSERT_TRUE(rocksdb::DB::Open(o, (fs::path(dir.str()) / "store").string(), cfs, &h, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    rocksdb::WriteBatch b;
    int64_t live = 0;
    uint64_t seq = 1;
    for (const char* trace_id : {"t", "u", "t"}) {
      std::string k = detail::event_key(trace_id, seq);
      std::string v = detail::be64(100 + seq) + "old" + std::to_string(seq);
      ASSERT_TRUE(b.Put(h[1], k, v).ok());
      ASSERT_TRUE(
          b.Put(h[2], detail::be64(seq), detail::pending_value(100 + seq, 1, 0, trace_id)).ok());
      live += static_cast<int64_t>(k.size() + v.size() + detail::pending_bytes(trace_id));
      ++seq;
    }
    ASSERT_TRUE(b.Put(h[3], detail::kCounterEventNext, detail::be64(seq)).ok());
    ASSERT_TRUE(b.Put(h[3], detail::kCounterLive, detail::encode_i64(live)).ok());
    ASSERT_TRUE(db->Write(rocksdb::WriteOptions(), &b).ok());
    for (auto* handle : h)
      ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "new4"), msg("t", "new5")};
  ASSERT_TRUE(s->append(in, &out).ok());
  EXPECT_EQ(out[0].seq, 4u);  // after the old store's seqs
  std::vector<StoredEvent> ev;
  bool more = false;
  ASSERT_TRUE(s->read_trace("t", {.from_seq = 2, .max_events = 2}, &ev, &more).ok());
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].raw, "old3");
  EXPECT_EQ(ev[0].recv_ns, 103u);
  EXPECT_EQ(ev[1].raw, "new4");
  EXPECT_TRUE(more);
  ev.clear();
  ASSERT_TRUE(s->read_trace("t", &ev).ok());
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[0].raw, "old1");
  EXPECT_EQ(ev[3].raw, "new5");

  emit_all(*s, "t", 1000);
  emit_all(*s, "u", 1000);
  uint64_t acks[] = {1, 2};
  ASSERT_TRUE(s->ack_outbox(acks).ok());
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 2u);
  for (const char* trace_id : {"t", "u"}) {
    ev.clear();
    ASSERT_TRUE(s->read_trace(trace_id, &ev).ok());
    EXPECT_TRUE(ev.empty()) << trace_id;
  }
  EXPECT_EQ(s->counters().live_bytes, 2 * (1 + 1 + detail::kStateQuotaBytes));  // two states
}

// A record learnt of after its messages were emitted is released alone, and
// only a record that exists counts against the quota measure.
TEST(StoreTest, ReleasePendingDeletesOnlyExistingRecordsOnce) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("r", "r1"), msg("q", "q1")};
  ASSERT_TRUE(s->append(in, &out).ok());
  const uint64_t live = s->counters().live_bytes;
  const uint64_t seq = out[0].seq;
  ASSERT_TRUE(s->release_pending("r", {&seq, 1}).ok());
  const uint64_t released = s->counters().live_bytes;
  EXPECT_LT(released, live);
  EXPECT_EQ(records_of(*s, "r"), std::vector<uint64_t>{});
  EXPECT_EQ(records_of(*s, "q").size(), 1u);
  ASSERT_TRUE(s->release_pending("r", {&seq, 1}).ok());  // absent now
  EXPECT_EQ(s->counters().live_bytes, released);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("r", &ev).ok());
  EXPECT_EQ(ev.size(), 1u);  // the events themselves stay
}

// Pending records from before the commit time, and from before the message
// count (one per message), still read.
TEST(StoreCodecTest, PendingRecordsOfEveryFormDecode) {
  uint64_t recv = 0, stored = 0;
  uint32_t n = 0;
  std::string_view id;
  std::string v = detail::pending_value(123, 7, 1'765'000'000'000'000'000, "trace-x");
  ASSERT_TRUE(detail::decode_pending(v, &recv, &n, &stored, &id));
  EXPECT_EQ(recv, 123u);
  EXPECT_EQ(n, 7u);
  EXPECT_EQ(stored, 1'765'000'000'000'000'000u);
  EXPECT_EQ(id, "trace-x");
  std::string counted;
  detail::put_be64(&counted, 789 | detail::kPendingCounted);
  counted += std::string("\0\0\0\3", 4) + "cnt";
  ASSERT_TRUE(detail::decode_pending(counted, &recv, &n, &stored, &id));
  EXPECT_EQ(recv, 789u);
  EXPECT_EQ(n, 3u);
  EXPECT_EQ(stored, 0u);
  EXPECT_EQ(id, "cnt");
  std::string legacy;
  detail::put_be64(&legacy, 456);
  legacy += "old";
  stored = 99;
  ASSERT_TRUE(detail::decode_pending(legacy, &recv, &n, &stored, &id));
  EXPECT_EQ(recv, 456u);
  EXPECT_EQ(n, 1u);
  EXPECT_EQ(stored, 0u);
  EXPECT_EQ(id, "old");
  EXPECT_FALSE(detail::decode_pending("short", &recv, &n, &stored, &id));
  std::string zero = detail::pending_value(1, 0, 5, "z");
  EXPECT_FALSE(detail::decode_pending(zero, &recv, &n, &stored, &id));
  // A record with the time but no trace id.
  std::string no_id = detail::pending_value(1, 1, 5, "");
  EXPECT_FALSE(detail::decode_pending(no_id, &recv, &n, &stored, &id));
}

// Trace states are written compact and read back whole, at the edges of every
// field; the fixed forms of earlier versions still read.
TEST(StoreCodecTest, TraceStatesOfEveryFormDecode) {
  TraceState typical;
  typical.revision = 1;
  typical.first_emit_ns = typical.last_emit_ns = 1'765'000'000'123'456'789;
  typical.max_seq = 48'213'377;
  typical.generation = 1;
  typical.pin_first = typical.pin_last = 9'120'331;
  TraceState deleted = typical;
  deleted.revision = 7;
  deleted.last_emit_ns += 86'400'000'000'000;
  deleted.deleted_ns = typical.first_emit_ns - 5;  // the clock stepped back
  deleted.events_deleted = true;
  deleted.parts = 3;
  deleted.undelivered = 2;
  deleted.pin_last = deleted.pin_first + 40;
  TraceState highest;
  highest.revision = UINT32_MAX;
  highest.first_emit_ns = highest.max_seq = highest.generation = UINT64_MAX;
  highest.last_emit_ns = 0;
  highest.deleted_ns = UINT64_MAX;
  highest.parts = highest.undelivered = UINT32_MAX;
  highest.pin_first = UINT64_MAX;
  highest.pin_last = 0;
  TraceState flagged_only;
  flagged_only.events_deleted = true;
  for (const TraceState& st : {typical, deleted, highest, flagged_only, TraceState{}}) {
    const std::string v = detail::encode_state(st);
    TraceState back;
    back.revision = 99;  // every field is set by the decoding
    back.deleted_ns = back.pin_last = 99;
    ASSERT_TRUE(detail::decode_state(v, &back)) << st.revision;
    EXPECT_EQ(detail::encode_state_fixed(back), detail::encode_state_fixed(st)) << st.revision;
    // Cut short, or with a byte too many, it is malformed.
    for (size_t len = 0; len < v.size(); ++len)
      EXPECT_FALSE(detail::decode_state(v.substr(0, len), &back)) << st.revision << " " << len;
    EXPECT_FALSE(detail::decode_state(v + '\0', &back)) << st.revision;
    // So is a flag it does not know.
    std::string unknown = v;
    unknown[1] = static_cast<char>(unknown[1] | 0x40);
    EXPECT_FALSE(detail::decode_state(unknown, &back)) << st.revision;
    // The fixed forms read the same (those of earlier versions never held a
    // revision that high: its top byte would be the compact form's tag).
    if (st.revision >= 0xff000000u) continue;
    TraceState fixed;
    ASSERT_TRUE(detail::decode_state(detail::encode_state_fixed(st), &fixed));
    EXPECT_EQ(detail::encode_state(fixed), v);
  }
  EXPECT_LE(detail::encode_state(typical).size(), 26u);
  EXPECT_EQ(detail::encode_state_fixed(typical).size(), detail::kStateBytes);
  // The forms from before the pins and before the count of undelivered entries.
  TraceState older;
  const std::string fixed = detail::encode_state_fixed(deleted);
  ASSERT_TRUE(detail::decode_state(fixed.substr(0, detail::kStateBytesV2), &older));
  EXPECT_EQ(older.undelivered, 2u);
  EXPECT_EQ(older.pin_first, 0u);
  ASSERT_TRUE(detail::decode_state(fixed.substr(0, detail::kStateBytesV1), &older));
  EXPECT_EQ(older.undelivered, 0u);
  EXPECT_EQ(older.max_seq, deleted.max_seq);
  EXPECT_TRUE(older.events_deleted);
  EXPECT_FALSE(detail::decode_state(fixed.substr(0, detail::kStateBytesV1 - 1), &older));
}

// Runs are written compact and read back whole; the fixed form of earlier
// versions still reads.
TEST(StoreCodecTest, RunsOfEveryFormDecode) {
  const std::string prefix = detail::run_prefix("trace-r");
  auto parse = [&](const detail::Run& written, const std::string& value, detail::Run* r) {
    return detail::parse_run(detail::run_key("trace-r", written.seq), prefix.size(), value, r);
  };
  const detail::Run runs[] = {
      {48'213'377, 48'213'377, 5, 2'140},  // where it was stored
      {1'000, 7'000'000, 3, 900},          // moved to the head of the log
      {7'000'000, 1'000, 1, 1},            // a position below its seq
      {UINT64_MAX, 0, UINT32_MAX, UINT32_MAX},
  };
  for (const detail::Run& w : runs) {
    const std::string v = detail::run_value(w);
    detail::Run r;
    ASSERT_TRUE(parse(w, v, &r)) << w.seq;
    EXPECT_EQ(r.seq, w.seq);
    EXPECT_EQ(r.pos, w.pos);
    EXPECT_EQ(r.n, w.n);
    EXPECT_EQ(r.bytes, w.bytes);
    for (size_t len = 0; len < v.size(); ++len)
      EXPECT_FALSE(parse(w, v.substr(0, len), &r)) << w.seq << " " << len;
    EXPECT_FALSE(parse(w, v + '\0', &r)) << w.seq;
  }
  EXPECT_LE(detail::run_value(runs[0]).size(), 5u);
  // A run of no messages is malformed, in either form.
  detail::Run r;
  EXPECT_FALSE(parse(runs[0], detail::run_value({1, 1, 0, 10}), &r));
  std::string fixed;
  detail::put_be64(&fixed, 7'000'000);
  detail::put_be32(&fixed, 3);
  detail::put_be32(&fixed, 900);
  ASSERT_TRUE(parse(runs[1], fixed, &r));
  EXPECT_EQ(r.seq, 1'000u);
  EXPECT_EQ(r.pos, 7'000'000u);
  EXPECT_EQ(r.n, 3u);
  EXPECT_EQ(r.bytes, 900u);
  EXPECT_FALSE(parse(runs[1], fixed.substr(0, 15), &r));
  std::string none = fixed;
  none[11] = 0;  // n = 0
  EXPECT_FALSE(parse(runs[1], none, &r));
}

// A pending record keeps when its commit was written (the store's clock), so
// that a trace found again by a rescan is quiet from then, and keeps it across
// a reopen.
TEST(StoreTest, PendingRecordsKeepTheirCommitTime) {
  TempDir dir;
  ManualClock clock;
  StoreOptions o = options(dir);
  o.clock = &clock;
  std::vector<Committed> out;
  {
    auto s = open_store(o);
    std::vector<ipc::Message> first = {msg("a", "a1"), msg("a", "a2")};
    ASSERT_TRUE(s->append(first, &out).ok());
    clock.advance(std::chrono::seconds(3));
    std::vector<ipc::Message> second = {msg("b", "b1")};
    ASSERT_TRUE(s->append(second, &out).ok());
  }
  auto s = open_store(o);
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].trace_id, "a");
  EXPECT_EQ(pending[0].stored_ns, clock.now_ns() - 3'000'000'000u);
  EXPECT_EQ(pending[1].trace_id, "b");
  EXPECT_EQ(pending[1].stored_ns, clock.now_ns());
}

TEST(StoreTest, EmitIsAtomicAndSurvivesReopen) {
  TempDir dir;
  uint64_t live_after = 0;
  {
    auto s = open_store(options(dir));
    int notified = 0;
    s->set_outbox_listener([&] { ++notified; });
    std::vector<Committed> out;
    std::vector<ipc::Message> in = {msg("t1", "x"), msg("t2", "y"), msg("t1", "z")};
    ASSERT_TRUE(s->append(in, &out).ok());
    EXPECT_EQ(emit_all(*s, "t1", 5000, "{\"doc\":1}"), 1u);
    EXPECT_EQ(notified, 1);
    EXPECT_EQ(s->outbox_entries(), 1u);
    EXPECT_EQ(s->outbox_bytes(), 9u);
    live_after = s->counters().live_bytes;
  }
  auto s = open_store(options(dir));
  EXPECT_EQ(s->outbox_entries(), 1u);
  EXPECT_EQ(s->outbox_bytes(), 9u);
  EXPECT_EQ(s->counters().live_bytes, live_after);
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 10, 1 << 20, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].trace_id, "t1");
  EXPECT_EQ(ob[0].revision, 1u);
  EXPECT_EQ(ob[0].emitted_ns, 5000u);
  EXPECT_EQ(*ob[0].document, "{\"doc\":1}");
  TraceState st;
  ASSERT_TRUE(s->get_state("t1", &st).ok());
  EXPECT_EQ(st.revision, 1u);
  EXPECT_EQ(st.max_seq, 2u);  // t1's messages of the commit took seqs 1 and 2
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  ASSERT_EQ(pending.size(), 1u);  // only t2's message is still owed
  EXPECT_EQ(pending[0].trace_id, "t2");
  // The events stay for retention.
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t1", &ev).ok());
  EXPECT_EQ(ev.size(), 2u);
  // Outbox seqs keep increasing after acks and reopen.
  uint64_t seqs[] = {1, 42};
  ASSERT_TRUE(s->ack_outbox(seqs).ok());
  EXPECT_EQ(s->outbox_entries(), 0u);
  EXPECT_EQ(s->outbox_bytes(), 0u);
  EXPECT_EQ(emit_all(*s, "t2", 6000), 2u);
}

// Acknowledgements come in any order, may repeat (a batch acknowledged again
// after a restart) and may name entries already gone: each entry counts once.
TEST(StoreTest, AckCountsEachEntryOnceWhateverTheOrder) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("a", "x"), msg("b", "y"), msg("c", "z")};
  ASSERT_TRUE(s->append(in, &out).ok());
  uint64_t live_before = s->counters().live_bytes;
  EXPECT_EQ(emit_all(*s, "a", 5000, "{\"d\":1}"), 1u);
  EXPECT_EQ(emit_all(*s, "b", 5000, "{\"d\":22}"), 2u);
  EXPECT_EQ(emit_all(*s, "c", 5000, "{\"d\":333}"), 3u);
  EXPECT_EQ(s->outbox_entries(), 3u);
  EXPECT_EQ(s->outbox_bytes(), 7u + 8u + 9u);
  uint64_t first[] = {3, 1, 3, 99};
  ASSERT_TRUE(s->ack_outbox(first).ok());
  EXPECT_EQ(s->outbox_entries(), 1u);
  EXPECT_EQ(s->outbox_bytes(), 8u);
  uint64_t again[] = {2, 2, 1};
  ASSERT_TRUE(s->ack_outbox(again).ok());
  EXPECT_EQ(s->outbox_entries(), 0u);
  EXPECT_EQ(s->outbox_bytes(), 0u);
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 10, 1 << 20, &ob).ok());
  EXPECT_TRUE(ob.empty());
  // The outbox's share of the quota is given back; the events stay retained.
  EXPECT_GE(s->counters().live_bytes, live_before);
}

TEST(StoreTest, TraceStatesReadAfterAFailedWriteAreWhatTheStoreHolds) {
  TempDir dir;
  auto nospace = std::make_shared<testing::NoSpaceFileSystem>();
  std::unique_ptr<rocksdb::Env> env = testing::make_env(nospace);
  StoreOptions o = options(dir);
  o.env = env.get();
  auto s = open_store(o);
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "a")};
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "t", 1000);
  TraceState before;
  ASSERT_TRUE(s->get_state("t", &before).ok());
  EXPECT_EQ(before.revision, 1u);
  EXPECT_TRUE(s->get_state("unknown", &before).IsNotFound());
  // A second revision whose write fails leaves the first.
  Emission e;
  e.trace_id = "t";
  e.expected_generation = before.generation;
  e.state = before;
  e.state.revision = 2;
  e.emitted_ns = 2000;
  e.document = make_document("{}");
  nospace->set_full(true);
  uint64_t seq = 0;
  EXPECT_FALSE(s->emit(e, &seq).ok());
  nospace->set_full(false);
  ASSERT_TRUE(s->resume().ok());
  TraceState after;
  ASSERT_TRUE(s->get_state("t", &after).ok());
  EXPECT_EQ(after.revision, 1u);
  EXPECT_EQ(after.generation, before.generation);
  // Each change is seen at once, and is what a reopened store reads.
  ASSERT_TRUE(s->emit(e, &seq).ok());
  ASSERT_TRUE(s->ack_outbox({&seq, 1}).ok());
  ASSERT_TRUE(s->expire(5000, 0, 10).ok());
  ASSERT_TRUE(s->get_state("t", &after).ok());
  EXPECT_EQ(after.revision, 2u);
  EXPECT_TRUE(after.events_deleted);
  s.reset();
  s = open_store(o);
  TraceState reopened;
  ASSERT_TRUE(s->get_state("t", &reopened).ok());
  EXPECT_EQ(detail::encode_state(reopened), detail::encode_state(after));
}

TEST(StoreTest, EmitRefusesAStaleGeneration) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "x")};
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "t", 100);
  Emission e;
  e.trace_id = "t";
  e.expected_generation = 0;  // read before the first emission
  e.state.revision = 1;
  e.document = make_document("{}");
  uint64_t seq = 0;
  EXPECT_EQ(s->emit(e, &seq).code(), Status::Code::kBusy);
  EXPECT_EQ(s->outbox_entries(), 1u);
}

// Two emitters find a trace without a state: the first one's revision is
// written, the second one's is refused (the store does not take the trace for
// new again once a state was written for it).
TEST(StoreTest, OfTwoEmittersThatFoundNoStateOnlyTheFirstWrites) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "x")};
  ASSERT_TRUE(s->append(in, &out).ok());
  TraceState first, second;
  ASSERT_TRUE(s->get_state("t", &first).IsNotFound());
  ASSERT_TRUE(s->get_state("t", &second).IsNotFound());
  Emission e;
  e.trace_id = "t";
  e.expected_generation = 0;
  e.state.revision = 1;
  e.state.max_seq = out[0].seq;
  e.pending_seqs = {out[0].seq};
  e.document = make_document("{}");
  uint64_t seq = 0;
  ASSERT_TRUE(s->emit(e, &seq).ok());
  EXPECT_EQ(s->emit(e, &seq).code(), Status::Code::kBusy);
  EXPECT_EQ(s->outbox_entries(), 1u);
  TraceState now;
  ASSERT_TRUE(s->get_state("t", &now).ok());
  EXPECT_EQ(now.revision, 1u);
  EXPECT_EQ(now.generation, 1u);
}

// Several revisions in one write: each has its own outcome, the stale one is
// refused alone, and the others get consecutive outbox entries.
TEST(StoreTest, EmitManyWritesTogetherAndRefusesOnlyTheStale) {
  TempDir dir;
  auto s = open_store(options(dir));
  int notified = 0;
  s->set_outbox_listener([&] { ++notified; });
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("a", "x"), msg("b", "y"), msg("c", "z")};
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "b", 100);  // b's state moves to generation 1
  notified = 0;
  Emission es[3];
  const char* ids[] = {"a", "b", "c"};
  for (int i = 0; i < 3; ++i) {
    es[i].trace_id = ids[i];
    es[i].expected_generation = 0;  // stale for b
    es[i].state.revision = 1;
    es[i].state.max_seq = out[i].seq;
    es[i].pending_seqs = {out[i].seq};
    es[i].document = make_document(std::string("{\"t\":\"") + ids[i] + "\"}");
    es[i].emitted_ns = 200;
  }
  Status results[3];
  uint64_t seqs[3] = {0, 0, 0};
  ASSERT_TRUE(s->emit_many(es, results, seqs).ok());
  EXPECT_TRUE(results[0].ok());
  EXPECT_EQ(results[1].code(), Status::Code::kBusy);
  EXPECT_TRUE(results[2].ok());
  EXPECT_EQ(seqs[2], seqs[0] + 1);
  EXPECT_EQ(notified, 1);
  EXPECT_EQ(s->outbox_entries(), 3u);  // b's first revision, then a and c
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(seqs[0], 10, 1 << 20, &ob).ok());
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[0].trace_id, "a");
  EXPECT_EQ(ob[1].trace_id, "c");
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
}

// An emission without a document is refused, and nothing of it is written.
TEST(StoreTest, EmissionWithoutADocumentIsRefused) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("a", "x")};
  ASSERT_TRUE(s->append(in, &out).ok());
  for (const std::string recipe : {"", "r"}) {
    Emission e;
    e.trace_id = "a";
    e.state.revision = 1;
    e.state.max_seq = out[0].seq;
    e.pending_seqs = {out[0].seq};
    e.recipe = recipe;
    uint64_t seq = 0;
    EXPECT_EQ(s->emit(e, &seq).code(), Status::Code::kInvalidArgument) << recipe;
  }
  EXPECT_EQ(s->outbox_entries(), 0u);
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 100, &pending).ok());
  EXPECT_EQ(pending.size(), 1u);
}

TEST(StoreTest, ReadOutboxHonoursEntryAndByteLimits) {
  TempDir dir;
  auto s = open_store(options(dir));
  for (int i = 0; i < 5; ++i) {
    std::string t = "t" + std::to_string(i);
    std::vector<Committed> out;
    std::vector<ipc::Message> in = {msg(t, "x")};
    ASSERT_TRUE(s->append(in, &out).ok());
    emit_all(*s, t, 100, std::string(100, 'd'));
  }
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(2, 10, 250, &ob).ok());
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[0].seq, 2u);
  ob.clear();
  ASSERT_TRUE(s->read_outbox(1, 10, 10, &ob).ok());
  EXPECT_EQ(ob.size(), 1u);  // at least one entry
  ob.clear();
  ASSERT_TRUE(s->read_outbox(1, 3, 1 << 20, &ob).ok());
  EXPECT_EQ(ob.size(), 3u);
  ob.clear();
  ASSERT_TRUE(s->read_outbox(6, 3, 1 << 20, &ob).ok());
  EXPECT_TRUE(ob.empty());
}

TEST(StoreTest, ExpireDeletesRetainedEventsThenForgetsTheState) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("old", "1"), msg("new", "2")};
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "old", 1000);
  emit_all(*s, "new", 5000);
  // A late message for "old" is pending: retention must not touch it.
  std::vector<ipc::Message> late = {msg("old", "late")};
  ASSERT_TRUE(s->append(late, &out).ok());

  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 1u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("old", &ev).ok());
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].raw, "late");
  TraceState st;
  ASSERT_TRUE(s->get_state("old", &st).ok());
  EXPECT_TRUE(st.events_deleted);
  EXPECT_EQ(st.revision, 1u);
  ev.clear();
  ASSERT_TRUE(s->read_trace("new", &ev).ok());
  EXPECT_EQ(ev.size(), 1u);

  // The state record goes once its keep time has passed too.
  ASSERT_TRUE(s->expire(2000, UINT64_MAX, 100).ok());
  EXPECT_TRUE(s->get_state("old", &st).IsNotFound());
  EXPECT_EQ(s->counters().forgotten_traces, 1u);
  EXPECT_TRUE(s->get_state("new", &st).ok());
}

TEST(StoreTest, RetentionTakesTracesDeliveredAfterNewerOnesWent) {
  // Retention reads its index from where the last round stopped. Traces
  // delivered late go back into the index at their emission times, behind
  // that point, and are still found, over as many rounds as they take: a few
  // thousand held in memory, more by a scan from the oldest of them.
  TempDir dir;
  auto s = open_store(options(dir));
  for (size_t n : {size_t{1}, size_t{2500}, size_t{4200}}) {
    SCOPED_TRACE(n);
    const uint64_t base = s->counters().expired_traces;
    const uint64_t t0 = 1000000 * n;
    std::vector<uint64_t> seqs;
    for (size_t i = 0; i < n; ++i) {
      std::string t = "early" + std::to_string(n) + "." + std::to_string(i);
      seqs.push_back(append_and_emit(*s, t, {msg(t, "1")}, t0 + i % 2, "doc", "r:"));
    }
    for (int i = 0; i < 100; ++i) {
      std::string t = "later" + std::to_string(n) + "." + std::to_string(i);
      // Traces emitted together share the time.
      append_and_emit(*s, t, {msg(t, "2")}, t0 + 500000);
    }
    ASSERT_TRUE(s->expire(t0 + 900000, 0, 10000).ok());
    EXPECT_EQ(s->counters().expired_traces, base + 100);
    ASSERT_TRUE(s->ack_outbox(seqs).ok());
    // A round takes at most 1,000.
    for (size_t i = 0; i <= n / 1000; ++i)
      ASSERT_TRUE(s->expire(t0 + 900000, 0, 1000).ok());
    EXPECT_EQ(s->counters().expired_traces, base + 100 + n);
    for (size_t i = 0; i < n; i += 499) {
      std::string t = "early" + std::to_string(n) + "." + std::to_string(i);
      TraceState st;
      ASSERT_TRUE(s->get_state(t, &st).ok());
      EXPECT_TRUE(st.events_deleted) << t;
      std::vector<StoredEvent> ev;
      ASSERT_TRUE(s->read_trace(t, &ev).ok());
      EXPECT_TRUE(ev.empty()) << t;
    }
  }
}

TEST(StoreTest, TheQuotaDropsRetainedTracesOldestFirstOverManyRounds) {
  TempDir dir;
  StoreOptions o;
  auto s = open_with_quota(dir, 1 << 20, &o);
  constexpr int kTraces = 300;
  for (int i = 0; i < kTraces; ++i) {
    std::string t = "t" + std::to_string(i);
    append_and_emit(*s, t, {msg(t, std::string(1000, 'x')), msg(t, std::string(1000, 'y'))},
                    1000 + static_cast<uint64_t>(i));
  }
  const uint64_t before = s->counters().live_bytes;
  ASSERT_LT(before, o.max_bytes);
  // Room for about 250 of the traces' 2 KB: many rounds of drops.
  const uint64_t ask = o.max_bytes - before + 250 * 2000;
  ASSERT_TRUE(s->ensure_room(ask).ok());
  StoreCounters c = s->counters();
  EXPECT_LE(c.live_bytes + ask, o.max_bytes);
  EXPECT_GE(c.dropped_retained_traces, 250u);
  EXPECT_LT(c.dropped_retained_traces, static_cast<uint64_t>(kTraces));
  EXPECT_EQ(c.dropped_retained_events, 2 * c.dropped_retained_traces);
  // The oldest went, in order; the newest stay whole.
  for (int i = 0; i < kTraces; ++i) {
    TraceState st;
    ASSERT_TRUE(s->get_state("t" + std::to_string(i), &st).ok());
    EXPECT_EQ(st.events_deleted, static_cast<uint64_t>(i) < c.dropped_retained_traces) << i;
    std::vector<StoredEvent> ev;
    ASSERT_TRUE(s->read_trace("t" + std::to_string(i), &ev).ok());
    EXPECT_EQ(ev.size(), st.events_deleted ? 0u : 2u) << i;
  }
  // What is left of the quota's measure is what the store holds.
  s.reset();
  s = open_store(o);
  EXPECT_EQ(s->counters().live_bytes, c.live_bytes);
}

// Emits 8 traces t0 ... t7 of ~4 KiB of events each, oldest first, with
// 2,000-byte documents and `recipe`.
void emit_eight_traces(Store& s, const std::string& recipe) {
  for (int i = 0; i < 8; ++i) {
    std::string t = "t" + std::to_string(i);
    ASSERT_TRUE(s.ensure_room(4100).ok());
    append_and_emit(s, t, {msg(t, std::string(4000, 'x'))}, 1000 + static_cast<uint64_t>(i),
                    std::string(2000, 'd'), recipe);
  }
}

TEST(StoreTest, DropOldestMakesRoomFromRetainedEventsThenTheOutbox) {
  TempDir dir;
  StoreOptions o;
  auto s = open_with_quota(dir, 64 << 10, &o);
  std::vector<Committed> out;
  emit_eight_traces(*s, "");
  uint64_t before = s->counters().live_bytes;
  EXPECT_LT(before, o.max_bytes);
  ASSERT_TRUE(s->ensure_room(30000).ok());
  StoreCounters c = s->counters();
  EXPECT_LE(c.live_bytes + 30000, o.max_bytes);
  EXPECT_GT(c.dropped_retained_traces, 0u);
  EXPECT_EQ(c.dropped_outbox_entries, 0u);
  TraceState st;
  ASSERT_TRUE(s->get_state("t0", &st).ok());
  EXPECT_TRUE(st.events_deleted);  // the oldest went first
  ASSERT_TRUE(s->get_state("t7", &st).ok());
  EXPECT_FALSE(st.events_deleted);
  // Asking for more than retained events can free drops outbox entries.
  ASSERT_TRUE(s->ensure_room(50000).ok());
  EXPECT_GT(s->counters().dropped_outbox_entries, 0u);
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 100, 1 << 30, &ob).ok());
  EXPECT_EQ(ob.size(), s->outbox_entries());
  ASSERT_FALSE(ob.empty());
  EXPECT_EQ(ob.back().trace_id, "t7");  // the newest entries stay
  // Pending messages are never dropped to make room.
  std::vector<ipc::Message> big = {msg("p", std::string(40000, 'p'))};
  ASSERT_TRUE(s->append(big, &out).ok());
  EXPECT_TRUE(s->ensure_room(40000).IsFull());
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("p", &ev).ok());
  EXPECT_EQ(ev.size(), 1u);
}

// A document builder for the tests: the recipe, then the trace's stored
// messages. Counts its calls.
DocumentBuilder concatenating_builder(Store& s, int* calls) {
  return
      [&s, calls](std::string_view trace_id, uint32_t, std::string_view recipe, std::string* doc) {
        ++*calls;
        std::vector<StoredEvent> events;
        Status st = s.read_trace(trace_id, &events);
        doc->assign(recipe);
        for (const auto& e : events)
          doc->append(e.raw);
        return st;
      };
}

TEST(StoreTest, ARecipeEntryKeepsItsTracesEventsUntilItIsAcknowledged) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "a"), msg("t", "b")};
  ASSERT_TRUE(s->append(in, &out).ok());
  const std::string doc(100, 'd');
  uint64_t seq = emit_all(*s, "t", 1000, doc, "r:");
  EXPECT_EQ(s->outbox_bytes(), doc.size());
  EXPECT_EQ(s->counters().document_cache_bytes, doc.size());
  // Read once from memory; after that (a retry, a restart) built again.
  int built = 0;
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 10, SIZE_MAX, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, doc);
  EXPECT_EQ(s->counters().document_cache_bytes, 0u);
  ob.clear();
  EXPECT_EQ(s->read_outbox(0, 10, SIZE_MAX, &ob).code(), Status::Code::kIOError);  // no builder
  EXPECT_TRUE(ob.empty());
  s->set_document_builder(concatenating_builder(*s, &built));
  ASSERT_TRUE(s->read_outbox(0, 10, SIZE_MAX, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, "r:ab");
  EXPECT_EQ(ob[0].revision, 1u);
  EXPECT_EQ(s->counters().documents_rebuilt, 1u);
  // Retention passes it by while it is undelivered.
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);
  TraceState st;
  ASSERT_TRUE(s->get_state("t", &st).ok());
  EXPECT_EQ(st.pin_first, seq);
  EXPECT_EQ(st.pin_last, seq);
  EXPECT_FALSE(st.events_deleted);
  // A second revision refers to them too; acknowledging the first is not enough.
  std::vector<ipc::Message> late = {msg("t", "c")};
  ASSERT_TRUE(s->append(late, &out).ok());
  uint64_t seq2 = emit_all(*s, "t", 1500, doc, "r2:");
  ASSERT_TRUE(s->get_state("t", &st).ok());
  EXPECT_EQ(st.pin_first, seq);
  EXPECT_EQ(st.pin_last, seq2);
  ASSERT_TRUE(s->ack_outbox({&seq, 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);
  s.reset();
  s = open_store(options(dir));
  s->set_document_builder(concatenating_builder(*s, &built));
  ob.clear();
  ASSERT_TRUE(s->read_outbox(0, 10, SIZE_MAX, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, "r2:abc");
  ASSERT_TRUE(s->ack_outbox({&seq2, 1}).ok());
  // Delivered: retention takes the events as it would have.
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 1u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t", &ev).ok());
  EXPECT_TRUE(ev.empty());
  EXPECT_EQ(built, 2);
}

// Acknowledging a recipe entry writes no trace state: retention finds the
// trace all the same, and the next revision starts the state's range of
// recipe entries again.
TEST(StoreTest, AnAcknowledgedRecipeEntryLeavesTheStateAsItWas) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "a")};
  ASSERT_TRUE(s->append(in, &out).ok());
  uint64_t seq = emit_all(*s, "t", 1000, std::string(50, 'd'), "r:");
  TraceState before, after;
  ASSERT_TRUE(s->get_state("t", &before).ok());
  ASSERT_TRUE(s->ack_outbox({&seq, 1}).ok());
  ASSERT_TRUE(s->get_state("t", &after).ok());
  EXPECT_EQ(detail::encode_state(after), detail::encode_state(before));
  std::vector<ipc::Message> late = {msg("t", "b")};
  ASSERT_TRUE(s->append(late, &out).ok());
  uint64_t seq2 = emit_all(*s, "t", 1500, std::string(60, 'e'), "r:");
  ASSERT_TRUE(s->get_state("t", &after).ok());
  EXPECT_EQ(after.pin_first, seq2);
  EXPECT_EQ(after.pin_last, seq2);
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);
  ASSERT_TRUE(s->ack_outbox({&seq2, 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 1u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t", &ev).ok());
  EXPECT_TRUE(ev.empty());
}

// Acknowledged out of order, a trace's revisions leave an index key of an
// older emission last: retention puts the key of the last one in its place.
TEST(StoreTest, RevisionsAcknowledgedOutOfOrderStillExpire) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "a")};
  ASSERT_TRUE(s->append(in, &out).ok());
  uint64_t seq = emit_all(*s, "t", 1000, std::string(50, 'd'), "r:");
  std::vector<ipc::Message> late = {msg("t", "b")};
  ASSERT_TRUE(s->append(late, &out).ok());
  uint64_t seq2 = emit_all(*s, "t", 1500, std::string(60, 'e'), "r:");
  ASSERT_TRUE(s->ack_outbox({&seq2, 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);  // the first still waits
  ASSERT_TRUE(s->ack_outbox({&seq, 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);  // the key was of the first emission
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 1u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t", &ev).ok());
  EXPECT_TRUE(ev.empty());
}

// Retention keeps the events of a trace whose recipe entry waits, whatever
// is acknowledged around it: out of order, and more entries after it than
// the store follows one by one ahead of the outbox's first entry.
TEST(StoreTest, AWaitingEntryKeepsItsEventsWhateverIsAcknowledgedAroundIt) {
  TempDir dir;
  auto s = open_store(options(dir));
  constexpr int kTraces = 5000;
  std::vector<uint64_t> seqs;
  uint64_t waiting = 0;
  for (int i = 0; i < kTraces; ++i) {
    const std::string id = "t" + std::to_string(i);
    seqs.push_back(append_and_emit(*s, id, {msg(id, "m")}, 1000, "{}", "r:"));
    // Halfway, a second revision of t1, which stays undelivered.
    if (i == kTraces / 2)
      waiting = append_and_emit(*s, "t1", {msg("t1", "late")}, 1000, "{}", "r:");
  }
  // The last first, so that the first entries go after all the others.
  for (int i = kTraces - 1; i >= 0; --i)
    ASSERT_TRUE(s->ack_outbox({&seqs[i], 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, kTraces).ok());
  EXPECT_EQ(s->counters().expired_traces, static_cast<uint64_t>(kTraces - 1));
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t1", &ev).ok());
  EXPECT_EQ(ev.size(), 2u);
  ASSERT_TRUE(s->ack_outbox({&waiting, 1}).ok());
  ASSERT_TRUE(s->expire(2000, 0, kTraces).ok());
  EXPECT_EQ(s->counters().expired_traces, static_cast<uint64_t>(kTraces));
  ev.clear();
  ASSERT_TRUE(s->read_trace("t1", &ev).ok());
  EXPECT_TRUE(ev.empty());
}

// The store's counters' merge operator (int64 addition), for a test that
// opens the store's database itself.
class CounterAdd final : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice&, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* out, rocksdb::Logger*) const override {
    const int64_t base = existing ? detail::decode_i64(existing->ToStringView()) : 0;
    *out = detail::encode_i64(base + detail::decode_i64(value.ToStringView()));
    return true;
  }
  const char* Name() const override { return "sidetrace.add_i64"; }
};

// A recipe entry of an earlier version is counted in its trace's state
// (TraceState::undelivered): it keeps the events until acknowledged, and its
// acknowledgement counts it off.
TEST(StoreTest, ARecipeEntryOfAnEarlierVersionIsCountedOff) {
  TempDir dir;
  uint64_t seq = 0;
  {
    auto s = open_store(options(dir));
    std::vector<Committed> out;
    std::vector<ipc::Message> in = {msg("t", "a")};
    ASSERT_TRUE(s->append(in, &out).ok());
    seq = emit_all(*s, "t", 1000, std::string(50, 'd'), "r:");
  }
  {
    // Rewritten as an earlier version wrote them. (The counters' merge
    // operator is needed to read the write-ahead log back.)
    rocksdb::Options o;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const char* name : {"default", "events", "pending", "traces", "outbox", "meta"})
      cfs.emplace_back(name, rocksdb::ColumnFamilyOptions());
    cfs[3].options.merge_operator = std::make_shared<CounterAdd>();
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, (fs::path(dir.str()) / "store").string(), cfs, &h, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::string entry, state;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), h[4], detail::be64(seq), &entry).ok());
    ASSERT_EQ(entry[13 + 1], detail::kPinMark);  // after the head of trace "t"
    entry[13 + 1] = detail::kRecipeMark;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), h[3], detail::state_key("t"), &state).ok());
    TraceState st;
    ASSERT_TRUE(detail::decode_state(state, &st));
    st.pin_first = st.pin_last = 0;
    st.undelivered = 1;
    state = detail::encode_state_fixed(st).substr(0, detail::kStateBytesV2);
    rocksdb::WriteBatch b;
    ASSERT_TRUE(b.Put(h[4], detail::be64(seq), entry).ok());
    ASSERT_TRUE(b.Put(h[3], detail::state_key("t"), state).ok());
    ASSERT_TRUE(db->Write(rocksdb::WriteOptions(), &b).ok());
    for (auto* handle : h)
      ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  auto s = open_store(options(dir));
  int built = 0;
  s->set_document_builder(concatenating_builder(*s, &built));
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 10, SIZE_MAX, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, "r:a");
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 0u);
  ASSERT_TRUE(s->ack_outbox({&seq, 1}).ok());
  TraceState st;
  ASSERT_TRUE(s->get_state("t", &st).ok());
  EXPECT_EQ(st.undelivered, 0u);
  ASSERT_TRUE(s->expire(2000, 0, 100).ok());
  EXPECT_EQ(s->counters().expired_traces, 1u);
}

TEST(StoreTest, PastTheMemoryBoundTheOutboxHoldsTheDocument) {
  TempDir dir;
  StoreOptions o = options(dir);
  o.document_cache_bytes = 250;
  auto s = open_store(o);
  std::vector<Committed> out;
  for (int i = 0; i < 3; ++i) {
    std::string t = "t" + std::to_string(i);
    std::vector<ipc::Message> in = {msg(t, "m")};
    ASSERT_TRUE(s->append(in, &out).ok());
    emit_all(*s, t, 1000, std::string(100, 'a' + static_cast<char>(i)), "r:");
  }
  // Two documents fit in memory; the third went to the store whole, and its
  // trace's events are not held for it.
  EXPECT_EQ(s->counters().document_cache_bytes, 200u);
  TraceState st;
  ASSERT_TRUE(s->get_state("t2", &st).ok());
  EXPECT_EQ(st.pin_last, 0u);
  ASSERT_TRUE(s->get_state("t1", &st).ok());
  EXPECT_EQ(st.pin_last, 2u);
  // After a restart (no builder set) the whole entry reads back as it is.
  s.reset();
  s = open_store(o);
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(3, 10, SIZE_MAX, &ob).ok());
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].trace_id, "t2");
  EXPECT_EQ(*ob[0].document, std::string(100, 'c'));
  EXPECT_EQ(s->read_outbox(2, 10, SIZE_MAX, &ob).code(), Status::Code::kIOError);
  EXPECT_EQ(s->outbox_bytes(), 300u);
}

// A store at a 64 KiB quota holding eight traces not delivered yet, written
// with recipes (emit_eight_traces): no retained events are free to go.
// `built` counts the documents built again; it outlives the store.
std::unique_ptr<Store> eight_recipe_traces(const TempDir& dir, StoreOptions* o, int* built) {
  auto s = open_with_quota(dir, 64 << 10, o);
  s->set_document_builder(concatenating_builder(*s, built));
  emit_eight_traces(*s, "r:");
  return s;
}

TEST(StoreTest, DropOldestTakesARecipeEntryWithTheEventsItRefersTo) {
  TempDir dir;
  StoreOptions o;
  int built = 0;
  auto s = eight_recipe_traces(dir, &o, &built);
  ASSERT_TRUE(s->ensure_room(40000).ok());
  StoreCounters c = s->counters();
  EXPECT_LE(c.live_bytes + 40000, o.max_bytes);
  EXPECT_GT(c.dropped_outbox_entries, 0u);
  EXPECT_EQ(c.dropped_retained_traces, c.dropped_outbox_entries);
  TraceState st;
  ASSERT_TRUE(s->get_state("t0", &st).ok());
  EXPECT_TRUE(st.events_deleted);  // the oldest went first, entry and events
  std::vector<OutboxEntry> ob;
  ASSERT_TRUE(s->read_outbox(0, 100, 1 << 30, &ob).ok());
  ASSERT_EQ(ob.size(), 8 - c.dropped_outbox_entries);
  EXPECT_EQ(ob.size(), s->outbox_entries());
  EXPECT_EQ(s->outbox_bytes(), ob.size() * 2000);
  EXPECT_EQ(ob.back().trace_id, "t7");  // the newest stay, whole
  EXPECT_EQ(*ob.back().document, std::string(2000, 'd'));
  EXPECT_EQ(s->counters().document_cache_bytes, 0u);  // dropped entries' documents went too
}

// Entries delivery has read are acknowledged from what was read; the quota
// may have taken some of them meanwhile, and acknowledgements repeat. The
// counters and the traces come out as when every entry is read back to be
// acknowledged (a store that read nothing), and as a reopened store reads them.
TEST(StoreTest, AckOfEntriesReadCountsEachOnceAfterTheQuotaTookSome) {
  struct Outcome {
    uint64_t dropped = 0, live = 0, live_reopened = 0, expired = 0;
  };
  auto run = [](bool read_first, Outcome& r) {
    TempDir dir;
    StoreOptions o;
    int built = 0;
    {
      auto s = eight_recipe_traces(dir, &o, &built);
      std::vector<OutboxEntry> ob;
      if (read_first) {
        ASSERT_TRUE(s->read_outbox(0, 100, SIZE_MAX, &ob).ok());
        EXPECT_EQ(ob.size(), 8u);
      }
      ASSERT_TRUE(s->ensure_room(40000).ok());
      r.dropped = s->counters().dropped_outbox_entries;
      EXPECT_GT(r.dropped, 0u);
      uint64_t seqs[] = {8, 1, 2, 3, 4, 5, 6, 7, 8, 2};
      ASSERT_TRUE(s->ack_outbox(seqs).ok());
      ASSERT_TRUE(s->ack_outbox(seqs).ok());
      EXPECT_EQ(s->outbox_entries(), 0u);
      EXPECT_EQ(s->outbox_bytes(), 0u);
      r.live = s->counters().live_bytes;
    }
    auto s = open_store(o);
    r.live_reopened = s->counters().live_bytes;
    EXPECT_EQ(s->outbox_entries(), 0u);
    // Every trace is retained once nothing refers to its events.
    ASSERT_TRUE(s->expire(1 << 20, 0, 100).ok());
    r.expired = s->counters().expired_traces;
  };
  Outcome read, unread;
  run(true, read);
  run(false, unread);
  EXPECT_EQ(read.dropped, unread.dropped);
  EXPECT_EQ(read.live, unread.live);
  EXPECT_EQ(read.live, read.live_reopened);
  EXPECT_EQ(read.expired, 8 - read.dropped);
  EXPECT_EQ(read.expired, unread.expired);
}

TEST(StoreTest, DropNewestRefusesWhenFull) {
  TempDir dir;
  StoreOptions o = options(dir);
  o.max_bytes = 10000;
  o.when_full = WhenFull::kDropNewest;
  auto s = open_store(o);
  std::vector<Committed> out;
  // A delivered trace's retained events still make room; an undelivered
  // one's do not.
  std::vector<ipc::Message> in = {msg("delivered", std::string(3000, 'x'))};
  ASSERT_TRUE(s->ensure_room(3100).ok());
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "delivered", 100);
  in = {msg("t", std::string(5000, 'x'))};
  ASSERT_TRUE(s->ensure_room(5100).ok());
  ASSERT_TRUE(s->append(in, &out).ok());
  emit_all(*s, "t", 200, "{}", "r:");
  ASSERT_TRUE(s->ensure_room(3000).ok());
  EXPECT_EQ(s->counters().dropped_retained_traces, 1u);
  EXPECT_TRUE(s->ensure_room(5000).IsFull());
  EXPECT_EQ(s->outbox_entries(), 2u);
  EXPECT_EQ(s->counters().dropped_outbox_entries, 0u);
  std::vector<StoredEvent> ev;
  ASSERT_TRUE(s->read_trace("t", &ev).ok());
  EXPECT_EQ(ev.size(), 1u);
}

TEST(StoreTest, MetaPutGetScanDelete) {
  TempDir dir;
  auto s = open_store(options(dir));
  ASSERT_TRUE(s->meta_put("up/a", "1").ok());
  ASSERT_TRUE(s->meta_put("up/b", "2").ok());
  ASSERT_TRUE(s->meta_put("uq", "3").ok());
  std::string v;
  ASSERT_TRUE(s->meta_get("up/b", &v).ok());
  EXPECT_EQ(v, "2");
  EXPECT_TRUE(s->meta_get("nope", &v).IsNotFound());
  std::vector<std::pair<std::string, std::string>> kv;
  ASSERT_TRUE(s->meta_scan("up/", 10, &kv).ok());
  ASSERT_EQ(kv.size(), 2u);
  EXPECT_EQ(kv[0].first, "up/a");
  ASSERT_TRUE(s->meta_delete("up/a").ok());
  kv.clear();
  ASSERT_TRUE(s->meta_scan("up/", 10, &kv).ok());
  EXPECT_EQ(kv.size(), 1u);
}

TEST(StoreTest, MetaScansInPagesAndWritesAtomically) {
  TempDir dir;
  auto s = open_store(options(dir));
  buffer::Store::MetaWrite w;
  for (char c = 'a'; c <= 'e'; ++c)
    w.put.emplace_back(std::string("up/") + c, std::string(1, c));
  w.put.emplace_back("uq", "outside");
  ASSERT_TRUE(s->meta_write(w).ok());
  // Pages of two, each starting after the last key of the one before.
  std::vector<std::string> seen;
  std::string after;
  for (int page = 0; page < 10; ++page) {
    std::vector<std::pair<std::string, std::string>> kv;
    ASSERT_TRUE(s->meta_scan_after("up/", after, 2, &kv).ok());
    if (kv.empty()) break;
    EXPECT_LE(kv.size(), 2u);
    for (auto& [k, v] : kv)
      seen.push_back(k + "=" + v);
    after = kv.back().first;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"up/a=a", "up/b=b", "up/c=c", "up/d=d", "up/e=e"}));
  // A key that is not stored still starts the page after it.
  std::vector<std::pair<std::string, std::string>> kv;
  ASSERT_TRUE(s->meta_scan_after("up/", "up/bb", 10, &kv).ok());
  ASSERT_EQ(kv.size(), 3u);
  EXPECT_EQ(kv[0].first, "up/c");
  // Puts and deletes together, across a reopen.
  buffer::Store::MetaWrite w2;
  w2.del = {"up/a", "up/b"};
  w2.put = {{"up/f", "f"}};
  ASSERT_TRUE(s->meta_write(w2).ok());
  s.reset();
  s = open_store(options(dir));
  kv.clear();
  ASSERT_TRUE(s->meta_scan("up/", 10, &kv).ok());
  ASSERT_EQ(kv.size(), 4u);
  EXPECT_EQ(kv.front().first, "up/c");
  EXPECT_EQ(kv.back().first, "up/f");
}

// RocksDB writes no LOG file of its own on the data disk (a failing LOG
// file aborts it when written again); its messages reach the agent's log.
TEST(StoreTest, RocksDbMessagesGoToTheAgentLogNotToAFileInTheStore) {
  std::ostringstream captured;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "capture", std::make_shared<spdlog::sinks::ostream_sink_st>(captured));
  logger->set_level(spdlog::level::debug);
  spdlog::set_default_logger(logger);
  {
    TempDir dir;
    auto s = open_store(options(dir));
    std::vector<ipc::Message> in{msg("t1", "a")};
    std::vector<Committed> out;
    ASSERT_TRUE(s->append(in, &out).ok());
    s.reset();
    for (const auto& entry : fs::directory_iterator(dir.path() / "store")) {
      std::string name = entry.path().filename().string();
      EXPECT_NE(name.rfind("LOG", 0), 0u) << name;
    }
  }
  spdlog::set_default_logger(previous);
  EXPECT_NE(captured.str().find("rocksdb: "), std::string::npos) << captured.str();
}

// Deleted WAL and table files give their space back through the store's
// reclaim directory, which empties.
TEST(StoreTest, DeletedStoreFilesAreReclaimed) {
  TempDir dir;
  StoreOptions o = options(dir);
  o.max_wal_bytes = 1 << 20;
  auto s = open_store(o);
  std::vector<Committed> out;
  for (int round = 0; round < 4; ++round) {
    std::vector<ipc::Message> in = spread_messages();
    ASSERT_TRUE(s->append(in, &out).ok());
    ASSERT_TRUE(s->compact().ok());  // flushes (WAL files go) and compacts (tables go)
  }
  fs::path trash = dir.path() / "store" / "reclaim";
  wait_until([&] { return s->counters().reclaim_pending_bytes == 0 && fs::is_empty(trash); });
  EXPECT_GT(s->counters().reclaimed_bytes, 0u);
  EXPECT_EQ(s->counters().reclaim_pending_bytes, 0u);
  EXPECT_TRUE(fs::is_empty(trash));
  // Nothing the store still needs went: it reopens with every message.
  s.reset();
  s = open_store(o);
  std::vector<StoredEvent> events;
  ASSERT_TRUE(s->read_trace("t0", &events).ok());
  EXPECT_EQ(events.size(), 4u * 286u);
}

TEST(StoreTest, SecondOpenOfTheSameStoreIsBusyAndNotQuarantined) {
  TempDir dir;
  auto s = open_store(options(dir));
  std::unique_ptr<Store> other;
  std::string moved;
  Status st = open_or_quarantine(options(dir), &other, &moved);
  EXPECT_EQ(st.code(), Status::Code::kBusy) << st.ToString();
  EXPECT_TRUE(moved.empty());
}

void fill_and_close(const TempDir& dir) {
  auto s = open_store(options(dir));
  std::vector<Committed> out;
  std::vector<ipc::Message> in = spread_messages();
  ASSERT_TRUE(s->append(in, &out).ok());
  ASSERT_TRUE(s->compact().ok());  // flush everything into SST files
}

void expect_quarantined_and_fresh(const TempDir& dir) {
  std::unique_ptr<Store> s;
  Status plain = Store::open(options(dir), &s);
  EXPECT_FALSE(plain.ok());
  EXPECT_FALSE(plain.message().empty());
  s.reset();
  std::string moved;
  Status st = open_or_quarantine(options(dir), &s, &moved);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_FALSE(moved.empty());
  EXPECT_NE(moved.find("store.corrupt-"), std::string::npos);
  EXPECT_TRUE(fs::exists(fs::path(moved) / "CURRENT"));  // the old data is kept aside
  std::vector<Committed> pending;
  ASSERT_TRUE(s->scan_pending(0, 10, &pending).ok());
  EXPECT_TRUE(pending.empty());  // a fresh store
  std::vector<Committed> out;
  std::vector<ipc::Message> in = {msg("t", "x")};
  EXPECT_TRUE(s->append(in, &out).ok());
}

TEST(StoreTest, CorruptManifestIsQuarantined) {
  TempDir dir;
  fill_and_close(dir);
  for (const auto& e : fs::directory_iterator(dir.path() / "store")) {
    if (e.path().filename().string().rfind("MANIFEST-", 0) == 0) {
      std::ofstream(e.path(), std::ios::binary | std::ios::trunc) << "garbage, not a manifest";
    }
  }
  expect_quarantined_and_fresh(dir);
}

TEST(StoreTest, TruncatedSstIsQuarantined) {
  TempDir dir;
  fill_and_close(dir);
  bool truncated = false;
  for (const auto& e : fs::directory_iterator(dir.path() / "store")) {
    if (e.path().extension() == ".sst" && fs::file_size(e.path()) > 100) {
      fs::resize_file(e.path(), fs::file_size(e.path()) / 2);
      truncated = true;
    }
  }
  ASSERT_TRUE(truncated);
  expect_quarantined_and_fresh(dir);
}

TEST(StoreTest, ProblemsOutsideTheStoreAreNotQuarantined) {
  TempDir dir;
  fs::path file = dir.path() / "not-a-dir";
  std::ofstream(file) << "x";
  StoreOptions o;
  o.data_dir = file.string();
  std::unique_ptr<Store> s;
  std::string moved;
  EXPECT_FALSE(open_or_quarantine(o, &s, &moved).ok());
  EXPECT_TRUE(moved.empty());
  EXPECT_TRUE(fs::exists(file));
}

}  // namespace
}  // namespace sidetrace::buffer
