#include "buffer/crc32c.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "buffer/store.h"
#include "buffer/testing/temp_dir.h"

namespace sidetrace::buffer {
namespace {

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s)
    c = static_cast<char>(rng());
  return s;
}

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI), appendix B.4, and the usual check value.
  std::string zeros(32, '\0'), ones(32, '\xff'), ascending(32, '\0');
  for (int i = 0; i < 32; ++i)
    ascending[i] = static_cast<char>(i);
  for (auto fn : {crc32c_extend, crc32c_extend_bitwise}) {
    EXPECT_EQ(fn(0, zeros.data(), zeros.size()), 0x8a9136aau);
    EXPECT_EQ(fn(0, ones.data(), ones.size()), 0x62a8ab43u);
    EXPECT_EQ(fn(0, ascending.data(), ascending.size()), 0x46dd794eu);
    EXPECT_EQ(fn(0, "123456789", 9), 0xe3069283u);
    EXPECT_EQ(fn(0, "", 0), 0u);
  }
}

TEST(Crc32c, FastPathEqualsBitwiseAtEveryLengthAndAlignment) {
  std::mt19937 rng(7);
  std::string data = random_bytes(rng, 400);
  for (size_t off = 0; off < 9; ++off) {
    for (size_t n = 0; off + n <= data.size(); n += 1 + n / 16) {
      uint32_t seed = n % 3 == 0 ? 0 : static_cast<uint32_t>(rng());
      ASSERT_EQ(crc32c_extend(seed, data.data() + off, n),
                crc32c_extend_bitwise(seed, data.data() + off, n))
          << "offset " << off << " length " << n;
    }
  }
}

TEST(Crc32c, ExtendingAndCombiningEqualOneShot) {
  std::mt19937 rng(11);
  for (size_t len : {size_t{0}, size_t{1}, size_t{9}, size_t{100}, size_t{4099}}) {
    std::string data = random_bytes(rng, len);
    const uint32_t whole = crc32c_extend(0, data.data(), data.size());
    for (size_t cut : {size_t{0}, len / 3, len / 2, len}) {
      uint32_t a = crc32c_extend(0, data.data(), cut);
      uint32_t b = crc32c_extend(0, data.data() + cut, len - cut);
      EXPECT_EQ(crc32c_extend(a, data.data() + cut, len - cut), whole) << len << "/" << cut;
      EXPECT_EQ(crc32c_combine(a, b, len - cut), whole) << len << "/" << cut;
    }
  }
}

// RocksDB checksums its WAL with these functions, and a store written with
// them reopens (recovery verifies every WAL record's checksum).
TEST(Crc32c, TheStoreUsesIt) {
  testing::TempDir dir;
  StoreOptions o;
  o.data_dir = dir.str();
  for (int round = 0; round < 2; ++round) {
    std::unique_ptr<Store> store;
    Status s = Store::open(o, &store);
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::vector<StoredEvent> events;
    ASSERT_TRUE(store->read_trace("t", &events).ok());
    ASSERT_EQ(events.size(), static_cast<size_t>(round));
    ipc::Message m;
    m.trace_id = "t";
    m.raw = std::string(333, 'x');
    m.recv_ns = 1;
    std::vector<Committed> committed;
    const uint64_t before = crc32c_calls();
    ASSERT_TRUE(store->append({&m, 1}, &committed).ok());
    EXPECT_GT(crc32c_calls(), before) << "the WAL write did not call crc32c_extend";
  }
  if (__builtin_cpu_supports("sse4.2")) {
    EXPECT_TRUE(crc32c_hardware());
  }
}

}  // namespace
}  // namespace sidetrace::buffer
