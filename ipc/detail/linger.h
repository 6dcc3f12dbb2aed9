// How long the intake lingers after a read that found only a few messages
// (see ipc/intake.h, "Read delay"): a Unix stream connection, a datagram
// socket. In a header of its own so that the rules can be tested without a
// socket or a clock.
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

// A shorter linger would save no wake-up: the next message is as near.
inline constexpr std::chrono::microseconds kMinLinger{100};

// A linger of `fill_ns` bounded by `max`; zero when shorter than kMinLinger.
inline std::chrono::nanoseconds bounded_linger(double fill_ns, std::chrono::nanoseconds max) {
  const auto delay = fill_ns >= static_cast<double>(max.count())
                         ? max
                         : std::chrono::nanoseconds(static_cast<int64_t>(fill_ns));
  return delay < kMinLinger ? std::chrono::nanoseconds{} : delay;
}

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
// after silence is read as it comes. Nor after a linger that found nothing
// when this read came more than `max` after the one before (`fruitless`):
// the sender writes in bursts further apart than a linger can wait, so a
// linger would only add a wake-up to each. Zero: wait for readiness instead.
//
// A sender that speeds up more than twofold within one linger can still find
// its buffer full: `max` bounds that (a buffer of 208 KiB holds 20 ms of
// 8,000 writes a second of 450 bytes).
inline std::chrono::nanoseconds stream_linger(size_t bytes, size_t messages, int64_t elapsed_ns,
                                              std::chrono::nanoseconds max, size_t room,
                                              double* peak_rate, bool fruitless = false) {
  if (max.count() <= 0 || elapsed_ns <= 0 || elapsed_ns > 2 * max.count()) {
    *peak_rate = 0;
    return {};
  }
  const double rate = stream_send_weight(bytes, messages) / static_cast<double>(elapsed_ns);
  *peak_rate = std::max(rate, *peak_rate * std::exp2(-static_cast<double>(elapsed_ns) /
                                                     static_cast<double>(kPeakHalfLifeNs)));
  if (fruitless && elapsed_ns > max.count()) return {};
  const double fill_ns = static_cast<double>(room) / *peak_rate;
  return bounded_linger(fill_ns, max);
}

// A connection's lingers start short and grow, at most doubling from one to
// the next: a sender that starts slowly and then speeds up (a process warming
// up, catching up after a pause) is not left with a full buffer by a linger
// measured on its slow start. `previous`: the last linger (zero after none).
inline constexpr std::chrono::microseconds kFirstStreamLinger{1000};

inline std::chrono::nanoseconds ramp_stream_linger(std::chrono::nanoseconds linger,
                                                   std::chrono::nanoseconds previous) {
  const std::chrono::nanoseconds limit =
      previous.count() > 0 ? 2 * previous : std::chrono::nanoseconds(kFirstStreamLinger);
  return std::min(linger, limit);
}

// The linger of a datagram socket after a read of `got` datagrams,
// `elapsed_ns` after the previous read, where `target` datagrams may wait
// (half of what the kernel queues for the socket, or half a read batch) and
// `burst` datagrams lately came together: at most `max`, and at the rate
// just seen only as long as it takes `target` less a burst to arrive, so
// that a burst that comes last still finds room (a Unix datagram socket
// queues only net.unix.max_dgram_qlen + 1 = 11 by default, and a trace's
// events often come several at once). Zero: wait for readiness instead; so
// when a read got that many (they come fast) or bursts fill the target.
inline std::chrono::nanoseconds datagram_linger(size_t got, int64_t elapsed_ns,
                                                std::chrono::nanoseconds max, size_t target,
                                                size_t burst) {
  if (max.count() <= 0 || got == 0 || burst >= target || got >= target - burst) return {};
  const double fill_ns = static_cast<double>(std::max<int64_t>(elapsed_ns, 0)) *
                         static_cast<double>(target - burst) / static_cast<double>(got);
  return bounded_linger(fill_ns, max);
}

}  // namespace sidetrace::ipc::detail
