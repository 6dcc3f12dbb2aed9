#include "trace/assembler.h"

#include <gtest/gtest.h>
#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include <map>
#include <set>
#include <stdexcept>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"
#include "common/clock.h"
#include "trace/reconstruct.h"
#include "upstream/testing/counting_store.h"

namespace sidetrace::trace {
namespace {

using namespace std::chrono_literals;
using buffer::testing::TempDir;
using json = nlohmann::json;

// A protocol-v1 message: {v:1, kind, trace_id, id?, type?, <extra string keys>}.
std::string pack(const std::string& kind, const std::string& trace_id, const std::string& id,
                 std::map<std::string, std::string> extra = {}) {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  size_t n = 3 + (id.empty() ? 0 : 1) + (kind == "start" || kind == "event" ? 1 : 0) + extra.size();
  pk.pack_map(static_cast<uint32_t>(n));
  pk.pack("v");
  pk.pack(1);
  pk.pack("kind");
  pk.pack(kind);
  pk.pack("trace_id");
  pk.pack(trace_id);
  if (!id.empty()) {
    pk.pack("id");
    pk.pack(id);
  }
  if (kind == "start" || kind == "event") {
    pk.pack("type");
    pk.pack("TOOL");
  }
  for (const auto& [k, v] : extra) {
    pk.pack(k);
    pk.pack(v);
  }
  return std::string(buf.data(), buf.size());
}

class AssemblerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    opts_.quiet_period = 1000ms;
    opts_.max_open = 600s;
    opts_.retain = 3600s;
    opts_.forget_after = 7200s;
    opts_.retention_interval = 1s;
    reopen();
  }

  void reopen() {
    assembler_.reset();
    store_.reset();
    buffer::StoreOptions so;
    so.data_dir = dir_.str();
    so.sync = buffer::SyncMode::kOs;
    so.clock = &clock_;
    ASSERT_TRUE(buffer::Store::open(so, &store_).ok());
    store_->set_outbox_listener([this] { ++listener_calls_; });
    assembler_ = std::make_unique<Assembler>(*store_, *store_, clock_, opts_);
    ASSERT_TRUE(assembler_->recover().ok());
  }

  // Persists messages as the writer does and notifies the assembler, the
  // notices carrying the messages' bytes unless carry_bytes_ is false.
  void send(std::vector<std::string> raws, const std::string& trace_id, bool notify = true) {
    std::vector<ipc::Message> msgs;
    for (auto& r : raws) {
      ipc::Message m;
      m.trace_id = trace_id;
      m.raw = std::move(r);
      m.recv_ns = clock_.now_ns();
      msgs.push_back(std::move(m));
    }
    std::vector<buffer::Committed> committed;
    ASSERT_TRUE(store_->append(msgs, &committed).ok());
    carry(msgs, committed);
    if (notify) assembler_->on_committed(committed);
  }

  void carry(std::vector<ipc::Message>& msgs, std::vector<buffer::Committed>& committed) {
    if (!carry_bytes_) return;
    for (size_t i = 0; i < committed.size(); ++i)
      committed[i].raw = std::move(msgs[i].raw);
  }

  // Persists one message received at `recv_ns` (stored now) and notifies.
  void send_received(const std::string& raw, const std::string& trace_id, uint64_t recv_ns) {
    std::vector<ipc::Message> msgs(1);
    msgs[0].trace_id = trace_id;
    msgs[0].raw = raw;
    msgs[0].recv_ns = recv_ns;
    std::vector<buffer::Committed> committed;
    ASSERT_TRUE(store_->append(msgs, &committed).ok());
    carry(msgs, committed);
    assembler_->on_committed(committed);
  }

  std::vector<buffer::OutboxEntry> outbox() {
    std::vector<buffer::OutboxEntry> out;
    EXPECT_TRUE(store_->read_outbox(0, 100000, SIZE_MAX, &out).ok());
    return out;
  }

  // The outbox holds one entry: revision 1 of a trace with `events` events.
  void expect_one_first_revision(size_t events) {
    auto ob = outbox();
    ASSERT_EQ(ob.size(), 1u);
    EXPECT_EQ(ob[0].revision, 1u);
    EXPECT_EQ(json::parse(*ob[0].document)["events"].size(), events);
  }

  void advance_and_poll(std::chrono::nanoseconds d) {
    clock_.advance(d);
    assembler_->poll();
  }

  // Starts the assembler again over the store, then polls a second at a time
  // until the outbox holds `entries` (at most `rounds` polls); the outbox.
  std::vector<buffer::OutboxEntry> restart_until(size_t entries, int rounds = 5) {
    reopen();
    for (int i = 0; i < rounds && outbox().size() < entries; ++i)
      advance_and_poll(1s);
    return outbox();
  }

  ManualClock clock_;
  TempDir dir_;
  AssemblerOptions opts_;
  bool carry_bytes_ = true;
  std::unique_ptr<buffer::Store> store_;
  std::unique_ptr<Assembler> assembler_;
  int listener_calls_ = 0;
};

TEST_F(AssemblerTest, CompleteTraceIsEmittedAfterTheQuietPeriod) {
  send({pack("trace", "t1", ""), pack("start", "t1", "e1")}, "t1");
  advance_and_poll(500ms);
  send({pack("end", "t1", "e1")}, "t1");
  advance_and_poll(900ms);  // quiet for 900 ms only
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(100ms);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].trace_id, "t1");
  EXPECT_EQ(ob[0].revision, 1u);
  EXPECT_EQ(listener_calls_, 1);
  json doc = json::parse(*ob[0].document);
  EXPECT_EQ(doc["revision"], 1);
  EXPECT_EQ(doc["status"], "ok");
  EXPECT_EQ(doc["partial"], false);
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(assembler_->stats().open_traces, 0u);
  // Nothing more happens later.
  advance_and_poll(10s);
  EXPECT_EQ(outbox().size(), 1u);
}

// Messages received together but stored apart (the store lagging behind the
// receivers by more than the quiet period) make one revision: quiet time counts
// from when a message was stored.
TEST_F(AssemblerTest, ALaggingStoreDoesNotSplitATrace) {
  const uint64_t received = clock_.now_ns();
  clock_.advance(1500ms);
  send_received(pack("event", "t1", "e1"), "t1", received);
  advance_and_poll(10ms);
  EXPECT_TRUE(outbox().empty());  // received 1.5 s ago, but stored just now
  clock_.advance(500ms);
  send_received(pack("event", "t1", "e2"), "t1", received);
  advance_and_poll(900ms);
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(200ms);
  expect_one_first_revision(2);
}

