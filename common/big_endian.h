// Big-endian integers in byte strings: stored keys sort numerically, and
// stored values read the same on every architecture.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace sidetrace {

inline void put_be64(std::string* out, uint64_t v) {
  char b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(b, 8);
}

inline uint64_t get_be64(std::string_view s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i)
    v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

inline void put_be32(std::string* out, uint32_t v) {
  char b[4];
  for (int i = 3; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(b, 4);
}

inline uint32_t get_be32(std::string_view s) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i)
    v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

}  // namespace sidetrace
