#include "common/memory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

namespace sidetrace {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Allocates `mib` MiB in 1 MiB blocks, touches every page, and frees them:
// the allocator then holds them as freed pages, not yet returned.
void churn(size_t mib) {
  std::vector<std::unique_ptr<char[]>> blocks;
  for (size_t i = 0; i < mib; ++i) {
    blocks.push_back(std::make_unique<char[]>(kMiB));
    std::memset(blocks.back().get(), 1, kMiB);
  }
}

TEST(MemoryTrim, ReturnsFreedPagesAboveTheBound) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  MemoryTrim trim(16 * kMiB, std::chrono::milliseconds(0));
  churn(96);
  // jemalloc's own thread returns them gradually, over about a second.
  const uint64_t before = MemoryTrim::resident_bytes();
  ASSERT_GT(before, 40 * kMiB) << "the freed pages should still be held";
  EXPECT_TRUE(trim.poll(1));
  EXPECT_EQ(trim.trims(), 1u);
  EXPECT_LT(MemoryTrim::resident_bytes(), 16 * kMiB);
  // Below the bound now: nothing more to do.
  EXPECT_FALSE(trim.poll(2));
  EXPECT_EQ(trim.trims(), 1u);
}

TEST(MemoryTrim, LooksOncePerInterval) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  MemoryTrim trim(1, std::chrono::milliseconds(100));  // always above the bound
  EXPECT_TRUE(trim.poll(1'000'000'000));
  EXPECT_FALSE(trim.poll(1'050'000'000));  // within the interval: not looked at
  EXPECT_TRUE(trim.poll(1'100'000'000));
  EXPECT_EQ(trim.trims(), 2u);
}

TEST(MemoryTrim, NoBoundNeverTrims) {
  MemoryTrim trim(0, std::chrono::milliseconds(0));
  churn(16);
  EXPECT_FALSE(trim.poll(1));
  EXPECT_EQ(trim.trims(), 0u);
}

}  // namespace
}  // namespace sidetrace
