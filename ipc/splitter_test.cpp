#include "ipc/splitter.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "ipc/test_support.h"

namespace sidetrace::ipc {
namespace {

using Result = StreamSplitter::Result;

struct Collected {
  std::vector<std::string> messages;
  size_t too_large = 0;
  bool malformed = false;
};

Collected feed_chunks(StreamSplitter& s, const std::vector<std::string_view>& chunks) {
  Collected c;
  for (auto chunk : chunks) {
    s.feed(chunk, [&](Result r, std::string_view msg) {
      if (r == Result::kMessage) c.messages.emplace_back(msg);
      if (r == Result::kTooLarge) ++c.too_large;
      if (r == Result::kMalformed) c.malformed = true;
    });
  }
  return c;
}

std::vector<std::string> sample_messages() {
  std::vector<std::string> v;
  for (uint64_t i = 0; i < 6; ++i)
    v.push_back(testing::realistic_event(i, 200 + 150 * i));
  v.push_back(testing::pack(42));  // not a map, still one whole value
  v.push_back(testing::MapBuilder().uint("v", 1).str("kind", "trace").str("trace_id", "t").build());
  v.push_back(testing::MapBuilder()
                  .raw("nested", testing::pack(std::vector<std::vector<int>>{{1, 2}, {3}}))
                  .str("big", std::string(70000, 'x'))  // str32 header
                  .build());
  return v;
}

TEST(IpcSplitter, SplitAtEveryByteBoundary) {
  const auto msgs = sample_messages();
  std::string stream;
  for (const auto& m : msgs)
    stream += m;
  for (size_t cut = 0; cut <= stream.size(); cut += (cut < 2000 ? 1 : 997)) {
    StreamSplitter s(1 << 20, 4096);
    std::string_view all(stream);
    auto c = feed_chunks(s, {all.substr(0, cut), all.substr(cut)});
    ASSERT_EQ(c.messages, msgs) << "cut at " << cut;
    EXPECT_FALSE(c.malformed);
    EXPECT_EQ(s.buffered(), 0u);
  }
}

TEST(IpcSplitter, OneByteAtATime) {
  const auto msgs = sample_messages();
  std::string stream;
  for (const auto& m : msgs)
    stream += m;
  StreamSplitter s(1 << 20, 64);
  std::vector<std::string_view> chunks;
  for (size_t i = 0; i < stream.size(); ++i)
    chunks.push_back(std::string_view(stream).substr(i, 1));
  auto c = feed_chunks(s, chunks);
  EXPECT_EQ(c.messages, msgs);
}

TEST(IpcSplitter, OversizedMessageIsSkippedAndTheStreamGoesOn) {
  const std::string small = testing::realistic_event(1);
  const std::string big = testing::MapBuilder().str("blob", std::string(300'000, 'b')).build();
  const std::string stream = small + big + small + big + small;
  StreamSplitter s(4096, 1024);
  std::vector<std::string_view> chunks;
  for (size_t i = 0; i < stream.size(); i += 777)
    chunks.push_back(std::string_view(stream).substr(i, 777));
  size_t max_cap = 0;
  Collected c;
  for (auto ch : chunks) {
    s.feed(ch, [&](Result r, std::string_view msg) {
      if (r == Result::kMessage) c.messages.emplace_back(msg);
      if (r == Result::kTooLarge) ++c.too_large;
      if (r == Result::kMalformed) c.malformed = true;
    });
    max_cap = std::max(max_cap, s.capacity());
  }
  EXPECT_EQ(c.messages, (std::vector<std::string>{small, small, small}));
  EXPECT_EQ(c.too_large, 2u);
  EXPECT_FALSE(c.malformed);
  EXPECT_LE(max_cap, 4096u + 1024u);
}

TEST(IpcSplitter, PartialMessagesShareABudgetAndOneThatDoesNotFitIsSkipped) {
  const std::string small = testing::realistic_event(1);
  const std::string big = testing::MapBuilder().str("blob", std::string(100'000, 'b')).build();
  // Two connections' buffers may hold 200 KB in all beyond their 4 KiB reads.
  MemoryBudget budget(200'000);
  StreamSplitter a(1 << 20, 4096, &budget), b(1 << 20, 4096, &budget);
  Collected ca, cb;
  size_t no_memory = 0;
  auto collect = [&](Collected& c) {
    return [&](Result r, std::string_view msg) {
      if (r == Result::kMessage) c.messages.emplace_back(msg);
      if (r == Result::kNoMemory) ++no_memory;
    };
  };
  // a holds most of a big message: its buffer is charged to the budget.
  a.feed(std::string_view(big).substr(0, 90'000), collect(ca));
  EXPECT_GT(budget.used(), 80'000u);
  // b's big message finds too little left: skipped (reported once), and what
  // follows it on b still arrives; b gives back what it took.
  const std::string rest_b = big + small;
  for (size_t i = 0; i < rest_b.size(); i += 3000)
    b.feed(std::string_view(rest_b).substr(i, 3000), collect(cb));
  EXPECT_EQ(no_memory, 1u);
  EXPECT_EQ(cb.messages, std::vector<std::string>{small});
  // a completes its message: nothing of it was lost.
  a.feed(big.substr(90'000) + small, collect(ca));
  EXPECT_EQ(ca.messages, (std::vector<std::string>{big, small}));
  EXPECT_LE(budget.used(), budget.limit());
  const size_t held = budget.used();
  {
    StreamSplitter c(1 << 20, 4096, &budget);
    c.feed(std::string_view(big).substr(0, 50'000), [](Result, std::string_view) {});
    EXPECT_GT(budget.used(), held);
  }
  EXPECT_EQ(budget.used(), held);  // a splitter gives back its charge when it goes
}

TEST(IpcSplitter, GarbageEndsTheStreamAfterTheGoodMessages) {
  const std::string m = testing::realistic_event(3);
  const std::string stream = m + m + "\xc1garbage" + m;
  for (size_t chunk : {size_t{1}, size_t{13}, stream.size()}) {
    StreamSplitter s(1 << 20, 256);
    std::vector<std::string_view> chunks;
    for (size_t i = 0; i < stream.size(); i += chunk)
      chunks.push_back(std::string_view(stream).substr(i, chunk));
    auto c = feed_chunks(s, chunks);
    EXPECT_EQ(c.messages.size(), 2u);
    EXPECT_TRUE(c.malformed);
    EXPECT_TRUE(s.failed());
  }
}

TEST(IpcSplitter, OversizeIsReportedBeforeLaterGarbageHoweverChunked) {
  // An array declaring 65535 elements is over the cap (one message) as soon
  // as its header is read; the reserved byte after it ends the stream. Every
  // chunking reports the same: the oversize first, then the bad bytes.
  const std::string m = testing::realistic_event(2);
  const std::string stream = m + std::string("\xdc\xff\xff\xc1", 4) + m;
  for (size_t chunk : {size_t{1}, size_t{3}, stream.size()}) {
    SCOPED_TRACE(chunk);
    StreamSplitter s(m.size(), 64);
    std::vector<std::string_view> chunks;
    for (size_t i = 0; i < stream.size(); i += chunk)
      chunks.push_back(std::string_view(stream).substr(i, chunk));
    auto c = feed_chunks(s, chunks);
    EXPECT_EQ(c.messages, std::vector<std::string>{m});
    EXPECT_EQ(c.too_large, 1u);
    EXPECT_TRUE(c.malformed);
  }
}

TEST(IpcSplitter, RandomBytesKeepMemoryBounded) {
  std::mt19937_64 rng(7);
  const size_t max_msg = 8192, read = 1024;
  size_t total_results = 0;
  for (int round = 0; round < 50; ++round) {
    StreamSplitter s(max_msg, read);
    std::string junk(64 * 1024, '\0');
    for (auto& ch : junk)
      ch = static_cast<char>(rng());
    std::string_view rest(junk);
    while (!rest.empty() && !s.failed()) {
      const size_t n = std::min<size_t>(rest.size(), 1 + rng() % 3000);
      s.feed(rest.substr(0, n), [&](Result, std::string_view msg) {
        EXPECT_LE(msg.size(), max_msg);
        ++total_results;
      });
      rest.remove_prefix(n);
      ASSERT_LE(s.capacity(), max_msg + read);
      ASSERT_LE(s.buffered(), max_msg + 16);
    }
  }
  EXPECT_GT(total_results, 0u);
}

TEST(IpcSplitter, HugeDeclaredLengthsAreSkippedWithoutBuffering) {
  // A str32 header announcing 3 GB: reported too large at once, its bytes
  // discarded as they arrive.
  StreamSplitter s(1 << 16, 4096);
  const std::string header("\xdb\xb0\x00\x00\x00", 5);
  size_t too_large = 0;
  s.feed(header, [&](Result r, std::string_view) { too_large += r == Result::kTooLarge; });
  std::string filler(1 << 20, 'z');
  for (int i = 0; i < 20; ++i) {
    s.feed(filler, [&](Result r, std::string_view) { too_large += r == Result::kTooLarge; });
    ASSERT_LE(s.capacity(), (1u << 16) + 4096u);
  }
  EXPECT_EQ(too_large, 1u);
  EXPECT_EQ(s.buffered(), 0u);
}

TEST(IpcSplitter, DatagramValues) {
  const std::string a = testing::realistic_event(1), b = testing::pack(5);
  std::vector<std::string> seen;
  EXPECT_EQ(for_each_value(a + b + a, [&](std::string_view v) { seen.emplace_back(v); }), 0u);
  EXPECT_EQ(seen, (std::vector<std::string>{a, b, a}));
  seen.clear();
  EXPECT_EQ(for_each_value(a + a.substr(0, 10), [&](std::string_view v) { seen.emplace_back(v); }),
            10u);
  EXPECT_EQ(seen.size(), 1u);
}

}  // namespace
}  // namespace sidetrace::ipc
