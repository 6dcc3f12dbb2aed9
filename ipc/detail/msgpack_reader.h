// A minimal, allocation-free msgpack reader over a byte range: the agent's one
// msgpack reader. Used by the event validator, the stream splitter, redaction
// and the trace document writer (trace/document.cpp), which need the exact
// extent and type of each value but never a materialised object tree.
//
// Thread safety: stateless functions; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sidetrace::ipc::detail {

enum class MpType : uint8_t { kNil, kBool, kUint, kInt, kFloat, kStr, kBin, kArray, kMap, kExt };

// One msgpack header. For str/bin/ext `len` is the payload size in bytes
// (the payload follows the header); for array/map it is the element count
// (pairs for a map). Scalars carry their value.
struct MpItem {
  MpType type = MpType::kNil;
  int8_t ext_type = 0;
  bool b = false;
  uint32_t len = 0;
  uint64_t u = 0;    // kUint
  int64_t i = 0;     // kInt (always negative)
  double f = 0;      // kFloat
  bool f32 = false;  // kFloat: encoded as a float32 (exact as a float)
};

inline uint16_t load_be16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
inline uint32_t load_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint64_t load_be64(const uint8_t* p) {
  return (uint64_t{load_be32(p)} << 32) | uint64_t{load_be32(p + 4)};
}

// Header parse results.
inline constexpr int kNeedMore = 0;
inline constexpr int kInvalid = -1;

// Reads the header at `p` with `avail` bytes available. Returns the header
// size (> 0), kNeedMore when `avail` is too short, or kInvalid for the one
// byte msgpack never uses (0xc1).
inline int read_header(const uint8_t* p, size_t avail, MpItem* it) {
  if (avail == 0) return kNeedMore;
  const uint8_t c = p[0];
  if (c <= 0x7f) {
    it->type = MpType::kUint;
    it->u = c;
    return 1;
  }
  if (c >= 0xe0) {
    it->type = MpType::kInt;
    it->i = static_cast<int8_t>(c);
    return 1;
  }
  if (c <= 0x8f) {
    it->type = MpType::kMap;
    it->len = c & 0x0f;
    return 1;
  }
  if (c <= 0x9f) {
    it->type = MpType::kArray;
    it->len = c & 0x0f;
    return 1;
  }
  if (c <= 0xbf) {
    it->type = MpType::kStr;
    it->len = c & 0x1f;
    return 1;
  }
  // 0xc0 .. 0xdf
  static constexpr uint8_t kSize[32] = {
      1, 0, 1, 1,     // c0 nil, c1 invalid, c2 false, c3 true
      2, 3, 5,        // c4..c6 bin 8/16/32
      3, 4, 6,        // c7..c9 ext 8/16/32 (length + type)
      5, 9,           // ca float32, cb float64
      2, 3, 5, 9,     // cc..cf uint 8/16/32/64
      2, 3, 5, 9,     // d0..d3 int 8/16/32/64
      2, 2, 2, 2, 2,  // d4..d8 fixext 1/2/4/8/16 (type byte)
      2, 3, 5,        // d9..db str 8/16/32
      3, 5, 3, 5,     // dc array16, dd array32, de map16, df map32
  };
  const int size = kSize[c - 0xc0];
  if (size == 0) return kInvalid;
  if (avail < static_cast<size_t>(size)) return kNeedMore;
  const uint8_t* q = p + 1;
  switch (c) {
    case 0xc0:
      it->type = MpType::kNil;
      break;
    case 0xc2:
    case 0xc3:
      it->type = MpType::kBool;
      it->b = c == 0xc3;
      break;
    case 0xc4:
      it->type = MpType::kBin;
      it->len = q[0];
      break;
    case 0xc5:
      it->type = MpType::kBin;
      it->len = load_be16(q);
      break;
    case 0xc6:
      it->type = MpType::kBin;
      it->len = load_be32(q);
      break;
    case 0xc7:
      it->type = MpType::kExt;
      it->len = q[0];
      it->ext_type = static_cast<int8_t>(q[1]);
      break;
    case 0xc8:
      it->type = MpType::kExt;
      it->len = load_be16(q);
      it->ext_type = static_cast<int8_t>(q[2]);
      break;
    case 0xc9:
      it->type = MpType::kExt;
      it->len = load_be32(q);
      it->ext_type = static_cast<int8_t>(q[4]);
      break;
    case 0xca: {
      uint32_t bits = load_be32(q);
      float v;
      std::memcpy(&v, &bits, sizeof v);
      it->type = MpType::kFloat;
      it->f = v;
      it->f32 = true;
      break;
    }
    case 0xcb: {
      uint64_t bits = load_be64(q);
      std::memcpy(&it->f, &bits, sizeof it->f);
      it->type = MpType::kFloat;
      it->f32 = false;
      break;
    }
    case 0xcc:
      it->type = MpType::kUint;
      it->u = q[0];
      break;
    case 0xcd:
      it->type = MpType::kUint;
      it->u = load_be16(q);
      break;
    case 0xce:
      it->type = MpType::kUint;
      it->u = load_be32(q);
      break;
    case 0xcf:
      it->type = MpType::kUint;
      it->u = load_be64(q);
      break;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
      int64_t v = c == 0xd0   ? static_cast<int8_t>(q[0])
                  : c == 0xd1 ? static_cast<int16_t>(load_be16(q))
                  : c == 0xd2 ? static_cast<int32_t>(load_be32(q))
                              : static_cast<int64_t>(load_be64(q));
      // Signed encodings of non-negative values are normalised to kUint.
      if (v >= 0) {
        it->type = MpType::kUint;
        it->u = static_cast<uint64_t>(v);
      } else {
        it->type = MpType::kInt;
        it->i = v;
      }
      break;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
      it->type = MpType::kExt;
      it->len = 1u << (c - 0xd4);
      it->ext_type = static_cast<int8_t>(q[0]);
      break;
    case 0xd9:
      it->type = MpType::kStr;
      it->len = q[0];
      break;
    case 0xda:
      it->type = MpType::kStr;
      it->len = load_be16(q);
      break;
    case 0xdb:
      it->type = MpType::kStr;
      it->len = load_be32(q);
      break;
    case 0xdc:
      it->type = MpType::kArray;
      it->len = load_be16(q);
      break;
    case 0xdd:
      it->type = MpType::kArray;
      it->len = load_be32(q);
      break;
    case 0xde:
      it->type = MpType::kMap;
      it->len = load_be16(q);
      break;
    default:  // 0xdf
      it->type = MpType::kMap;
      it->len = load_be32(q);
      break;
  }
  return size;
}

