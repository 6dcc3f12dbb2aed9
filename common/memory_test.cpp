#include "common/memory.h"

#include <gtest/gtest.h>

#include "common/wait_until.h"

#include <sys/resource.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace sidetrace {
namespace {

constexpr uint64_t kMiB = 1 << 20;

// Sets every arena's dirty_decay_ms but `except`'s (0: none); returns what
// each changed one had.
std::vector<std::pair<std::string, ssize_t>> set_decay(ssize_t decay_ms, unsigned except = 0) {
  std::vector<std::pair<std::string, ssize_t>> saved;
  unsigned narenas = 0;
  size_t len = sizeof narenas;
  if (mallctl("arenas.narenas", &narenas, &len, nullptr, 0) != 0) return saved;
  for (unsigned i = 0; i < narenas; ++i) {
    if (i == except && except != 0) continue;
    std::string name = "arena." + std::to_string(i) + ".dirty_decay_ms";
    ssize_t prev = 0;
    size_t plen = sizeof prev;
    if (mallctl(name.c_str(), &prev, &plen, &decay_ms, sizeof decay_ms) == 0) {
      saved.emplace_back(name, prev);
    }
  }
  return saved;
}

void restore_decay(std::vector<std::pair<std::string, ssize_t>>& saved) {
  for (auto& [name, decay_ms] : saved)
    mallctl(name.c_str(), nullptr, nullptr, &decay_ms, sizeof decay_ms);
}

// Stops jemalloc's own thread from returning freed pages while it lives, so
// that what a test frees stays held until the test trims it.
class HoldFreedPages {
 public:
  HoldFreedPages() : saved_(set_decay(-1)) {}
  ~HoldFreedPages() { restore_decay(saved_); }

 private:
  std::vector<std::pair<std::string, ssize_t>> saved_;
};

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
  HoldFreedPages hold;
  MemoryTrim trim(16 * kMiB, std::chrono::milliseconds(0));
  churn(96);
  const uint64_t resident = MemoryTrim::resident_bytes();
  ASSERT_GT(MemoryTrim::freed_bytes(), 80 * kMiB) << "the freed pages should still be held";
  EXPECT_TRUE(trim.poll(1));
  EXPECT_EQ(trim.trims(), 1u);
  EXPECT_LT(MemoryTrim::freed_bytes(), 1 * kMiB);
  EXPECT_LT(MemoryTrim::resident_bytes(), resident - 80 * kMiB);
  // Below the bound now: nothing more to do.
  EXPECT_FALSE(trim.poll(2));
  EXPECT_EQ(trim.trims(), 1u);
}

