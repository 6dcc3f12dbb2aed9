// Big-endian integers in byte strings: stored keys sort numerically, and
// stored values read the same on every architecture.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace sidetrace {

// Appends `v` to `out`, most significant byte first.
template <typename T>
requires std::is_unsigned_v<T>
void put_be(std::string* out, T v) {
  char b[sizeof(T)];
  for (size_t i = sizeof(T); i-- > 0;) {
    b[i] = static_cast<char>(v & 0xff);
    v = static_cast<T>(v >> 8);
  }
  out->append(b, sizeof(T));
}

// Reads a T from the first sizeof(T) bytes of `s` (which must hold them).
template <typename T>
requires std::is_unsigned_v<T> T get_be(std::string_view s) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    v = static_cast<T>((v << 8) | static_cast<uint8_t>(s[i]));
  return v;
}

inline void put_be64(std::string* out, uint64_t v) {
  put_be(out, v);
}
inline uint64_t get_be64(std::string_view s) {
  return get_be<uint64_t>(s);
}
inline void put_be32(std::string* out, uint32_t v) {
  put_be(out, v);
}
inline uint32_t get_be32(std::string_view s) {
  return get_be<uint32_t>(s);
}

}  // namespace sidetrace