// Bytes of payload that follow a header of this item (str/bin/ext).
inline uint64_t payload_bytes(const MpItem& it) {
  return (it.type == MpType::kStr || it.type == MpType::kBin || it.type == MpType::kExt) ? it.len
                                                                                         : 0;
}

// Number of nested values that follow a header of this item (array/map).
inline uint64_t child_values(const MpItem& it) {
  return it.type == MpType::kArray ? it.len
         : it.type == MpType::kMap ? 2 * static_cast<uint64_t>(it.len)
                                   : 0;
}

// Skips `count` complete values starting at `p`, within `avail` bytes.
// Returns the number of bytes they occupy, or -1 if they are malformed or run
// past `avail`. Iterative: nesting depth costs no stack.
inline int64_t skip_values(const uint8_t* p, size_t avail, uint64_t count) {
  size_t pos = 0;
  while (count > 0) {
    // Every pending value needs at least one byte: refuse absurd counts early.
    if (count > avail - pos) return -1;
    MpItem it;
    int h = read_header(p + pos, avail - pos, &it);
    if (h <= 0) return -1;
    pos += static_cast<size_t>(h);
    const uint64_t pay = payload_bytes(it);
    if (pay > avail - pos) return -1;
    pos += static_cast<size_t>(pay);
    count = count - 1 + child_values(it);
  }
  return static_cast<int64_t>(pos);
}

}  // namespace sidetrace::ipc::detail
