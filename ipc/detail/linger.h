// How long a Unix stream connection lingers after a read that did not fill
// its buffer (see ipc/intake.h, "Read delay"). In a header of its own so
// that the rule can be tested without a socket or a clock.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace sidetrace::ipc::detail {

// What a write of `bytes` takes of its sender's socket buffer, about: the
// kernel rounds each write's allocation up to a power of two and adds a few
// hundred bytes of bookkeeping (a 450-byte write takes 1,280 bytes).
inline double stream_send_weight(size_t bytes, size_t writes) {
  constexpr double kPerWrite = 640;
  return 2.0 * static_cast<double>(bytes) +
         kPerWrite * static_cast<double>(std::max<size_t>(writes, 1));
}

// How fast the fastest rate seen fades: by half each second (see
// stream_linger()).
inline constexpr int64_t kPeakHalfLifeNs = 1'000'000'000;

// A shorter linger would save no wake-up: the next write is as near.
inline constexpr std::chrono::microseconds kMinStreamLinger{100};

// The linger after a read that drained the socket, `elapsed_ns` after the
// previous such read, with `bytes` in `messages` messages taken since: at
// most `max`, and only as long as it takes the sender to fill `room` of its
// socket buffer at the fastest rate lately seen. A writer that finds that
// buffer full blocks, or drops what it writes (protocol-v1 asks emitters
// to), however fast the agent could read. `*peak_rate` (the connection's, 0
// at first) keeps that rate, in buffer bytes per ns, fading by half each
// second: a sender that paused for part of one linger and catches up in the
// next does not find its buffer full. No linger after a quiet spell (longer
// than two lingers, or none yet): the rate is not known then, and a burst
// after silence is read as it comes. Zero: wait for readiness instead.
//
// A sender that speeds up more than twofold within one linger can still find
// its buffer full: `max` bounds that (a buffer of 208 KiB holds 20 ms of
// 8,000 writes a second of 450 bytes).
inline std::chrono::nanoseconds stream_linger(size_t bytes, size_t messages, int64_t elapsed_ns,
                                              std::chrono::nanoseconds max, size_t room,
                                              double* peak_rate) {
  if (max.count() <= 0 || elapsed_ns <= 0 || elapsed_ns > 2 * max.count()) {
    *peak_rate = 0;
    return {};
  }
  const double rate = stream_send_weight(bytes, messages) / static_cast<double>(elapsed_ns);
  *peak_rate = std::max(rate, *peak_rate * std::exp2(-static_cast<double>(elapsed_ns) /
                                                     static_cast<double>(kPeakHalfLifeNs)));
  const double fill_ns = static_cast<double>(room) / *peak_rate;
  const auto delay = fill_ns >= static_cast<double>(max.count())
                         ? max
                         : std::chrono::nanoseconds(static_cast<int64_t>(fill_ns));
  return delay < kMinStreamLinger ? std::chrono::nanoseconds{} : delay;
}

}  // namespace sidetrace::ipc::detail
