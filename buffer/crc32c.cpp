#include "buffer/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace {

// The Castagnoli polynomial, bit-reversed.
constexpr uint32_t kPolynomial = 0x82f63b78u;

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c & 1) != 0 ? (c >> 1) ^ kPolynomial : c >> 1;
    t[i] = c;
  }
  return t;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

// A CPU without SSE 4.2, and other architectures.
uint32_t by_table(uint32_t crc, const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    crc = kTable[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)

__attribute__((target("sse4.2"))) uint32_t by_instruction(uint32_t crc, const unsigned char* p,
                                                          size_t n) {
  // Bytes up to an 8-byte boundary, then 8 at a time, then the rest.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    crc = _mm_crc32_u8(crc, *p++);
    --n;
  }
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, sizeof word);
    c = _mm_crc32_u64(c, word);
  }
  crc = static_cast<uint32_t>(c);
  for (; n > 0; --n)
    crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

// Set before main(); a checksum asked for before that takes the table, which
// gives the same result.
const bool kHasInstruction = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2") != 0;
}();

#endif

thread_local uint64_t calls = 0;

}  // namespace

namespace sidetrace::buffer {

uint32_t crc32c_extend(uint32_t crc, const char* data, size_t size) {
  const auto* p = reinterpret_cast<const unsigned char*>(data);
#if defined(__x86_64__)
  if (kHasInstruction) return ~by_instruction(~crc, p, size);
#endif
  return ~by_table(~crc, p, size);
}

uint64_t crc32c_calls_on_this_thread() {
  return calls;
}

std::string_view crc32c_implementation() {
#if defined(__x86_64__)
  return kHasInstruction ? "sse4.2" : "table";
#else
  return "rocksdb";
#endif
}

}  // namespace sidetrace::buffer

#if defined(__x86_64__)
// What RocksDB's calls of rocksdb::crc32c::Extend reach (ld --wrap).
extern "C" uint32_t __wrap__ZN7rocksdb6crc32c6ExtendEjPKcm(uint32_t crc, const char* data,
                                                           size_t size) {
  ++calls;
  return sidetrace::buffer::crc32c_extend(crc, data, size);
}
#endif
