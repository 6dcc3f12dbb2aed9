// The checksums of the store's write-ahead log, in hardware.
//
// RocksDB checksums every write-ahead log record with CRC32C, and always
// with its own code: unlike block checksums (XXH3 here, buffer/store.cpp),
// the log's cannot be chosen. Debian builds RocksDB for any CPU of its
// architecture, so that code reads a lookup table a byte at a time: 13% of
// the writer thread's CPU at 20,000 msg/s, and more in every thread that
// writes (docs/benchmarks.md, "The eighteenth round"). On x86-64 the
// executables that link the store are linked with RocksDB's entry point
// (rocksdb::crc32c::Extend) wrapped (ld --wrap, buffer/CMakeLists.txt): every
// call of it in the library reaches crc32c_extend() below, which uses the
// CPU's CRC32 instruction. The checksum is the same: logs written by either
// read back with the other.
//
// Thread safety: pure functions; the call count is the calling thread's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sidetrace::buffer {

// The CRC32C of `size` bytes at `data`, continuing `crc` (the CRC of the
// bytes before them; 0 for none), as RocksDB defines it.
uint32_t crc32c_extend(uint32_t crc, const char* data, size_t size);

// Which code computes RocksDB's CRC32C in this process: "sse4.2" (this
// module, with the CPU's instruction), "table" (this module, on a CPU
// without it) or "rocksdb" (the library's own: another architecture).
std::string_view crc32c_implementation();

// How many of RocksDB's checksums this module computed on the calling thread.
uint64_t crc32c_calls_on_this_thread();

}  // namespace sidetrace::buffer
