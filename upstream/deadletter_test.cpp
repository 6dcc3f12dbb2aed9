// The dead-letter store on a real store: bounded, read a page at a time, its
// totals kept beside the records through adds, evictions, replays and purges.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"
#include "upstream/detail/records.h"
#include "upstream/testing/counting_store.h"
#include "upstream/testing/store_helpers.h"
#include "upstream/upstream.h"

namespace sidetrace::upstream {
namespace {

using detail::DeadLetterRecord;
using detail::DeadLetterTotals;
using detail::kDeadLetterPage;

DeadLetterRecord record(uint64_t ts_ns, const std::string& trace, size_t doc_bytes = 100) {
  DeadLetterRecord r;
  r.ts_ns = ts_ns;
  r.http_status = 400;
  r.reason = "400 Bad Request";
  r.key = detail::new_idempotency_key();
  r.trace_ids = {trace};
  r.docs = {std::string(doc_bytes, 'x')};
  return r;
}

std::vector<std::string> listed_traces(buffer::Store& store) {
  std::vector<DeadLetter> dl;
  EXPECT_TRUE(deadletter_list(store, &dl).ok());
  std::vector<std::string> ids;
  for (auto& d : dl)
    ids.push_back(d.trace_ids.at(0));
  return ids;
}

class DeadLetterStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = testing::open_store(dir_.str()); }
  buffer::testing::TempDir dir_;
  std::unique_ptr<buffer::Store> store_;
};

// However many records the store holds, an add reads at most a page of
// them: the bounds are checked against the kept totals.
TEST_F(DeadLetterStoreTest, AnAddReadsAPageAtMostAndEvictsTheOldest) {
  testing::CountingStore counting(*store_);
  const uint32_t max_count = 5 * kDeadLetterPage;
  uint64_t evicted = 0, evicted_docs = 0;
  for (uint64_t i = 0; i < max_count + 7; ++i) {
    uint64_t before = counting.meta_rows_read;
    ASSERT_TRUE(detail::deadletter_add(counting, record(1000 + i, "t" + std::to_string(i)),
                                       UINT64_MAX, max_count, &evicted, &evicted_docs)
                    .ok());
    EXPECT_LE(counting.meta_rows_read - before, kDeadLetterPage) << "add " << i;
  }
  EXPECT_EQ(evicted, 7u);
  EXPECT_EQ(evicted_docs, 7u);
  auto ids = listed_traces(*store_);
  ASSERT_EQ(ids.size(), max_count);
  EXPECT_EQ(ids.front(), "t7");
  EXPECT_EQ(ids.back(), "t" + std::to_string(max_count + 6));
  uint64_t count = 0, bytes = 0;
  ASSERT_TRUE(deadletter_stats(*store_, &count, &bytes).ok());
  EXPECT_EQ(count, max_count);
  EXPECT_GT(bytes, max_count * 100);
}

TEST_F(DeadLetterStoreTest, TheByteBoundEvictsTheOldestAndKeepsTheNewestAlone) {
  uint64_t evicted = 0, evicted_docs = 0;
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(detail::deadletter_add(*store_, record(10 + i, "t" + std::to_string(i), 1000), 2500,
                                       100, &evicted, &evicted_docs)
                    .ok());
  }
  // Two records of ~1.1 KB fit in 2,500 bytes.
  EXPECT_EQ(listed_traces(*store_), (std::vector<std::string>{"t2", "t3"}));
  // A record larger than the bound on its own is kept, alone.
  ASSERT_TRUE(
      detail::deadletter_add(*store_, record(20, "big", 5000), 2500, 100, &evicted, &evicted_docs)
          .ok());
  EXPECT_EQ(listed_traces(*store_), (std::vector<std::string>{"big"}));
  EXPECT_EQ(evicted, 4u);
}

