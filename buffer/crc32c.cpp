// Hardware CRC32C for RocksDB.
//
// Debian builds RocksDB for any x86-64 CPU, so its CRC32C (computed over every
// WAL record on the writer thread) looks up a table per byte: the largest
// single cost of a group commit. The agent links RocksDB statically, and this
// file defines every function of RocksDB's util/crc32c.cc, so the linker takes
// these and never that object: RocksDB then checksums with the SSE4.2 crc32
// instruction, which computes exactly the Castagnoli CRC that RocksDB stores
// (a bitwise version serves a CPU without it). Stores written either way read
// back either way. Should a RocksDB release add a function to that file and
// call it, the link fails with a duplicate definition rather than silently.
#include "buffer/crc32c.h"

#include <nmmintrin.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace sidetrace::buffer {
namespace {

constexpr uint32_t kPoly = 0x82f63b78u;  // Castagnoli, bit-reflected

std::atomic<uint64_t> calls{0};

__attribute__((target("sse4.2"))) uint32_t extend_sse42(uint32_t crc, const char* p, size_t n) {
  uint64_t l = crc ^ 0xffffffffu;
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), static_cast<uint8_t>(*p++));
    --n;
  }
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    l = _mm_crc32_u64(l, v);
    p += 8;
    n -= 8;
  }
  while (n > 0) {
    l = _mm_crc32_u8(static_cast<uint32_t>(l), static_cast<uint8_t>(*p++));
    --n;
  }
  return static_cast<uint32_t>(l) ^ 0xffffffffu;
}

using ExtendFn = uint32_t (*)(uint32_t, const char*, size_t);

// Chosen on first use: RocksDB may checksum before this file's static
// initialisers have run.
ExtendFn chosen() {
  static const ExtendFn fn =
      __builtin_cpu_supports("sse4.2") ? extend_sse42 : crc32c_extend_bitwise;
  return fn;
}

// a * b modulo the polynomial, both bit-reflected (bit 31 is x^0).
uint32_t mul_mod(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(8 * bytes) modulo the polynomial, by squaring.
uint32_t x_pow_8n(size_t bytes) {
  uint32_t result = 1u << 31;  // x^0
  uint32_t square = 1u << 23;  // x^8
  for (; bytes != 0; bytes >>= 1) {
    if (bytes & 1) result = mul_mod(square, result);
    square = mul_mod(square, square);
  }
  return result;
}

}  // namespace

uint32_t crc32c_extend_bitwise(uint32_t crc, const char* data, size_t n) {
  uint32_t l = crc ^ 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    l ^= static_cast<uint8_t>(data[i]);
    for (int k = 0; k < 8; ++k)
      l = (l >> 1) ^ (kPoly & (0u - (l & 1u)));
  }
  return l ^ 0xffffffffu;
}

uint32_t crc32c_extend(uint32_t crc, const char* data, size_t n) {
  calls.fetch_add(1, std::memory_order_relaxed);
  return chosen()(crc, data, n);
}

uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, size_t len2) {
  // The pre- and post-inversions cancel: shifting crc1 past len2 bytes and
  // adding crc2 gives the CRC of the concatenation.
  return mul_mod(x_pow_8n(len2), crc1) ^ crc2;
}

bool crc32c_hardware() {
  return chosen() == extend_sse42;
}

uint64_t crc32c_calls() {
  return calls.load(std::memory_order_relaxed);
}

}  // namespace sidetrace::buffer

// RocksDB's util/crc32c.h declarations (the header is not installed).
namespace rocksdb::crc32c {

uint32_t Extend(uint32_t init_crc, const char* data, size_t n);
uint32_t Crc32cCombine(uint32_t crc1, uint32_t crc2, size_t crc2len);
std::string IsFastCrc32Supported();

uint32_t Extend(uint32_t init_crc, const char* data, size_t n) {
  return sidetrace::buffer::crc32c_extend(init_crc, data, n);
}

uint32_t Crc32cCombine(uint32_t crc1, uint32_t crc2, size_t crc2len) {
  return sidetrace::buffer::crc32c_combine(crc1, crc2, crc2len);
}

std::string IsFastCrc32Supported() {
  return sidetrace::buffer::crc32c_hardware() ? "Supported on x86 (sidetrace SSE4.2)"
                                              : "Not supported on x86 (sidetrace bitwise)";
}

}  // namespace rocksdb::crc32c
