// Splitting msgpack byte streams into whole top-level values.
//
// StreamSplitter serves one stream connection: bytes are read straight into
// its buffer (prepare()/commit()), and next() yields each complete top-level
// msgpack value as a view into that buffer. A message may be split at any
// byte. Scanning is incremental: each byte is examined once however the
// stream is chunked.
//
// Memory is bounded: the buffer never holds more than one partial message of
// at most `max_message_bytes` plus one read of `read_bytes`, so it stays below
// max_message_bytes + read_bytes. With a MemoryBudget shared by all
// connections, what a buffer holds beyond `read_bytes` is taken from the
// budget; when the budget cannot give it, the partial message is dropped
// (kNoMemory, reported once) and its remaining bytes are discarded as they
// arrive, as for an oversized one.
//
// Oversized messages are skipped, not fatal: a value whose size (known from
// its headers as soon as they arrive) exceeds `max_message_bytes` is reported
// once as kTooLarge, and its remaining bytes are discarded without being
// buffered as they stream in; the messages after it are delivered normally.
// Bytes that are not msgpack (the reserved byte 0xc1, or a value count no
// stream could carry) end the stream: next() returns kMalformed from then on;
// the messages before the bad bytes have already been delivered.
//
// Thread safety: none; one splitter per connection, used by one handler chain.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace sidetrace::ipc {

// Bytes that the partly received messages of all stream connections may hold
// beyond their read buffers. Thread safe.
class MemoryBudget {
 public:
  explicit MemoryBudget(size_t limit) : limit_(limit) {}
  // Takes `n` bytes; false (and nothing taken) when that would pass the limit.
  bool take(size_t n);
  void give(size_t n) { used_.fetch_sub(n, std::memory_order_relaxed); }
  size_t used() const { return used_.load(std::memory_order_relaxed); }
  size_t limit() const { return limit_; }

 private:
  const size_t limit_;
  std::atomic<size_t> used_{0};
};

class StreamSplitter {
 public:
  enum class Result { kMessage, kNeedMore, kTooLarge, kNoMemory, kMalformed };

  // `budget` (may be null: no shared bound) must outlive the splitter.
  explicit StreamSplitter(size_t max_message_bytes, size_t read_bytes = 64 * 1024,
                          MemoryBudget* budget = nullptr);
  ~StreamSplitter();

  StreamSplitter(const StreamSplitter&) = delete;
  StreamSplitter& operator=(const StreamSplitter&) = delete;

  // A writable region at the end of the buffer (never empty) to read into.
  // Invalidates the views returned by next().
  std::span<char> prepare();
  // Marks `n` bytes of the region returned by prepare() as received.
  void commit(size_t n);

  // kMessage: `*msg` is one whole value, valid until the next prepare().
  // kNeedMore: every complete value has been returned; feed more bytes.
  // kTooLarge: the current value is over the cap and is being skipped; call
  //   next() again.
  // kNoMemory: the budget could not hold the rest of the current value; it is
  //   being skipped; call next() again.
  // kMalformed: the stream is not msgpack; it cannot recover.
  Result next(std::string_view* msg);

  // Copies `chunk` in (through prepare()/commit()) and calls `on(result, msg)`
  // for every result other than kNeedMore. Stops at kMalformed. Convenience
  // for callers that do not read into the buffer directly.
  template <typename F>
  void feed(std::string_view chunk, F&& on) {
    do {
      if (!chunk.empty()) {
        auto space = prepare();
        const size_t n = space.size() < chunk.size() ? space.size() : chunk.size();
        for (size_t i = 0; i < n; ++i)
          space[i] = chunk[i];
        commit(n);
        chunk.remove_prefix(n);
      }
      for (;;) {
        std::string_view msg;
        Result r = next(&msg);
        if (r == Result::kNeedMore) break;
        on(r, msg);
        if (r == Result::kMalformed) return;
      }
    } while (!chunk.empty());
  }

  // Bytes held (the partial message not yet returned).
  size_t buffered() const { return end_ - begin_; }
  // Current buffer allocation.
  size_t capacity() const { return cap_; }
  bool failed() const { return failed_; }

 private:
  // Sizes the buffer to `want` bytes; false when the budget cannot hold them.
  bool grow(size_t want);
  // Gives up the partial message at the front of the buffer (budget refused).
  void starve();

  const size_t max_message_;
  const size_t read_bytes_;
  MemoryBudget* const budget_;
  size_t charged_ = 0;  // bytes taken from budget_
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t begin_ = 0;        // start of the current (partial) message
  size_t scan_ = 0;         // everything before this has been parsed
  size_t end_ = 0;          // end of received bytes
  uint64_t pending_ = 0;    // values still to parse in the current message
  uint64_t skip_ = 0;       // payload bytes still to pass over
  uint64_t discarded_ = 0;  // bytes of the current message already dropped
  bool in_message_ = false;
  bool discarding_ = false;
  bool failed_ = false;
  bool starved_ = false;  // kNoMemory is due
};

// Calls `on(value)` for each whole top-level msgpack value in `bytes` (a
// datagram). Returns the number of trailing bytes that are not a whole valid
// value (0 when the datagram parsed completely).
template <typename F>
size_t for_each_value(std::string_view bytes, F&& on);

}  // namespace sidetrace::ipc

#include "ipc/detail/msgpack_reader.h"

namespace sidetrace::ipc {

template <typename F>
size_t for_each_value(std::string_view bytes, F&& on) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const int64_t n = detail::skip_values(p + pos, bytes.size() - pos, 1);
    if (n <= 0) return bytes.size() - pos;
    on(bytes.substr(pos, static_cast<size_t>(n)));
    pos += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace sidetrace::ipc