// A store written before the totals were kept is counted once, then kept.
TEST_F(DeadLetterStoreTest, TotalsMissingFromAnOlderStoreAreCountedOnce) {
  uint64_t evicted = 0, evicted_docs = 0;
  for (uint64_t i = 0; i < 40; ++i) {
    ASSERT_TRUE(detail::deadletter_add(*store_, record(i + 1, "t" + std::to_string(i)), UINT64_MAX,
                                       1000, &evicted, &evicted_docs)
                    .ok());
  }
  uint64_t count = 0, bytes = 0;
  ASSERT_TRUE(deadletter_stats(*store_, &count, &bytes).ok());
  ASSERT_TRUE(store_->meta_delete(detail::kDeadLetterTotalsKey).ok());
  uint64_t recount = 0, rebytes = 0;
  ASSERT_TRUE(deadletter_stats(*store_, &recount, &rebytes).ok());
  EXPECT_EQ(recount, 40u);
  EXPECT_EQ(count, recount);
  EXPECT_EQ(bytes, rebytes);
  std::string kept;
  EXPECT_TRUE(store_->meta_get(detail::kDeadLetterTotalsKey, &kept).ok());
}

// Totals that overstate the records (records deleted behind their back) do
// not evict the newest: the add counts again instead.
TEST_F(DeadLetterStoreTest, OverstatedTotalsAreCountedAgainNotObeyed) {
  ASSERT_TRUE(store_->meta_put(detail::kDeadLetterTotalsKey, R"({"count":500,"bytes":1})").ok());
  uint64_t evicted = 0, evicted_docs = 0;
  for (uint64_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(detail::deadletter_add(*store_, record(i + 1, "t" + std::to_string(i)), UINT64_MAX,
                                       10, &evicted, &evicted_docs)
                    .ok());
  }
  EXPECT_EQ(evicted, 0u);
  EXPECT_EQ(listed_traces(*store_).size(), 3u);
  uint64_t count = 0, bytes = 0;
  ASSERT_TRUE(deadletter_stats(*store_, &count, &bytes).ok());
  EXPECT_EQ(count, 3u);
}

// Listing goes page by page from any record; replay and purge take several
// pages and leave the totals at zero.
TEST_F(DeadLetterStoreTest, ListsFromARecordAndReplaysAndPurgesAcrossPages) {
  const size_t n = 3 * kDeadLetterPage + 5;
  uint64_t evicted = 0, evicted_docs = 0;
  for (uint64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(detail::deadletter_add(*store_, record(100 + i, "t" + std::to_string(i)),
                                       UINT64_MAX, 100000, &evicted, &evicted_docs)
                    .ok());
  }
  std::vector<DeadLetter> first, rest;
  ASSERT_TRUE(deadletter_list(*store_, &first, 20).ok());
  ASSERT_EQ(first.size(), 20u);
  ASSERT_TRUE(deadletter_list(*store_, &rest, SIZE_MAX, first.back().id).ok());
  ASSERT_EQ(rest.size(), n - 20);
  EXPECT_EQ(rest.front().trace_ids.at(0), "t20");
  EXPECT_EQ(rest.front().traces, 1u);
  EXPECT_EQ(rest.front().bytes, 100u);

  size_t replayed = 0;
  ASSERT_TRUE(deadletter_replay(*store_, &replayed).ok());
  EXPECT_EQ(replayed, n);
  std::vector<std::pair<std::string, std::string>> batches;
  ASSERT_TRUE(store_->meta_scan(detail::kBatchPrefix, SIZE_MAX, &batches).ok());
  EXPECT_EQ(batches.size(), n);
  uint64_t count = 1, bytes = 1;
  ASSERT_TRUE(deadletter_stats(*store_, &count, &bytes).ok());
  EXPECT_EQ(count, 0u);
  EXPECT_EQ(bytes, 0u);

  for (uint64_t i = 0; i < n; ++i) {
    ASSERT_TRUE(detail::deadletter_add(*store_, record(500 + i, "p" + std::to_string(i)),
                                       UINT64_MAX, 100000, &evicted, &evicted_docs)
                    .ok());
  }
  size_t purged = 0;
  ASSERT_TRUE(deadletter_purge(*store_, &purged).ok());
  EXPECT_EQ(purged, n);
  EXPECT_TRUE(listed_traces(*store_).empty());
  ASSERT_TRUE(deadletter_stats(*store_, &count, &bytes).ok());
  EXPECT_EQ(count, 0u);
}

}  // namespace
}  // namespace sidetrace::upstream