// The store stalls for longer than the quiet period: the first message of a
// trace is stored, the second waits (received, not yet stored). The trace is
// not quiet until the store's watermark passes its deadline.
TEST_F(AssemblerTest, AQuietTraceWaitsForTheStoreWatermark) {
  uint64_t watermark = 0;
  opts_.store_watermark = [&](uint64_t now) { return std::min(now, watermark); };
  reopen();
  send({pack("event", "t1", "e1")}, "t1");
  const uint64_t first_received = clock_.now_ns();
  watermark = first_received;  // e1 stored; what came after is on its way
  advance_and_poll(5s);
  EXPECT_TRUE(outbox().empty()) << "emitted while the store lagged";
  // e2 was received 1 ms after e1 and is stored only now.
  send_received(pack("event", "t1", "e2"), "t1", first_received + 1'000'000);
  watermark = UINT64_MAX;  // caught up
  advance_and_poll(1100ms);
  expect_one_first_revision(2);
}

// Without a watermark (or with one that keeps up) a quiet trace goes out at
// its deadline.
TEST_F(AssemblerTest, AWatermarkThatKeepsUpDelaysNothing) {
  opts_.store_watermark = [](uint64_t now) { return now; };
  reopen();
  send({pack("event", "t1", "e1")}, "t1");
  advance_and_poll(999ms);
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(1ms);
  EXPECT_EQ(outbox().size(), 1u);
}

TEST_F(AssemblerTest, OnEmittedSeesEachCommittedRevisionAndItsDocument) {
  struct Seen {
    std::string trace_id;
    uint32_t revision;
    std::string document;
  };
  std::vector<Seen> seen;
  opts_.on_emitted = [&](const std::string& id, uint32_t rev, buffer::Document doc) {
    // Called after the commit: the outbox already holds this revision.
    auto ob = outbox();
    ASSERT_FALSE(ob.empty());
    EXPECT_EQ(ob.back().revision, rev);
    seen.push_back({id, rev, *doc});
  };
  reopen();
  send({pack("start", "t", "a")}, "t");
  advance_and_poll(2s);
  EXPECT_TRUE(seen.empty());  // incomplete: nothing emitted, no call
  send({pack("end", "t", "a")}, "t");
  advance_and_poll(1s);
  send({pack("feedback", "t", "", {{"tag", "late"}})}, "t");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(seen.size(), 2u);
  ASSERT_EQ(ob.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(seen[i].trace_id, "t");
    EXPECT_EQ(seen[i].revision, i + 1);
    EXPECT_EQ(seen[i].document, *ob[i].document);
  }
}

// The document on_emitted() receives is the text the outbox hands to
// delivery: one document, shared, not a copy for each.
TEST_F(AssemblerTest, OnEmittedSharesTheOutboxDocument) {
  std::vector<buffer::Document> seen;
  opts_.on_emitted = [&](const std::string&, uint32_t, buffer::Document doc) {
    seen.push_back(std::move(doc));
  };
  reopen();
  send({pack("start", "t", "a"), pack("end", "t", "a")}, "t");
  advance_and_poll(2s);
  ASSERT_EQ(seen.size(), 1u);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].document.get(), seen[0].get());
  EXPECT_EQ(store_->counters().documents_rebuilt, 0u);
}

TEST_F(AssemblerTest, IncompleteTraceWaitsThenEmitsUnfinishedAtMaxOpen) {
  send({pack("start", "t", "a"), pack("start", "t", "b"), pack("end", "t", "a")}, "t");
  advance_and_poll(2s);
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(500s);
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(98s);  // 600 s after the first message
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  json doc = json::parse(*ob[0].document);
  EXPECT_EQ(doc["status"], "unfinished");
  EXPECT_EQ(assembler_->stats().emitted_unfinished, 1u);
  // The missing end arrives: revision 2, complete.
  send({pack("end", "t", "b")}, "t");
  advance_and_poll(1s);
  ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[1].revision, 2u);
  EXPECT_EQ(json::parse(*ob[1].document)["status"], "ok");
}

TEST_F(AssemblerTest, ACompletingMessageEndsTheWaitEarly) {
  send({pack("start", "t", "a")}, "t");
  advance_and_poll(5s);
  EXPECT_TRUE(outbox().empty());
  send({pack("end", "t", "a")}, "t");
  advance_and_poll(1s);
  EXPECT_EQ(outbox().size(), 1u);
}

TEST_F(AssemblerTest, LateFeedbackProducesRevisionTwoOfTheWholeTrace) {
  send({pack("event", "t", "e1")}, "t");
  advance_and_poll(1s);
  ASSERT_EQ(outbox().size(), 1u);
  advance_and_poll(300s);
  send({pack("feedback", "t", "", {{"tag", "thumbs"}, {"text", "great"}})}, "t");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[1].revision, 2u);
  json doc = json::parse(*ob[1].document);
  EXPECT_EQ(doc["revision"], 2);
  EXPECT_EQ(doc["events"].size(), 1u);  // the whole trace, not just the feedback
  ASSERT_EQ(doc["feedback"].size(), 1u);
  EXPECT_EQ(doc["partial"], false);
  EXPECT_EQ(assembler_->stats().late_revisions, 1u);
  // Only the feedback is new in it; in revision 1 everything was.
  EXPECT_EQ(doc["events"][0]["changed"], false);
  EXPECT_EQ(doc["feedback"][0]["changed"], true);
  EXPECT_EQ(doc["trace_changed"], false);
  json first = json::parse(*ob[0].document);
  EXPECT_EQ(first["events"][0]["changed"], true);
  EXPECT_EQ(first["trace_changed"], true);
}

// A revision marks changed exactly what was stored after the revision
// before: here the end of an event left open at max_open, a new child, and
// the trace's context; the event that did not change is not marked.
TEST_F(AssemblerTest, ALateRevisionMarksWhatWasStoredSinceTheRevisionBefore) {
  send({pack("start", "t", "root"), pack("event", "t", "done", {{"parent_id", "root"}})}, "t");
  advance_and_poll(601s);  // max_open: revision 1 with root unfinished
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  send({pack("end", "t", "root"), pack("event", "t", "new", {{"parent_id", "root"}}),
        pack("trace", "t", "", {{"session_id", "s"}})},
       "t");
  advance_and_poll(1s);
  ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  json doc = json::parse(*ob[1].document);
  EXPECT_EQ(doc["revision"], 2);
  EXPECT_EQ(doc["trace_changed"], true);
  ASSERT_EQ(doc["events"].size(), 1u);
  const json& root = doc["events"][0];
  EXPECT_EQ(root["changed"], true);
  std::map<std::string, bool> kids;
  for (const auto& c : root["children"])
    kids[c["id"]] = c["changed"];
  EXPECT_EQ(kids, (std::map<std::string, bool>{{"done", false}, {"new", true}}));
  // The same after a restart: the state record says what was folded before.
  send({pack("feedback", "t", "", {{"tag", "x"}})}, "t");
  reopen();
  advance_and_poll(1s);
  ob = outbox();
  ASSERT_EQ(ob.size(), 3u);
  doc = json::parse(*ob[2].document);
  EXPECT_EQ(doc["revision"], 3);
  EXPECT_EQ(doc["trace_changed"], false);
  EXPECT_EQ(doc["events"][0]["changed"], false);
  EXPECT_EQ(doc["feedback"][0]["changed"], true);
}

