// Fuzzes the incremental stream splitter. The input is
//
//   byte 0        the message cap: 16 + 8 * byte0 bytes
//   byte 1        n, the number of chunk-size bytes that follow (n % 16)
//   bytes 2..n+1  chunk sizes (each 1..256; used in turn, cyclically)
//   the rest      the stream
//
// and the stream is fed twice: in one piece and in the chunks. Checked:
//  - both feedings yield the same results (messages, kTooLarge, kMalformed);
//  - they match a reference built from whole-value skipping of the stream:
//    each complete value within the cap is a message, each complete value
//    over the cap one kTooLarge; after the first value that is not complete
//    no message follows, only kTooLarge/kMalformed, each at most once;
//  - every message is one whole msgpack value no larger than the cap;
//  - kMalformed is terminal, and the buffer stays within its bound.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/detail/msgpack_reader.h"
#include "ipc/splitter.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using sidetrace::ipc::StreamSplitter;
using Result = StreamSplitter::Result;

struct Outcome {
  Result result;
  std::string msg;
  bool operator==(const Outcome&) const = default;
};

constexpr size_t kReadBytes = 64;  // the splitter's smallest read size

void check_bounds(const StreamSplitter& s, size_t cap) {
  FUZZ_CHECK(s.capacity() <= cap + kReadBytes);
  FUZZ_CHECK(s.buffered() <= s.capacity());
}

void record(const StreamSplitter& s, size_t cap, Result r, std::string_view msg,
            std::vector<Outcome>* out) {
  if (r == Result::kMessage) {
    FUZZ_CHECK(!msg.empty() && msg.size() <= cap);
    const auto* p = reinterpret_cast<const uint8_t*>(msg.data());
    FUZZ_CHECK(sidetrace::ipc::detail::skip_values(p, msg.size(), 1) ==
               static_cast<int64_t>(msg.size()));
  }
  if (r == Result::kMalformed) FUZZ_CHECK(s.failed());
  out->push_back({r, r == Result::kMessage ? std::string(msg) : std::string()});
}

// Feeds `stream` through prepare()/commit() in pieces of the given sizes
// (cycled; a piece is cut short when prepare() offers less room).
std::vector<Outcome> split(std::string_view stream, size_t cap, const std::vector<size_t>& sizes) {
  StreamSplitter s(cap, kReadBytes);
  std::vector<Outcome> out;
  size_t turn = 0;
  while (!stream.empty()) {
    auto space = s.prepare();
    FUZZ_CHECK(!space.empty());
    const size_t want = sizes.empty() ? stream.size() : sizes[turn++ % sizes.size()];
    const size_t n = std::min({want, space.size(), stream.size()});
    for (size_t i = 0; i < n; ++i)
      space[i] = stream[i];
    s.commit(n);
    stream.remove_prefix(n);
    check_bounds(s, cap);
    for (;;) {
      std::string_view msg;
      const Result r = s.next(&msg);
      if (r == Result::kNeedMore) break;
      record(s, cap, r, msg, &out);
      if (r == Result::kMalformed) {
        // Terminal: no more results, whatever is fed.
        std::string_view again;
        FUZZ_CHECK(s.next(&again) == Result::kMalformed);
        s.prepare();
        s.commit(0);
        FUZZ_CHECK(s.next(&again) == Result::kMalformed);
        return out;
      }
    }
  }
  return out;
}

// The same feeding through the convenience feed().
std::vector<Outcome> split_with_feed(std::string_view stream, size_t cap) {
  StreamSplitter s(cap, kReadBytes);
  std::vector<Outcome> out;
  s.feed(stream, [&](Result r, std::string_view msg) { record(s, cap, r, msg, &out); });
  check_bounds(s, cap);
  return out;
}

void check_reference(std::string_view stream, size_t cap, const std::vector<Outcome>& got) {
  const auto* p = reinterpret_cast<const uint8_t*>(stream.data());
  size_t pos = 0, i = 0;
  while (pos < stream.size()) {
    const int64_t n = sidetrace::ipc::detail::skip_values(p + pos, stream.size() - pos, 1);
    if (n <= 0) break;
    FUZZ_CHECK(i < got.size());
    if (static_cast<size_t>(n) <= cap) {
      FUZZ_CHECK(got[i].result == Result::kMessage);
      FUZZ_CHECK(got[i].msg == stream.substr(pos, static_cast<size_t>(n)));
    } else {
      FUZZ_CHECK(got[i].result == Result::kTooLarge);
    }
    ++i;
    pos += static_cast<size_t>(n);
  }
  // The tail is not one whole value: at most one kTooLarge then at most one
  // kMalformed.
  size_t too_large = 0, malformed = 0;
  for (; i < got.size(); ++i) {
    FUZZ_CHECK(got[i].result != Result::kMessage);
    if (got[i].result == Result::kTooLarge) {
      FUZZ_CHECK(malformed == 0);
      ++too_large;
    } else {
      ++malformed;
    }
  }
  FUZZ_CHECK(too_large <= 1 && malformed <= 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t cap = 16 + 8 * size_t{data[0]};
  const size_t nsizes = std::min<size_t>(data[1] % 16, size - 2);
  std::vector<size_t> sizes;
  for (size_t i = 0; i < nsizes; ++i)
    sizes.push_back(1 + size_t{data[2 + i]});
  const std::string_view stream(reinterpret_cast<const char*>(data) + 2 + nsizes,
                                size - 2 - nsizes);

  const auto whole = split(stream, cap, {});
  const auto chunked = split(stream, cap, sizes);
  const auto bytewise = split(stream, cap, {1});
  FUZZ_CHECK(chunked == whole);
  FUZZ_CHECK(bytewise == whole);
  FUZZ_CHECK(split_with_feed(stream, cap) == whole);
  check_reference(stream, cap, whole);
  return 0;
}