TEST(MemoryTrim, LooksOncePerInterval) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  HoldFreedPages hold;
  MemoryTrim trim(1 * kMiB, std::chrono::milliseconds(100));
  churn(8);
  EXPECT_TRUE(trim.poll(1'000'000'000));
  churn(8);
  EXPECT_FALSE(trim.poll(1'050'000'000));  // within the interval: not looked at
  EXPECT_TRUE(trim.poll(1'100'000'000));
  EXPECT_EQ(trim.trims(), 2u);
}

TEST(MemoryTrim, MemoryInUseIsNotTrimmed) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  HoldFreedPages hold;
  MemoryTrim trim(16 * kMiB, std::chrono::milliseconds(0));
  trim.poll(1);  // whatever earlier tests left
  std::vector<std::unique_ptr<char[]>> live;
  for (int i = 0; i < 64; ++i) {
    live.push_back(std::make_unique<char[]>(kMiB));
    std::memset(live.back().get(), 1, kMiB);
  }
  ASSERT_GT(MemoryTrim::resident_bytes(), 64 * kMiB);
  EXPECT_FALSE(trim.poll(2));
}

TEST(MemoryTrimThread, EnoughWorkHasItReturnFreedPagesOnItsOwnThread) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  HoldFreedPages hold;
  MemoryTrimThread t(16 * kMiB, std::chrono::milliseconds(10), 4 * kMiB);
  churn(64);
  ASSERT_GT(MemoryTrim::freed_bytes(), 48 * kMiB);
  EXPECT_EQ(t.trims(), 0u);  // not poked: it sleeps
  t.poke(3 * kMiB);
  t.poke(512 * 1024);
  EXPECT_EQ(t.looks(), 0u);  // less work than look_bytes: not woken
  t.poke(512 * 1024);
  ASSERT_TRUE(wait_until([&] { return t.trims() >= 1; }));
  EXPECT_LT(MemoryTrim::freed_bytes(), 16 * kMiB);
  // It looks once more after a trim, finds nothing, and sleeps.
  ASSERT_TRUE(wait_until([&] { return t.looks() >= 2; }));
  // Woken again once enough work is done.
  churn(64);
  t.poke(4 * kMiB);
  ASSERT_TRUE(wait_until([&] { return t.trims() >= 2; }));
}

// A look that finds nothing to return puts it to sleep: it does not look
// again until the next look_bytes of work.
TEST(MemoryTrimThread, SleepsAfterALookThatFindsLittle) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  MemoryTrimThread t(1024 * kMiB, std::chrono::milliseconds(1), 1 * kMiB);
  t.poke(1 * kMiB);
  ASSERT_TRUE(wait_until([&] { return t.looks() >= 1; }));
  // Were it still awake it would look every millisecond: poll until it is
  // known to be asleep (a poke below look_bytes does not wake it).
  const uint64_t looks = t.looks();
  t.poke(1024);
  uint64_t later = 0;
  wait_until([&] { return (later = t.looks()) > looks; }, std::chrono::milliseconds(50));
  EXPECT_EQ(later, looks);
  EXPECT_EQ(t.trims(), 0u);
}

// The calling thread's minor page faults so far.
long page_faults() {
  rusage r{};
  getrusage(RUSAGE_THREAD, &r);
  return r.ru_minflt;
}

// Page faults in allocating 8 blocks of `bytes` with new[], writing every page
// of them, and freeing them.
long faults_of_blocks(size_t bytes) {
  const long before = page_faults();
  std::vector<std::unique_ptr<char[]>> blocks;
  for (int i = 0; i < 8; ++i) {
    blocks.emplace_back(new char[bytes]);
    std::memset(blocks.back().get(), 1, bytes);
  }
  return page_faults() - before;
}

// Blocks of kKeptBlockBytes (the store's memtable blocks) come back with their
// pages, where other freed memory has gone back to the kernel.
TEST(KeptBlocks, ComeBackWithoutPageFaults) {
  if (mallctl == nullptr) GTEST_SKIP() << "built without jemalloc";
  // The kept blocks' arena, looked up from one of them.
  std::unique_ptr<char[]> probe(new char[kKeptBlockBytes]);
  unsigned kept = 0;
  size_t len = sizeof kept;
  void* p = probe.get();
  ASSERT_EQ(mallctl("arenas.lookup", &kept, &len, &p, sizeof p), 0);
  probe.reset();
  // Every other arena returns freed pages at once.
  auto saved = set_decay(0, kept);
  faults_of_blocks(kKeptBlockBytes);
  faults_of_blocks(kKeptBlockBytes - 4096);
  const long pages = 8 * static_cast<long>(kKeptBlockBytes / 4096);
  EXPECT_LT(faults_of_blocks(kKeptBlockBytes), pages / 8);
  EXPECT_GT(faults_of_blocks(kKeptBlockBytes - 4096), pages / 2);
  restore_decay(saved);
}

TEST(MemoryTrim, NoBoundNeverTrims) {
  MemoryTrim trim(0, std::chrono::milliseconds(0));
  churn(16);
  EXPECT_FALSE(trim.poll(1));
  EXPECT_EQ(trim.trims(), 0u);
}

}  // namespace
}  // namespace sidetrace