TEST_F(AssemblerTest, AfterRetentionALateMessageGivesAPartialRevision) {
  send({pack("event", "t", "e1")}, "t");
  advance_and_poll(1s);
  auto first = outbox();
  ASSERT_EQ(first.size(), 1u);
  // Undelivered, its messages stay whatever retention says.
  advance_and_poll(3601s);
  std::vector<buffer::StoredEvent> kept;
  ASSERT_TRUE(store_->read_trace("t", &kept).ok());
  EXPECT_EQ(kept.size(), 1u);
  const uint64_t delivered = first[0].seq;
  ASSERT_TRUE(store_->ack_outbox({&delivered, 1}).ok());
  advance_and_poll(1s);  // delivered long ago: retention passed, events deleted
  std::vector<buffer::StoredEvent> ev;
  ASSERT_TRUE(store_->read_trace("t", &ev).ok());
  EXPECT_TRUE(ev.empty());
  buffer::TraceState st;
  ASSERT_TRUE(store_->get_state("t", &st).ok());
  EXPECT_TRUE(st.events_deleted);
  send({pack("feedback", "t", "", {{"tag", "late"}})}, "t");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].revision, 2u);
  json doc = json::parse(*ob[0].document);
  EXPECT_EQ(doc["partial"], true);
  ASSERT_EQ(doc["feedback"].size(), 1u);
  EXPECT_EQ(doc["feedback"][0]["changed"], true);
  EXPECT_EQ(assembler_->stats().emitted_partial, 1u);
  // After delivery, retention and the keep time the state record is forgotten.
  ASSERT_TRUE(store_->ack_outbox({&ob[0].seq, 1}).ok());
  advance_and_poll(3601s);
  advance_and_poll(7201s);
  EXPECT_TRUE(store_->get_state("t", &st).IsNotFound());
}

// Traces that come due together go out in the order of their ids, so that
// their states are looked up in key order (neighbours share the blocks
// read): ids that share their first eight bytes, shorter ones, and bytes past
// 0x7f sort as their text does.
TEST_F(AssemblerTest, TracesDueTogetherGoOutInTraceIdOrder) {
  const std::vector<std::string> ids = {"b", "abcdefgh2", "\xc3\xa9t", "abcdefg", "abcdefgh1",
                                        "z", "abcdefgh",  "B",         "a"};
  for (const auto& id : ids)
    send({pack("start", id, "a"), pack("end", id, "a")}, id, /*notify=*/false);
  reopen();  // found by the rescan at start, received together: one deadline
  EXPECT_EQ(assembler_->stats().open_traces, ids.size());
  advance_and_poll(1s);
  std::vector<std::string> got;
  for (const auto& e : outbox())
    got.push_back(e.trace_id);
  std::vector<std::string> want = ids;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
}

TEST_F(AssemblerTest, RestartInTheMiddleEmitsOnceFromPending) {
  send({pack("start", "t", "a"), pack("end", "t", "a")}, "t");
  send({pack("start", "u", "a")}, "u");
  advance_and_poll(200ms);
  reopen();  // the in-memory index is gone; pending is not
  EXPECT_EQ(assembler_->stats().open_traces, 2u);
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0].trace_id, "t");
  reopen();
  advance_and_poll(10s);
  EXPECT_EQ(outbox().size(), 1u);  // t is not emitted again
  send({pack("end", "u", "a")}, "u");
  advance_and_poll(1s);
  ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[1].trace_id, "u");
  EXPECT_EQ(ob[1].revision, 1u);
}

TEST_F(AssemblerTest, EmissionIsAtomicAcrossReopen) {
  send({pack("event", "t", "e1"), pack("event", "t", "e2")}, "t");
  advance_and_poll(1s);
  reopen();
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  buffer::TraceState st;
  ASSERT_TRUE(store_->get_state("t", &st).ok());
  EXPECT_EQ(st.revision, ob[0].revision);
  EXPECT_EQ(st.last_emit_ns, ob[0].emitted_ns);
  std::vector<buffer::StoredEvent> ev;
  ASSERT_TRUE(store_->read_trace("t", &ev).ok());
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(st.max_seq, ev.back().seq);
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
  EXPECT_EQ(json::parse(*ob[0].document)["events"].size(), 2u);
}

TEST_F(AssemblerTest, ManyTracesWithASmallIndexSpillAndAreAllEmittedOnce) {
  opts_.max_open_traces = 16;
  opts_.retry_interval = 100ms;
  reopen();
  for (int i = 0; i < 200; ++i) {
    std::string t = "trace-" + std::to_string(i);
    send({pack("start", t, "a"), pack("end", t, "a")}, t);
  }
  EXPECT_LE(assembler_->stats().open_traces, 16u);
  for (int round = 0; round < 100 && outbox().size() < 200; ++round)
    advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 200u);
  std::set<std::string> ids;
  for (const auto& e : ob)
    ids.insert(e.trace_id);
  EXPECT_EQ(ids.size(), 200u);
  EXPECT_GT(assembler_->stats().spilled, 0u);
}

TEST_F(AssemblerTest, LostNotificationsAreFoundByARescan) {
  opts_.queue_bytes = 1;  // every push beyond the first is refused
  reopen();
  send({pack("event", "a", "x")}, "a");
  send({pack("event", "b", "x")}, "b");
  EXPECT_GT(assembler_->stats().notifications_dropped, 0u);
  advance_and_poll(10ms);
  advance_and_poll(2s);
  advance_and_poll(2s);
  EXPECT_EQ(outbox().size(), 2u);
}

// A trace found by a rescan is quiet from when its messages were stored, as a
// notified one is, not from when the rescan found it.
TEST_F(AssemblerTest, ATraceARescanFindsIsQuietFromWhenItWasStored) {
  opts_.queue_bytes = 1;  // a push is refused while one waits
  reopen();
  send({pack("event", "a", "x")}, "a");
  send({pack("event", "b", "x")}, "b");  // dropped: a's notice waits
  ASSERT_EQ(assembler_->stats().notifications_dropped, 1u);
  advance_and_poll(10ms);  // the rescan finds b
  ASSERT_EQ(assembler_->stats().rescanned_records, 1u);
  advance_and_poll(989ms);
  EXPECT_TRUE(outbox().empty());
  advance_and_poll(1ms);  // a quiet period after both were stored
  EXPECT_EQ(outbox().size(), 2u);
}

// Traces spilled from a full index wait in the store; the rescan that brings
// them back finds them quiet long since, and they go out in that round.
TEST_F(AssemblerTest, ASpilledBacklogIsDueWhenARescanBringsItBack) {
  opts_.max_open_traces = 2;
  opts_.retry_interval = 100ms;
  reopen();
  for (const char* t : {"t1", "t2", "t3"})
    send({pack("start", t, "a"), pack("end", t, "a")}, t);
  advance_and_poll(1ms);  // their notices: t1, the oldest, is spilled
  ASSERT_EQ(assembler_->stats().spilled, 1u);
  advance_and_poll(1100ms);  // the rescan stops for room; t2 and t3 go out
  ASSERT_EQ(outbox().size(), 2u);
  advance_and_poll(100ms);  // the next one brings t1 back
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 3u);
  EXPECT_EQ(ob[2].trace_id, "t1");
}

