#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "upstream/testing/http_server.h"
#include "upstream/testing/store_helpers.h"
#include "upstream/testing/thread_wakes.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {
namespace {

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);)
    out.push_back(l);
  return out;
}

TEST(UpstreamFileExporter, WritesLinesRotatesAndAcks) {
  buffer::testing::TempDir dir;
  auto store = testing::open_store(dir.str());
  std::vector<std::string> docs;
  for (int i = 0; i < 6; ++i) {
    docs.push_back(testing::make_doc("t" + std::to_string(i), 1));
    testing::emit_doc(*store, "t" + std::to_string(i), docs.back());
  }
  Options o;
  o.data_dir = dir.str();
  o.file_max_bytes = docs[0].size() * 2 + 10;  // two lines per file
  o.file_keep = 2;
  auto exporter = make_exporter(*store, *store, o);
  exporter->start();
  ASSERT_TRUE(testing::wait_until([&] { return store->outbox_entries() == 0; }));
  // Entries appended while running are picked up through the listener.
  docs.push_back(testing::make_doc("t6", 1));
  testing::emit_doc(*store, "t6", docs.back());
  ASSERT_TRUE(testing::wait_until([&] { return store->outbox_entries() == 0; }));
  exporter->stop();
  std::string base = dir.str() + "/traces.jsonl";
  EXPECT_EQ(lines_of(base), (std::vector<std::string>{docs[6]}));
  EXPECT_EQ(lines_of(base + ".1"), (std::vector<std::string>{docs[4], docs[5]}));
  EXPECT_EQ(lines_of(base + ".2"), (std::vector<std::string>{docs[2], docs[3]}));
  EXPECT_FALSE(std::filesystem::exists(base + ".3"));
  Stats s = exporter->stats();
  EXPECT_EQ(s.traces_delivered, 7u);
  EXPECT_EQ(s.events_delivered, 14u);
}

TEST(UpstreamFileExporter, APartialLastLineFromACrashIsRemovedAndWrittenAgain) {
  buffer::testing::TempDir dir;
  auto store = testing::open_store(dir.str());
  std::string done = testing::make_doc("done", 1);
  std::string cut = testing::make_doc("cut", 1);
  // A crash after "done" was acked and while "cut" was half written: "cut"
  // is still in the outbox.
  std::string path = dir.str() + "/out.jsonl";
  std::ofstream(path) << done << "\n" << cut.substr(0, cut.size() / 2);
  testing::emit_doc(*store, "cut", cut);
  Options o;
  o.data_dir = dir.str();
  o.file_path = path;
  auto exporter = make_exporter(*store, *store, o);
  exporter->start();
  ASSERT_TRUE(testing::wait_until([&] { return store->outbox_entries() == 0; }));
  exporter->stop();
  EXPECT_EQ(lines_of(path), (std::vector<std::string>{done, cut}));
}

// Traces emitted while it runs are written in rounds of half a batch, or
// once the last round is flush_interval_ms old: not a write, an fdatasync and
// an acknowledgement for each.
TEST(UpstreamFileExporter, SmallRoundsGatherUntilHalfABatchOrTheFlushInterval) {
  buffer::testing::TempDir dir;
  auto store = testing::open_store(dir.str());
  Options o;
  o.data_dir = dir.str();
  o.batch_max_events = 8;
  o.flush_interval_ms = 3'600'000;
  auto exporter = make_exporter(*store, *store, o);
  exporter->start();
  testing::emit_doc(*store, "first", testing::make_doc("first", 1));
  // Counted once a round is acknowledged, after its entries left the outbox.
  ASSERT_TRUE(testing::wait_until([&] { return exporter->stats().traces_delivered == 1; }));
  EXPECT_EQ(exporter->stats().batches_sent, 1u);  // the first round goes at once
  // Three traces are less than half a batch: they wait for a fourth, then go
  // out in one round.
  for (int i = 0; i < 3; ++i)
    testing::emit_doc(*store, "t" + std::to_string(i), testing::make_doc("t", 1));
  testing::emit_doc(*store, "t3", testing::make_doc("t", 1));
  ASSERT_TRUE(testing::wait_until([&] { return exporter->stats().traces_delivered == 5; }));
  EXPECT_EQ(exporter->stats().batches_sent, 2u);
  EXPECT_EQ(store->outbox_entries(), 0u);
  exporter->stop();
  // A short interval lets a single trace go on its own.
  o.flush_interval_ms = 50;
  exporter = make_exporter(*store, *store, o);
  exporter->start();
  testing::emit_doc(*store, "late", testing::make_doc("late", 1));
  ASSERT_TRUE(testing::wait_until([&] { return store->outbox_entries() == 0; }));
  exporter->stop();
  EXPECT_EQ(lines_of(dir.str() + "/traces.jsonl").size(), 6u);
}

// While a small round gathers more, emissions that do not fill it leave the
// writer thread asleep.
TEST(UpstreamFileExporter, EmissionsThatDoNotFillTheRoundLeaveItAsleep) {
  buffer::testing::TempDir dir;
  auto store = testing::open_store(dir.str());
  Options o;
  o.data_dir = dir.str();
  o.batch_max_events = 40;
  o.flush_interval_ms = 3'600'000;
  auto exporter = make_exporter(*store, *store, o);
  exporter->start();
  testing::emit_doc(*store, "first", testing::make_doc("first", 1));
  // Counted once the round is acknowledged, after its entries left the outbox.
  ASSERT_TRUE(testing::wait_until([&] { return exporter->stats().batches_sent == 1; }));
  const int64_t before = testing::thread_wakes("st-exporter");
  ASSERT_GE(before, 0);
  for (int i = 0; i < 19; ++i)
    testing::emit_doc(*store, "t" + std::to_string(i), testing::make_doc("t", 1));
  // The first of them wakes it to start the round (and it may still be
  // settling after the first round); the others do not.
  EXPECT_LE(testing::thread_wakes("st-exporter") - before, 3);
  EXPECT_EQ(exporter->stats().batches_sent, 1u);
  testing::emit_doc(*store, "t19", testing::make_doc("t", 1));
  ASSERT_TRUE(testing::wait_until([&] { return exporter->stats().batches_sent == 2; }));
  EXPECT_EQ(store->outbox_entries(), 0u);
  exporter->stop();
}

TEST(UpstreamFileExporter, UnwritableDirectoryThrowsAtStart) {
  buffer::testing::TempDir dir;
  auto store = testing::open_store(dir.str());
  Options o;
  o.data_dir = dir.str() + "/missing/dir";
  FileExporter e(*store, o);
  EXPECT_THROW(e.start(), std::runtime_error);
}

}  // namespace
}  // namespace sidetrace::upstream
