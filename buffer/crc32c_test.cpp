#include "buffer/crc32c.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
// RocksDB's entry point, which the link wraps (buffer/CMakeLists.txt), and
// the library's own code behind it.
namespace rocksdb::crc32c {
uint32_t Extend(uint32_t crc, const char* data, size_t size);
}
extern "C" uint32_t __real__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size);
#endif

namespace sidetrace::buffer {
namespace {

uint32_t crc(const std::string& s) {
  return crc32c_extend(0, s.data(), s.size());
}

// RFC 3720, appendix B.4, and the usual check value.
TEST(Crc32cTest, GivesTheKnownValues) {
  EXPECT_EQ(crc("123456789"), 0xe3069283u);
  EXPECT_EQ(crc(std::string(32, '\0')), 0x8a9136aau);
  EXPECT_EQ(crc(std::string(32, '\xff')), 0x62a8ab43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(crc(up), 0x46dd794eu);
  EXPECT_EQ(crc(down), 0x113fdb5cu);
  EXPECT_EQ(crc(""), 0u);
}

TEST(Crc32cTest, ExtendingContinuesAtAnySplitAndAlignment) {
  std::mt19937 rng(7);
  std::string buf(300, '\0');
  for (char& c : buf)
    c = static_cast<char>(rng());
  for (size_t offset = 0; offset < 9; ++offset) {
    const char* p = buf.data() + offset;
    const size_t n = buf.size() - offset;
    const uint32_t whole = crc32c_extend(0, p, n);
    for (size_t split = 0; split <= n; ++split) {
      const uint32_t head = crc32c_extend(0, p, split);
      ASSERT_EQ(crc32c_extend(head, p + split, n - split), whole)
          << "offset " << offset << ", split " << split;
    }
  }
}

#if defined(__x86_64__)
// RocksDB's calls reach this module, which gives what the library's own
// code gives, at every length and alignment up to a few words and for longer
// records.
TEST(Crc32cTest, RocksDbsCallsComeHereAndAgreeWithItsOwnCode) {
  EXPECT_NE(crc32c_implementation(), "rocksdb");
  std::mt19937 rng(11);
  std::string buf(70000, '\0');
  for (char& c : buf)
    c = static_cast<char>(rng());
  const uint64_t before = crc32c_calls_on_this_thread();
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n = 0; n <= 64; ++n) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      const char* p = buf.data() + offset;
      const uint32_t own = __real__ZN7rocksdb6crc32c6ExtendEjPKcm(seed, p, n);
      ASSERT_EQ(crc32c_extend(seed, p, n), own) << "offset " << offset << ", size " << n;
      ASSERT_EQ(rocksdb::crc32c::Extend(seed, p, n), own) << "offset " << offset << ", size " << n;
    }
  }
  EXPECT_EQ(crc32c_calls_on_this_thread() - before, 8u * 65u);
  for (size_t n : {255u, 4096u, 32768u, 65536u}) {
    EXPECT_EQ(crc32c_extend(0, buf.data() + 3, n),
              __real__ZN7rocksdb6crc32c6ExtendEjPKcm(0, buf.data() + 3, n))
        << n;
  }
}
#endif

// A log written with these checksums is read back at the next open, record
// by record: a wrong checksum would lose the writes that only the log holds.
TEST(Crc32cTest, AStoreReadsItsLogBack) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("sidetrace-crc32c-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  rocksdb::Options o;
  o.create_if_missing = true;
  o.avoid_flush_during_shutdown = true;  // the writes stay in the log only
  o.wal_recovery_mode = rocksdb::WALRecoveryMode::kAbsoluteConsistency;
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, dir.string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    const uint64_t before = crc32c_calls_on_this_thread();
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE(
          db->Put(rocksdb::WriteOptions(), "k" + std::to_string(i), std::string(i * 37, 'v')).ok());
    }
#if defined(__x86_64__)
    // Each write's log record was checksummed here, on the writing thread.
    EXPECT_GE(crc32c_calls_on_this_thread() - before, 100u);
#else
    (void)before;
#endif
  }
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(o, dir.string(), &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  for (int i = 0; i < 100; ++i) {
    std::string v;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), "k" + std::to_string(i), &v).ok()) << i;
    EXPECT_EQ(v.size(), static_cast<size_t>(i * 37));
  }
  db.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sidetrace::buffer