// A rescan after lost notifications starts at the first lost one: what the
// assembler holds already is not read again.
TEST_F(AssemblerTest, ARescanAfterLostNotificationsStartsAtTheFirstLostOne) {
  opts_.queue_bytes = 1;  // a push is refused while one waits
  reopen();
  for (int i = 0; i < 50; ++i) {
    send({pack("start", "held" + std::to_string(i), "x")}, "held" + std::to_string(i));
    advance_and_poll(1ms);  // taken: the queue is empty again
  }
  const uint64_t before = assembler_->stats().rescanned_records;
  send({pack("event", "a", "x")}, "a");
  send({pack("event", "b", "x")}, "b");  // dropped: a's notice waits
  send({pack("event", "c", "x")}, "c");  // dropped
  ASSERT_EQ(assembler_->stats().notifications_dropped, 2u);
  advance_and_poll(2s);
  EXPECT_EQ(assembler_->stats().rescanned_records - before, 2u);  // b and c, not the 50 held
  advance_and_poll(2s);
  auto ob = outbox();
  std::set<std::string> ids;
  for (const auto& e : ob)
    ids.insert(e.trace_id);
  EXPECT_EQ(ids, (std::set<std::string>{"a", "b", "c"}));
}

// A trace emitted while one of its pending records was out of memory (spilled)
// leaves that record behind; the rescan that finds it releases it, without a
// new revision. Nothing stays owed.
TEST_F(AssemblerTest, APendingRecordFoundAfterItsTraceWasEmittedIsReleased) {
  opts_.max_open_traces = 1;
  opts_.retry_interval = 10s;  // a is emitted before the rescan
  reopen();
  send({pack("start", "a", "x")}, "a");
  clock_.advance(10ms);
  send({pack("event", "b", "y")}, "b");  // spills a
  clock_.advance(10ms);
  send({pack("end", "a", "x")}, "a");  // a again, knowing its second record only; spills b
  advance_and_poll(2s);
  ASSERT_EQ(outbox().size(), 1u);  // a, whole
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  ASSERT_EQ(pending.size(), 2u);  // a's first record and b's
  for (int round = 0; round < 30 && outbox().size() < 2; ++round)
    advance_and_poll(1s);
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  std::set<std::string> ids;
  for (const auto& e : ob) {
    ids.insert(e.trace_id);
    EXPECT_EQ(e.revision, 1u);
  }
  EXPECT_EQ(ids, (std::set<std::string>{"a", "b"}));
  pending.clear();
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
  EXPECT_GT(assembler_->stats().spilled, 0u);
}

// A notification that arrives after a rescan already emitted its trace
// releases nothing twice: the quota measure is unchanged.
TEST_F(AssemblerTest, ALateNotificationOfAnEmittedRecordChangesNothing) {
  std::vector<ipc::Message> msgs(1);
  msgs[0].trace_id = "a";
  msgs[0].raw = pack("event", "a", "x");
  msgs[0].recv_ns = clock_.now_ns();
  std::vector<buffer::Committed> committed;
  ASSERT_TRUE(store_->append(msgs, &committed).ok());
  ASSERT_TRUE(assembler_->recover().ok());  // finds it in pending
  advance_and_poll(2s);
  ASSERT_EQ(outbox().size(), 1u);
  const uint64_t live = store_->counters().live_bytes;
  assembler_->on_committed(committed);  // the notification, late
  advance_and_poll(2s);
  advance_and_poll(2s);
  EXPECT_EQ(outbox().size(), 1u);
  EXPECT_EQ(store_->counters().live_bytes, live);
  EXPECT_EQ(assembler_->stats().open_traces, 0u);
}

// Polls (time standing still) until a round emits nothing more.
void poll_until_settled(Assembler& a) {
  for (int i = 0; i < 1000 && a.poll() > 0; ++i) {
  }
}

// The event ids of `doc`, its part number (0: none) and revision.
struct PartView {
  std::vector<std::string> ids;
  uint32_t part = 0;
  uint32_t revision = 0;
};
PartView view(const buffer::OutboxEntry& e) {
  json d = json::parse(*e.document);
  PartView v;
  // A part holds only its own messages: everything in it is new.
  EXPECT_EQ(d["trace_changed"], true);
  for (const auto& ev : d["events"]) {
    v.ids.push_back(ev["id"]);
    EXPECT_EQ(ev["changed"], true) << ev["id"];
  }
  v.part = d["part"].is_null() ? 0 : d["part"].get<uint32_t>();
  v.revision = d["revision"];
  return v;
}

// The outbox keeps how each revision was built; read once, its document
// comes from memory, and any later read (a retry, a restart) builds the same
// bytes again from the stored messages: whole traces, late revisions,
// revisions marked unfinished, and parts cut at a commit boundary.
TEST_F(AssemblerTest, TheOutboxBuildsEachRevisionAgainByteForByte) {
  opts_.max_trace_bytes = 4 << 10;
  reopen();
  const std::string pad(1500, 'x');
  send({pack("start", "whole", "a"), pack("end", "whole", "a")}, "whole");
  send({pack("start", "open", "a")}, "open");
  for (int i = 0; i < 3; ++i) {
    send({pack("event", "split", "p" + std::to_string(2 * i), {{"pad", pad}}),
          pack("event", "split", "p" + std::to_string(2 * i + 1), {{"pad", pad}})},
         "split");
  }
  advance_and_poll(1s);
  send({pack("feedback", "whole", "", {{"tag", "late"}})}, "whole");
  advance_and_poll(1s);
  advance_and_poll(opts_.max_open);
  poll_until_settled(*assembler_);
  const uint64_t rebuilt = store_->counters().documents_rebuilt;
  auto from_memory = outbox();
  EXPECT_EQ(store_->counters().documents_rebuilt, rebuilt);
  EXPECT_EQ(store_->counters().document_cache_bytes, 0u);
  std::set<std::string> kinds;
  for (const auto& e : from_memory) {
    json doc = json::parse(*e.document);
    const bool part = !doc["part"].is_null();
    if (part) kinds.insert("part");
    if (e.revision > 1 && !part) kinds.insert("late");
    if (doc["status"] == "unfinished") kinds.insert("unfinished");
  }
  EXPECT_EQ(kinds, (std::set<std::string>{"late", "part", "unfinished"}));
  auto again = outbox();
  EXPECT_EQ(store_->counters().documents_rebuilt, rebuilt + from_memory.size());
  reopen();
  auto after_restart = outbox();
  ASSERT_EQ(again.size(), from_memory.size());
  ASSERT_EQ(after_restart.size(), from_memory.size());
  uint64_t bytes = 0;
  for (size_t i = 0; i < from_memory.size(); ++i) {
    EXPECT_EQ(*again[i].document, *from_memory[i].document) << i;
    EXPECT_EQ(*after_restart[i].document, *from_memory[i].document) << i;
    bytes += from_memory[i].document->size();
  }
  EXPECT_EQ(store_->outbox_bytes(), bytes);  // counted as the documents, kept as recipes
}

