// Clocks. Every component that measures time takes a Clock so that tests can
// drive time by hand (ManualClock) instead of sleeping.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace sidetrace {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, nanoseconds since the Unix epoch. Used for timestamps
  // that leave the process (event receive times, document fields).
  virtual uint64_t now_ns() const = 0;
  // Monotonic time in nanoseconds from an arbitrary origin. Used for
  // deadlines, timeouts and latencies.
  virtual uint64_t mono_ns() const = 0;
};

class SystemClock final : public Clock {
 public:
  uint64_t now_ns() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count());
  }
  uint64_t mono_ns() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                     std::chrono::steady_clock::now().time_since_epoch())
                                     .count());
  }
};

// The process-wide real clock. Stateless, so sharing it is safe.
inline Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

// A clock that only moves when told to. Both readings advance together.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(uint64_t start_ns = 1'700'000'000'000'000'000ull) : now_(start_ns) {}
  uint64_t now_ns() const override { return now_.load(std::memory_order_acquire); }
  uint64_t mono_ns() const override { return now_.load(std::memory_order_acquire); }
  void advance_ns(uint64_t ns) { now_.fetch_add(ns, std::memory_order_acq_rel); }
  void advance(std::chrono::nanoseconds d) { advance_ns(static_cast<uint64_t>(d.count())); }

 private:
  std::atomic<uint64_t> now_;
};

}  // namespace sidetrace
