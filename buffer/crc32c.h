// CRC32C (Castagnoli) as RocksDB computes it, in hardware where the CPU has
// SSE4.2. Linking the buffer library makes RocksDB use these functions in
// place of its own (see crc32c.cpp). Thread-safe; no state but a call count.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sidetrace::buffer {

// The CRC32C of the bytes whose CRC32C is `crc` followed by data[0, n);
// crc32c_extend(0, p, n) is the CRC32C of p[0, n).
uint32_t crc32c_extend(uint32_t crc, const char* data, size_t n);

// The same, one bit at a time: the reference the fast path is tested against.
uint32_t crc32c_extend_bitwise(uint32_t crc, const char* data, size_t n);

// The CRC32C of A followed by B, from crc1 = CRC32C(A), crc2 = CRC32C(B) and
// len2 = the length of B.
uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, size_t len2);

// Whether crc32c_extend uses the SSE4.2 instruction.
bool crc32c_hardware();

// How many times crc32c_extend has been called (RocksDB's calls included).
uint64_t crc32c_calls();

}  // namespace sidetrace::buffer