TEST_F(AssemblerTest, ATracePastMaxEventsGoesOutInPartsThatHoldEveryEventOnce) {
  opts_.max_trace_events = 10;
  reopen();
  send({pack("event", "small", "s1")}, "small");
  for (int i = 0; i < 35; ++i)
    send({pack("event", "big", "e" + std::to_string(i))}, "big");
  // Past the bound, parts go out at once, without waiting to be quiet.
  poll_until_settled(*assembler_);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 3u);
  std::set<std::string> seen;
  for (size_t k = 0; k < 3; ++k) {
    PartView v = view(ob[k]);
    EXPECT_EQ(v.part, k + 1);
    EXPECT_EQ(v.revision, k + 1);
    EXPECT_EQ(v.ids.size(), 10u);
    seen.insert(v.ids.begin(), v.ids.end());
  }
  // The rest waits to be quiet like any trace; the small one stays whole.
  advance_and_poll(1100ms);
  ob = outbox();
  ASSERT_EQ(ob.size(), 5u);
  for (const auto& e : ob) {
    PartView v = view(e);
    if (e.trace_id == "small") {
      EXPECT_EQ(v.part, 0u);
      EXPECT_EQ(v.ids, std::vector<std::string>{"s1"});
      continue;
    }
    if (v.part == 4) {
      EXPECT_EQ(v.ids.size(), 5u);
    }
    seen.insert(v.ids.begin(), v.ids.end());
  }
  EXPECT_EQ(seen.size(), 35u);
  EXPECT_EQ(assembler_->stats().emitted_parts, 4u);
  // A late event of a split trace is a further part holding only itself.
  send({pack("event", "big", "late")}, "big");
  advance_and_poll(1100ms);
  ob = outbox();
  ASSERT_EQ(ob.size(), 6u);
  PartView last = view(ob.back());
  EXPECT_EQ(last.part, 5u);
  EXPECT_EQ(last.ids, std::vector<std::string>{"late"});
  EXPECT_EQ(assembler_->stats().open_traces, 0u);
}

TEST_F(AssemblerTest, PartsWaitForTheOutboxAndOtherTracesGoAhead) {
  opts_.max_trace_events = 10;
  opts_.max_trace_bytes = 1000;
  reopen();
  for (int i = 0; i < 100; ++i)
    send({pack("event", "big", "e" + std::to_string(i))}, "big");
  poll_until_settled(*assembler_);
  // Parts went out until the outbox held a few parts' bound of documents.
  const uint64_t ahead = Assembler::kPartsAhead * opts_.max_trace_bytes;
  auto ob = outbox();
  ASSERT_GE(ob.size(), 2u);
  EXPECT_LT(ob.size(), 10u);
  EXPECT_GT(store_->outbox_bytes(), ahead);
  EXPECT_GT(assembler_->stats().parts_waited, 0u);
  // Another trace goes out once quiet, ahead of the rest of the split one.
  send({pack("event", "small", "s1")}, "small");
  advance_and_poll(1100ms);
  ob = outbox();
  ASSERT_FALSE(ob.empty());
  EXPECT_EQ(ob.back().trace_id, "small");
  // As delivery takes entries, the rest follows, every event once.
  std::multiset<std::string> seen;
  for (int round = 0; round < 50 && seen.size() < 100; ++round) {
    std::vector<uint64_t> seqs;
    for (const auto& e : outbox()) {
      seqs.push_back(e.seq);
      if (e.trace_id == "big") {
        for (auto& id : view(e).ids)
          seen.insert(id);
      }
    }
    ASSERT_TRUE(store_->ack_outbox(seqs).ok());
    advance_and_poll(1100ms);
    poll_until_settled(*assembler_);
  }
  EXPECT_EQ(seen.size(), 100u);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(seen.count("e" + std::to_string(i)), 1u) << i;
  EXPECT_EQ(assembler_->stats().open_traces, 0u);
}

TEST_F(AssemblerTest, MaxBytesCutsPartsAtCommitBoundariesAndAfterARestart) {
  opts_.max_trace_bytes = 64 << 10;
  reopen();
  const std::string pad(10 << 10, 'x');
  // One commit larger than the bound: its part takes all of it.
  std::vector<std::string> one_commit;
  for (int i = 0; i < 8; ++i)
    one_commit.push_back(pack("event", "wide", "w" + std::to_string(i), {{"input", pad}}));
  send(one_commit, "wide");
  // Twenty commits of one message each, the last ones after a restart that
  // loses the notifications: parts of six (60 KiB) from the store alone.
  for (int i = 0; i < 14; ++i)
    send({pack("event", "long", "l" + std::to_string(i), {{"input", pad}})}, "long");
  poll_until_settled(*assembler_);
  for (int i = 14; i < 20; ++i)
    send({pack("event", "long", "l" + std::to_string(i), {{"input", pad}})}, "long", false);
  reopen();
  advance_and_poll(1100ms);
  poll_until_settled(*assembler_);
  advance_and_poll(1100ms);
  // Delivered as they come: further parts wait while the outbox holds a few.
  std::vector<buffer::OutboxEntry> all;
  for (int round = 0; round < 20; ++round) {
    std::vector<uint64_t> seqs;
    for (auto& e : outbox()) {
      seqs.push_back(e.seq);
      all.push_back(std::move(e));
    }
    if (seqs.empty()) break;
    ASSERT_TRUE(store_->ack_outbox(seqs).ok());
    advance_and_poll(1100ms);
    poll_until_settled(*assembler_);
  }
  std::map<std::string, std::vector<size_t>> sizes;
  std::set<std::string> seen;
  for (const auto& e : all) {
    PartView v = view(e);
    EXPECT_GT(v.part, 0u) << e.trace_id;
    EXPECT_LE(e.document->size(), (8u * pad.size()) + 8192u);
    sizes[e.trace_id].push_back(v.ids.size());
    seen.insert(v.ids.begin(), v.ids.end());
  }
  EXPECT_EQ(sizes["wide"], std::vector<size_t>{8});
  EXPECT_EQ(sizes["long"], (std::vector<size_t>{6, 6, 6, 2}));
  EXPECT_EQ(seen.size(), 28u);
}

// The document of revision 1 of `trace_id` built from what the store holds.
std::string built_from_store(buffer::Store& store, const std::string& trace_id) {
  std::vector<buffer::StoredEvent> events;
  EXPECT_TRUE(store.read_trace(trace_id, &events).ok());
  std::vector<StoredMessage> msgs;
  for (const auto& e : events)
    msgs.push_back(StoredMessage{e.seq, e.recv_ns, e.raw});
  return build_trace(trace_id, msgs, BuildOptions{}).document;
}

// A trace whose messages all came with their notices is built from memory:
// the same document as from the store, and its bytes leave the cache with it.
TEST_F(AssemblerTest, ATraceBuiltFromTheCacheIsTheOneTheStoreGives) {
  send({pack("end", "t1", "e1"), pack("trace", "t1", "", {{"session_id", "s"}})}, "t1");
  advance_and_poll(100ms);
  send({pack("start", "t1", "e1"), pack("end", "t1", "e1")}, "t1");  // a duplicate
  send({pack("feedback", "t1", "", {{"tag", "good"}})}, "t1");
  EXPECT_GT(assembler_->stats().cache_bytes, 0u);
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, built_from_store(*store_, "t1"));
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.cache_hits, 1u);
  EXPECT_EQ(st.cache_misses, 0u);
  EXPECT_EQ(st.cache_bytes, 0u);
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
}

// Notices without the bytes (another writer, or none carried): the trace is
// read from the store, with the same result.
TEST_F(AssemblerTest, NoticesWithoutTheBytesReadTheTraceFromTheStore) {
  carry_bytes_ = false;
  send({pack("start", "t1", "e1"), pack("end", "t1", "e1")}, "t1");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, built_from_store(*store_, "t1"));
  EXPECT_EQ(assembler_->stats().cache_hits, 0u);
  EXPECT_EQ(assembler_->stats().cache_misses, 1u);
  EXPECT_EQ(assembler_->stats().record_reads, 1u);  // every record notified
}

// A trace stored a message at a time over many commits (a flood into few
// traces) is read through its runs: a lookup per message would cost more.
TEST_F(AssemblerTest, ATraceOfManyRecordsIsReadThroughItsRuns) {
  carry_bytes_ = false;
  for (const char* t : {"few", "many"}) {
    const int commits = std::string(t) == "few" ? 16 : 17;
    for (int i = 0; i < commits; ++i)
      send({pack("event", t, "e" + std::to_string(i))}, t);
  }
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  for (const auto& e : ob)
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
  EXPECT_EQ(assembler_->stats().cache_misses, 2u);
  EXPECT_EQ(assembler_->stats().record_reads, 1u);  // few
}

// Traces found by a rescan (here at a restart), stored in several commits,
// are read where their pending records say: the documents their runs give.
TEST_F(AssemblerTest, TracesFoundByARescanAreReadWhereTheirRecordsSay) {
  for (const char* t : {"a", "b"})
    send({pack("start", t, "e1")}, t, /*notify=*/false);
  send({pack("end", "b", "e1")}, "b", /*notify=*/false);
  send({pack("end", "a", "e1"), pack("feedback", "a", "", {{"tag", "good"}})}, "a",
       /*notify=*/false);
  reopen();  // its rescan reads pending to the end
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  for (const auto& e : ob) {
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
    json doc = json::parse(*e.document);
    EXPECT_EQ(doc["status"], "ok");
    EXPECT_EQ(doc["events"][0]["unfinished"], false);
  }
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.cache_misses, 2u);
  EXPECT_EQ(st.record_reads, 2u);
}

// A rescan that stops for room leaves the rest of pending to the next one.
// The traces it took have no record unknown below their last known one, and
// are read where their records say.
TEST_F(AssemblerTest, ARescanThatStopsForRoomReadsItsTracesWhereTheirRecordsSay) {
  opts_.max_open_traces = 2;
  for (const char* t : {"a", "b", "c"}) {
    send({pack("start", t, "e1")}, t, /*notify=*/false);
    send({pack("end", t, "e1")}, t, /*notify=*/false);
  }
  auto ob = restart_until(3);
  ASSERT_EQ(ob.size(), 3u);
  for (const auto& e : ob) {
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
    EXPECT_EQ(json::parse(*e.document)["events"][0]["unfinished"], false);
  }
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.cache_misses, 3u);
  EXPECT_EQ(st.record_reads, 3u);
  EXPECT_GE(st.rescans_full, 1u);
}

// A backlog found in pending goes through the index a window of due traces
// at a time, each read where its records say, and all of it goes out.
TEST_F(AssemblerTest, ABacklogGoesThroughTheIndexAWindowAtATime) {
  opts_.rescan_traces = 2;
  for (const char* t : {"a", "b", "c", "d", "e"}) {
    send({pack("start", t, "e1")}, t, /*notify=*/false);
    send({pack("end", t, "e1")}, t, /*notify=*/false);
  }
  clock_.advance(2s);  // all quiet: due as soon as they are found
  reopen();
  EXPECT_EQ(assembler_->stats().open_traces, 2u);
  // A round emits a window; the next is taken in the round after, not a
  // retry interval later.
  for (int i = 0; i < 3; ++i) {
    advance_and_poll(1ms);
    EXPECT_LE(assembler_->stats().open_traces, 2u);
  }
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 5u);
  for (const auto& e : ob) {
    EXPECT_EQ(e.revision, 1u);
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
  }
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.record_reads, 5u);
  EXPECT_GE(st.rescans, 3u);
  EXPECT_EQ(st.rescans_full, 0u);  // the index itself never filled
}

// Traces still in their quiet period do not count against the window: a
// rescan takes them all, and reads pending to its end.
TEST_F(AssemblerTest, ARescanTakesTracesNotYetDueBeyondTheWindow) {
  opts_.rescan_traces = 1;
  for (const char* t : {"a", "b", "c"})
    send({pack("event", t, "e1")}, t, /*notify=*/false);
  reopen();  // no time has passed: none is due
  EXPECT_EQ(assembler_->stats().open_traces, 3u);
  advance_and_poll(2s);
  EXPECT_EQ(outbox().size(), 3u);
  EXPECT_EQ(assembler_->stats().record_reads, 3u);
}

// Past the stop, the rest of the rescan's page still adds records to the
// traces it holds: one with a record there is read through its runs, whole,
// in one revision.
TEST_F(AssemblerTest, ARecordPastARescansStopStillReachesItsOpenTrace) {
  opts_.max_open_traces = 2;
  send({pack("event", "a", "e1")}, "a", /*notify=*/false);
  send({pack("event", "b", "e1")}, "b", /*notify=*/false);
  send({pack("event", "c", "e1")}, "c", /*notify=*/false);  // no room for it
  send({pack("event", "a", "e2")}, "a", /*notify=*/false);
  auto ob = restart_until(3);
  ASSERT_EQ(ob.size(), 3u);
  for (const auto& e : ob) {
    EXPECT_EQ(e.revision, 1u);
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
  }
  EXPECT_EQ(json::parse(*ob[0].document)["events"].size(), 2u);  // a, whole
  AssemblerStats st = assembler_->stats();
  EXPECT_GE(st.rescans_full, 1u);
  EXPECT_EQ(st.record_reads, 2u);  // b, then c; a through its runs
  EXPECT_EQ(st.late_revisions, 0u);
}

// A record past the rescan's page is not known when its trace is read: it
// goes out in the next revision, as a late message does, and nothing is
// lost.
TEST_F(AssemblerTest, ARecordPastARescansPageGoesOutInTheNextRevision) {
  opts_.max_open_traces = 2;
  send({pack("event", "a", "e1")}, "a", /*notify=*/false);
  send({pack("event", "x", "e1")}, "x", /*notify=*/false);
  send({pack("event", "b", "e1")}, "b", /*notify=*/false);  // no room for it
  for (int i = 0; i < 4096; ++i)                            // a record each, filling the page
    send({pack("event", "x", "f" + std::to_string(i))}, "x", /*notify=*/false);
  send({pack("event", "a", "e2")}, "a", /*notify=*/false);
  std::map<std::string, std::vector<buffer::OutboxEntry>> by_trace;
  for (auto& e : restart_until(4, 10))
    by_trace[e.trace_id].push_back(e);
  ASSERT_EQ(by_trace["a"].size(), 2u);
  EXPECT_EQ(by_trace["a"][0].revision, 1u);
  EXPECT_EQ(json::parse(*by_trace["a"][0].document)["events"].size(), 1u);
  EXPECT_EQ(by_trace["a"][1].revision, 2u);
  EXPECT_EQ(*by_trace["a"][1].document, [&] {
    std::vector<buffer::StoredEvent> events;
    EXPECT_TRUE(store_->read_trace("a", &events).ok());
    std::vector<StoredMessage> msgs;
    for (const auto& e : events)
      msgs.push_back(StoredMessage{e.seq, e.recv_ns, e.raw});
    BuildOptions bo;
    bo.revision = 2;
    bo.changed_after_seq = events.front().seq;
    return build_trace("a", msgs, bo).document;
  }());
  ASSERT_EQ(by_trace["x"].size(), 1u);
  EXPECT_EQ(*by_trace["x"][0].document, built_from_store(*store_, "x"));
  ASSERT_EQ(by_trace["b"].size(), 1u);
  EXPECT_EQ(*by_trace["b"][0].document, built_from_store(*store_, "b"));
  EXPECT_EQ(assembler_->stats().late_revisions, 1u);
}

// Messages no longer where their records say (the log's front moved them)
// are read through the trace's runs, with the same result.
TEST_F(AssemblerTest, RecordsTheLogsFrontMovedAreReadThroughTheRuns) {
  upstream::testing::CountingStore moved(*store_);
  moved.records_moved = true;
  assembler_ = std::make_unique<Assembler>(moved, moved, clock_, opts_);
  ASSERT_TRUE(assembler_->recover().ok());
  carry_bytes_ = false;
  send({pack("start", "t1", "e1")}, "t1");
  send({pack("end", "t1", "e1")}, "t1");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(*ob[0].document, built_from_store(*store_, "t1"));
  EXPECT_EQ(json::parse(*ob[0].document)["events"][0]["unfinished"], false);
  EXPECT_EQ(assembler_->stats().cache_misses, 1u);
  EXPECT_EQ(assembler_->stats().record_reads, 0u);
  assembler_.reset();  // before the store it reads
}

// Past cache_bytes the bytes are refused: the trace they belong to is read
// from the store, whole; the bound is never passed.
TEST_F(AssemblerTest, BytesPastTheCacheBoundSendTheirTraceToTheStore) {
  const std::string pad(200, 'x');
  const std::string first = pack("start", "big", "e1", {{"input", pad}});
  const uint64_t first_weight = first.size() + sizeof(buffer::StoredEvent);
  opts_.cache_bytes = first_weight + 100;  // the first message, not the second
  reopen();
  send({first}, "big");
  EXPECT_EQ(assembler_->stats().cache_bytes, first_weight);
  send({pack("end", "big", "e1", {{"output", pad}})}, "big");  // refused
  advance_and_poll(1ms);
  send({pack("event", "small", "x")}, "small");  // fits again: big left the cache
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.cache_refused, 1u);
  EXPECT_LE(st.cache_bytes, opts_.cache_bytes);
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  for (const auto& e : ob) {
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id));
    EXPECT_EQ(json::parse(*e.document)["status"], "ok");
  }
  st = assembler_->stats();
  EXPECT_EQ(st.cache_misses, 1u);  // big
  EXPECT_EQ(st.cache_hits, 1u);    // small
  EXPECT_EQ(st.cache_bytes, 0u);
}

// Lost notices may have held messages of a cached trace: every cached trace
// is then read from the store. The rescan that finds what they held runs at
// once, whatever retry_interval, and the trace is read where its records say.
TEST_F(AssemblerTest, LostNotificationsSendCachedTracesToTheStoreAfterARescan) {
  opts_.queue_bytes = 1;       // a push is refused while one waits
  opts_.retry_interval = 10s;  // not what a rescan after lost notices waits for
  reopen();
  const uint64_t rescans = assembler_->stats().rescans;
  send({pack("start", "a", "e1")}, "a");
  send({pack("end", "a", "e1")}, "a");  // lost
  ASSERT_EQ(assembler_->stats().notifications_dropped, 1u);
  // a's notice, then the rescan: the lost record was stored a quiet period ago.
  advance_and_poll(1s);
  EXPECT_EQ(assembler_->stats().rescans, rescans + 1);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  json doc = json::parse(*ob[0].document);
  EXPECT_EQ(doc["status"], "ok");
  EXPECT_EQ(doc["events"][0]["unfinished"], false);
  EXPECT_EQ(*ob[0].document, built_from_store(*store_, "a"));
  EXPECT_EQ(assembler_->stats().cache_bytes, 0u);
  EXPECT_EQ(assembler_->stats().cache_hits, 0u);
  EXPECT_EQ(assembler_->stats().record_reads, 1u);
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
}

// A rescan that has read pending to its end makes every open trace's records
// known again, those it found and those already open: they are read where
// their records say, not by a walk of their runs.
TEST_F(AssemblerTest, AfterARescanOpenTracesAreReadWhereTheirRecordsSay) {
  opts_.queue_bytes = 1;  // a push is refused while one waits
  opts_.retry_interval = 1ms;
  reopen();
  const uint64_t rescans = assembler_->stats().rescans;
  send({pack("start", "a", "e1")}, "a");
  send({pack("end", "a", "e1")}, "a");    // lost
  send({pack("start", "b", "e1")}, "b");  // lost
  ASSERT_EQ(assembler_->stats().notifications_dropped, 2u);
  advance_and_poll(1ms);  // a's notice, then the rescan from the first lost one
  EXPECT_EQ(assembler_->stats().rescans, rescans + 1);
  send({pack("end", "b", "e1")}, "b");
  advance_and_poll(2s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  for (const auto& e : ob) {
    EXPECT_EQ(*e.document, built_from_store(*store_, e.trace_id)) << e.trace_id;
    EXPECT_EQ(json::parse(*e.document)["events"][0]["unfinished"], false) << e.trace_id;
  }
  const AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.record_reads, 2u);
  EXPECT_EQ(st.cache_hits, 0u);
  std::vector<buffer::Committed> pending;
  ASSERT_TRUE(store_->scan_pending(0, 100, &pending).ok());
  EXPECT_TRUE(pending.empty());
}

// A trace spilled from the index may have stored messages it no longer knows
// of: what arrives for it later is not taken for the whole trace.
TEST_F(AssemblerTest, ATraceSpilledFromTheIndexIsNotBuiltFromTheCache) {
  opts_.max_open_traces = 2;
  opts_.retry_interval = 10s;  // no rescan before the trace is due
  reopen();
  for (const char* t : {"a", "b", "c"}) {
    send({pack("start", t, "e1")}, t);
    advance_and_poll(1ms);  // c spills a, the oldest
  }
  ASSERT_EQ(assembler_->stats().spilled, 1u);
  send({pack("end", "a", "e1")}, "a");  // a is back in memory, without its start
  advance_and_poll(1ms);
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 1u);
  json doc = json::parse(*ob[0].document);
  EXPECT_EQ(ob[0].trace_id, "a");
  EXPECT_EQ(doc["status"], "ok");
  EXPECT_EQ(doc["events"].size(), 1u);
  EXPECT_EQ(doc["events"][0]["unfinished"], false);
  EXPECT_EQ(assembler_->stats().cache_bytes, 0u);   // c waits for max_open, from the store
  EXPECT_EQ(assembler_->stats().record_reads, 0u);  // a's first record is not known to it
}

// A late message of an emitted trace is built with everything stored before.
TEST_F(AssemblerTest, ALateMessageOfACachedTraceRebuildsFromTheStore) {
  send({pack("event", "t", "e1")}, "t");
  advance_and_poll(1s);
  send({pack("event", "t", "e2")}, "t");
  advance_and_poll(1s);
  auto ob = outbox();
  ASSERT_EQ(ob.size(), 2u);
  EXPECT_EQ(ob[1].revision, 2u);
  EXPECT_EQ(json::parse(*ob[1].document)["events"].size(), 2u);
  EXPECT_EQ(assembler_->stats().cache_hits, 1u);
  EXPECT_EQ(assembler_->stats().cache_misses, 1u);
  EXPECT_EQ(assembler_->stats().cache_bytes, 0u);
}

// A trace whose build throws every time (a poison trace) is tried
// max_build_failures times, then set aside with its reason: the others go
// out, it is not built again, also after a restart, and its messages stay.
// A build that fails once costs a retry, not the trace.
TEST_F(AssemblerTest, APoisonTraceIsSetAsideAndTheOthersGoOut) {
  int flaky_failures = 0;
  opts_.max_build_failures = 3;
  opts_.retry_interval = 1s;
  opts_.before_build = [&](const std::string& id) {
    if (id == "poison") throw std::runtime_error("cannot build this one");
    if (id == "flaky" && flaky_failures++ == 0) throw std::runtime_error("once");
  };
  reopen();
  send({pack("start", "poison", "a"), pack("end", "poison", "a")}, "poison");
  send({pack("start", "ok", "a"), pack("end", "ok", "a")}, "ok");
  send({pack("start", "flaky", "a"), pack("end", "flaky", "a")}, "flaky");
  for (int i = 0; i < 6; ++i)
    advance_and_poll(1s);
  std::set<std::string> emitted;
  for (const auto& e : outbox())
    emitted.insert(e.trace_id);
  EXPECT_EQ(emitted, (std::set<std::string>{"ok", "flaky"}));
  AssemblerStats st = assembler_->stats();
  EXPECT_EQ(st.build_failures, 4u);  // poison 3 times, flaky once
  EXPECT_EQ(st.quarantined, 1u);
  EXPECT_EQ(st.open_traces, 0u);
  std::string reason;
  ASSERT_TRUE(store_->meta_get("assembler/quarantine/poison", &reason).ok());
  EXPECT_NE(reason.find("cannot build this one"), std::string::npos) << reason;
  std::vector<buffer::StoredEvent> kept;
  ASSERT_TRUE(store_->read_trace("poison", &kept).ok());
  EXPECT_EQ(kept.size(), 2u);

  // After a restart it is found in pending again, and left alone.
  reopen();
  for (int i = 0; i < 6; ++i)
    advance_and_poll(1s);
  EXPECT_EQ(assembler_->stats().build_failures, 0u);
  EXPECT_EQ(assembler_->stats().open_traces, 0u);
  EXPECT_EQ(outbox().size(), 2u);
}

// A trace set aside is taken back once what made it fail is fixed: released
// in a running assembler, it is found again in pending and built; released
// in the store while no assembler runs, the next start builds it.
TEST_F(AssemblerTest, AQuarantinedTraceIsReleasedAndBuilt) {
  bool poisoned = true;
  opts_.max_build_failures = 2;
  opts_.retry_interval = 1s;
  opts_.before_build = [&](const std::string& id) {
    if (poisoned && id.starts_with("poison")) throw std::runtime_error("cannot build this one");
  };
  reopen();
  send({pack("start", "poison1", "a"), pack("end", "poison1", "a")}, "poison1");
  send({pack("start", "poison2", "a"), pack("end", "poison2", "a")}, "poison2");
  for (int i = 0; i < 4; ++i)
    advance_and_poll(1s);
  std::vector<std::pair<std::string, std::string>> aside;
  ASSERT_TRUE(quarantine_list(*store_, &aside, 10).ok());
  ASSERT_EQ(aside.size(), 2u);
  EXPECT_EQ(aside[0].first, "poison1");
  EXPECT_NE(aside[0].second.find("cannot build this one"), std::string::npos);
  aside.clear();
  ASSERT_TRUE(quarantine_list(*store_, &aside, 10, "poison1").ok());
  ASSERT_EQ(aside.size(), 1u);
  EXPECT_EQ(aside[0].first, "poison2");
  EXPECT_TRUE(outbox().empty());

  poisoned = false;
  assembler_->release("poison1");
  advance_and_poll(1s);
  advance_and_poll(1s);
  ASSERT_EQ(outbox().size(), 1u);
  EXPECT_EQ(outbox()[0].trace_id, "poison1");
  EXPECT_EQ(json::parse(*outbox()[0].document)["events"].size(), 1u);
  std::string reason;
  EXPECT_TRUE(store_->meta_get("assembler/quarantine/poison1", &reason).IsNotFound());

  // Offline: the record goes, and the next start builds the trace.
  assembler_.reset();
  ASSERT_TRUE(quarantine_release(*store_, "poison2").ok());
  EXPECT_TRUE(quarantine_release(*store_, "poison2").IsNotFound());
  reopen();
  for (int i = 0; i < 3; ++i)
    advance_and_poll(1s);
  std::set<std::string> emitted;
  for (const auto& e : outbox())
    emitted.insert(e.trace_id);
  EXPECT_EQ(emitted, (std::set<std::string>{"poison1", "poison2"}));
}

}  // namespace
}  // namespace sidetrace::trace
